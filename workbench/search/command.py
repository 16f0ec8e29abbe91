"""``python -m workbench search``: start a search, or continue one with ``--resume NAME``.

The command drives the search and, beside it, runs a worker with ``--slots`` slots (default 1)
that executes queued runs in the fair queue, as ``python -m workbench worker`` does; with
``--slots 0`` it only queues, and the app or other workers train the trials. Ctrl-C stops the
driver and the worker: the runs in progress are left to recovery (queued again, resumed from
their checkpoints) and ``--resume NAME`` continues the search.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import sys
import threading
from typing import TYPE_CHECKING, Any

from workbench.cli_inputs import MAX_SLOTS, config_from_args, first_ctrl_c_sets
from workbench.errors import WorkbenchError, quoted
from workbench.search.searches import create_search, find_search, open_study, search_runs

if TYPE_CHECKING:
    import optuna

    from workbench.lab.identity import User
    from workbench.storage.store import Store

__all__ = ["add_search_flags", "run_search", "search_json"]


def add_search_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of ``search`` besides the run flags (which give the base config)."""
    parser.add_argument("--resume", metavar="NAME", help="continue the search NAME to its budget")
    parser.add_argument("--trials", type=int, default=20, help="finished trials (default 20)")
    parser.add_argument(
        "--over",
        default="weights,temperature",
        help="what to search: weights, temperature, response_kind, feature_kind, relation_kind, "
        "dkd_alpha, dkd_beta, dist_beta, dist_gamma; a number may take a range, temperature=1:8 "
        "(default weights,temperature)",
    )
    parser.add_argument("--seeds", type=int, default=1, help="runs per trial (default 1)")
    parser.add_argument(
        "--retrain-seeds",
        type=int,
        default=5,
        help="fresh seeds for the final comparison on test (default 5)",
    )
    parser.add_argument(
        "--no-prune", action="store_true", help="never stop a trial early (median pruner off)"
    )
    parser.add_argument(
        "--slots",
        type=int,
        default=1,
        help="queued runs this command trains at once beside the search; 0: only queue (default 1)",
    )


def run_search(args: argparse.Namespace, store: Store, user: User, quotas: Any) -> int:
    """Create (or find, with ``--resume``) the search, drive it to its budget with a worker
    beside it, and print the result; 0 when the search is done, 130 when stopped."""
    from workbench.runs.worker import worker_thread
    from workbench.search.driver import drive

    if not 0 <= args.slots <= MAX_SLOTS:
        raise WorkbenchError(
            f"--slots must be a whole number from 0 to {MAX_SLOTS}, got {args.slots}"
        )
    search = _the_search(args, store, user)
    stop = threading.Event()
    print(f"[search] {search['name']} ({search['id']}), {search['trials']} trials", file=sys.stderr)
    with worker_thread(store, slots=args.slots) if args.slots else contextlib.nullcontext() as jobs:
        submit = None  # without a worker here: the plain submit gate
        if jobs is not None:  # through the worker's job manager, which starts them at once
            submit = functools.partial(jobs.submit_many, user=user)
        with first_ctrl_c_sets(stop):
            search = drive(
                store,
                search["id"],
                user=user,
                quotas=quotas,
                stop=stop,
                say=lambda m: print(f"[search] {m}", file=sys.stderr),
                submit=submit,
            )
    if search.get("result") is None:
        print(
            f"stopped: continue with `python -m workbench search --resume {search['name']}`",
            file=sys.stderr,
        )
        return 130
    if args.json:
        print(json.dumps(search_json(store, search)))
    else:
        _print_result(store, search)
    return 0


def _the_search(args: argparse.Namespace, store: Store, user: User) -> dict[str, Any]:
    from workbench.lab.access import can_see

    if args.resume:
        found = find_search(store, args.resume)
        if found is None or not can_see(user, found):
            raise WorkbenchError(
                f"no search {quoted(args.resume)} in the store at {store.home}; start one with "
                "--name NAME"
            )
        return found
    return create_search(
        store,
        config_from_args(args),
        name=args.name,
        over=args.over,
        trials=args.trials,
        seeds=args.seeds,
        retrain_seeds=args.retrain_seeds,
        prune=not args.no_prune,
        owner=user.name,
    )


def search_json(
    store: Store, search: dict[str, Any], study: optuna.Study | None = None
) -> dict[str, Any]:
    """The ``--json`` object: ``trials`` (``number, state, params, value, run_ids``), ``best``
    and ``test`` (the retrained comparison, with its interval); ``study``: the search's, when
    the caller has opened it already."""
    study = study or open_study(store, search)
    runs: dict[int, list[str]] = {}
    for record in search_runs(store, search["id"]):
        if record.get("trial") is not None:
            runs.setdefault(int(record["trial"]), []).append(record["id"])
    trials = [
        {
            "number": t.number,
            "state": t.state.name.lower(),
            "params": t.params,
            "value": t.value,
            "run_ids": runs.get(t.number, []),
        }
        for t in study.get_trials(deepcopy=False)
    ]
    result = search.get("result") or {}
    return {
        "search": search["id"],
        "name": search["name"],
        "trials": trials,
        "best": result.get("best"),
        "test": {
            key: result.get(key)
            for key in ("seeds", "results", "comparison", "noise", "note", "run_ids")
        },
        "importances": result.get("importances", {}),
    }


def _print_result(store: Store, search: dict[str, Any]) -> None:
    data = search_json(store, search)
    for t in data["trials"]:
        value = "" if t["value"] is None else f"{t['value']:.4f}"
        print(f"trial {t['number']:>3} {t['state']:<9} {value:>7}  {t['params']}")
    best, test = data["best"], data["test"]
    if best is None:
        print(search["result"].get("note", ""))
        return
    print(f"best: trial {best['number']}, validation {best['value']:.4f}, {best['params']}")
    row = test["comparison"] or {}
    if row:
        print(
            f"on test over seeds {test['seeds']}: best - base = {row['contribution'] * 100:+.2f} "
            f"points [{_pct(row['ci_low'])}, {_pct(row['ci_high'])}], McNemar p "
            f"{_num(row['p_mcnemar'])}"
        )
    if test["note"]:
        print(f"note: {test['note']}")
    shares = ", ".join(f"{k} {v:.2f}" for k, v in data["importances"].items())
    if shares:
        print(f"importance (fANOVA): {shares}")


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:+.2f}"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"
