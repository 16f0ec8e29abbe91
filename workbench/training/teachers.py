"""Teachers, all of it: the one rule for which teacher run a student may use, finding a trained
teacher of a recipe, training one (once, even when several processes ask), loading it frozen,
and importing or uploading one.

A teacher is a completed run of role ``teacher``. Students of the same recipe
(``RunConfig.teacher_config()``) share it: the store finds it under ``teacher_key(recipe)``
(its fingerprint and the data split version). ``check_teacher_run`` is the only check of a
given ``teacher_run``: the submit gate calls it before a record exists, and the loop calls it
again when the run starts.
"""

from __future__ import annotations

import functools
import io
import os
import tempfile
import time
import zipfile
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from torch import nn

from workbench.config.run_config import RunConfig
from workbench.data.datasets import SPLIT_VERSION, DataBundle, load_dataset
from workbench.errors import CheckpointError, ConfigError, WorkbenchError, quoted
from workbench.lab.access import can_see
from workbench.lab.identity import User
from workbench.lab.settings import current as current_settings
from workbench.models.registry import build_model
from workbench.runs import queue as runqueue
from workbench.storage.store import Store
from workbench.storage.weights import load_weights_file
from workbench.training import teacher_pool as warm
from workbench.training.events import OnStep, StopFlag, Stopped
from workbench.training.steps import evaluate

__all__ = [
    "check_teacher_run",
    "check_upload_size",
    "ensure_teacher",
    "find_teacher",
    "may_use",
    "remember_teacher",
    "import_teacher",
    "import_uploaded_teacher",
    "load_teacher",
    "teacher_for_run",
    "teacher_key",
    "teacher_run_id",
]

Train = Callable[..., dict[str, Any]]  # the loop's ``run``


# ---------------------------------------------------------------------------- which teacher
def _owner(name: str) -> User:
    """The owner of a run as a user: an admin of the instance when its settings say so."""
    return User(name, admin=name in current_settings().admins)


def check_teacher_run(config: RunConfig, store: Store, user: User | None = None) -> None:
    """``config.teacher_run`` is a completed teacher of ``config.teacher`` on ``config``'s data,
    with its checkpoint in the store (and, for ``user``, not someone else's private run)."""
    run_id = config.teacher_run
    hint = "list teachers with `python -m workbench runs --role teacher`"
    try:
        record = store.get_run(run_id)
        if user is not None and not can_see(user, record):
            raise KeyError(run_id)
    except KeyError:
        raise ConfigError(f"teacher_run {quoted(run_id)} is not in the store; {hint}") from None
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
    if not store.weights_path(run_id).exists():
        raise ConfigError(f"teacher_run {run_id} has no checkpoint in the store; train it again")


def _folder(path: str) -> str:
    return str(Path(path).expanduser().resolve()) if path else ""


def teacher_key(teacher_config: RunConfig) -> str:
    """The key under which the store finds the trained teacher of a recipe: its fingerprint
    and the version of the data splits (a teacher trained on older splits may have seen
    today's test images, so it is not reused)."""
    return f"{teacher_config.fingerprint()}:split{SPLIT_VERSION}"


def may_use(record: dict[str, Any], owner: str) -> bool:
    """Whether a run of ``owner`` may use the teacher ``record`` without naming it: a public
    teacher, or the owner's own (another user's private teacher is never used silently)."""
    return not record.get("private") or (record.get("owner") or "") == owner


def _owned_key(key: str, owner: str) -> str:
    return f"{key}:owner:{owner}"


def find_teacher(store: Store, recipe: RunConfig, owner: str = "") -> str | None:
    """The completed teacher run of ``recipe`` (a ``teacher_config()``) that a run of ``owner``
    may use: the owner's own first, else the shared one unless it is someone else's private
    run; None when there is none."""
    key = teacher_key(recipe)
    for candidate in (_owned_key(key, owner), key):
        run_id = store.find_teacher(candidate)
        if run_id and may_use(store.get_run(run_id), owner):
            return run_id
    return None


def remember_teacher(store: Store, recipe: RunConfig, run_id: str, owner: str) -> None:
    """Register the completed teacher ``run_id`` of ``recipe``: as ``owner``'s, and as the shared
    one when there is no shared one everybody may use."""
    key = teacher_key(recipe)
    store.set_teacher(_owned_key(key, owner), run_id)
    shared = store.find_teacher(key)
    if shared is None or store.get_run(shared).get("private"):
        store.set_teacher(key, run_id)


def _unfinished_teacher(store: Store, fingerprint: str, owner: str) -> str | None:
    """A teacher run of this recipe that a process left unfinished (interrupted, or still
    marked running by a dead process) and ``owner`` may use, claimed for resuming; None when
    there is none."""
    runqueue.recover(store, auto_resume=False)
    for record in store.list_runs(role="teacher", status=("interrupted", "queued")):
        if record["fingerprint"] != fingerprint or not may_use(record, owner):
            continue
        claimed = runqueue.claim(
            store, record["id"], runqueue.Executor("teacher"), statuses=("interrupted", "queued")
        )
        if claimed is not None:
            return record["id"]
    return None


