"""Queued runs on a Ray cluster (issue 23), on Ray's own multi-node simulator: a head (no CPU
for tasks, next to the store) and two worker nodes of one CPU each, as local processes, one
cluster for the module. Runs spread over both nodes, progress live on the head, a node removed
mid-run, a cancel, fair order, the executor killed, and an unreachable cluster."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import ray
from ray.cluster_utils import Cluster

from workbench.cli import main
from workbench.cluster.executor import ClusterOptions
from workbench.cluster.payload import install_teacher, teacher_bundle
from workbench.config.run_config import LossWeights, RunConfig
from workbench.lab.identity import User
from workbench.runs.worker import worker_thread
from workbench.storage import training_state as checkpoints
from workbench.storage.store import Store
from workbench.training.loop import run
from workbench.training.teacher_cache import cache_root, complete_entries
from workbench.training.teachers import ensure_teacher

ROOT = Path(__file__).resolve().parents[1]
DEADLINE = 600.0  # seconds; for a hung cluster, never a performance bound
# Tiny runs: an mlp student of a 1-epoch small_cnn teacher on digits.
BASE = RunConfig(
    teacher="small_cnn",
    student="mlp",
    weights=LossWeights(0.5, 0.5, 0.0, 0.0),
    epochs=2,
    teacher_epochs=1,
    batch_size=64,
    log_every=5,
    device="cpu",
)
LONG = BASE.replace(epochs=40, batch_size=16, log_every=1)  # long enough to act on mid-run


def _wait(predicate, what: str, deadline: float = DEADLINE) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    os.environ["KDWB_SCRATCH"] = str(tmp_path_factory.mktemp("scratch"))  # the nodes inherit it
    made = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for _ in range(2):
        made.add_node(num_cpus=1)
    made.wait_for_nodes()
    ray.init(address=made.address, log_to_driver=False)
    yield made
    ray.shutdown()
    made.shutdown()
    os.environ.pop("KDWB_SCRATCH", None)


@pytest.fixture
def options(cluster):
    return ClusterOptions(address=cluster.address, slots=2, gpus_per_run=0)


@pytest.fixture
def teacher_store(store):
    """The store with the recipe's teacher trained (here, in this process)."""
    ensure_teacher(BASE, store, train=run)
    return store


def _steps(store: Store, run_id: str) -> list[int]:
    return [row["step"] for row in store.history(run_id)]


def _same_numbers(shipped: dict, local: dict) -> None:
    for key in ("val_acc", "best_val_acc", "test_acc"):
        assert shipped["metrics"][key] == local["metrics"][key], key
    for term, value in local["metrics"]["final_losses"].items():
        assert shipped["metrics"]["final_losses"][term] == pytest.approx(value, rel=1e-5, abs=1e-6)


def test_six_runs_spread_over_both_nodes_once_each_with_live_progress(store, options, cluster):
    """Six queued runs (their teacher trained first, as a task of its own): each executed exactly
    once, both nodes used, and a running run's rows in the head's store while it trains."""
    ids = [store.create_run(BASE.replace(seed=seed, epochs=4)) for seed in range(6)]
    seen_live: set[str] = set()
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            for record in store.list_runs(status="running"):
                if record["role"] == "student" and store.history(record["id"]):
                    seen_live.add(record["id"])
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    with worker_thread(store, slots=2, cluster=options) as manager:
        assert manager.wait(timeout=DEADLINE)
    done.set()
    watcher.join()
    records = [store.get_run(run_id) for run_id in ids]
    assert [r["status"] for r in records] == ["completed"] * 6, [r.get("error") for r in records]
    assert all(r["executions"] == 1 for r in records)
    nodes = {r["executed_on"]["node_id"] for r in records}
    assert nodes <= {n.node_id for n in cluster.worker_nodes} and len(nodes) == 2
    for run_id in ids:
        steps = _steps(store, run_id)
        assert steps == sorted(set(steps)) and len(steps) == len(store.history(run_id))
        assert store.weights_path(run_id).exists() and store.probe(run_id) is not None
        assert not checkpoints.state_path(store.home, run_id).exists()  # completed: weights only
    assert seen_live, "no run showed progress in the head store while it ran"
    teacher = records[0]["teacher_run"]
    assert store.get_run(teacher)["executed_on"]["node_id"] in nodes


