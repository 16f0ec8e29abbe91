"""A suite on the CPU through the app's job manager: one CPU slot against one per core.

The same runs (a student from scratch, mlp or small_cnn on digits, one per seed) are queued
through a ``JobManager`` that trains them in threads, with ``device_slots={"cpu": 1}`` (one run
at a time, as the app did) and with ``{"cpu": N}`` (N: the cores, ``[workers] app_cpu_slots``'s
default). The arms alternate, their order reversed every other round; the ratio is of the
median wall times from the first submit to the last run's end.

    .venv/bin/python bench/suite_slots.py [--student mlp] [--runs 6] [--epochs 3] [--rounds 3]
        [--slots N] [--smoke]

Last line: ``one-slot/N-slot suite wall-time ratio: X.XX (above 1: the slots pay)``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

from workbench.config.run_config import LossWeights, RunConfig
from workbench.runs.job_manager import JobManager
from workbench.runs.submit import Submission
from workbench.storage.store import Store


def suite_seconds(config: RunConfig, runs: int, slots: int) -> float:
    """Wall time of ``runs`` seeds of ``config`` through a job manager with ``slots``."""
    with tempfile.TemporaryDirectory(prefix="kdwb-slots-") as home:
        store = Store(home)
        manager = JobManager(store, device_slots={"cpu": slots}, execute="threads", poll=0.05)
        try:
            started = time.perf_counter()
            ids = manager.submit_many([Submission(config.replace(seed=s)) for s in range(runs)])
            if not manager.wait(timeout=3600):
                raise SystemExit("the suite did not finish within an hour")
            seconds = time.perf_counter() - started
            statuses = {store.get_run(i)["status"] for i in ids}
            if statuses != {"completed"}:
                raise SystemExit(f"runs ended {statuses}")
            return seconds
        finally:
            manager.close()
            store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", default="mlp")
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--slots", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--smoke", action="store_true", help="2 tiny runs, 1 round")
    args = parser.parse_args()
    if args.smoke:
        args.runs, args.epochs, args.rounds, args.slots = 2, 1, 1, max(2, args.slots)
    config = RunConfig(
        student=args.student,
        weights=LossWeights(1, 0, 0, 0),
        epochs=args.epochs,
        device="cpu",
        train_fraction=0.25 if args.smoke else 1.0,
    )
    times: dict[int, list[float]] = {1: [], args.slots: []}
    print(f"{args.runs} runs of {args.student}, {args.epochs} epochs; {os.cpu_count()} cores")
    for round_ in range(args.rounds):
        order = (1, args.slots) if round_ % 2 == 0 else (args.slots, 1)
        for slots in order:
            seconds = suite_seconds(config, args.runs, slots)
            times[slots].append(seconds)
            print(f"round {round_ + 1}: {slots} slot(s) {seconds:.1f} s")
    one, many = statistics.median(times[1]), statistics.median(times[args.slots])
    print(f"medians: 1 slot {one:.1f} s, {args.slots} slots {many:.1f} s")
    print(
        f"one-slot/{args.slots}-slot suite wall-time ratio: {one / many:.2f} "
        "(above 1: the slots pay)"
    )


if __name__ == "__main__":
    main()
