"""The head's side of the cluster: claimed runs shipped as Ray tasks, their progress written back.

``ClusterRunner`` is the runner of a ``JobManager`` (``kind="ray"``) in place of ``loop.run``: the
job manager claims queued runs in the fair order, heartbeats the claims and turns a cancel into
the stop flag, as for every executor; for each run the runner

1. finds its teacher here (``teachers.teacher_run_id``: a missing one is trained first, as a
   task of its own) and puts the teacher's bundle into Ray's object store once per checkpoint;
2. opens the run in the relay at its start (latest training state and rows) and submits the task
   with the run's resources (``num_cpus``, ``num_gpus``: a fraction shares a GPU) and
   ``max_retries``: Ray runs it again elsewhere when its node dies, from the last shipped state;
3. every ``POLL_S`` writes what the relay got into the head's store under the run's claim
   (``FencedRun``): rows, epoch rows, fields, each training state, and ``executed_on``;
4. imports the task's result (record, rows, probe, weights or state) under the claim, or ends
   the run ``cancelled``/``failed`` when the task was cancelled or Ray gave up on it.

A cancel is ``ray.cancel`` of the task. When the executor stops, its tasks are cancelled and its
runs are left to recovery, as a stopped worker's are; when it is killed, Ray ends the tasks of
the driver that died, and the runs are recovered from the head's store like any dead holder's.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from workbench.cluster.connect import connect, require_ray
from workbench.cluster.payload import (
    bundle_key,
    node_fields,
    start_pack,
    teacher_bundle,
    write_bytes_file,
)
from workbench.cluster.relay import start_relay
from workbench.cluster.task import train_on_node
from workbench.config.run_config import RunConfig
from workbench.errors import WorkbenchError, first_line
from workbench.runs.job_manager import JobManager
from workbench.storage import training_state as checkpoints
from workbench.storage.fencing import FencedRun, LostClaim
from workbench.storage.liveness import beat_fields
from workbench.storage.store import Store
from workbench.training.events import OnStep, StopFlag, Stopped
from workbench.training.teachers import remember_teacher, teacher_run_id

__all__ = ["POLL_S", "ClusterOptions", "ClusterRunner", "cluster_manager"]

POLL_S = 0.25
BEAT_S = 1.0  # the head beats a shipped run's claim at least this often while it trains


@dataclass(frozen=True)
class ClusterOptions:
    """How the head uses the cluster: its address, runs at once, each run's resources
    (``gpus_per_run`` None: 1 when the cluster has GPUs, else 0) and Ray's retries of a task
    whose node or worker died."""

    address: str = "auto"
    slots: int = 1
    cpus_per_run: int = 1
    gpus_per_run: float | None = None
    max_retries: int = 3


class _Mirror:
    """What the head's store holds of one shipped run, kept in step with the relay."""

    def __init__(self, fenced: FencedRun):
        self.fenced = fenced
        self.history: list[dict[str, Any]] = []
        self.fields: dict[str, Any] = {}
        self.known: dict[str, Any] = {}
        self.base = fenced.store.get_run(fenced.run_id).get("executions") or 0
        self.beat = 0.0  # time.monotonic() of the last heartbeat written

    def apply(self, changes: dict[str, Any]) -> None:
        """Write ``changes`` (``Relay.changes``) into the head's store; LostClaim when the run
        is no longer this executor's."""
        fenced, attempt = self.fenced, changes["attempt"]
        if attempt and attempt != self.known.get("attempt"):  # a task began (or began again)
            fenced.update(executions=self.base + attempt, executed_on=changes["where"])
        if changes["reset"]:
            self.history = list(changes["rows"])
            fenced.set_history(self.history)
        elif changes["rows"]:
            self.history.extend(changes["rows"])
            fenced.history_tail(self.history)
        if changes["epochs"] is not None:
            fenced.set_epochs(changes["epochs"])
        changed = {k: v for k, v in changes["fields"].items() if self.fields.get(k) != v}
        beat = time.monotonic() - self.beat >= BEAT_S
        if changed or beat:  # the claim's heartbeat too: a teacher trained for a student is
            fenced.update(**changed, **beat_fields())  # not one of the job manager's runs
            self.fields.update(changed)
            self.beat = time.monotonic()
        if changes["state"] is not None:
            path = checkpoints.state_path(fenced.store.home, fenced.run_id)
            fenced.replace_file(write_bytes_file(changes["state"]), path)
            fenced.write_manifest()  # what `store repair` rebuilds the index from
        epochs = changes["epochs"]
        self.known = {
            "attempt": attempt,
            "generation": changes["generation"],
            "rows": changes["row_count"],
            "epochs": len(epochs) if epochs is not None else self.known.get("epochs"),
            "state_version": changes["state_version"],
        }


