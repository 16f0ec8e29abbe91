"""The one submit gate: every run the CLI, the job manager, a suite or the Distill page queues
passes here, once.

``RunConfig`` checks a config on its own (types, names, bounds). What is only wrong here and now
is checked by ``admit``, before any record exists: the device (``cuda`` on a machine without
CUDA), the data and both models (``workbench.distill.model_pair.inspect_pair``: the dataset is
loaded once and each model built once), the layer pairs, the batch size against the training
set, and a given teacher run (``workbench.training.teachers.check_teacher_run``, the one rule).
``submit_runs`` then checks the user's quotas under their lock and creates the records: queued
for the executors, or claimed at once by the process that trains them itself (the CLI).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from workbench.config.run_config import RunConfig
from workbench.distill.model_pair import ModelPair, inspect_pair
from workbench.errors import ConfigError
from workbench.runs import queue as runqueue
from workbench.training.teachers import check_teacher_run

if TYPE_CHECKING:
    from workbench.lab.identity import User
    from workbench.lab.settings import UserQuotas
    from workbench.storage.store import Store

__all__ = [
    "Submission",
    "admit",
    "check_batch_size",
    "check_device",
    "check_quota",
    "store_bytes",
    "submit_runs",
]


@dataclass(frozen=True)
class Submission:
    """One run to queue: its config and what its record says besides."""

    config: RunConfig
    name: str = ""
    tags: tuple[str, ...] = ()
    suite: str | None = None
    variant: str | None = None
    private: bool = False
    search: str | None = None  # the search (``workbench.search``) whose trial this run is
    trial: int | None = None  # its trial number; None for the search's final retraining


def submit_runs(
    store: Store,
    submissions: Sequence[Submission],
    *,
    user: User,
    quotas: UserQuotas | None,
    check_device_here: bool = True,
    executor: runqueue.Executor | None = None,
) -> list[str]:
    """Admit, check ``user``'s quotas under their lock, and create one record per submission
    (all or none: a suite counts as its runs); returns the run ids in order.

    The runs of one submission (a seed batch, a suite's variants) share data, models, device and
    teacher, so the first one is admitted for all. With ``executor`` the records are created
    claimed by it (it trains them itself: no other executor ever sees them queued); otherwise
    they are queued."""
    if not submissions:
        return []
    admit(submissions[0].config, store, check_device_here=check_device_here, user=user)
    with store.lock(f"quota:{user.name}", description="queueing runs"):
        check_quota(store, user, [s.config for s in submissions], quotas)
        return [_create(store, s, user, executor) for s in submissions]


def _create(store: Store, s: Submission, user: User, executor: runqueue.Executor | None) -> str:
    fields = {
        "name": s.name,
        "tags": list(s.tags),
        "suite": s.suite,
        "variant": s.variant,
        "owner": user.name,
        "private": s.private,
        "search": s.search,
        "trial": s.trial,
    }
    if executor is not None:
        return runqueue.claim_new(store, s.config, executor, **fields)
    return store.create_run(s.config, **fields)


def admit(
    config: RunConfig,
    store: Store,
    *,
    check_device_here: bool = True,
    user: User | None = None,
) -> ModelPair:
    """Raise a one-line ``WorkbenchError`` if ``config`` cannot run with ``store`` on this
    machine; returns its two models' layers and pairs.

    Checks the device (``check_device_here=False`` where the run will execute on another
    machine, e.g. a worker with its own ``--device``), the data and models (a missing dataset
    raises ``DatasetUnavailableError``, unpairable layers ``IncompatibleModelsError``), the batch
    size against the training set, and the teacher run (for ``user``: not someone else's private
    run).
    """
    if check_device_here:
        check_device(config.device)
    pair = inspect_pair(
        config.teacher, config.student, config.dataset, config.data_path, config=config
    )
    check_batch_size(config, pair.train_size)
    if config.role == "student" and config.teacher_run:
        check_teacher_run(config, store, user)
    return pair


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


def check_batch_size(config: RunConfig, train_size: int) -> None:
    """``batch_size`` at most the ``train_size`` samples of the training set (a larger one used
    to be cut to it silently, so the run did not do what its config says)."""
    if config.batch_size > train_size:
        raise ConfigError(
            f"batch_size must be at most the {train_size} training samples of {config.dataset}, "
            f"got {config.batch_size}"
        )


# ---------------------------------------------------------------------- per-user quotas
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
    store: Store, user: User, configs: Sequence[RunConfig], quotas: UserQuotas | None
) -> None:
    """Refuse, with the limit's name and how to free it, ``configs`` (one run, a seed batch or a
    whole suite: a suite counts as its runs) that would take ``user`` past ``quotas``."""
    if quotas is None:
        return
    for config in configs:
        _check_epochs(config, quotas.epochs_per_run)
    mine = [r for r in store.list_runs(status="queued") if (r.get("owner") or "") == user.name]
    if len(mine) + len(configs) > quotas.queued_runs:
        raise ConfigError(
            f"queued-runs limit: you have {len(mine)} runs queued and asked for {len(configs)} "
            f"more; each user may have {quotas.queued_runs} queued at once. Cancel queued runs "
            "you no longer need (Runs page, 'mine only') or wait for some to start"
        )
    used, cap = store_bytes(store, user.name), quotas.store_mib * 2**20
    if used >= cap:
        raise ConfigError(
            f"store limit: your runs keep {used / 2**20:.0f} MiB in the store and each user may "
            f"keep {quotas.store_mib} MiB; delete runs you no longer need (Runs page) to free space"
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
