"""An 18-run ablation suite on a simulated Ray cluster: 1 node against 2, and the Ray path's
overhead per run against a local worker.

In one process, on a fresh store, with Ray's multi-node simulator (``ray.cluster_utils.Cluster``:
a head with no CPU for tasks, next to the store, and worker nodes of ``--cpus`` CPUs each, as
local processes of this machine):

0. The suite's teacher is trained here first (``ensure_teacher``), so no side pays for it, and
   one run goes through each path as a warm-up (imports, Ray's worker processes).
1. **Local**: the suite's runs queued at once and trained by a local worker thread
   (``workbench.runs.worker``, 1 slot): the baseline.
2. **1 node**: the same runs, queued again, executed by the Ray executor with 1 slot on a
   cluster of one worker node.
3. **2 nodes**: the same again with 2 slots after a second node joined.

Ratios: 2 nodes / 1 node (wall; on a 2-core machine the two simulated nodes share its cores),
and the Ray path's overhead per run, (1 node - local) / runs. A Ray worker process trains with
as many threads as its node's CPUs (Ray sets ``OMP_NUM_THREADS``); the local worker with
torch's default, so the overhead includes that difference; the line says both.

    .venv/bin/python bench/cluster.py [--seeds 3] [--epochs 2] [--cpus 1] [--smoke]

``--smoke``: 1 seed of 1 epoch (a check that the script runs; its figures are not measurements).

Last line: ``cluster: 2 nodes/1 node wall X, Ray path +Y s per run over a local worker``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ray  # noqa: E402
import torch  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from workbench.ablation.variants import suite_configs  # noqa: E402
from workbench.cluster.executor import ClusterOptions  # noqa: E402
from workbench.config.run_config import LossWeights, RunConfig  # noqa: E402
from workbench.runs.worker import worker_thread  # noqa: E402
from workbench.storage.store import ACTIVE, Store  # noqa: E402
from workbench.training.loop import run  # noqa: E402
from workbench.training.teachers import ensure_teacher  # noqa: E402


def base_config(epochs: int) -> RunConfig:
    """Four active terms: leave-one-out gives 6 variants (full, 4 drops, label only)."""
    return RunConfig(
        teacher="small_cnn",
        student="mlp",
        weights=LossWeights(0.4, 0.3, 0.2, 0.1),
        epochs=epochs,
        teacher_epochs=2,
        log_every=50,
        device="cpu",
    )


def timed(store: Store, configs: list[RunConfig], **worker) -> float:
    """Seconds to train ``configs``, queued at once, with a worker of ``worker``'s options."""
    started = time.perf_counter()
    ids = [store.create_run(config) for config in configs]
    with worker_thread(store, **worker):
        while any(store.get_run(i)["status"] in ACTIVE for i in ids):
            time.sleep(0.02)
    seconds = time.perf_counter() - started
    failed = [store.get_run(i) for i in ids if store.get_run(i)["status"] != "completed"]
    if failed:
        raise SystemExit(f"a run did not complete: {failed[0].get('error')}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--cpus", type=int, default=1, help="CPUs per simulated node")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    if args.smoke:
        args.seeds, args.epochs = 1, 1
    base = base_config(args.epochs)
    configs = [config for _, config in suite_configs(base, seeds=args.seeds)]
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["KDWB_SCRATCH"] = tmp  # the nodes' scratch stores, inherited by them
        store = Store(Path(tmp) / "home")
        ensure_teacher(base, store, train=run)
        # Ray's session folder holds its Unix sockets, whose paths may not pass 107 bytes: a
        # short folder of its own, whatever $TMPDIR is (the smoke test sets a long one).
        ray_tmp = tempfile.mkdtemp(prefix="kdwb-ray-", dir="/tmp")
        (Path(tempfile.gettempdir()) / "ray").mkdir(exist_ok=True)  # where Ray notes the address
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "temp_dir": ray_tmp})
        cluster.add_node(num_cpus=args.cpus, temp_dir=ray_tmp)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False, _temp_dir=ray_tmp)
        try:
            one = ClusterOptions(
                address=cluster.address, slots=1, cpus_per_run=args.cpus, gpus_per_run=0
            )
            timed(store, configs[:1], slots=1)  # warm-ups
            timed(store, configs[:1], cluster=one)
            local = timed(store, configs, slots=1)
            one_node = timed(store, configs, cluster=one)
            cluster.add_node(num_cpus=args.cpus, temp_dir=ray_tmp)
            cluster.wait_for_nodes()
            two = ClusterOptions(
                address=cluster.address, slots=2, cpus_per_run=args.cpus, gpus_per_run=0
            )
            two_nodes = timed(store, configs, cluster=two)
        finally:
            ray.shutdown()
            cluster.shutdown()
            shutil.rmtree(ray_tmp, ignore_errors=True)
    n = len(configs)
    print(
        f"{n} runs ({args.seeds} seeds x {n // args.seeds} variants), {args.epochs} epochs, digits"
    )
    print(f"local worker, 1 slot ({torch.get_num_threads()} torch threads): {local:.1f} s")
    print(f"Ray, 1 node of {args.cpus} CPU, 1 slot:  {one_node:.1f} s")
    print(f"Ray, 2 nodes of {args.cpus} CPU, 2 slots: {two_nodes:.1f} s")
    print(
        f"cluster: 2 nodes/1 node wall {two_nodes / one_node:.3f}, Ray path "
        f"{(one_node - local) / n:+.3f} s per run over a local worker"
    )


if __name__ == "__main__":
    main()
