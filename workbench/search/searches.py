"""Searches as stored objects: a record in the store, and an Optuna study in a journal file.

The record (``search:ID`` in the store) holds what the search is: its name, owner, base config,
space, budget and seeds, and, once it is done, its result. The study (trials, their parameters,
values, per-epoch reports and states) lives in Optuna's journal file storage,
``$KDWB_HOME/searches/ID.journal``, and not in Optuna's SQLite RDB storage, because:

- each change is one JSON line appended and fsync'd under a file lock, and a line cut by a
  kill is skipped when the file is read again: a search killed at any point opens again with
  every trial it had told;
- it needs no schema migrations (the RDB storage needs ``optuna storage upgrade`` across Optuna
  releases) and no second SQLite database beside the store's own;
- one search is one file: copy it, inspect it with ``optuna.load_study``.

A trial's runs carry ``search`` and ``trial`` in their records, so that a search killed between
queueing a trial's runs and noting them finds them again.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench.config.run_config import RunConfig, check_run_name
from workbench.errors import ConfigError, WorkbenchError, quoted
from workbench.search.space import Param, parse_over
from workbench.storage.failures import raise_storage
from workbench.storage.manifests import write_json_atomic
from workbench.storage.store import new_id

if TYPE_CHECKING:
    import optuna

    from workbench.storage.store import Store

__all__ = [
    "MAX_TRIALS",
    "create_search",
    "find_search",
    "get_search",
    "list_searches",
    "open_study",
    "requeue_stopped",
    "save_search",
    "search_params",
    "search_runs",
    "study_path",
]

MAX_TRIALS = 500
MAX_SEEDS = 10


def _check_counts(trials: int, seeds: int, retrain_seeds: int) -> None:
    if not isinstance(trials, int) or not 1 <= trials <= MAX_TRIALS:
        raise ConfigError(f"trials must be a whole number from 1 to {MAX_TRIALS}, got {trials}")
    for flag, value in (("seeds per trial", seeds), ("retrain seeds", retrain_seeds)):
        if not isinstance(value, int) or not 1 <= value <= MAX_SEEDS:
            raise ConfigError(f"{flag} must be a whole number from 1 to {MAX_SEEDS}, got {value}")


def create_search(
    store: Store,
    base: RunConfig,
    *,
    name: str,
    over: str,
    trials: int,
    seeds: int = 1,
    retrain_seeds: int = 5,
    prune: bool = True,
    owner: str = "",
    private: bool = False,
) -> dict[str, Any]:
    """Check and store a new search of ``trials`` trials over ``over`` (``space.parse_over``)
    for the student config ``base``, ``seeds`` runs per trial and ``retrain_seeds`` fresh seeds
    for the final comparison on test (``prune``: the median pruner stops trials that fall
    behind); returns its record. Nothing is queued yet
    (``workbench.search.driver.drive`` does that). The name is unique in the store."""
    if base.role != "student":
        raise ConfigError("a search needs a student config (--role student)")
    name = check_run_name(name).strip()
    if not name:
        raise ConfigError("a search needs a name (to continue it by): give it one")
    _check_counts(trials, seeds, retrain_seeds)
    params = parse_over(over, base)
    if find_search(store, name) is not None:
        raise ConfigError(
            f"a search named {quoted(name)} exists already: continue it (--resume "
            f"{quoted(name)} in the CLI, Continue on the Search page) or pick another name"
        )
    search = {
        "id": new_id("search-"),
        "name": name,
        "owner": owner,
        "private": bool(private),
        "created_at": time.time(),
        "base": base.replace(evaluate_test=True).to_dict(),
        "over": over,
        "space": [p.as_dict() for p in params],
        "trials": trials,
        "seeds": seeds,
        "retrain_seeds": retrain_seeds,
        "prune": bool(prune),
        "result": None,
    }
    save_search(store, search)
    return search


def save_search(store: Store, search: dict[str, Any]) -> None:
    """Store the search record, and a copy beside its journal (``searches/ID.json``), from which
    ``python -m workbench store repair`` restores it."""
    store.set(f"search:{search['id']}", search)
    folder = store.home / "searches"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(folder / f"{search['id']}.json", search)
    except OSError as exc:
        raise_storage(exc, store.home, "writing the search's record")


def get_search(store: Store, search_id: str) -> dict[str, Any]:
    search = store.get(f"search:{search_id}")
    if search is None:
        raise KeyError(f"no search {search_id!r} in the store at {store.home}")
    return search


def list_searches(store: Store) -> list[dict[str, Any]]:
    """Every search in the store, newest first."""
    return sorted(store.values("search:"), key=lambda s: s["created_at"], reverse=True)


def find_search(store: Store, name_or_id: str) -> dict[str, Any] | None:
    """The search with this id or name, or None."""
    for search in list_searches(store):
        if name_or_id in (search["id"], search["name"]):
            return search
    return None


def search_params(search: dict[str, Any]) -> list[Param]:
    return [Param.from_dict(p) for p in search["space"]]


def study_path(store: Store, search: dict[str, Any]) -> Path:
    return store.home / "searches" / f"{search['id']}.journal"


def open_study(store: Store, search: dict[str, Any]) -> optuna.Study:
    """The search's Optuna study (created on first use): TPE (seeded by the base config's seed,
    so a search is repeatable), a median pruner on the per-epoch validation accuracy after a
    third of the epochs (none when the search does not prune), maximized."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    path = study_path(store, search)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        backend = optuna.storages.journal.JournalFileBackend(str(path))
    except OSError as exc:
        raise WorkbenchError(f"cannot open the search's study at {path}: {exc}") from None
    seed = int(search["base"].get("seed", 0))
    return optuna.create_study(
        study_name=search["id"],
        storage=optuna.storages.JournalStorage(backend),
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=_startup(search)),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=_warmup(search))
        if search.get("prune", True)
        else optuna.pruners.NopPruner(),
        direction="maximize",
        load_if_exists=True,
    )


def _warmup(search: dict[str, Any]) -> int:
    """Epochs before the pruner judges a trial: a third of them (at least 1). Early epochs say
    little: in the demo setting a trial pruned at epoch 1 or 2, at 40 % validation accuracy,
    could not be told from one that ends among the best."""
    return max(1, int(search["base"].get("epochs", 3)) // 3)


def _startup(search: dict[str, Any]) -> int:
    """Random trials before TPE models the space: Optuna's default of 10, fewer for a budget
    too small to leave TPE anything (a quarter of the trials, at least 2)."""
    return min(10, max(2, search["trials"] // 4))


def search_runs(store: Store, search_id: str) -> list[dict[str, Any]]:
    """The records of every run of the search (its trials' and its retraining's), oldest first."""
    runs = [r for r in store.list_runs() if r.get("search") == search_id]
    return sorted(runs, key=lambda r: r["created_at"])


def requeue_stopped(store: Store, records: list[dict[str, Any]]) -> list[str]:
    """Queue again, to resume from their checkpoints, the runs of ``records`` that a kill or a
    cancel stopped (``interrupted``, ``cancelled``); returns the ids of all of them, in order."""
    from workbench.runs import queue as runqueue

    for record in records:
        if record["status"] in ("interrupted", "cancelled"):
            with contextlib.suppress(WorkbenchError):  # recovery queued it meanwhile
                runqueue.requeue(store, record["id"])
    return [r["id"] for r in records]
