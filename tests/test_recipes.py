"""Training recipes (issue 20 item 6): optimizers, schedules, warm-up, presets, on every path.

The schedule's rates are checked against values written out by hand from the papers' protocol;
the optimizer against torch's own SGD; resume against a run that never stopped.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.test_launch import distill  # noqa: F401 (a fixture)
from workbench.config.recipes import METHODS, RECIPES, apply_presets, dkd_warmup_epochs
from workbench.config.run_config import LossWeights, RunConfig
from workbench.errors import ConfigError, UnknownNameError
from workbench.training.schedule import build_scheduler, lr_factor
from workbench.ui.draft import check_draft, preset_draft, route_errors

ROOT = Path(__file__).resolve().parents[1]


def _factors(config: RunConfig, steps_per_epoch: int) -> list[float]:
    return [lr_factor(config, s, steps_per_epoch) for s in range(steps_per_epoch * config.epochs)]


def test_multistep_decays_after_each_milestone_epoch():
    config = RunConfig(schedule="multistep", milestones=[2, 4], epochs=5, lr_decay=0.1)
    # 2 steps per epoch: epochs 1-2 at 1, 3-4 at 0.1, 5 at 0.01
    expected = [1, 1, 1, 1, 0.1, 0.1, 0.1, 0.1, 0.01, 0.01]
    assert _factors(config, 2) == pytest.approx(expected)


def test_warmup_rises_linearly_then_the_schedule_runs_over_the_rest():
    config = RunConfig(schedule="cosine", warmup_epochs=1, epochs=3)
    factors = _factors(config, 4)
    assert factors[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    rest = [0.5 * (1 + math.cos(math.pi * k / 8)) for k in range(8)]
    assert factors[4:] == pytest.approx(rest)
    assert _factors(RunConfig(schedule="constant", epochs=2), 3) == [1.0] * 6


def test_the_default_schedule_is_the_stored_runs_cosine():
    params = [torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.SGD(params, lr=1.0)
    scheduler = build_scheduler(optimizer, RunConfig(epochs=2), steps_per_epoch=3)
    assert isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR)
    assert scheduler.T_max == 6


def test_a_lambda_schedule_resumes_at_the_same_rate():
    config = RunConfig(schedule="multistep", milestones=[1], epochs=3, warmup_epochs=1)
    params = [torch.nn.Parameter(torch.zeros(1))]

    def fresh():
        optimizer = torch.optim.SGD(params, lr=0.5)
        return optimizer, build_scheduler(optimizer, config, steps_per_epoch=2)

    optimizer, scheduler = fresh()
    rates = []
    for _ in range(6):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    optimizer2, scheduler2 = fresh()
    optimizer, scheduler = fresh()
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    scheduler2.load_state_dict(scheduler.state_dict())
    optimizer2.load_state_dict(optimizer.state_dict())
    resumed = []
    for _ in range(3):
        resumed.append(optimizer2.param_groups[0]["lr"])
        optimizer2.step()
        scheduler2.step()
    assert resumed == pytest.approx(rates[3:])
    assert rates == pytest.approx([0.25, 0.5, 0.05, 0.05, 0.05, 0.05])


def test_the_engine_trains_with_sgd_and_the_recipe_from_the_command_line(tmp_path):
    """The CLI's flags reach the engine's optimizer: momentum and weight decay as given."""
    from workbench.storage.store import Store
    from workbench.training.loop import prepare

    config = RunConfig(
        student="mlp",
        weights=LossWeights(1, 0, 0, 0),
        optimizer="sgd",
        lr=0.05,
        momentum=0.8,
        weight_decay=5e-4,
        schedule="multistep",
        milestones=[1],
        epochs=2,
        device="cpu",
    )
    store = Store(tmp_path)
    training = prepare(config, store, store.create_run(config))
    optimizer = training.optimizer
    assert isinstance(optimizer, torch.optim.SGD)
    group = optimizer.param_groups[0]
    assert (group["momentum"], group["weight_decay"], group["lr"]) == (0.8, 5e-4, 0.05)
    assert isinstance(training.scheduler, torch.optim.lr_scheduler.LambdaLR)


def test_recipe_and_method_presets_from_the_command_line(tmp_path):
    env = {"KDWB_HOME": str(tmp_path), "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-m", "workbench", "run", "--recipe", "crd-cifar100", "--method",
         "dkd", "--student", "mlp", "--epochs", "2", "--milestones", "1", "--dataset",
         "digits", "--teacher", "mlp", "--teacher-epochs", "1", "--device", "cpu", "--json"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    run_id = json.loads(out.stdout)["run_id"]
    shown = subprocess.run(
        [sys.executable, "-m", "workbench", "show", run_id, "--json"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=120,
    )  # fmt: skip
    record = json.loads(shown.stdout)
    assert record["status"] == "completed"
    assert record["metrics"]["final_losses"]["response"] > 0
    config = record["config"]
    assert (config["optimizer"], config["lr"], config["weight_decay"]) == ("sgd", 0.05, 5e-4)
    assert (config["schedule"], config["milestones"], config["epochs"]) == ("multistep", [1], 2)
    assert (config["response_kind"], config["dkd_beta"]) == ("dkd", 8.0)
    assert config["weights"]["response"] == 1.0
    bad = subprocess.run(
        [sys.executable, "-m", "workbench", "run", "--schedule", "multistep", "--milestones",
         "2,9", "--epochs", "5"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "error: milestone 9 is not before the last epoch: epochs is 5; lower the milestone or "
        "raise epochs"
    ]


def test_presets_set_fields_and_small_students_get_the_papers_lr():
    crd = apply_presets({"student": "resnet20"}, recipe="crd-cifar100")
    assert crd["lr"] == 0.05 and crd["milestones"] == [150, 180, 210]
    assert apply_presets({"student": "mobilenet_v2_cifar"}, recipe="crd-cifar100")["lr"] == 0.01
    for name in METHODS:
        RunConfig.from_dict(apply_presets({}, method=name))  # every preset is a valid config
    for name in RECIPES:
        RunConfig.from_dict(apply_presets({}, recipe=name))
    with pytest.raises(UnknownNameError, match="recipe"):
        apply_presets({}, recipe="imagenet")


def test_dkd_warmup_is_scaled_to_the_run():
    assert dkd_warmup_epochs(20, 240) == 20
    assert dkd_warmup_epochs(20, 24) == 2
    assert dkd_warmup_epochs(20, 3) == 0
    assert dkd_warmup_epochs(20, 1000) == 20


def _draft(**changes):
    from pages._shared import draft_defaults

    return {**draft_defaults(), **changes}


def test_the_distill_draft_takes_the_recipe_and_names_a_bad_milestone():
    draft = _draft(**preset_draft(recipe="crd-cifar100", student="small_cnn"))
    configs, errors = check_draft(draft)
    assert errors == {} and configs[0].milestones == (150, 180, 210)
    assert configs[0].optimizer == "sgd" and configs[0].epochs == 240
    _, errors = check_draft({**draft, "milestones": "150, 300"})
    assert "milestone 300" in errors["milestones"]
    assert route_errors(errors) == {"recipe": [errors["milestones"]]}  # said once, in its row
    _, errors = check_draft({**draft, "milestones": "150, x"})
    assert list(route_errors(errors)) == ["recipe"] and "150, x" in errors["milestones"]
    _, errors = check_draft({**draft, "milestones": ""})
    assert "needs milestones" in errors["schedule"]
    # milestones typed while the schedule is cosine are not used, and are no error
    configs, errors = check_draft({**draft, "schedule": "cosine"})
    assert errors == {} and configs[0].milestones == ()


def test_the_distill_draft_takes_a_method_preset():
    draft = _draft(**preset_draft(method="DKD (Zhao et al. 2022)"))
    configs, errors = check_draft(draft)
    assert errors == {}
    config = configs[0]
    assert (config.response_kind, config.dkd_alpha, config.dkd_beta) == ("dkd", 1.0, 8.0)
    assert config.weights.as_dict() == {
        "label": 1.0, "response": 1.0, "feature": 0.0, "relation": 0.0
    }  # fmt: skip
    _, errors = check_draft({**draft, "dkd_beta": -1.0})
    assert set(errors) == {"dkd_beta"}
    with pytest.raises(ConfigError):
        RunConfig(response_kind="dkd", dkd_beta=-1.0)


def test_the_distill_page_sets_a_method_and_a_recipe_and_queues_them(distill):  # noqa: F811
    at, store = distill
    at.button(key="method_dkd_zhao_et_al_2022").click().run()
    assert at.selectbox(key="response_kind").value == "dkd"
    assert at.number_input(key="dkd_beta").value == 8.0  # its settings show once it is chosen
    at.button(key="recipe_crd-cifar100").click().run()
    assert at.selectbox(key="optimizer").value == "sgd"
    assert at.text_input(key="milestones").value == "150, 180, 210"
    at.text_input(key="milestones").set_value("150, 300").run()
    assert [e.value for e in at.error] == [
        "milestone 300 is not before the last epoch: epochs is 240; lower the milestone or "
        "raise epochs"
    ]
    at.text_input(key="milestones").set_value("2").run()
    at.number_input(key="epochs").set_value(3).run()
    at.button(key="launch").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    (run,) = store.list_runs(role="student")
    config = run["config"]
    assert (config["response_kind"], config["optimizer"], config["milestones"]) == (
        "dkd",
        "sgd",
        [2],
    )
