from __future__ import annotations

import multiprocessing as mp
import pickle
import threading

import pytest
import torch

from workbench.config.run_config import LossWeights, RunConfig
from workbench.errors import CheckpointError
from workbench.storage.store import Store
from workbench.storage.weights import load_weights_file

CONFIG = RunConfig(weights=LossWeights(1, 0, 0, 0))


def test_create_list_update_delete(store):
    a = store.create_run(CONFIG, name="a", tags=["x"])
    b = store.create_run(CONFIG.replace(seed=1), name="b")
    assert [r["id"] for r in store.list_runs()] == [b, a]  # newest first
    store.update_run(a, status="completed", metrics={"val_acc": 0.9})
    assert store.get_run(a)["metrics"]["val_acc"] == 0.9
    assert [r["id"] for r in store.list_runs(status="completed")] == [a]
    assert [r["id"] for r in store.list_runs(status=["queued", "completed"])] == [b, a]
    store.set_history(a, [{"step": 1, "total": 1.0}])
    store.save_weights(a, {"w": torch.ones(2)})
    store.delete_run(a)
    assert not store.has_run(a)
    assert store.history(a) == []
    assert not store.weights_path(a).exists()
    with pytest.raises(KeyError, match="no run"):
        store.get_run(a)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")  # the evil file's
def test_checkpoint_round_trip_and_bad_files(store, tmp_path):
    run_id = store.create_run(CONFIG)
    state = {"layer.weight": torch.randn(3, 2), "layer.bias": torch.zeros(3)}
    store.save_weights(run_id, state)
    loaded = store.load_weights(run_id)
    assert set(loaded) == set(state)
    assert torch.equal(loaded["layer.weight"], state["layer.weight"])

    not_torch = tmp_path / "junk.pt"
    not_torch.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable PyTorch state dict"):
        load_weights_file(not_torch)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(CheckpointError):  # weights_only refuses arbitrary objects
        load_weights_file(evil)

    model = tmp_path / "model.pt"
    torch.save(torch.nn.Linear(2, 3), model)  # a whole module, not a state dict
    with pytest.raises(CheckpointError):
        load_weights_file(model)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_weights_file(tmp_path / "missing.pt")


def test_lock_is_exclusive_across_threads(store):
    inside, overlap = [], []

    def work():
        with store.lock("x", poll=0.01):
            inside.append(1)
            if len(inside) > 1:
                overlap.append(True)
            threading.Event().wait(0.05)
            inside.pop()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not overlap


def _update_many(home: str, run_id: str, worker: int) -> None:
    store = Store(home)
    for i in range(20):
        store.update_run(run_id, **{f"w{worker}_{i}": i})
        store.create_run(CONFIG, name=f"{worker}-{i}")


def test_several_processes_at_once(home):
    store = Store(home)
    run_id = store.create_run(CONFIG)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_update_many, args=(str(home), run_id, w)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    record = store.get_run(run_id)
    assert all(f"w{w}_{i}" in record for w in range(2) for i in range(20))  # no lost update
    assert len(store.list_runs()) == 41


def test_teacher_registry_needs_a_checkpoint(store):
    run_id = store.create_run(CONFIG)
    store.set_teacher("fp", run_id)
    assert store.find_teacher("fp") is None
    store.save_weights(run_id, {"w": torch.ones(1)})
    assert store.find_teacher("fp") == run_id


def test_suites(store):
    store.save_suite({"id": "s1", "created_at": 1.0, "runs": []})
    store.save_suite({"id": "s2", "created_at": 2.0, "runs": []})
    assert [s["id"] for s in store.list_suites()] == ["s2", "s1"]
    assert store.get_suite("s1")["runs"] == []
    store.delete_suite("s1")
    with pytest.raises(KeyError):
        store.get_suite("s1")


def test_history_in_chunks(store, monkeypatch):
    from workbench.storage import history

    monkeypatch.setattr(history, "HISTORY_CHUNK", 3)
    run_id = store.create_run(CONFIG)
    rows = []
    for step in range(1, 8):  # the engine's pattern: the list grows, the tail is saved
        rows.append({"step": step})
        store.save_history_tail(run_id, rows)
    assert store.history(run_id) == rows
    store.set_history(run_id, rows[:2])  # replacing drops the old chunks
    assert store.history(run_id) == rows[:2]
    store.delete_run(run_id)
    assert store.history(run_id) == []


# ---------------------------------------------------------------------- the index of active runs
def _scanned(store, wanted):
    """What a listing finds by reading every record (the index's reference)."""
    return sorted(r["id"] for r in store.list_runs() if r["status"] in wanted)


def test_the_active_index_follows_every_status_change(tmp_path):
    import random

    from workbench.config.run_config import RunConfig
    from workbench.storage.store import ACTIVE_INDEX, STATUSES

    store = Store(tmp_path / "home")
    other = Store(tmp_path / "home")  # another process's view of the same store
    config = RunConfig(epochs=1)
    rng = random.Random(0)
    ids = []
    for step in range(300):
        action = rng.random()
        if action < 0.3 or not ids:
            ids.append(
                (store if step % 2 else other).create_run(config, status=rng.choice(STATUSES))
            )
        elif action < 0.85:
            run_id = rng.choice(ids)
            target = store if step % 3 else other
            if rng.random() < 0.5:
                target.update_run(run_id, status=rng.choice(STATUSES))
            else:
                target.update_run_if(run_id, lambda r: True, status=rng.choice(STATUSES))
        else:
            run_id = ids.pop(rng.randrange(len(ids)))
            store.delete_run(run_id)
        if step == 150:  # a store from before the index, or one `store repair` rebuilt
            store.delete(ACTIVE_INDEX)
        for wanted in (("queued",), ("running",), ("queued", "running")):
            listed = sorted(r["id"] for r in other.list_runs(status=wanted))
            assert listed == _scanned(other, wanted), (step, wanted)


def test_a_heartbeat_does_not_rewrite_the_active_index(tmp_path):
    from workbench.config.run_config import RunConfig
    from workbench.storage.store import ACTIVE_INDEX

    store = Store(tmp_path / "home")
    run_id = store.create_run(RunConfig(epochs=1), status="running")
    store.list_runs(status="running")  # builds the index
    before = store.get(ACTIVE_INDEX)
    store.update_run_if(run_id, lambda r: True, heartbeat=1.0)
    store.update_run(run_id, progress={"step": 3})
    assert store.get(ACTIVE_INDEX) == before == {run_id: "running"}
