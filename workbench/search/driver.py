"""Drive a search: ask Optuna for a trial, queue its runs through the submit gate, report their
validation accuracy each epoch, prune or tell, and after the budget compare on test.

The driver never trains: the trial's runs are queued like any other (owned by the search's owner,
in the fair queue, under their quotas) and the executors (the app, ``python -m workbench worker``,
or the worker that ``python -m workbench search`` starts beside its driver) train them. Trials run
one after another, so that TPE learns from each; a trial's seeds run at once where the executors
have slots.

A trial is finished when Optuna has told it ``COMPLETE`` (value: the mean final validation
accuracy over its seeds) or ``PRUNED`` (the median pruner stopped it: its runs are cancelled
through the normal cancel and kept). A trial whose runs failed is told ``FAIL`` and does not
count towards the budget. One driver per search at a time (a store lock): a killed driver is
continued by ``drive`` again, which takes up the trial it left ``RUNNING`` with its runs, each
resumed from its checkpoint, and queues nothing twice.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from workbench.config.run_config import RunConfig
from workbench.errors import WorkbenchError
from workbench.lab.access import check_change
from workbench.runs import queue as runqueue
from workbench.runs.submit import Submission, submit_runs
from workbench.search.result import final_comparison
from workbench.search.searches import (
    get_search,
    open_study,
    requeue_stopped,
    save_search,
    search_params,
    search_runs,
)
from workbench.search.space import Param, config_for, prior_params, suggest
from workbench.storage.store import ACTIVE

if TYPE_CHECKING:
    import optuna

    from workbench.lab.identity import User
    from workbench.lab.settings import UserQuotas
    from workbench.storage.store import Store

__all__ = [
    "FAILURES_IN_A_ROW",
    "Submit",
    "drive",
    "enqueue_prior",
    "finished_trials",
    "trial_seeds",
]

FAILURES_IN_A_ROW = 3  # failed trials in a row that stop the search (a config that cannot run)
Submit = Callable[[list[Submission]], list[str]]
Say = Callable[[str], None]


def drive(
    store: Store,
    search_id: str,
    *,
    user: User,
    quotas: UserQuotas | None = None,
    stop: threading.Event | None = None,
    poll_s: float = 0.2,
    say: Say | None = None,
    submit: Submit | None = None,
    held: threading.Event | None = None,
) -> dict[str, Any]:
    """Run search ``search_id`` to its budget of finished trials, then its final comparison on
    test (``workbench.search.result``); returns the search record. ``stop``: return at the next
    poll, leaving the trial in progress to a later ``drive`` (its runs go on). ``submit``: how
    runs are queued as ``user`` (a job manager's ``submit_many``, which wakes its executor at
    once; default: the submit gate with ``quotas``). ``held`` is set once this driver holds the
    search's lock. Only the search's owner (or an admin) drives it; a second driver is refused
    in one line."""
    search = get_search(store, search_id)
    check_change(user, search, "run", what="search")
    stop = stop or threading.Event()
    say = say or (lambda _message: None)

    def gate(submissions: list[Submission]) -> list[str]:
        return submit_runs(store, submissions, user=user, quotas=quotas, check_device_here=False)

    submit = submit or gate

    with store.lock(
        f"search:{search_id}",
        description=f"driving search {search['name']}",
        on_wait=lambda message: _refuse(search, message),
        report_after=0.0,
    ):
        if held is not None:
            held.set()
        study = open_study(store, search)
        enqueue_prior(store, study, search)
        if not _run_trials(store, study, search, submit, stop, poll_s, say):
            return get_search(store, search_id)
        if search.get("result") is None:
            say("budget reached: retraining the best trial and the base config on fresh seeds")
            result = final_comparison(store, study, search, submit, stop, poll_s)
            if result is None:
                return get_search(store, search_id)
            search = {**get_search(store, search_id), "result": result}
            save_search(store, search)
    return search


def _refuse(search: dict[str, Any], message: str) -> None:
    if message.startswith("waiting"):
        holder = message.partition("held by ")[2]
        raise WorkbenchError(
            f"search {search['name']} is being run by another process ({holder}); wait for it "
            "to finish, or stop it first"
        )


def finished_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The trials that count towards the budget: complete or pruned."""
    import optuna

    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return study.get_trials(deepcopy=False, states=done)


def trial_seeds(search: dict[str, Any]) -> list[int]:
    """The seeds each trial runs: the base config's seed and the next ones."""
    first = int(search["base"].get("seed", 0))
    return [first + i for i in range(search["seeds"])]


def _run_trials(
    store: Store,
    study: optuna.Study,
    search: dict[str, Any],
    submit: Submit,
    stop: threading.Event,
    poll_s: float,
    say: Say,
) -> bool:
    """Trials until the budget is reached (True) or ``stop`` is set (False)."""
    base = RunConfig.from_dict(search["base"])
    params = search_params(search)
    failures = 0
    while len(finished_trials(study)) < search["trials"]:
        if stop.is_set():
            return False
        trial, reported = _next_trial(study)
        chosen = suggest(trial, params, base)
        run_ids = _trial_runs(store, search, trial.number, base, chosen, submit)
        say(f"trial {trial.number}: {_describe(chosen)} -> runs {', '.join(run_ids)}")
        state = _follow(store, study, trial, run_ids, reported, stop, poll_s)
        if state is None:
            return False
        say(f"trial {trial.number}: {state}")
        failures = failures + 1 if state.startswith("failed") else 0
        if failures >= FAILURES_IN_A_ROW:
            raise WorkbenchError(
                f"search {search['name']}: {failures} trials in a row failed, the last with "
                f"{state}; fix the base config and continue it with --resume"
            )
    return True


