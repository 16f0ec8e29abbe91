"""Every method of issue 20 trains end to end on digits from the command line, its term non-zero
and really its own (not Hinton KD under another name); an impossible pairing is one line."""

from __future__ import annotations

import json

import pytest

from workbench.cli import main
from workbench.storage.store import Store

BASE = [
    "run", "--teacher", "small_cnn", "--student", "small_cnn", "--epochs", "1",
    "--teacher-epochs", "1", "--batch-size", "128", "--device", "cpu", "--json",
]  # fmt: skip
KINDS = [
    ("response", "--response-kind", "dkd"),
    ("response", "--response-kind", "dist"),
    ("feature", "--feature-kind", "nst"),
    ("feature", "--feature-kind", "vid"),
    ("relation", "--relation-kind", "pkt"),
    ("relation", "--relation-kind", "cc"),
]


def _run(capsys, *args: str) -> dict:
    code = main([*BASE, *args])
    out, err = capsys.readouterr()
    assert code == 0, err[-2000:]
    return json.loads(out)


@pytest.mark.parametrize(("component", "flag", "kind"), KINDS)
def test_each_new_kind_trains_from_the_cli_with_its_term_non_zero(
    home, capsys, component, flag, kind
):
    weights = f"label=0.5,{component}=0.5"
    result = _run(capsys, "--weights", weights, flag, kind)
    assert result["status"] == "completed", result["error"]
    assert result["losses"][component] > 0
    assert result["test_acc"] > 0
    default = {"response": "kd", "feature": "cosine", "relation": "sp"}[component]
    baseline = _run(capsys, "--weights", weights, flag, default)
    assert baseline["losses"][component] != result["losses"][component]
    record = Store(home).get_run(result["run_id"])
    assert record["config"][f"{component}_kind"] == kind
    assert record["teacher_run"] == Store(home).get_run(baseline["run_id"])["teacher_run"]


def test_dkd_settings_reach_the_loss(home, capsys):
    weights = "label=0.5,response=0.5"
    plain = _run(capsys, "--weights", weights, "--response-kind", "dkd")
    strong = _run(capsys, "--weights", weights, "--response-kind", "dkd", "--dkd-beta", "16")
    assert strong["losses"]["response"] != plain["losses"]["response"]


def test_nst_on_a_vector_layer_is_one_line_naming_nst(home, capsys):
    code = main(
        [*BASE[:4], "mlp", *BASE[5:], "--weights", "label=0.5,feature=0.5", "--feature-kind", "nst"]
    )
    _, err = capsys.readouterr()
    assert code == 2
    (line,) = err.strip().splitlines()
    assert line.startswith("error: nst needs 4-D feature maps"), line


def test_an_ablation_over_dkd_reviewkd_and_crd_is_one_command(home, capsys):
    """The issue's example suite: one preset, every variant trains, and the full run logs each
    term's share of the gradient."""
    code = main(
        [
            "ablate", "--method", "dkd+reviewkd+crd", "--teacher", "small_cnn", "--student",
            "small_cnn", "--epochs", "1", "--teacher-epochs", "1", "--batch-size", "128",
            "--seeds", "1", "--device", "cpu", "--json",
        ]
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err[-2000:]
    suite = json.loads(out)
    assert [c["component"] for c in suite["contributions"]] == [
        "label", "response", "feature", "relation"
    ]  # fmt: skip
    store = Store(home)
    (record,) = [r for r in store.list_runs(role="student") if r.get("variant") == "full"]
    config = record["config"]
    assert (config["response_kind"], config["feature_kind"], config["relation_kind"]) == (
        "dkd",
        "reviewkd",
        "crd",
    )
    logged = [row for row in store.history(record["id"]) if "g_relation" in row]
    assert logged and all(logged[-1][f"g_{c}"] > 0 for c in ("response", "feature", "relation"))
