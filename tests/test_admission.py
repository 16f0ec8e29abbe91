"""Admission: what a valid config still needs from the machine and the store, refused before a
run record exists (issue 8, item 8)."""

from __future__ import annotations

import pytest
import torch
from sklearn.datasets import load_digits

from workbench.config.run_config import LossWeights, RunConfig
from workbench.data.datasets import load_dataset
from workbench.errors import ConfigError
from workbench.runs import submit as admission
from workbench.runs.submit import admit, check_device

SCRATCH = RunConfig(teacher="small_cnn", student="mlp", weights=LossWeights(1, 0, 0, 0))


def _cuda(monkeypatch, count: int) -> None:
    monkeypatch.setattr(admission.torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(admission.torch.cuda, "device_count", lambda: count)


@pytest.mark.parametrize("device", ["auto", "cpu"])
def test_auto_and_cpu_always_run(monkeypatch, device):
    _cuda(monkeypatch, 0)
    check_device(device)


@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:1"])
def test_cuda_without_cuda_is_refused(monkeypatch, device):
    _cuda(monkeypatch, 0)
    with pytest.raises(ConfigError) as info:
        check_device(device)
    assert str(info.value) == (
        f"device {device}: CUDA is not available on this machine; choose auto or cpu"
    )


def test_a_cuda_index_beyond_the_devices_is_refused(monkeypatch):
    _cuda(monkeypatch, 2)
    for ok in ("cuda", "cuda:0", "cuda:1"):
        check_device(ok)
    with pytest.raises(ConfigError) as info:
        check_device("cuda:2")
    assert str(info.value) == (
        "device cuda:2: this machine has 2 CUDA device(s); choose auto, cpu, cuda:0, cuda:1"
    )


def test_the_device_check_can_be_left_to_the_executing_machine(store, monkeypatch):
    _cuda(monkeypatch, 0)
    config = SCRATCH.replace(device="cuda:3")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        admit(config, store)
    admit(config, store, check_device_here=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_real_devices_of_this_machine():
    count = torch.cuda.device_count()
    check_device(f"cuda:{count - 1}")
    with pytest.raises(ConfigError, match=f"has {count} CUDA device"):
        check_device(f"cuda:{count}")


# ---------------------------------------------------------------------- teacher runs
def _teacher(store, *, status="completed", checkpoint=True, **changes) -> str:
    recipe = RunConfig(teacher="small_cnn", student="mlp", **changes).teacher_config()
    run_id = store.create_run(recipe, status=status)
    if checkpoint:
        store.save_weights(run_id, {"w": torch.zeros(1)})
    return run_id


def test_a_completed_matching_teacher_run_is_admitted(store):
    run_id = _teacher(store)
    admit(RunConfig(teacher="small_cnn", student="mlp", teacher_run=run_id), store)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda store: "nope", "teacher_run 'nope' is not in the store; list teachers with"),
        (lambda store: _teacher(store, status="running"), "is running, not completed"),
        (lambda store: _teacher(store, status="failed"), "is failed, not completed"),
        (lambda store: _teacher(store, teacher_epochs=2, checkpoint=False), "has no checkpoint"),
        (
            lambda store: store.create_run(SCRATCH, status="completed"),
            "is a student run, not a teacher",
        ),
        (
            lambda store: _teacher(store, dataset="image_folder", data_path="/x"),
            "is a small_cnn on image_folder (/x); this run asks for small_cnn on digits",
        ),
    ],
)
def test_a_teacher_run_that_cannot_serve_is_refused(store, make, message):
    run_id = make(store)
    config = RunConfig(teacher="small_cnn", student="mlp", teacher_run=run_id)
    with pytest.raises(ConfigError) as info:
        admit(config, store)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_teacher_of_another_architecture_is_refused(store):
    run_id = _teacher(store)
    config = RunConfig(teacher="resnet18", student="mlp", teacher_run=run_id)
    with pytest.raises(ConfigError, match="is a small_cnn on digits; this run asks for resnet18"):
        admit(config, store)


def test_a_teacher_run_is_checked_for_scratch_students_too(store):
    # the engine loads config.teacher_run for the probe of a scratch student as well
    with pytest.raises(ConfigError, match="not in the store"):
        admit(SCRATCH.replace(teacher_run="nope"), store)


# ---------------------------------------------------------------------- batch size
def test_the_batch_may_be_the_whole_training_set_but_not_more(store):
    n = len(load_dataset("digits").train_x)
    assert 0 < n < len(load_digits().target)  # the training split, not the whole dataset
    admit(SCRATCH.replace(batch_size=n), store)
    with pytest.raises(ConfigError) as info:
        admit(SCRATCH.replace(batch_size=n + 1), store)
    assert str(info.value) == (
        f"batch_size must be at most the {n} training samples of digits, got {n + 1}"
    )