# ---------------------------------------------------------------------------- train, load
def ensure_teacher(
    config: RunConfig,
    store: Store,
    on_step: OnStep | None = None,
    stop: StopFlag | None = None,
    *,
    owner: str = "",
    train: Train,
) -> str:
    """The id of a trained teacher for ``config``: ``config.teacher_run`` (if
    ``check_teacher_run`` accepts it), one found in the store for the recipe
    ``config.teacher_config()``, or one trained now with ``train`` (the loop's ``run``; once,
    even when several threads or processes ask at the same time), owned by ``owner`` (whose run
    needed it)."""
    if config.teacher_run:  # checked again: it may have changed since it was queued
        check_teacher_run(config, store, _owner(owner))
        return config.teacher_run
    teacher_cfg = config.teacher_config()
    fingerprint = teacher_cfg.fingerprint()
    what = f"training teacher {config.teacher} on {config.dataset}"
    with store.lock(
        f"teacher:{fingerprint}",
        description=f"a run {what}",
        on_wait=lambda message: (
            on_step({"run_id": None, "role": "teacher", "phase": "wait", "message": message})
            if on_step
            else None
        ),
    ) as held:
        found = find_teacher(store, teacher_cfg, owner)
        if found:
            return found
        teacher_id = _unfinished_teacher(store, fingerprint, owner) or runqueue.claim_new(
            store, teacher_cfg, runqueue.Executor("teacher"), owner=owner
        )  # an unfinished one is a run a dead process left: it continues from its checkpoint
        held.describe(f"run {teacher_id}, which is {what}")
        record = train(teacher_cfg, store, on_step=on_step, stop=stop, run_id=teacher_id)
    if record["status"] == "cancelled":
        raise Stopped
    if record["status"] != "completed":
        raise WorkbenchError(
            f"training the teacher {config.teacher} {record['status']}: {record['error'] or ''}".strip()
        )
    return record["id"]


def load_teacher(
    teacher_run: str, store: Store, data: DataBundle, device: torch.device
) -> nn.Module:
    """Build the teacher architecture of ``teacher_run`` and load its checkpoint (frozen, eval)."""
    try:
        record = store.get_run(teacher_run)
    except KeyError as exc:
        raise ConfigError(str(exc.args[0])) from None
    cfg = record["config"]
    state = store.load_weights(teacher_run)
    # Built on the meta device, the architecture skips its random initialisation (0.8 s for a
    # resnet34); assign=True then adopts the checkpoint's tensors as the parameters.
    with torch.device("meta"):
        model = build_model(cfg["teacher"], data.input_shape, data.num_classes)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"teacher checkpoint {teacher_run} does not fit {cfg['teacher']}: {exc}"
        ) from None
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):  # a non-persistent buffer
        model = build_model(cfg["teacher"], data.input_shape, data.num_classes)
        model.load_state_dict(state)
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def teacher_for_run(
    config: RunConfig,
    store: Store,
    run_id: str,
    data: DataBundle,
    device: torch.device,
    on_step: OnStep,
    stop: StopFlag | None,
    leases: ExitStack | None = None,
    *,
    train: Train,
) -> tuple[nn.Module | None, str | None]:
    """The frozen teacher a run trains or is probed against, and its run id (or None, None):
    the one ``teacher_run_id`` names, loaded (lent warm from the pool with ``leases``)."""
    teacher_id = teacher_run_id(config, store, run_id, on_step, stop, train=train)
    if not teacher_id:
        return None, None
    key = _warm_teacher_key(teacher_id, store, data, device) if leases is not None else None
    if key is None:  # no pool to lend from, or a checkpoint it cannot key
        return load_teacher(teacher_id, store, data, device), teacher_id
    load = functools.partial(load_teacher, teacher_id, store, data, device)
    return leases.enter_context(warm.lend_teacher(key, load)), teacher_id


def teacher_run_id(
    config: RunConfig,
    store: Store,
    run_id: str,
    on_step: OnStep | None,
    stop: StopFlag | None,
    *,
    train: Train,
) -> str | None:
    """The id of the teacher run ``run_id`` trains or is probed against (None: none). A resumed
    run keeps the teacher it started with; a distillation run without one gets one
    (``ensure_teacher``: found, or trained now with ``train``); a scratch student is probed
    against a teacher only if one exists already. The cluster executor asks this on the head
    before it ships a run, so a node never trains a teacher on its own."""
    record = store.get_run(run_id)
    owner = record.get("owner") or ""
    teacher_id = record.get("teacher_run") if config.role == "student" else None
    if teacher_id and not store.has_run(teacher_id):
        teacher_id = None
    if not teacher_id and config.uses_teacher:
        teacher_id = ensure_teacher(
            config, store, on_step=on_step, stop=stop, owner=owner, train=train
        )
    elif not teacher_id and config.role == "student":
        teacher_id = config.teacher_run or find_teacher(store, config.teacher_config(), owner)
    return teacher_id or None


