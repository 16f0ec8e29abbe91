from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from workbench.cli import main
from workbench.store import Store


def test_run_json_then_runs_and_show(home, capsys):
    code = main(
        [
            "run",
            "--teacher",
            "small_cnn",
            "--student",
            "mlp",
            "--epochs",
            "1",
            "--teacher-epochs",
            "1",
            "--json",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0
    result = json.loads(out)
    assert result["status"] == "completed"
    assert set(result) >= {"run_id", "val_acc", "teacher_acc", "losses", "seconds"}
    assert set(result["losses"]) == {"label", "response", "feature", "relation", "total"}
    assert "[teacher] epoch 1/1" in err and "[student]" in err and "ETA" in err
    assert main(["runs"]) == 0
    assert result["run_id"] in capsys.readouterr().out
    assert main(["show", result["run_id"]]) == 0
    assert "val_acc" in capsys.readouterr().out


def test_config_file_and_flag_override(home, tmp_path, capsys):
    from workbench.config import RunConfig

    path = tmp_path / "run.toml"
    path.write_text(
        RunConfig(teacher="small_cnn", student="mlp", epochs=2, teacher_epochs=1).to_toml()
    )
    assert (
        main(["run", "--config", str(path), "--epochs", "1", "--weights", "label=1", "--json"]) == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["status"] == "completed"


BAD_INPUT = [
    (["run", "--teacher", "resnet999"], "unknown teacher model 'resnet999'; choose one of:"),
    (["run", "--dataset", "imagenet"], "unknown dataset 'imagenet'"),
    (["run", "--weights", "label=-1"], "weight label must be >= 0"),
    (["run", "--weights", "label=0,response=0"], "all loss weights are zero"),
    (["run", "--temperature", "0"], "temperature must be > 0"),
    (["run", "--epochs", "0"], "epochs must be a whole number >= 1"),
    (["show", "nope"], "no run 'nope'"),
    (["run", "--dataset", "mnist", "--weights", "label=1"], "download"),
    (["run", "--teacher", "small_cnn", "--student", "mlp", "--feature-kind", "at"], "attention"),
    (
        ["run", "--teacher", "small_cnn", "--student", "mlp", "--layer-pairs", "layer9:block1"],
        "layer9",
    ),
]


@pytest.mark.parametrize(("args", "message"), BAD_INPUT)
def test_bad_input_is_a_message_and_a_nonzero_exit(home, capsys, args, message):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert Store(home).list_runs() == []  # nothing half-made is left behind


def test_no_traceback_from_the_real_command(home):
    env = {**os.environ, "KDWB_HOME": str(home)}
    proc = subprocess.run(
        [sys.executable, "-m", "workbench", "run", "--teacher", "resnet999"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "unknown teacher model" in proc.stderr and "Traceback" not in proc.stderr


def test_ablate_json(home, capsys):
    args = [
        "ablate",
        "--teacher",
        "small_cnn",
        "--student",
        "mlp",
        "--epochs",
        "1",
        "--teacher-epochs",
        "1",
    ]
    code = main([*args, "--weights", "label=0.5,response=0.5", "--seeds", "2", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    result = json.loads(out)
    assert [v["variant"] for v in result["variants"]] == [
        "full",
        "without label",
        "without response",
        "label only",
    ]
    assert all(v["n"] == 2 for v in result["variants"])
    assert {c["component"] for c in result["contributions"]} == {"label", "response"}
    # Each contribution recomputed from the stored runs: the mean over seeds of the paired
    # difference full - without, with a t interval of half-width t(0.975, n-1) * sd / sqrt(n).
    from scipy import stats

    store = Store(home)
    acc = {}
    for record in store.list_runs(role="student"):
        metrics = record["metrics"]
        acc[(record["variant"], record["config"]["seed"])] = metrics["test_acc"]
    for c in result["contributions"]:
        diffs = [acc[("full", s)] - acc[(f"without {c['component']}", s)] for s in (0, 1)]
        mean = sum(diffs) / 2
        half = stats.t.ppf(0.975, 1) * abs(diffs[0] - diffs[1]) / 2**0.5 / 2**0.5
        assert c["contribution"] == pytest.approx(mean, abs=1e-12)
        if half > 0:
            assert c["ci_high"] - c["ci_low"] == pytest.approx(2 * half, rel=1e-9)
    assert "[suite] run 8/8" in err
    suites = Store(home).list_suites()
    assert len(suites) == 1 and len(suites[0]["runs"]) == 8
