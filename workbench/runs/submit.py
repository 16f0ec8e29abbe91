"""Admission: what a valid ``RunConfig`` still needs from this machine and this store.

``RunConfig.validate`` checks a config on its own (types, names, bounds). Some values are only
wrong here and now: ``cuda`` on a machine without CUDA, a teacher run that is not in the store
(or not finished, or trained for another dataset), a batch larger than the training set. Before
this module such a run got a record, started and failed; ``admit`` refuses it before anything
is created, so every entry point (the CLI, the job queue's submit) calls it first.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from workbench.config.run_config import RunConfig
from workbench.data.datasets import load_dataset
from workbench.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from workbench.lab.identity import User
    from workbench.lab.settings import Limits
    from workbench.storage.store import Store

__all__ = [
    "admit",
    "check_batch_size",
    "check_device",
    "check_quota",
    "check_teacher_run",
    "store_bytes",
]


def admit(
    config: RunConfig,
    store: Store,
    *,
    check_device_here: bool = True,
    user: User | None = None,
) -> None:
    """Raise a one-line ``ConfigError`` if ``config`` cannot run with ``store`` on this machine.

    Checks the device (``check_device_here=False`` where the run will execute on another
    machine, e.g. a worker with its own ``--device``), the teacher run, and the batch size
    against the training set (which loads the dataset: a missing one raises
    ``DatasetUnavailableError``, as ``engine.preflight`` does).
    """
    if check_device_here:
        check_device(config.device)
    if config.role == "student" and config.teacher_run:
        check_teacher_run(config, store, user)
    check_batch_size(config)


def check_device(device: str) -> None:
    """``auto`` and ``cpu`` always run; ``cuda`` needs CUDA, ``cuda:N`` needs N < device count."""
    if device in ("auto", "cpu"):
        return
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise ConfigError(
            f"device {device}: CUDA is not available on this machine; choose auto or cpu"
        )
    index = int(device.partition(":")[2] or 0)
    if index >= count:
        valid = ", ".join(f"cuda:{i}" for i in range(count))
        raise ConfigError(
            f"device {device}: this machine has {count} CUDA device(s); choose auto, cpu, {valid}"
        )


def check_teacher_run(config: RunConfig, store: Store, user: User | None = None) -> None:
    """``config.teacher_run`` is a completed teacher of ``config.teacher`` on ``config``'s data,
    with its checkpoint in the store (and, for ``user``, not someone else's private run)."""
    from workbench.lab.access import can_see

    run_id = config.teacher_run
    hint = "list teachers with `python -m workbench runs --role teacher`"
    try:
        record = store.get_run(run_id)
        if user is not None and not can_see(user, record):
            raise KeyError(run_id)
    except KeyError:
        raise ConfigError(f"teacher_run {run_id!r} is not in the store; {hint}") from None
    if record.get("role") != "teacher":
        raise ConfigError(
            f"teacher_run {run_id} is a {record.get('role')} run, not a teacher; {hint}"
        )
    if record.get("status") != "completed":
        raise ConfigError(
            f"teacher_run {run_id} is {record.get('status')}, not completed; wait for it or {hint}"
        )
    trained = record.get("config") or {}
    asked = {"teacher": config.teacher, "dataset": config.dataset, "data_path": config.data_path}
    got = {key: trained.get(key, "") for key in asked}
    if {**got, "data_path": _folder(got["data_path"])} != {
        **asked,
        "data_path": _folder(asked["data_path"]),
    }:
        where = f" ({got['data_path']})" if got["data_path"] else ""
        raise ConfigError(
            f"teacher_run {run_id} is a {got['teacher']} on {got['dataset']}{where}; this run asks "
            f"for {config.teacher} on {config.dataset}; pick a matching teacher run"
        )
    if not store.checkpoint_path(run_id).exists():
        raise ConfigError(f"teacher_run {run_id} has no checkpoint in the store; train it again")


def _folder(path: str) -> str:
    return str(Path(path).expanduser().resolve()) if path else ""


def check_batch_size(config: RunConfig) -> None:
    """``batch_size`` at most the size of the training set (a larger one used to be cut to it
    silently, so the run did not do what its config says)."""
    data = load_dataset(config.dataset, data_path=config.data_path)
    n = len(data.train_x)
    if config.batch_size > n:
        raise ConfigError(
            f"batch_size must be at most the {n} training samples of {config.dataset}, "
            f"got {config.batch_size}"
        )


# ---------------------------------------------------------------------- per-user limits
def store_bytes(store: Store, owner: str) -> int:
    """Bytes of the run files (checkpoints, training states, manifests) ``owner``'s runs keep."""
    total = 0
    for record in store.list_runs():
        if (record.get("owner") or "") != owner:
            continue
        for path in store.run_files(record["id"]):
            with contextlib.suppress(OSError):
                total += path.stat().st_size
    return total


def check_quota(
    store: Store, user: User, configs: Sequence[RunConfig], limits: Limits | None
) -> None:
    """Refuse, with the limit's name and how to free it, ``configs`` (one run, a seed batch or a
    whole suite: a suite counts as its runs) that would take ``user`` past ``limits``."""
    if limits is None:
        return
    for config in configs:
        _check_epochs(config, limits.epochs_per_run)
    mine = [r for r in store.list_runs(status="queued") if (r.get("owner") or "") == user.name]
    if len(mine) + len(configs) > limits.queued_runs:
        raise ConfigError(
            f"queued-runs limit: you have {len(mine)} runs queued and asked for {len(configs)} "
            f"more; each user may have {limits.queued_runs} queued at once. Cancel queued runs "
            "you no longer need (Runs page, 'mine only') or wait for some to start"
        )
    used, cap = store_bytes(store, user.name), limits.store_mib * 2**20
    if used >= cap:
        raise ConfigError(
            f"store limit: your runs keep {used / 2**20:.0f} MiB in the store and each user may "
            f"keep {limits.store_mib} MiB; delete runs you no longer need (Runs page) to free space"
        )


def _check_epochs(config: RunConfig, most: int) -> None:
    trains_teacher = config.role == "student" and not config.teacher_run
    asked = [("epochs", config.epochs)]
    if trains_teacher and config.uses_teacher:
        asked.append(("teacher_epochs", config.teacher_epochs))
    for field, value in asked:
        if value > most:
            raise ConfigError(
                f"epochs limit: {field} is {value}, and a run on this instance may have at most "
                f"{most} epochs; lower {field} (an admin can raise [limits] epochs_per_run in "
                "workbench.toml)"
            )
