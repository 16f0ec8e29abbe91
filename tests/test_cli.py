from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from workbench.cli import main
from workbench.storage.store import Store


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
    # every accuracy named with its split (issue 19): the headline is the test split's
    metrics = Store(home).get_run(result["run_id"])["metrics"]
    (epoch,) = Store(home).epochs(result["run_id"])
    assert result["test_acc"] == metrics["test_acc"] and result["val_acc"] == epoch["val_acc"]
    assert result["teacher_test_acc"] == result["teacher_acc"] == metrics["teacher_acc"]
    assert result["agreement_test"] == result["agreement"] == metrics["agreement"]
    assert result["agreement_val"] == epoch["agreement"]
    assert "val acc" in err and "val agreement" in err and "val_acc" not in err
    assert main(["runs"]) == 0
    assert result["run_id"] in capsys.readouterr().out
    assert main(["show", result["run_id"]]) == 0
    assert f"test accuracy {result['test_acc']:.4f}" in capsys.readouterr().out


def test_config_file_and_flag_override(home, tmp_path, capsys):
    path = tmp_path / "run.toml"
    path.write_text('teacher = "small_cnn"\nstudent = "mlp"\nepochs = 2\nteacher_epochs = 1\n')
    assert (
        main(["run", "--config", str(path), "--epochs", "1", "--weights", "label=1", "--json"]) == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["status"] == "completed"


BAD_INPUT = [
    (["run", "--teacher", "resnet999"], "unknown teacher model 'resnet999'; choose one of:"),
    (["run", "--dataset", "imagenet"], "unknown dataset 'imagenet'"),
    (
        ["run", "--weights", "label=-1"],
        "Label weight (weights.label) must be a number from 0 to 100",
    ),
    (["run", "--weights", "label=0,response=0"], "all loss weights are zero"),
    (
        ["run", "--temperature", "0"],
        "Temperature T (temperature) must be a number from 0.05 to 100",
    ),
    (["run", "--epochs", "0"], "Epochs (epochs) must be a whole number from 1 to 500"),
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
    assert (result["metric"], result["split"]) == ("test_acc", "test")  # what "mean" is of
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


# ---------------------------------------------------------------------- bad inputs (issue 8, item 8)
# Each one: exit code 2, exactly one line on stderr naming the field (as the app's form labels it,
# the field name in brackets) and what it may be, no traceback, and no run record left in the
# store (the refusal comes before anything is created).
FAST = ["--teacher", "small_cnn", "--student", "mlp", "--weights", "label=1", "--epochs", "1"]
NO_CUDA_DEVICE = f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"
TOML_CASES = {
    "weights_label_x": (
        '[weights]\nlabel = "x"\n',
        "Label weight (weights.label) must be a number from 0 to 100",
    ),
    "device_5": ("device = 5\n", "Device (device) must be text, got 5"),
    "data_path_7": ("data_path = 7\n", "Image folder (data_path) must be text, got 7"),
    "not_utf8": (b'name = "\xff\xfe"\n', "is not UTF-8 text"),
    "augment_no": ('augment = "no"\n', "augment must be true or false, got 'no'"),
    "teacher_cache_false": (
        'teacher_cache = "false"\n',
        "teacher_cache must be true or false, got 'false'",
    ),
    "layer_pairs_5": ("layer_pairs = 5\n", "layer_pairs must be a list"),
}
FLAG_CASES = [
    (["--lr", "1e308"], "Learning rate (lr) must be a number from 1e-06 to 1, got 1e+308"),
    (["--lr", "nan"], "Learning rate (lr) must be a number from 1e-06 to 1, got nan"),
    (
        ["--seed", str(2**70)],
        f"Seed (seed) must be a whole number from 0 to 4294967295, got {2**70}",
    ),
    (["--seed", "2**70"], "Seed (seed) must be a whole number from 0 to 4294967295, got '2**70'"),
    (["--epochs", "10000"], "Epochs (epochs) must be a whole number from 1 to 500, got 10000"),
    (["--epochs", "abc"], "Epochs (epochs) must be a whole number from 1 to 500, got 'abc'"),
    (["--batch-size", "1"], "Batch size (batch_size) must be a whole number from 2 to 4096, got 1"),
    (
        ["--batch-size", "4000"],
        "Batch size (batch_size) must be at most the ",
    ),  # digits: ~1400 to train on
    (["--name", "two\nlines"], "Run name (name) must be one line of printable text"),
    (["--device", NO_CUDA_DEVICE], f"device {NO_CUDA_DEVICE}: "),
    (["--device", "tpu"], "Device (device) must be auto, cpu, cuda or cuda:N, got 'tpu'"),
    (["--teacher-run", "nope"], "teacher_run 'nope' is not in the store"),
    (["--layer-pairs", "a"], "a layer pair looks like student_path:teacher_path"),
]


def _one_line_refusal(home, capsys, args, message):
    assert main(args) == 2
    out, err = capsys.readouterr()
    assert err.startswith("error: ") and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert out == ""
    assert Store(home).list_runs() == []


@pytest.mark.parametrize(("args", "message"), FLAG_CASES)
def test_bad_flags_are_refused_in_one_line(home, capsys, args, message):
    _one_line_refusal(home, capsys, ["run", *FAST, *args], message)


@pytest.mark.parametrize("case", list(TOML_CASES))
def test_bad_toml_is_refused_in_one_line(home, tmp_path, capsys, case):
    text, message = TOML_CASES[case]
    path = tmp_path / "run.toml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    _one_line_refusal(home, capsys, ["run", "--config", str(path)], message)


def test_a_folder_as_config_is_refused_in_one_line(home, tmp_path, capsys):
    _one_line_refusal(home, capsys, ["run", "--config", str(tmp_path)], "is a folder")


def test_ablate_checks_the_same_way(home, capsys):
    two = ["--teacher", "small_cnn", "--student", "mlp", "--weights", "label=0.5,response=0.5"]
    _one_line_refusal(home, capsys, ["ablate", *two, "--seeds", "1000"], "--seeds must be")
    _one_line_refusal(home, capsys, ["ablate", *two, "--teacher-run", "nope"], "not in the store")
    _one_line_refusal(home, capsys, ["ablate", *FAST], "at least two loss components")
    assert Store(home).list_suites() == []


@pytest.mark.parametrize(
    ("args", "message"),
    [(["run", "--epochs"], "expected one argument"), (["run", "--bogus"], "unrecognized")],
)
def test_usage_errors_are_one_line_too(capsys, args, message):
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_no_traceback_and_no_record_from_the_real_command(home):
    env = {**os.environ, "KDWB_HOME": str(home)}
    proc = subprocess.run(  # the command, literally (one process: torch takes seconds)
        [sys.executable, "-m", "workbench", "run", "--config", "/etc"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert Store(home).list_runs() == []


def test_runs_lists_one_line_per_run_whatever_was_stored(home, capsys):
    from workbench.config.run_config import RunConfig

    store = Store(home)
    config = RunConfig(teacher="small_cnn", student="mlp")
    store.create_run(config, name="two\nlines")  # stored before names were checked
    old = store.create_run(config, name="old")
    store.update_run(old, config={**config.to_dict(), "epochs": 10000, "lr": 5.0})  # old bounds
    assert main(["runs"]) == 0
    header, *lines = capsys.readouterr().out.splitlines()
    assert header.split()[:4] == ["id", "status", "test", "acc"]
    assert len(lines) == 2
    assert any("two\\nlines" in line for line in lines)
    assert main(["show", old]) == 0
    assert "small_cnn -> mlp on digits" in capsys.readouterr().out
    assert main(["runs", "--json"]) == 0
    names = {r["name"] for r in json.loads(capsys.readouterr().out)}
    assert names == {"two\nlines", "old"}


def test_runs_with_an_unknown_status_says_so(home, capsys):
    from workbench.storage.store import STATUSES

    assert main(["runs", "--status", "complete"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: --status must be one of {', '.join(STATUSES)}, got 'complete'\n"
    assert main(["runs", "--status", "completed"]) == 0


def test_submit_queues_a_run_for_a_worker_without_training_it(home, capsys):
    """``submit`` creates a queued run owned by the user and trains nothing; ``worker --once``
    then trains it. A run that cannot be admitted leaves no record."""
    from workbench.storage.store import Store

    args = ["--student", "mlp", "--weights", "label=1", "--epochs", "1", "--device", "cpu"]
    assert main(["submit", *args, "--name", "for later", "--json", "--user", "carol"]) == 0
    run_id = json.loads(capsys.readouterr().out)["run_id"]
    store = Store(home)
    record = store.get_run(run_id)
    assert (record["status"], record["owner"], record["name"]) == ("queued", "carol", "for later")
    assert record["started_at"] is None and store.epochs(run_id) == []
    assert main(["submit", *args, "--batch-size", "4000"]) == 2  # admitted: refused, no record
    assert "must be at most the 1078 training samples" in capsys.readouterr().err
    assert [r["id"] for r in store.list_runs()] == [run_id]
    assert main(["worker", "--once"]) == 0
    assert store.get_run(run_id)["status"] == "completed"
    store.close()
