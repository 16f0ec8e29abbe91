"""Command line: ``python -m workbench run|submit|ablate|search|resume|cancel|delete|worker|runs|
show|store|download``, the same engine and the same queue as the app.

Every command acts as a user: ``--user NAME``, else ``$KDWB_USER``, else the OS user, under the
same access rules as the app (``workbench.lab.access``): ``cancel RUN --user bob`` on alice's run is
refused with exit code 2 and one line saying why."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import threading
import time
from typing import Any, NoReturn

from workbench.cli_inputs import (
    add_run_flags,
    check_slots,
    config_from_args,
    first_ctrl_c_sets,
    in_form_words,
)
from workbench.cli_output import (
    Progress,
    accuracies,
    print_epochs,
    print_record,
    print_runs,
    print_suite,
    reader_gone,
    result_json,
    suite_json,
)
from workbench.config.run_config import RunConfig, check_run_name, summary_of
from workbench.errors import ConfigError, WorkbenchError, quoted
from workbench.runs.worker_options import add_worker_flags
from workbench.search.command import add_search_flags

__all__ = ["config_from_args", "main"]


def _user(args: argparse.Namespace) -> Any:
    """The user this command acts as (``--user``, ``$KDWB_USER``, the OS user)."""
    from workbench.lab import settings
    from workbench.lab.identity import cli_user

    return cli_user(getattr(args, "user", None), settings.current())


def _submit_here(
    store: Any, user: Any, submissions: list[Any], executor: Any = None, *, queue: bool = False
) -> list[str]:
    """Runs this process trains itself, through the submit gate (claimed at creation by
    ``executor``, a new ``cli`` one by default); with ``queue``, runs queued for the executors
    (their device is checked by the one that takes it: a worker may have CUDA this host lacks)."""
    from workbench.lab import settings
    from workbench.runs import queue as runqueue
    from workbench.runs.submit import submit_runs

    return submit_runs(
        store,
        submissions,
        user=user,
        quotas=settings.current().user_quotas(),
        check_device_here=not queue,
        executor=None if queue else executor or runqueue.Executor("cli"),
    )


def cmd_run(args: argparse.Namespace) -> int:
    from workbench.runs.submit import Submission
    from workbench.storage.store import Store

    config = config_from_args(args)
    name = check_run_name(args.name)
    user = _user(args)
    store = _opened(Store())
    # a missing dataset, unpairable layers, no CUDA, an unknown teacher run, a limit: no record
    (run_id,) = _submit_here(store, user, [Submission(config, name=name)])
    return _run_here(config, store, run_id, args.json)


def cmd_submit(args: argparse.Namespace) -> int:
    """Queue one run, admitted like every run, for a worker or the app to train."""
    from workbench.runs.submit import Submission
    from workbench.storage.store import Store

    config, name = config_from_args(args), check_run_name(args.name)
    store = _opened(Store())
    (run_id,) = _submit_here(store, _user(args), [Submission(config, name=name)], queue=True)
    queued = f"queued run {run_id}; a worker (`python -m workbench worker`) or the app trains it"
    print(json.dumps({"run_id": run_id}) if args.json else queued)
    return 0


def _run_here(config: RunConfig, store: Any, run_id: str, as_json: bool) -> int:
    """Train ``run_id`` in this process (already claimed by it) and print the result."""
    from workbench.training.loop import run

    record = run(config, store, on_step=Progress(), run_id=run_id)
    if as_json:
        print(json.dumps(result_json(record, store.epochs(run_id))))
    else:
        print_record(record, store.epochs(run_id))
    return 0 if record["status"] == "completed" else 1


def cmd_resume(args: argparse.Namespace) -> int:
    """Continue an interrupted, failed or cancelled run from its last checkpoint, here."""
    from workbench.lab.access import check_change
    from workbench.runs import queue as runqueue
    from workbench.storage.store import Store

    store = _opened(Store())
    record = _get_run(store, args.run_id, args)
    check_change(_user(args), record, "resume")
    runqueue.recover(store)
    if store.get_run(args.run_id)["status"] != "queued":  # auto-resume may have queued it already
        runqueue.requeue(store, args.run_id)
    if runqueue.claim(store, args.run_id, runqueue.Executor("cli")) is None:
        raise WorkbenchError(f"run {args.run_id} was taken by another worker meanwhile")
    print(f"[resume] run {args.run_id}", file=sys.stderr)
    return _run_here(RunConfig.from_dict(record["config"]), store, args.run_id, args.json)


def cmd_cancel(args: argparse.Namespace) -> int:
    from workbench.runs import permitted as actions
    from workbench.storage.store import Store

    store = _opened(Store())
    _get_run(store, args.run_id, args)
    outcome = actions.cancel(store, args.run_id, _user(args))
    print(
        f"run {args.run_id} cancelled"
        if outcome == "cancelled"
        else f"run {args.run_id}: cancel requested; it stops at its next logged step"
    )
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    from workbench.runs import permitted as actions
    from workbench.storage.store import Store

    store = _opened(Store())
    _recover(store)
    _get_run(store, args.run_id, args)
    actions.delete_run(store, args.run_id, _user(args))
    print(f"run {args.run_id} deleted, with its checkpoint and files")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    """Execute queued runs from the store until interrupted (Ctrl-C or SIGTERM)."""
    from workbench.runs.worker import serve
    from workbench.runs.worker_options import cluster_options
    from workbench.storage.store import Store

    check_slots(args.slots)
    cluster = cluster_options(args)
    serve(_opened(Store()), device=args.device, slots=args.slots, once=args.once, cluster=cluster)
    return 0


_OPENED: list[Any] = []  # stores a command opened, closed when it returns


def _opened(store: Any) -> Any:
    """Close ``store`` when the command ends: an open SQLite connection left to the garbage
    collector checkpoints its WAL whenever that runs, long after the command."""
    _OPENED.append(store)
    return store


def _recover(store: Any) -> None:
    """Show runs whose process died as they are (queued again to resume, or interrupted), not as
    still running; a read-only store (full disk) is shown as it is."""
    from workbench.runs import queue as runqueue

    if store.read_only is None:
        runqueue.recover(store)


def _get_run(store: Any, run_id: str, args: argparse.Namespace) -> dict[str, Any]:
    """The run as the command's user may see it (someone else's private run is not found)."""
    from workbench.runs import permitted as actions

    try:
        return actions.get_run(store, run_id, _user(args))
    except KeyError as exc:
        raise WorkbenchError(f"{exc.args[0]}; list runs with `python -m workbench runs`") from None


def cmd_ablate(args: argparse.Namespace) -> int:
    """Train a suite here, one run after another. Ctrl-C stops the suite, not just the run in
    progress: that run is stopped at its next step and the runs still waiting are cancelled
    (both resumable with ``resume``). SIGTERM, as for any CLI run, leaves them to recovery,
    which queues them again for a worker."""
    from workbench.ablation.suites import launch_suite, suite_analysis
    from workbench.ablation.variants import check_ablatable
    from workbench.runs import queue as runqueue
    from workbench.storage.store import Store
    from workbench.ui.form_values import MAX_SEEDS

    config = config_from_args(args)
    args.name = check_run_name(args.name)
    if not 1 <= args.seeds <= MAX_SEEDS:
        raise WorkbenchError(
            f"--seeds must be a whole number from 1 to {MAX_SEEDS}, got {args.seeds}"
        )
    check_ablatable(config)
    user = _user(args)
    store = _opened(Store())
    executor = runqueue.Executor("cli")
    queued: list[tuple[str, RunConfig, str]] = []

    def submit(submissions: list[Any]) -> list[str]:  # held by this process, never queued
        run_ids = _submit_here(store, user, submissions, executor)
        queued.extend(
            (i, s.config, s.variant or "") for i, s in zip(run_ids, submissions, strict=True)
        )
        return run_ids

    suite = launch_suite(
        config,
        store,
        submit,
        seeds=args.seeds,
        factorial=args.factorial,
        name=args.name,
        owner=user.name,
    )
    stop, started = threading.Event(), []
    try:
        with first_ctrl_c_sets(stop):
            _run_suite(store, queued, stop, started)
    except KeyboardInterrupt:  # a second Ctrl-C, outside the run's own handling
        stop.set()
    if stop.is_set():
        return _stop_suite(store, suite, [r for r, _, _ in queued], executor, started)
    analysis = suite_analysis(store, suite)
    if args.json:
        print(json.dumps(suite_json(suite, analysis)))
    else:
        print_suite(suite, analysis)
    return 0 if all(store.get_run(r)["status"] == "completed" for r, _, _ in queued) else 1


def cmd_search(args: argparse.Namespace) -> int:
    """A search over the loss (``workbench.search``): trials as queued runs, a worker beside."""
    from workbench.lab import settings
    from workbench.search.command import run_search
    from workbench.storage.store import Store

    store = _opened(Store())
    _recover(store)
    return run_search(args, store, _user(args), settings.current().user_quotas())


def _run_suite(
    store: Any, queued: list[tuple[str, RunConfig, str]], stop: Any, started: list[str]
) -> None:
    from workbench.training.loop import run

    progress = Progress()
    for i, (run_id, cfg, variant) in enumerate(queued, start=1):
        if stop.is_set():
            return
        print(f"[suite] run {i}/{len(queued)}: {variant}, seed {cfg.seed}", file=sys.stderr)
        started.append(run_id)
        run(cfg, store, on_step=progress, stop=stop, run_id=run_id)


def _stop_suite(
    store: Any, suite: dict[str, Any], run_ids: list[str], executor: Any, started: list[str]
) -> int:
    """Cancel the suite's runs this process still holds (those waiting their turn, and the one
    in progress if it did not end itself), say so in one line, and return 130 (interrupted)."""
    from workbench.storage.store import ACTIVE

    waiting = 0
    for run_id in run_ids:
        done = store.update_run_if(
            run_id,
            lambda r: r["status"] in ACTIVE and r.get("claimed_by") in (None, executor.id),
            status="cancelled",
            finished_at=time.time(),
            claimed_by=None,
        )
        if done is not None and not done.get("executions"):
            waiting += 1
    last = started[-1] if started else None
    stopped = ""
    if last is not None and store.get_run(last)["status"] == "cancelled":
        stopped = f" and stopped run {last}"
    print(
        f"stopped: cancelled {waiting} queued runs of suite {suite['id']}{stopped}; "
        "`python -m workbench resume RUN` continues any of them",
        file=sys.stderr,
    )
    return 130


def cmd_runs(args: argparse.Namespace) -> int:
    from workbench.storage.store import STATUSES, Store

    if args.status is not None and args.status not in STATUSES:  # else silently "no runs yet"
        raise WorkbenchError(
            f"--status must be one of {', '.join(STATUSES)}, got {quoted(args.status)}"
        )
    from workbench.runs import permitted as actions

    store = _opened(Store())
    _recover(store)
    records = actions.list_runs(
        store, _user(args), mine=args.mine, status=args.status, role=args.role
    )
    places = _queue_places(store)
    if args.json:
        print(
            json.dumps(
                [
                    result_json(r, store.epochs(r["id"]))
                    | {
                        "name": r.get("name") or "",
                        "owner": r.get("owner") or "",
                        "private": bool(r.get("private")),
                        "queue_position": getattr(places.get(r["id"]), "position", None),
                        "queue_eta_s": getattr(places.get(r["id"]), "eta_s", None),
                        "summary": summary_of(r["config"]),
                    }
                    for r in records
                ]
            )
        )
    elif not records:
        print("no runs yet: start one with `python -m workbench run`")
    else:
        print_runs(records, places, store.epochs)
    return 0


def _queue_places(store: Any) -> dict[str, Any]:
    """Each queued run's place and estimated start, as the Runs page shows them (the live
    workers' slots; one slot when none is alive: the app's own)."""
    from workbench.lab import settings
    from workbench.runs import queue as runqueue

    slots = runqueue.worker_slots(store) or 1
    return runqueue.plan(store, slots, settings.current().max_running())


def cmd_show(args: argparse.Namespace) -> int:
    from workbench.storage.store import Store

    store = _opened(Store())
    _recover(store)
    record = _get_run(store, args.run_id, args)
    epochs = store.epochs(args.run_id)
    if args.json:  # the record, with its accuracies named on top (``accuracies``)
        print(json.dumps(record | accuracies(record, epochs) | {"epochs": epochs}, default=str))
    else:
        print_record(record, epochs)
        print_epochs(epochs)
        if store.probe_state(args.run_id) == "missing":
            print(
                "  probe: missing (it was saved, but its file is gone; "
                "`python -m workbench store check` lists the damage)"
            )
    return 0


def cmd_store(args: argparse.Namespace) -> int:
    from workbench.storage.repair import check_store, repair_store

    if args.action == "check":
        report = check_store()
        print("\n".join(report.lines()))
        return 0 if report.ok else 1
    report = repair_store()
    print("\n".join(report.lines()))
    return 0 if report.after.ok else 1


def cmd_download(args: argparse.Namespace) -> int:
    from workbench.data.datasets import download_dataset

    path = download_dataset(args.dataset)
    print(f"{args.dataset} is in {path}")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line (``error: ...``) like every other bad input."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def _add_user(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--user", default=None, help="act as this user (default: $KDWB_USER, else the OS user)"
    )


def _add_training_commands(sub: Any) -> list[argparse.ArgumentParser]:
    """The commands that take the run flags: run, submit, ablate, search."""
    p_run = sub.add_parser("run", help="train one run (the teacher first, if needed)")
    p_submit = sub.add_parser("submit", help="queue one run for a worker or the app to train")
    p_ablate = sub.add_parser(
        "ablate", help="an ablation suite: drop one loss term at a time, several seeds"
    )
    p_search = sub.add_parser("search", help="search the loss with Optuna, trials as queued runs")
    for p, func in ((p_run, cmd_run), (p_submit, cmd_submit), (p_ablate, cmd_ablate)):
        add_run_flags(p)
        p.set_defaults(func=func)
    p_ablate.add_argument("--seeds", type=int, default=3, help="seeds per variant (default 3)")
    p_ablate.add_argument(
        "--factorial", action="store_true", help="all on/off combinations, with Shapley values"
    )
    add_run_flags(p_search)
    add_search_flags(p_search)
    p_search.set_defaults(func=cmd_search)
    return [p_run, p_submit, p_ablate, p_search]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m workbench", description="KD Workbench command line")
    sub = parser.add_subparsers(dest="command", required=True)
    trained = _add_training_commands(sub)
    p_resume = sub.add_parser(
        "resume", help="continue an interrupted, failed or cancelled run from its last checkpoint"
    )
    p_resume.add_argument("run_id")
    p_resume.add_argument("--json", action="store_true")
    p_resume.set_defaults(func=cmd_resume)
    p_cancel = sub.add_parser("cancel", help="cancel a queued or running run")
    p_cancel.add_argument("run_id")
    p_cancel.set_defaults(func=cmd_cancel)
    p_delete = sub.add_parser("delete", help="delete a finished run with its checkpoint")
    p_delete.add_argument("run_id")
    p_delete.set_defaults(func=cmd_delete)
    p_worker = sub.add_parser("worker", help="execute queued runs from the store")
    add_worker_flags(p_worker)
    p_worker.set_defaults(func=cmd_worker)
    p_runs = sub.add_parser("runs", help="list the runs in the store")
    p_runs.add_argument("--status")
    p_runs.add_argument("--role", choices=["student", "teacher"])
    p_runs.add_argument("--json", action="store_true")
    p_runs.add_argument("--mine", action="store_true", help="only this user's runs")
    p_runs.set_defaults(func=cmd_runs)
    p_show = sub.add_parser("show", help="show one run")
    p_show.add_argument("run_id")
    p_show.add_argument("--json", action="store_true")
    p_show.set_defaults(func=cmd_show)
    p_store = sub.add_parser(
        "store",
        help="check the run store for damage, or repair it (rebuild the run index from the "
        "run manifests; stop the app and workers first)",
    )
    p_store.add_argument("action", choices=["check", "repair"])
    p_store.set_defaults(func=cmd_store)
    for p in (*trained, p_resume, p_cancel, p_delete, p_runs, p_show):
        _add_user(p)
    p_dl = sub.add_parser(
        "download", help="download a torchvision dataset into the store (needs internet)"
    )
    p_dl.add_argument("dataset")
    p_dl.set_defaults(func=cmd_download)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.time()
    try:
        code = args.func(args)
        sys.stdout.flush()  # a reader that went away shows here, not in the flush at exit
        return code
    except BrokenPipeError:
        return reader_gone()
    except WorkbenchError as exc:  # a config field's error in the form's words, field in brackets
        print(
            f"error: {in_form_words(str(exc)) if isinstance(exc, ConfigError) else exc}",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print(f"interrupted after {time.time() - started:.0f}s", file=sys.stderr)
        return 130
    finally:
        while _OPENED:
            with contextlib.suppress(Exception):  # closing must not hide the command's outcome
                _OPENED.pop().close()