def _warm_teacher_key(
    teacher_id: str, store: Store, data: DataBundle, device: torch.device
) -> tuple | None:
    """What a loaded teacher depends on: the store, the run, its checkpoint file (size and
    mtime: a replaced file is another teacher), the device and the data's input shape and
    classes. None when the checkpoint cannot be seen (``load_teacher`` says why)."""
    try:
        stat = store.weights_path(teacher_id).stat()
    except OSError:
        return None
    where = (str(store.home), teacher_id, stat.st_size, stat.st_mtime_ns, str(device))
    return (*where, tuple(data.input_shape), data.num_classes)


# ---------------------------------------------------------------------------- import, upload
def import_teacher(
    store: Store,
    path: str,
    *,
    teacher: str,
    dataset: str,
    data_path: str = "",
    name: str = "",
    owner: str = "",
) -> str:
    """Register an uploaded teacher state dict as a completed teacher run; returns its id.

    The file is loaded with ``weights_only=True`` and must load strictly into ``teacher`` built
    for ``dataset``; its validation accuracy is measured and stored.
    """
    config = RunConfig(
        role="teacher",
        dataset=dataset,
        data_path=data_path,
        teacher=teacher,
        student=teacher,
        weights={"label": 1.0, "response": 0.0, "feature": 0.0, "relation": 0.0},
    )
    data = load_dataset(dataset, data_path=data_path)
    state = load_weights_file(path)
    model = build_model(teacher, data.input_shape, data.num_classes)
    missing, unexpected = _key_mismatch(model, state)
    if missing or unexpected:
        raise CheckpointError(
            f"this checkpoint is not a {teacher} for {dataset} ({data.input_shape}, {data.num_classes} classes): "
            f"{len(missing)} missing keys (e.g. {', '.join(missing[:3]) or '-'}), "
            f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3]) or '-'}). "
            "Pick the architecture it was saved from, or save model.state_dict() of that model."
        )
    _check_finite(state)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).split("\n\t")[1] if "\n\t" in str(exc) else str(exc)
        raise CheckpointError(
            f"this checkpoint does not fit {teacher} for {dataset}: {first.strip()}"
        ) from None
    val_acc = float((evaluate(model, data.val_x) == data.val_y).float().mean())
    test_acc = float((evaluate(model, data.test_x) == data.test_y).float().mean())
    run_id = store.create_run(
        config,
        name=name or f"uploaded {teacher}",
        tags=["uploaded"],
        status="completed",
        owner=owner,
    )
    store.save_weights(run_id, model.state_dict())
    now = time.time()
    store.update_run(
        run_id,
        started_at=now,
        finished_at=now,
        seconds=0.0,
        teacher_source="upload",
        metrics={"val_acc": val_acc, "test_acc": test_acc},
    )
    return run_id


def _check_finite(state: dict[str, torch.Tensor]) -> None:
    """A teacher with a NaN or infinite weight cannot teach: its students would only diverge."""
    broken = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if broken:
        raise CheckpointError(
            f"this checkpoint holds NaN or infinite weights ({', '.join(broken[:3])}"
            f"{', ...' if len(broken) > 3 else ''}), so it cannot teach; export a trained, "
            "finite model"
        )


def _key_mismatch(model: nn.Module, state: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    expected = set(model.state_dict())
    return sorted(expected - set(state)), sorted(set(state) - expected)


def check_upload_size(content: bytes, filename: str) -> None:
    """Refuse an upload over ``[uploads] max_mib`` before anything is written: Streamlit's own
    cap (``server.maxUploadSize``) guards the app only, and the disk is shared by everyone."""
    cap = current_settings().upload_max_bytes
    unpacked = _unpacked_bytes(content)
    for size, what in ((len(content), "is"), (unpacked, "unpacks to")):
        if size > cap:
            raise CheckpointError(
                f"{Path(filename).name!r} {what} {size / 2**20:.1f} MiB, over this instance's "
                f"upload limit of {cap // 2**20} MiB; an administrator can raise [uploads] "
                "max_mib in workbench.toml"
            )


def _unpacked_bytes(content: bytes) -> int:
    """What a checkpoint takes once read: the sum of its members' uncompressed sizes for a zip
    (torch.save's format: a compressed member, a 'decompression bomb', would otherwise be
    inflated in memory by torch.load before any check), the bytes themselves otherwise."""
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            return sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, ValueError, OSError):
        return len(content)


def import_uploaded_teacher(
    store: Store,
    content: bytes,
    filename: str,
    *,
    teacher: str,
    dataset: str,
    data_path: str = "",
    owner: str = "",
) -> str:
    """Register uploaded checkpoint bytes as a completed teacher run (``import_teacher``,
    which loads with ``weights_only=True``); returns the run id or raises ``CheckpointError``."""
    check_upload_size(content, filename)
    fd, tmp = tempfile.mkstemp(suffix=Path(filename).suffix or ".pt")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(content)
        return import_teacher(
            store,
            tmp,
            teacher=teacher,
            dataset=dataset,
            data_path=data_path,
            name=f"uploaded {Path(filename).name}",
            owner=owner,
        )
    finally:
        Path(tmp).unlink(missing_ok=True)