def test_a_node_removed_mid_run_finishes_elsewhere_with_the_same_numbers(
    teacher_store, options, cluster
):
    store = teacher_store
    config = LONG.replace(epochs=6)
    run_id = store.create_run(config)
    path = checkpoints.state_path(store.home, run_id)
    with worker_thread(store, slots=1, cluster=options) as manager:
        _wait(lambda: path.exists(), "a training state shipped to the head")
        first = store.get_run(run_id)["executed_on"]["node_id"]
        doomed = next(n for n in cluster.worker_nodes if n.node_id == first)
        cluster.remove_node(doomed, allow_graceful=False)
        assert manager.wait(timeout=DEADLINE)
    cluster.add_node(num_cpus=1)  # back to two nodes for the tests after this one
    cluster.wait_for_nodes()
    record = store.get_run(run_id)
    assert record["status"] == "completed", record.get("error")
    assert record["executions"] == 2 and record["executed_on"]["node_id"] != first
    steps = _steps(store, run_id)
    assert steps == list(range(1, len(steps) + 1))  # every step once, none twice
    local = run(config, store)  # the same run, uninterrupted, in this process
    assert local["status"] == "completed"
    _same_numbers(record, local)
    assert steps == _steps(store, local["id"])


def test_a_cancel_reaches_the_running_task(teacher_store, options):
    store = teacher_store
    run_id = store.create_run(LONG)
    with worker_thread(store, slots=1, cluster=options) as manager:
        _wait(lambda: len(store.history(run_id)) >= 3, "the run's first rows on the head")
        manager.cancel(run_id)
        _wait(lambda: store.get_run(run_id)["status"] == "cancelled", "the run cancelled")
        assert manager.wait(timeout=DEADLINE)
    record = store.get_run(run_id)
    assert record["progress"]["epoch"] < LONG.epochs  # stopped, not finished
    rows = len(store.history(run_id))
    time.sleep(1.0)
    assert len(store.history(run_id)) == rows  # nothing trains it any more


def test_two_users_runs_start_in_fair_order(teacher_store, options):
    store = teacher_store
    alice = [store.create_run(BASE.replace(seed=s), owner="alice") for s in range(3)]
    bob = [store.create_run(BASE.replace(seed=9), owner="bob")]
    with worker_thread(store, slots=1, cluster=dataclasses.replace(options, slots=1)):
        _wait(
            lambda: all(store.get_run(i)["status"] == "completed" for i in alice + bob),
            "all four runs",
        )
    order = sorted(alice + bob, key=lambda i: store.get_run(i)["claimed_at"])
    assert order == [alice[0], bob[0], alice[1], alice[2]]


