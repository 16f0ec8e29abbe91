"""What a search costs beyond its runs: the driver's overhead per trial, on digits.

In one process, on a fresh store, with one worker thread (1 slot, ``workbench.runs.worker``):

0. The teacher is trained first (``ensure_teacher``) and one warm-up run is trained, so that
   neither side pays for the teacher or for the first run's imports.
1. **The search**: ``--trials`` trials of 1 seed over ``weights,temperature``, no pruning,
   driven by ``workbench.search.driver.drive`` (its polling included). Timed from the start of
   ``drive`` to the moment the budget is reached; the final retraining (1 seed) is left out.
2. **The baseline**: the same configs, queued at once as plain runs and trained by the same
   worker: the runs' own time, with the queue's. Both queue through the worker's job manager,
   which wakes it at once, as ``python -m workbench search`` does.

Overhead per trial = (search - baseline) / trials; the ratio is search / baseline. The fANOVA
importances of the finished study are timed on their own (they are computed once, at the end).

    .venv/bin/python bench/search.py [--trials 10] [--epochs 3] [--smoke]

``--smoke``: 2 trials of 1 epoch (a check that the script runs; its figures are not
measurements).

Last line: ``search/plain runs: wall X (Y s per trial of overhead), fANOVA Z s``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workbench.config.run_config import LossWeights, RunConfig  # noqa: E402
from workbench.lab.identity import User  # noqa: E402
from workbench.runs.submit import Submission  # noqa: E402
from workbench.runs.worker import worker_thread  # noqa: E402
from workbench.search.driver import drive  # noqa: E402
from workbench.search.result import importances  # noqa: E402
from workbench.search.searches import create_search, open_study, search_runs  # noqa: E402
from workbench.storage.store import ACTIVE, Store  # noqa: E402
from workbench.training.loop import run  # noqa: E402
from workbench.training.teachers import ensure_teacher  # noqa: E402

USER = User("bench")


def base_config(epochs: int) -> RunConfig:
    return RunConfig(
        teacher="small_cnn",
        student="mlp",
        weights=LossWeights(0.5, 0.5, 0.0, 0.0),
        epochs=epochs,
        teacher_epochs=2,
        log_every=50,
        device="cpu",
    )


def wait_all(store: Store, run_ids: list[str]) -> None:
    while any(store.get_run(r)["status"] in ACTIVE for r in run_ids):
        time.sleep(0.02)


def timed_search(
    store: Store, manager, base: RunConfig, trials: int
) -> tuple[float, list[RunConfig]]:
    """Seconds from ``drive`` to the budget, and the trial runs' configs."""
    search = create_search(
        store, base, name="bench", over="weights,temperature", trials=trials, retrain_seeds=1,
        prune=False, owner=USER.name,
    )  # fmt: skip
    marks: dict[str, float] = {}

    def say(message: str) -> None:
        if message.startswith("budget reached"):
            marks["budget"] = time.perf_counter()

    start = time.perf_counter()
    submit = lambda subs: manager.submit_many(subs, USER)  # noqa: E731
    drive(store, search["id"], user=USER, say=say, submit=submit)
    records = [r for r in search_runs(store, search["id"]) if r.get("trial") is not None]
    configs = [RunConfig.from_dict(r["config"]) for r in records]
    print(
        f"importances of {trials} trials: {importances(open_study(store, search))}",
        file=sys.stderr,
    )
    return marks["budget"] - start, configs


def timed_plain(store: Store, manager, configs: list[RunConfig]) -> float:
    submissions = [Submission(c, name=f"plain {i}") for i, c in enumerate(configs)]
    start = time.perf_counter()
    wait_all(store, manager.submit_many(submissions, USER))
    return time.perf_counter() - start


def timed_importances(store: Store) -> float:
    (search,) = store.values("search:")
    study = open_study(store, search)
    start = time.perf_counter()
    importances(study)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    if args.smoke:
        args.trials, args.epochs = 2, 1
    store = Store(tempfile.mkdtemp(prefix="kdwb-bench-search-"))
    base = base_config(args.epochs)
    ensure_teacher(base, store, owner=USER.name, train=run)
    with worker_thread(store) as manager:
        wait_all(store, manager.submit_many([Submission(base)], USER))  # warm-up
        search_s, configs = timed_search(store, manager, base, args.trials)
        plain_s = timed_plain(store, manager, configs)
    fanova_s = timed_importances(store)
    per_trial = (search_s - plain_s) / args.trials
    print(
        f"{args.trials} trials of {args.epochs} epochs: search {search_s:.2f} s, the same runs "
        f"queued plainly {plain_s:.2f} s"
    )
    print(
        f"search/plain runs: wall {search_s / plain_s:.3f} ({per_trial:+.3f} s per trial of "
        f"overhead), fANOVA {fanova_s:.3f} s"
    )
    store.close()


if __name__ == "__main__":
    main()
