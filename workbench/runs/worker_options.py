"""The flags of ``python -m workbench worker`` and the instance settings they default to
(``[workers] executor``, ``ray_address``, ``cpus_per_run``, ``gpus_per_run`` in workbench.toml),
checked like the settings: one line that says what to write instead."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from workbench.errors import WorkbenchError
from workbench.lab import settings as lab_settings

if TYPE_CHECKING:
    from workbench.cluster.executor import ClusterOptions

__all__ = ["add_worker_flags", "cluster_options"]


def add_worker_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="cpu or cuda:N (default cpu)")
    parser.add_argument("--slots", type=int, default=1, help="runs at once (default 1)")
    parser.add_argument(
        "--once", action="store_true", help="exit when nothing is queued for this worker"
    )
    parser.add_argument(
        "--executor",
        choices=lab_settings.WORKER_EXECUTORS,
        default=None,
        help="threads on this machine, or tasks on a Ray cluster (default: [workers] executor, "
        "else threads)",
    )
    parser.add_argument(
        "--ray-address",
        default=None,
        help="the Ray cluster's head, host:port (default: [workers] ray_address, else auto: "
        "the cluster this machine started with `ray start --head`)",
    )
    parser.add_argument(
        "--gpus-per-run",
        type=float,
        default=None,
        help="GPUs each GPU run reserves on its node; 0.25 lets 4 runs share one (default: "
        "[workers] gpus_per_run, else 1 when the cluster has GPUs)",
    )
    parser.add_argument(
        "--cpus-per-run",
        type=int,
        default=None,
        help="CPUs each run reserves on its node (default: [workers] cpus_per_run, else 1)",
    )


def cluster_options(
    args: Any, settings: lab_settings.LabSettings | None = None
) -> ClusterOptions | None:
    """The cluster the worker executes on, or None for threads on this machine."""
    settings = settings or lab_settings.current()
    executor = args.executor or settings.worker_executor
    ray_flags = [
        f for f in ("ray_address", "gpus_per_run", "cpus_per_run") if getattr(args, f) is not None
    ]
    if executor != "ray":
        if ray_flags:
            flag = "--" + ray_flags[0].replace("_", "-")
            raise WorkbenchError(f"{flag} is for the Ray executor; add --executor ray")
        return None
    if args.device != "cpu":
        raise WorkbenchError(
            "--device is for the threads executor; on a cluster Ray places each run "
            "(set --gpus-per-run for GPU runs)"
        )
    gpus = args.gpus_per_run if args.gpus_per_run is not None else settings.gpus_per_run
    if gpus is not None and not lab_settings.gpus_per_run_ok(gpus):
        raise WorkbenchError(f"--gpus-per-run must be {lab_settings.GPUS_PER_RUN}, got {gpus:g}")
    cpus = args.cpus_per_run if args.cpus_per_run is not None else settings.cpus_per_run
    if not 1 <= cpus <= 64:
        raise WorkbenchError(f"--cpus-per-run must be a whole number from 1 to 64, got {cpus}")
    from workbench.cluster.executor import ClusterOptions

    address = args.ray_address or settings.ray_address or "auto"
    return ClusterOptions(address=address, slots=args.slots, cpus_per_run=cpus, gpus_per_run=gpus)