def _describe(chosen: dict[str, Any]) -> str:
    return ", ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in chosen.items()
    )


def _next_trial(study: optuna.Study) -> tuple[optuna.Trial, set[int]]:
    """The trial a killed driver left running (taken up with its parameters and the epochs it
    reported), else a new one."""
    import optuna

    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    if running:  # Optuna has no public call to take up a running trial: it is built from its id
        left = running[0]
        return optuna.trial.Trial(study, left._trial_id), set(left.intermediate_values)
    return study.ask(), set()


def _trial_runs(
    store: Store,
    search: dict[str, Any],
    number: int,
    base: RunConfig,
    chosen: dict[str, Any],
    submit: Submit,
) -> list[str]:
    """The trial's runs: those the store has already (a killed driver queued them; an
    interrupted or cancelled one is queued again to resume from its checkpoint), else one new
    queued run per seed, validation only."""
    mine = [r for r in search_runs(store, search["id"]) if r.get("trial") == number]
    if mine:
        return requeue_stopped(store, mine)
    submissions = [
        Submission(
            config_for(base, chosen, seed=seed).replace(evaluate_test=False),
            name=f"{search['name']}: trial {number} (seed {seed})",
            tags=("search",),
            private=bool(search.get("private")),
            search=search["id"],
            trial=number,
        )
        for seed in trial_seeds(search)
    ]
    return submit(submissions)


def _follow(
    store: Store,
    study: optuna.Study,
    trial: optuna.Trial,
    run_ids: list[str],
    reported: set[int],
    stop: threading.Event,
    poll_s: float,
) -> str | None:
    """Wait for the trial's runs, reporting the mean validation accuracy of each epoch all
    seeds have reached (``reported``: the epochs reported already); prune or tell. Returns the trial's state in words, or None on ``stop``
    (the trial stays running in the study)."""
    import optuna

    epochs = int(store.get_run(run_ids[0])["config"]["epochs"])
    while True:
        records = [store.get_run(run_id) for run_id in run_ids]
        for epoch, value in _epoch_means(store, run_ids):
            if epoch not in reported:
                trial.report(value, epoch)
                reported.add(epoch)
                if epoch < epochs and trial.should_prune():  # the last epoch: nothing to save
                    _cancel(store, run_ids)
                    while any(store.get_run(r)["status"] in ACTIVE for r in run_ids):
                        stop.wait(poll_s)  # stopped at its next logged step, then kept
                    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                    return f"pruned at epoch {epoch} (mean validation accuracy {value:.4f})"
        if not any(r["status"] in ACTIVE for r in records):
            return _tell(study, trial, records)
        if stop.wait(poll_s):
            return None


def _epoch_means(store: Store, run_ids: list[str]) -> list[tuple[int, float]]:
    """``(epoch, mean val_acc)`` for each epoch every run has logged."""
    per_run = [{row["epoch"]: row["val_acc"] for row in store.epochs(r)} for r in run_ids]
    shared = set.intersection(*(set(rows) for rows in per_run)) if per_run else set()
    return [(e, sum(rows[e] for rows in per_run) / len(per_run)) for e in sorted(shared)]


def _cancel(store: Store, run_ids: list[str]) -> None:
    """The normal cancel of each run still active (a queued one at once, a running one at its
    next logged step); the runs are kept."""
    for run_id in run_ids:
        if store.get_run(run_id)["status"] in ACTIVE:
            with contextlib.suppress(WorkbenchError):  # it finished meanwhile
                runqueue.cancel(store, run_id)


def _tell(study: optuna.Study, trial: optuna.Trial, records: list[dict[str, Any]]) -> str:
    import optuna

    bad = [r for r in records if r["status"] != "completed"]
    if bad:
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        first = bad[0]
        why = f": {first['error']}" if first.get("error") else ""
        return f"failed (run {first['id']} {first['status']}{why})"
    value = sum(float(r["metrics"]["val_acc"]) for r in records) / len(records)
    study.tell(trial, value)
    return f"complete, mean validation accuracy {value:.4f}"


def enqueue_prior(store: Store, study: optuna.Study, search: dict[str, Any]) -> None:
    """Once, before the first trial: when an ablation suite of the same base config exists, the
    base (the course's preset) and its leave-one-out variants are the first trials."""
    if study.trials or not _has_ablation(store, search):
        return
    base = RunConfig.from_dict(search["base"])
    params: list[Param] = search_params(search)
    for values in prior_params(base, params)[: search["trials"]]:
        study.enqueue_trial(values, skip_if_exists=True)


def _has_ablation(store: Store, search: dict[str, Any]) -> bool:
    key = RunConfig.from_dict(search["base"]).fingerprint(exclude_seed=True)
    for suite in store.list_suites():
        try:
            if RunConfig.from_dict(suite["base"]).fingerprint(exclude_seed=True) == key:
                return True
        except WorkbenchError:  # a suite stored under older bounds
            continue
    return False
