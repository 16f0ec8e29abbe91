"""Fault injection for the store: locks whose holder died or went silent, a full disk, a
damaged run index, lost files. Each case injects the real fault (SIGKILL, SIGSTOP, a small
tmpfs filled up, bytes written over the database) and checks that nothing was lost.

Waits are bounded by generous limits that scale with a loaded machine; nothing asserts a time.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch

from workbench.cli import build_parser, config_from_args, main
from workbench.config.run_config import LossWeights, RunConfig
from workbench.errors import CheckpointError, StoreError
from workbench.runs import queue as runqueue
from workbench.storage.repair import check_store
from workbench.storage.store import Store
from workbench.training.teachers import teacher_key

ROOT = Path(__file__).resolve().parents[1]
CONFIG = RunConfig(teacher="small_cnn", student="mlp", weights=LossWeights(1, 0, 0, 0))
BOUND_S = 120  # "bounded time": far above what any case needs, even on a loaded machine


# ------------------------------------------------------------------------------ helpers
def cli(home: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m workbench ARGS`` in a fresh process on the store at ``home``."""
    env = {**os.environ, "KDWB_HOME": str(home), "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "workbench", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0]
    return lines[0]


def spawn(home: Path, code: str) -> subprocess.Popen:
    """A Python child on the store at ``home`` that prints one line when it is ready."""
    env = {**os.environ, "KDWB_HOME": str(home), "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def fabricate(store: Store, n: int = 3) -> list[str]:
    """Finished runs made through the Store API: a completed teacher (registered), ``n``
    students with two-chunk histories (each chunk over diskcache's 32 KiB, so a value file),
    epochs, checkpoints; and a suite listing them."""
    teacher_cfg = CONFIG.teacher_config()
    teacher = store.create_run(teacher_cfg, name="teacher")
    store.save_weights(teacher, {"w": torch.ones(3)})
    key = teacher_key(teacher_cfg)  # what the engine registers a trained teacher under
    store.update_run(teacher, status="completed", metrics={"val_acc": 0.9}, teacher_key=key)
    store.set_teacher(key, teacher)
    ids = [teacher]
    for i in range(n):
        run_id = store.create_run(CONFIG.replace(seed=i), name=f"run {i}", tags=["fault"])
        rows = [
            {"step": s, "epoch": 1, "total": 1.0 / (s + 1), "note": f"run {i} step {s} " * 8}
            for s in range(300)
        ]
        store.set_history(run_id, rows)
        store.set_epochs(run_id, [{"epoch": 1, "val_acc": 0.5 + i / 10}])
        store.save_weights(run_id, {"w": torch.full((4,), float(i))})
        store.update_run(run_id, status="completed", metrics={"val_acc": 0.5 + i / 10})
        ids.append(run_id)
    store.save_suite({"id": "suite-1", "name": "s", "created_at": 1.0, "runs": ids[1:]})
    return ids


def snapshot(store: Store) -> dict[str, tuple]:
    """Every run's record, history and epochs (normalized through JSON, as manifests are)."""
    return json.loads(
        json.dumps(
            {r["id"]: [r, store.history(r["id"]), store.epochs(r["id"])] for r in store.list_runs()}
        )
    )


def value_file(store: Store, key: str) -> Path:
    """The file diskcache keeps a large value of ``key`` in (read from its table directly)."""
    con = sqlite3.connect(store.db_path)
    try:
        (filename,) = con.execute("SELECT filename FROM Cache WHERE key = ?", (key,)).fetchone()
    finally:
        con.close()
    assert filename, f"{key} is stored inline, not in a file"
    return store.home / "store" / filename


# ------------------------------------------------------------------------------ locks
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "term"])
def test_kill_9_while_a_teacher_trains_frees_its_lock(home, sig):
    """The issue's reproduction: kill -9 (or SIGTERM) of a CLI run while its teacher trains
    under the teacher lock; the next acquirer gets the lock in bounded time (taken over, or
    released by a holder that handles SIGTERM), and is told whom it waited for."""
    args = ["run", "--teacher", "small_cnn", "--student", "mlp", "--epochs", "1"]
    args += ["--teacher-epochs", "40", "--batch-size", "8"]
    fingerprint = config_from_args(build_parser().parse_args(args)).teacher_config().fingerprint()
    name = f"teacher:{fingerprint}"
    env = {**os.environ, "KDWB_HOME": str(home), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "workbench", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + BOUND_S
        holder, watcher = None, None
        while time.monotonic() < deadline and proc.poll() is None:
            if watcher is None and (home / "store" / "cache.db").exists():
                watcher = Store(home)
            holder = watcher.get(f"lock:{name}") if watcher else None
            if holder and holder["description"].startswith("run "):
                break  # the teacher run exists and trains under the lock
            time.sleep(0.2)
        assert holder and holder["pid"] == proc.pid, proc.poll()
        assert "which is training teacher small_cnn on digits" in holder["description"]
        teacher_run = holder["description"].split()[1].rstrip(",")  # "run ID, which is ..."
        proc.send_signal(sig)
        proc.wait(BOUND_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    store = Store(home)
    messages: list[str] = []
    got = threading.Event()

    def take() -> None:
        with store.lock(name, on_wait=messages.append):
            got.set()

    thread = threading.Thread(target=take, daemon=True)
    thread.start()
    thread.join(BOUND_S)
    assert got.is_set(), "the lock of the killed holder was not taken over"
    if sig == signal.SIGKILL or messages:  # a SIGTERM handler may release it cleanly instead
        assert len(messages) == 1 and "took over lock" in messages[0]
        assert "its process is gone" in messages[0] and teacher_run in messages[0]
    assert store.get(f"lock:{name}") is None  # released again
    runqueue.recover(store)  # what every executor does when it starts or polls
    # not lost: queued again to resume from its checkpoint, or left for a person to resume
    assert store.get_run(teacher_run)["status"] in ("queued", "interrupted", "cancelled")


HOLDER = """
    import select, sys
    from workbench.storage.store import Store
    store = Store()
    with store.lock("job", description="run R1, which is training teacher resnet18",
                    heartbeat=0.2) as held:
        print("held", flush=True)
        while not held.lost:
            ready, _, _ = select.select([sys.stdin], [], [], 0.05)
            if ready and sys.stdin.readline() == "release\\n":
                break
        print("lost" if held.lost else "released", flush=True)
"""


def read_line(proc: subprocess.Popen, timeout: float = BOUND_S) -> str:
    """The child's next line of output ('' when none comes within ``timeout``)."""
    box: list[str] = []
    reader = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return box[0] if box else ""


def test_a_silent_holder_is_taken_over_and_learns_it(home):
    """SIGSTOP freezes the holder (alive, but its heartbeat stops): the waiter takes the lock
    over after ``stale_after``; resumed, the holder's heartbeat finds the lock lost."""
    holder = spawn(home, HOLDER)
    try:
        assert read_line(holder) == "held\n", holder.stderr.read()
        holder.send_signal(signal.SIGSTOP)
        store = Store(home)
        messages: list[str] = []
        with store.lock("job", on_wait=messages.append, stale_after=1.0, report_after=0.2):
            assert store.get("lock:job")["pid"] == os.getpid()
            holder.send_signal(signal.SIGCONT)  # its next heartbeat finds the lock lost
            assert read_line(holder) == "lost\n"
        took = [m for m in messages if "took over" in m]
        assert len(took) == 1 and "heartbeat stopped" in took[0]
        assert "run R1, which is training teacher resnet18" in took[0]
    finally:
        holder.send_signal(signal.SIGCONT)
        holder.kill()
        holder.wait()


def test_a_long_wait_is_reported_and_logged(home, caplog):
    holder = spawn(home, HOLDER)
    try:
        assert read_line(holder) == "held\n", holder.stderr.read()
        store = Store(home)
        messages: list[str] = []
        reported = threading.Event()

        def on_wait(message: str) -> None:
            messages.append(message)
            reported.set()

        done = threading.Event()

        def wait() -> None:
            with store.lock("job", on_wait=on_wait, report_after=0.2, poll=0.05):
                done.set()

        with caplog.at_level("INFO", logger="kdwb.store"):
            thread = threading.Thread(target=wait, daemon=True)
            thread.start()
            assert reported.wait(BOUND_S)
            assert not done.is_set()  # a live, beating holder is waited for
            holder.stdin.write("release\n")
            holder.stdin.flush()
            assert read_line(holder) == "released\n"
            thread.join(BOUND_S)
        assert done.is_set()
        assert messages and all(m.startswith("waiting ") for m in messages)
        assert f"run R1, which is training teacher resnet18 (pid {holder.pid}" in messages[0]
        assert any("waiting" in r.getMessage() for r in caplog.records)
    finally:
        holder.kill()
        holder.wait()


def test_an_old_format_lock_of_a_dead_process_is_taken_over(store):
    """A lock left by the previous implementation (a token with a 6-hour expiry) by a process
    that is gone no longer strands the next run."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket

    store.set("lock:teacher:x", f"{socket.gethostname()}:{dead.pid}:1:abc")
    messages: list[str] = []
    with store.lock("teacher:x", on_wait=messages.append):
        pass
    assert len(messages) == 1 and "its process is gone" in messages[0]


def test_a_lock_is_not_reentrant_and_says_so(store):
    with (
        store.lock("x", description="outer"),
        pytest.raises(StoreError, match="already held by this thread"),
        store.lock("x"),
    ):
        pass


# ------------------------------------------------------------------------------ full disk
@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs (root and mount permission needed: skipped without them)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("the full-disk cases mount a small tmpfs, which needs root")
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {proc.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path, leave: int = 0) -> Path:
    """Fill ``disk`` until ``leave`` bytes are free; returns the filler file."""
    filler = disk / "filler"
    free = shutil.disk_usage(disk).free - leave
    with open(filler, "wb") as f:
        try:
            while free > 0:
                f.write(b"\0" * min(free, 1 << 16))
                free -= 1 << 16
        except OSError:
            pass
    return filler


def test_full_disk_clear_error_and_store_readable(small_disk, monkeypatch):
    home = small_disk / "home"
    monkeypatch.setenv("KDWB_HOME", str(home))
    store = Store(home)
    ids = fabricate(store, n=2)
    before = snapshot(store)
    store.close()
    filler = fill(small_disk)

    store = Store(home)  # the shared-memory file cannot grow: opens read-only
    assert store.read_only is not None
    assert snapshot(store) == before  # everything readable
    for write in (
        lambda: store.create_run(CONFIG),
        lambda: store.update_run(ids[1], name="x"),
        lambda: store.save_weights(ids[1], {"w": torch.zeros(10_000)}),
    ):
        with pytest.raises(StoreError) as caught:
            write()
        message = str(caught.value)
        assert "\n" not in message and f"the disk holding the run store {home} is full" in message
    assert not [p for p in (home / "checkpoints").iterdir() if ".tmp" in p.name]  # no debris
    store.close()

    runs = cli(home, "runs")  # read-only commands still work
    assert runs.returncode == 0 and all(i in runs.stdout for i in ids), runs.stderr
    assert "Traceback" not in runs.stderr
    show = cli(home, "show", ids[1])
    assert show.returncode == 0 and "epoch 1: val acc 0.5000" in show.stdout, show.stderr
    run = cli(home, "run", "--teacher", "small_cnn", "--student", "mlp", "--epochs", "1")
    assert_one_line_error(run, "is full", str(home))

    filler.unlink()  # space again: the store is whole and writable
    store = Store(home)
    assert store.read_only is None and snapshot(store) == before
    store.update_run(ids[1], name="after")
    assert check_store(home).ok


def test_full_disk_while_writing_with_the_store_open(small_disk):
    """The disk fills while a process has the store open (the usual case mid-run)."""
    home = small_disk / "home"
    store = Store(home)
    ids = fabricate(store, n=1)
    before = snapshot(store)
    filler = fill(small_disk)
    rows = before[ids[1]][1]
    more = rows + [{"step": s, "note": f"{s}" * 300} for s in range(300, 512)]
    with pytest.raises(StoreError, match="is full"):
        store.save_history_tail(ids[1], more)  # the engine's write of a growing history
    with pytest.raises(StoreError, match="is full"):
        store.write_manifest(ids[1])
    filler.unlink()
    store.close()
    after = Store(home)
    assert snapshot(after) == before  # the failed writes lost nothing
    assert json.loads(after.manifest_path(ids[1]).read_text())["record"]["id"] == ids[1]


def test_full_disk_while_building_the_teacher_cache_runs_the_teacher_live(small_disk):
    from workbench.data.datasets import load_dataset
    from workbench.models.registry import build_model
    from workbench.training.probe import teacher_probe_features
    from workbench.training.teacher_cache import LiveTeacher, cache_root, teacher_source

    home = small_disk / "home"
    store = Store(home)
    digits = load_dataset("digits")
    torch.manual_seed(0)
    teacher = build_model("small_cnn", digits.input_shape, digits.num_classes).eval()
    fill(small_disk, leave=256 * 1024)  # room for the index's writes, not for the outputs
    source = teacher_source(
        CONFIG, teacher, None, ["block2", "block3"], digits.train_x, store, torch.device("cpu")
    )
    assert isinstance(source, LiveTeacher)
    assert "the disk holding the teacher cache" in source.note and "is full" in source.note
    assert not [p for p in cache_root(store).iterdir() if p.name.startswith(".tmp")]
    # the probe's teacher features are an entry of the same cache: the same fallback
    x = digits.val_x[:256]
    features, how = teacher_probe_features(teacher, ["block2"], x, store=store)
    assert how == "live: the disk holding the teacher cache is full"
    with torch.inference_mode():
        assert torch.equal(features[0], teacher_probe_features(teacher, ["block2"], x)[0][0])
    assert store.list_runs() == []  # the store still answers


# ------------------------------------------------------------------------------ damaged index
def damage(db: Path, how: str) -> None:
    size = db.stat().st_size
    if how == "truncated":
        with open(db, "r+b") as f:
            f.truncate(size // 2)
    elif how == "overwritten":
        with open(db, "r+b") as f:
            f.write(os.urandom(size))
    elif how == "zero-byte":
        db.write_bytes(b"")
    elif how == "deleted":
        db.unlink()


@pytest.mark.parametrize("how", ["truncated", "overwritten", "zero-byte", "deleted"])
def test_damaged_index_clear_message_then_repair_restores_every_run(home, how, capsys):
    store = Store(home)
    ids = fabricate(store)
    before = snapshot(store)
    store.close()
    damage(home / "store" / "cache.db", how)

    with pytest.raises(StoreError) as caught:
        Store(home)
    message = str(caught.value)
    assert "\n" not in message and str(home / "store" / "cache.db") in message
    assert "python -m workbench store repair" in message
    assert main(["runs"]) == 2 and main(["show", ids[1]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line == f"error: {message}" for line in err)

    report = check_store(home)
    assert report.index != "ok" and report.manifests == len(ids)
    assert [f.kind for f in report.findings] == ["index"]

    assert main(["store", "repair"]) == 0
    out = capsys.readouterr().out
    assert f"restored {len(ids)} runs and 1 suites" in out and "no damage found" in out
    (aside,) = home.glob("store.damaged-*")  # moved aside with its value files, not deleted
    assert (aside / "cache.db").exists() == (how != "deleted")
    repaired = Store(home)
    assert snapshot(repaired) == before  # every run: record, history, epochs
    assert repaired.find_teacher(teacher_key(CONFIG.teacher_config())) == ids[0]
    assert repaired.get_suite("suite-1")["runs"] == ids[1:]
    assert repaired.load_weights(ids[2])["w"].tolist() == [1.0] * 4


def test_damaged_index_through_the_command_line(home):
    """The same, each command in its own process: one line, exit code 2, no traceback."""
    store = Store(home)
    ids = fabricate(store, n=1)
    before = snapshot(store)
    store.close()
    damage(home / "store" / "cache.db", "overwritten")
    assert_one_line_error(cli(home, "runs"), "is damaged", "store repair")
    assert_one_line_error(cli(home, "show", ids[1]), "is damaged", "store repair")
    check = cli(home, "store", "check")
    assert check.returncode == 1 and "Traceback" not in check.stderr
    assert "index damaged" in check.stdout and "store repair" in check.stdout
    repair = cli(home, "store", "repair")
    assert repair.returncode == 0 and "no damage found" in repair.stdout, repair.stderr
    runs = cli(home, "runs")
    assert runs.returncode == 0 and all(i in runs.stdout for i in ids)
    assert snapshot(Store(home)) == before


def test_store_commands_on_an_unusable_home(tmp_path):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    assert_one_line_error(cli(not_a_folder, "store", "repair"), str(not_a_folder))
    assert_one_line_error(cli(not_a_folder, "runs"), str(not_a_folder))


def test_empty_store_is_not_damage(home):
    assert check_store(home).ok
    assert Store(home).list_runs() == []


# ------------------------------------------------------------------------------ lost files
def test_deleted_probe_shows_as_missing(store, capsys):
    ids = fabricate(store, n=2)
    probed, never = ids[1], ids[2]
    import numpy as np

    store.save_probe(probed, {"cka": np.arange(10_000, dtype=np.float64)})  # a value file
    assert store.probe_state(probed) == "saved" and store.probe_state(never) == "none"
    value_file(store, f"probe:{probed}").unlink()
    assert store.probe_state(probed) == "missing" and store.probe(probed) is None
    assert store.probe_state(never) == "none"
    report = check_store(store.home)
    assert [(f.kind, f.run_id) for f in report.findings] == [("probe", probed)]
    assert main(["show", probed]) == 0
    assert "probe: missing" in capsys.readouterr().out
    assert main(["show", never]) == 0
    assert "probe" not in capsys.readouterr().out


@pytest.mark.parametrize("manifest_has_probe", [True, False])
def test_a_probe_lost_with_the_index_comes_back_from_its_manifest(home, capsys, manifest_has_probe):
    """The manifest holds the probe, so repair gives it back (issue 18 item 1); a manifest
    written before it did (no "probe" key) leaves the probe reported missing, as before."""
    import numpy as np

    store = Store(home)
    ids = fabricate(store, n=1)
    store.save_probe(ids[1], {"cka": np.zeros((3, 2), dtype=np.float32), "grams": []})
    store.update_run(ids[1], status="completed")  # the engine's final update: the manifest
    store.close()
    if not manifest_has_probe:
        path = home / "checkpoints" / f"{ids[1]}.manifest.json"
        path.write_text(
            json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k != "probe"})
        )
    damage(home / "store" / "cache.db", "overwritten")
    assert main(["store", "repair"]) == (0 if manifest_has_probe else 1)
    out = capsys.readouterr().out
    repaired = Store(home)
    if manifest_has_probe:
        assert repaired.probe_state(ids[1]) == "saved"
        assert np.array_equal(repaired.probe(ids[1])["cka"], np.zeros((3, 2), dtype=np.float32))
    else:
        assert f"the probe of run {ids[1]} was saved but is missing" in out
        assert repaired.probe_state(ids[1]) == "missing"


def test_deleted_history_file_is_reported_and_restored(store):
    ids = fabricate(store, n=1)
    rows = store.history(ids[1])
    value_file(store, f"history:{ids[1]}:0").unlink()
    with pytest.raises(StoreError, match=f"the metric history of run {ids[1]} is damaged"):
        store.history(ids[1])
    report = check_store(store.home)
    assert [(f.kind, f.repairable) for f in report.findings] == [("history", True)]
    assert main(["store", "repair"]) == 0
    assert store.history(ids[1]) == json.loads(json.dumps(rows))


def test_truncated_store_checkpoint_is_not_advised_as_an_upload(store):
    ids = fabricate(store, n=1)
    path = store.weights_path(ids[1])
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError) as caught:
        store.load_weights(ids[1])
    message = str(caught.value)
    assert ids[1] in message and "truncated or overwritten" in message
    assert "torch.save" not in message
    report = check_store(store.home)
    assert [(f.kind, f.run_id) for f in report.findings] == [("checkpoint", ids[1])]


def test_orphaned_files_are_reported(store):
    ids = fabricate(store, n=1)
    (store.home / "checkpoints" / "20990101-000000-abcdef.pt").write_bytes(b"x")
    manifest = store.manifest_path(ids[1]).read_text()
    store.delete_run(ids[1])
    assert not any(p.exists() for p in store.run_files(ids[1]))  # deleting leaves nothing
    store.manifest_path(ids[1]).write_text(manifest)  # a manifest whose run is not indexed
    kinds = {(f.kind, f.run_id, f.repairable) for f in check_store(store.home).findings}
    assert kinds == {
        ("orphan", "20990101-000000-abcdef", False),
        ("orphan", ids[1], True),
    }
    assert main(["store", "repair"]) == 1  # the unrestorable orphan stays reported
    assert store.get_run(ids[1])["status"] == "completed"


def test_manifest_is_written_atomically_and_follows_the_run(store):
    ids = fabricate(store, n=1)
    manifest = store.read_manifest(ids[1])
    assert manifest["record"]["status"] == "completed"
    assert len(manifest["history"]) == 300 and manifest["epochs"] == store.epochs(ids[1])
    run_id = store.create_run(CONFIG)
    assert store.read_manifest(run_id)["record"]["status"] == "queued"  # from its creation
    leftovers = [p for p in (store.home / "checkpoints").iterdir() if ".tmp" in p.name]
    assert leftovers == []


def test_a_wait_without_a_callback_is_a_warning(store, caplog):
    """The CLI passes no callback: the wait is then a WARNING, which Python prints on stderr."""
    release, done = threading.Event(), threading.Event()

    def hold() -> None:
        with store.lock("job", description="run R2, which is training teacher resnet18"):
            release.wait(BOUND_S)

    def wait() -> None:
        with store.lock("job", report_after=0.1, poll=0.05):
            done.set()

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    while store.get("lock:job") is None:
        time.sleep(0.01)
    with caplog.at_level("WARNING", logger="kdwb.store"):
        waiter = threading.Thread(target=wait, daemon=True)
        waiter.start()
        deadline = time.monotonic() + BOUND_S
        while not caplog.records and time.monotonic() < deadline:
            time.sleep(0.05)
        release.set()
        waiter.join(BOUND_S)
    assert done.is_set()
    (record,) = [r for r in caplog.records if r.getMessage().startswith("waiting")]
    assert record.levelname == "WARNING" and "run R2, which is training" in record.getMessage()


def test_a_real_run_survives_a_zero_byte_index(home, capsys):
    """Runs made by the engine (a teacher, then a student with a probe): the manifests its
    updates write bring back records, histories and epochs, read as before."""
    args = ["run", "--teacher", "small_cnn", "--student", "mlp", "--epochs", "1"]
    assert main([*args, "--teacher-epochs", "1", "--json"]) == 0
    student = json.loads(capsys.readouterr().out)["run_id"]
    store = Store(home)
    before = snapshot(store)
    configs = {r["id"]: RunConfig.from_dict(r["config"]) for r in store.list_runs()}
    assert len(configs) == 2 and store.probe_state(student) == "saved"
    store.close()
    damage(home / "store" / "cache.db", "zero-byte")
    assert main(["runs"]) == 2
    assert "is empty (0 bytes)" in capsys.readouterr().err
    assert main(["store", "repair"]) == 0  # restored, the probe with them (from the manifest)
    capsys.readouterr()
    repaired = Store(home)
    assert snapshot(repaired) == before
    for run_id, config in configs.items():  # the same configs (and so fingerprints) as before
        assert RunConfig.from_dict(repaired.get_run(run_id)["config"]) == config
    teacher = repaired.get_run(student)["teacher_run"]
    assert repaired.find_teacher(teacher_key(configs[teacher])) == teacher
    assert repaired.probe_state(student) == "saved" and repaired.probe(student)["cka"] is not None
    assert main(["show", student]) == 0 and "probe: missing" not in capsys.readouterr().out


def test_a_lock_won_after_a_long_wait_is_not_taken_for_silent(store):
    """The winner of a long wait starts with a fresh heartbeat: a third acquirer waits for it
    instead of taking the lock over (its heartbeat time must not be that of its first try)."""
    order: list[str] = []
    messages: list[str] = []
    b_holds, b_go = threading.Event(), threading.Event()

    def a() -> None:
        with store.lock("j", heartbeat=0.5):
            order.append("a")
            time.sleep(3.0)  # longer than the 2 s a silent holder of B's heartbeat may last

    def b() -> None:
        with store.lock("j", heartbeat=0.5, poll=0.05):
            order.append("b")
            b_holds.set()
            b_go.wait(BOUND_S)

    def c() -> None:
        with store.lock("j", stale_after=0.5, on_wait=messages.append, report_after=0.2):
            order.append("c")

    ta = threading.Thread(target=a, daemon=True)
    ta.start()
    while store.get("lock:j") is None:
        time.sleep(0.01)
    tb = threading.Thread(target=b, daemon=True)
    tb.start()
    assert b_holds.wait(BOUND_S)
    tc = threading.Thread(target=c, daemon=True)
    tc.start()
    time.sleep(0.5)  # give C time to (wrongly) take the lock over
    b_go.set()
    for t in (ta, tb, tc):
        t.join(BOUND_S)
    assert order == ["a", "b", "c"]
    assert not [m for m in messages if "took over" in m]


def test_repair_gives_back_privacy_names_tags_and_probes_as_they_were(home, capsys):
    """issue 18 item 1: manifests were written on status changes only, and held no probe, so a
    repaired index showed alice's private runs to everyone, without their names and tags, and
    Compare had no CKA or Gram data (`store repair` exited 1)."""
    import numpy as np

    from workbench.lab.identity import User
    from workbench.runs import permitted as actions
    from workbench.training.loop import run

    alice = User("alice")
    config = RunConfig(
        teacher="small_cnn", student="mlp", epochs=1, teacher_epochs=1, batch_size=128, device="cpu"
    )
    store = Store(home)
    ids = [
        run(
            config.replace(seed=s),
            store,
            run_id=store.create_run(config.replace(seed=s), owner="alice"),
        )["id"]
        for s in (0, 1)
    ]
    for i, run_id in enumerate(ids):
        actions.set_private(store, run_id, alice, True)
        actions.rename(store, run_id, alice, name=f"mine {i}", tags=["secret", f"t{i}"])
    before = {i: (store.get_run(i), store.probe(i)) for i in ids}
    assert all(probe is not None and probe["cka"] is not None for _, probe in before.values())
    store.close()
    for db in (home / "store").glob("cache.db*"):
        db.unlink()

    assert main(["store", "repair"]) == 0
    capsys.readouterr()
    repaired = Store(home)
    for run_id, (record, probe) in before.items():
        assert repaired.get_run(run_id) == record  # private, named and tagged as it was
        again = repaired.probe(run_id)
        assert repaired.probe_state(run_id) == "saved"
        assert again.keys() == probe.keys()
        assert (
            np.array_equal(again["cka"], probe["cka"]) and again["cka"].dtype == probe["cka"].dtype
        )
        for g, h in zip(again["grams"], probe["grams"], strict=True):
            assert np.array_equal(g["student"], h["student"]) and g["pair"] == h["pair"]
        assert np.array_equal(again["gram_labels"], probe["gram_labels"])
        assert again["test_correct"] == probe["test_correct"]
    bob = User("bob")
    assert [r["id"] for r in actions.list_runs(repaired, bob)] == [
        r["id"] for r in repaired.list_runs() if r["role"] == "teacher"
    ]  # bob sees the teacher, not alice's private runs
    assert check_store(home).ok