class ClusterRunner:
    """A job manager's runner that trains each run as a Ray task (see the module docstring)."""

    def __init__(self, options: ClusterOptions):
        self.ray = require_ray()
        self.options = options
        self.joined = not self.ray.is_initialized()
        connect(options.address)
        gpus = self.ray.cluster_resources().get("GPU", 0)
        self.has_gpus = gpus > 0
        self.gpus_per_run = (
            (1 if self.has_gpus else 0) if options.gpus_per_run is None else options.gpus_per_run
        )
        self.relay = start_relay()
        self.ray.get(self.relay.ready.remote())  # its process started before any claim waits on it
        self._task = self.ray.remote(train_on_node)
        self._bundles: dict[str, tuple[tuple, Any]] = {}  # teacher run -> (bundle key, ref)
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._active = 0

    # ------------------------------------------------------------------ the runner
    def __call__(
        self,
        config: RunConfig,
        store: Store,
        on_step: OnStep | None = None,
        stop: StopFlag | None = None,
        *,
        run_id: str,
        fence: int | None = None,
    ) -> dict[str, Any] | None:
        """Train ``run_id`` (claimed with token ``fence``) on the cluster; its record, or None
        when the executor stopped meanwhile (the run is left to recovery)."""
        token = store.get_run(run_id).get("claims") if fence is None else fence
        fenced = FencedRun(store, run_id, token)
        with self._lock:
            self._active += 1
        try:
            self._started(fenced)
            return self._ship_safely(config, fenced, on_step, stop)
        except LostClaim as exc:
            return {"id": run_id, "status": "lost", "error": str(exc)}
        finally:
            with self._lock:
                self._active -= 1

    def resources(self, config: RunConfig) -> dict[str, Any]:
        """The Ray resources of a run: CPUs from the options; GPUs unless it asks for the CPU."""
        gpus = 0 if config.device == "cpu" else self.gpus_per_run
        return {"num_cpus": self.options.cpus_per_run, "num_gpus": gpus}

    def close(self, timeout: float = 30.0) -> None:
        """Cancel the tasks in flight (their runs are left to recovery) and leave the cluster
        when this runner joined it."""
        self._closing.set()
        deadline = time.monotonic() + timeout
        while self._active and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.joined and self.ray.is_initialized():
            self.ray.shutdown()

    # ------------------------------------------------------------------ one run
    def _started(self, fenced: FencedRun) -> None:
        record = fenced.store.update_run_if(
            fenced.run_id,
            lambda r: r["status"] == "running" and r.get("claims") == fenced.token,
            started_at=lambda r: r.get("started_at") or time.time(),
            finished_at=None,
            error=None,
            **beat_fields(),
        )
        if record is None:
            fenced.check()  # raises LostClaim, saying why

    def _ship_safely(
        self, config: RunConfig, fenced: FencedRun, on_step: OnStep | None, stop: StopFlag | None
    ) -> dict[str, Any] | None:
        store, run_id = fenced.store, fenced.run_id
        try:
            teacher_id = teacher_run_id(config, store, run_id, on_step, stop, train=self)
            bundle = self._bundle(store, teacher_id) if teacher_id else None
            start = start_pack(store, run_id)
        except Stopped:
            return self._end(fenced, "cancelled", {})
        except (WorkbenchError, OSError) as exc:
            return self._end(fenced, "failed", {"error": str(exc)})
        return self._ship(config, fenced, stop, bundle, start)

    def _bundle(self, store: Store, teacher_id: str) -> Any:
        """The teacher's bundle in Ray's object store: put once per checkpoint and cache entries."""
        key = bundle_key(store, teacher_id)
        with self._lock:
            known = self._bundles.get(teacher_id)
            if known is None or known[0] != key:
                self._bundles[teacher_id] = (key, self.ray.put(teacher_bundle(store, teacher_id)))
            return self._bundles[teacher_id][1]

    def _ship(
        self,
        config: RunConfig,
        fenced: FencedRun,
        stop: StopFlag | None,
        bundle: Any,
        start: dict[str, Any],
    ) -> dict[str, Any] | None:
        """Submit the task, mirror its progress until it ends, import or end the run."""
        ray, run_id = self.ray, fenced.run_id
        ray.get(self.relay.open.remote(run_id, start))
        task = self._task.options(
            **self.resources(config), max_retries=self.options.max_retries, retry_exceptions=False
        )
        ref = task.remote(fenced.store.get_run(run_id), fenced.token, bundle, self.relay)
        mirror, asked = _Mirror(fenced), False
        try:
            while True:
                done, _ = ray.wait([ref], timeout=POLL_S)
                mirror.apply(ray.get(self.relay.changes.remote(run_id, mirror.known)))
                if done:
                    break
                if self._closing.is_set():
                    ray.cancel(ref, force=True)
                    return None
                if stop is not None and stop.is_set() and not asked:
                    ray.cancel(ref)  # KeyboardInterrupt in the task: the loop ends it cancelled
                    asked = True
            result = ray.get(ref)
        except LostClaim:
            ray.cancel(ref, force=True)
            raise
        except ray.exceptions.TaskCancelledError:
            return self._end(fenced, "cancelled", {})
        except ray.exceptions.RayError as exc:
            return self._end(fenced, "failed", {"error": f"the Ray task failed: {first_line(exc)}"})
        finally:
            self.relay.close.remote(run_id)
        return self._import(config, fenced, result)

    def _end(self, fenced: FencedRun, status: str, fields: dict[str, Any]) -> dict[str, Any]:
        finished = time.time()
        started = fenced.store.get_run(fenced.run_id).get("started_at") or finished
        return fenced.update(
            status=status, finished_at=finished, seconds=finished - started, **fields
        )

    def _import(
        self, config: RunConfig, fenced: FencedRun, result: dict[str, Any]
    ) -> dict[str, Any]:
        """The task's result into the head's store, under the claim: files first (each renamed
        into place while the claim holds), then rows, probe and record in one transaction."""
        store, run_id = fenced.store, fenced.run_id
        status = result["record"]["status"]
        if result["weights"] is not None:
            fenced.replace_file(write_bytes_file(result["weights"]), store.weights_path(run_id))
        if result["state"] is not None:
            path = checkpoints.state_path(store.home, run_id)
            fenced.replace_file(write_bytes_file(result["state"]), path)
        with fenced.held():
            store.set_history(run_id, result["history"])
            store.set_epochs(run_id, result["epochs"])
            if result["probe"] is not None:
                store.save_probe(run_id, result["probe"])
            fields = {**node_fields(result["record"]), "executed_on": result["where"]}
            record = self._end(fenced, status, fields)
        if status == "completed":
            checkpoints.delete_state(store.home, run_id)
            if config.role == "teacher":
                remember_teacher(store, config, run_id, record.get("owner") or "")
        return record


def cluster_manager(store: Store, options: ClusterOptions) -> tuple[JobManager, ClusterRunner]:
    """A job manager that executes the store's queued runs on the cluster, ``options.slots`` at
    once: CPU runs, and GPU runs when the cluster has GPUs (``cuda:N`` with N > 0 names a GPU
    of one machine, and is left to a worker there). Close the runner when done with both."""
    runner = ClusterRunner(options)
    devices = {"cpu": options.slots} | ({"cuda:0": options.slots} if runner.has_gpus else {})
    manager = JobManager(
        store,
        device_slots=devices,
        runner=runner,
        execute="threads",
        kind="ray",
        total_slots=options.slots,
    )
    return manager, runner