def test_killed_executor_leaves_runs_that_resume_from_the_last_shipped_state(
    teacher_store, options, cluster, home
):
    """SIGKILL of a `worker --executor ray` process mid-run: Ray ends its task, the run is
    recovered from the head's store and finished by the next executor, every step once."""
    store = teacher_store
    config = LONG.replace(epochs=8)
    run_id = store.create_run(config, owner=User("carol").name)
    env = {**os.environ, "KDWB_HOME": str(home)}
    worker = subprocess.Popen(
        [sys.executable, "-m", "workbench", "worker", "--executor", "ray"]
        + ["--ray-address", cluster.address, "--gpus-per-run", "0"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        _wait(lambda: (store.get_run(run_id).get("progress") or {}).get("epoch", 0) >= 2, "epoch 2")
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
    stopped_at = len(store.history(run_id))
    with worker_thread(store, slots=1, cluster=options) as manager:
        _wait(lambda: store.get_run(run_id)["status"] == "completed", "the run finished")
        assert manager.wait(timeout=DEADLINE)
    record = store.get_run(run_id)
    assert record["executions"] >= 2 and stopped_at > 0
    steps = _steps(store, run_id)
    assert steps == list(range(1, len(steps) + 1))
    _same_numbers(record, run(config, store))


def test_an_unreachable_cluster_is_one_line_and_runs_stay_queued(store, home):
    run_id = store.create_run(BASE)
    env = {**os.environ, "KDWB_HOME": str(home)}
    done = subprocess.run(
        [sys.executable, "-m", "workbench", "worker", "--executor", "ray"]
        + ["--ray-address", "127.0.0.1:9", "--once"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "127.0.0.1:9" in lines[0] and "ray start --head" in lines[0]
    assert store.get_run(run_id)["status"] == "queued"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--gpus-per-run", "0.5"], "--gpus-per-run is for the Ray executor"),
        (["--executor", "ray", "--gpus-per-run", "1.5"], "--gpus-per-run must be"),
        (["--executor", "ray", "--cpus-per-run", "0"], "--cpus-per-run must be"),
        (["--executor", "ray", "--device", "cuda:0"], "--device is for the threads executor"),
        (["--executor", "ray", "--ray-address", "nowhere"], "--ray-address must be host:port"),
    ],
)
def test_bad_worker_flags_are_one_line(store, capsys, argv, message):
    assert main(["worker", *argv]) == 2
    assert message in capsys.readouterr().err


def test_a_teacher_travels_with_its_checkpoint_mtime_and_cache_entries(teacher_store, tmp_path):
    """The bundle puts the teacher into a node's scratch store once, with its checkpoint's mtime
    (the cache keys name it) and the cache entries the head built for it, under the same keys."""
    store = teacher_store
    local = run(BASE, store)  # builds the teacher-output cache entry on the head
    teacher_id = local["teacher_run"]
    bundle = teacher_bundle(store, teacher_id)
    assert bundle["entries"], "the head's cache entry for the teacher is not in its bundle"
    scratch = Store(tmp_path / "node")
    install_teacher(scratch, bundle)
    install_teacher(scratch, bundle)  # a second task on the node: nothing changes
    head_stat = store.weights_path(teacher_id).stat()
    node_stat = scratch.weights_path(teacher_id).stat()
    assert (node_stat.st_size, node_stat.st_mtime_ns) == (head_stat.st_size, head_stat.st_mtime_ns)
    assert scratch.get_run(teacher_id)["status"] == "completed"
    keys = lambda s: sorted(e.key for e in complete_entries(cache_root(s)))  # noqa: E731
    assert keys(scratch) == keys(store) and keys(store)
    copy = RunConfig.from_dict(local["config"])
    node_run = scratch.create_run(copy, status="running")
    scratch.update_run(node_run, teacher_run=teacher_id)
    trained = run(copy, scratch, run_id=node_run)
    assert "built by an earlier run" in scratch.get_run(node_run)["teacher_note"]
    assert trained["metrics"]["test_acc"] == local["metrics"]["test_acc"]
    scratch.close()


def test_a_teacher_trained_for_a_student_keeps_its_claim_past_the_silence_limit(
    store, options, monkeypatch
):
    """A student whose teacher is missing trains it first, as a task of its own that the job
    manager does not heartbeat: the head beats its claim, so a silence limit shorter than the
    teacher's training does not hand it to recovery (which would fence both runs out)."""
    monkeypatch.setenv("KDWB_SILENT_AFTER_S", "5")
    config = BASE.replace(teacher_epochs=40)  # longer than the silence limit
    run_id = store.create_run(config)
    with worker_thread(store, slots=1, cluster=options) as manager:
        assert manager.wait(timeout=DEADLINE)
    record = store.get_run(run_id)
    assert record["status"] == "completed", record.get("error")
    teacher = store.get_run(record["teacher_run"])
    assert teacher["status"] == "completed" and teacher["seconds"] > 5
    assert teacher["executions"] == 1 and not teacher.get("auto_resumes")
