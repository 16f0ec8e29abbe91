"""A search's result, honestly: the best trial retrained on fresh seeds and compared on test.

The trials chose on validation; their best value is biased upwards (it is the maximum of many
noisy values). So the best configuration is trained again with ``retrain_seeds`` seeds no trial
used, and so is the base config with the same seeds, and only these runs read the test split.
The comparison is the ablations' (``workbench.ablation.statistics.paired_comparison``): the
paired difference ``acc(best) - acc(base)`` over the seeds with its t interval, and McNemar's
exact test on the images one got right and the other wrong. Parameter importances are Optuna's
fANOVA (Hutter et al. 2014, "An Efficient Approach for Assessing Hyperparameter Importance"):
the share of the objective's variance over the space that each parameter explains, from a
random forest fitted to the finished trials.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from workbench.ablation.statistics import noise_floor, paired_comparison
from workbench.config.run_config import RunConfig
from workbench.runs.submit import Submission
from workbench.search.searches import requeue_stopped, search_runs
from workbench.search.space import config_for
from workbench.storage.store import ACTIVE

if TYPE_CHECKING:
    import optuna

    from workbench.storage.store import Store

__all__ = ["BEST", "BASE", "final_comparison", "importances", "noise_note", "retrain_seeds"]

BEST, BASE = "best", "base"


def retrain_seeds(search: dict[str, Any]) -> list[int]:
    """Fresh seeds: after the ones the trials ran (the base's seed and the next ``seeds - 1``)."""
    first = int(search["base"].get("seed", 0)) + search["seeds"]
    return [first + i for i in range(search["retrain_seeds"])]


def final_comparison(
    store: Store,
    study: optuna.Study,
    search: dict[str, Any],
    submit: Callable[[list[Submission]], list[str]],
    stop: threading.Event,
    poll_s: float,
) -> dict[str, Any] | None:
    """Retrain the best trial's config and the base config on ``retrain_seeds`` (queued once;
    a later call finds them), wait for them, and compare on test. None on ``stop``."""
    best = _best(study)
    if best is None:
        return {"best": None, "note": "no trial completed, so there is nothing to retrain"}
    base = RunConfig.from_dict(search["base"])
    run_ids = _retrain_runs(store, search, base, best.params, submit)
    while any(store.get_run(r)["status"] in ACTIVE for r in run_ids):
        if stop.wait(poll_s):
            return None
    records = [store.get_run(r) for r in run_ids]
    results, per_image = _test_results(store, records)
    row: dict[str, Any] = {}
    if results.get(BEST) and results.get(BASE):
        row = paired_comparison(results, BEST, BASE, per_image=per_image)
    n_test = len(next(iter(per_image[BASE].values()))) if per_image.get(BASE) else None
    noise = noise_floor(results.get(BASE, {}), n_test)
    return _plain(
        {
            "best": {"number": best.number, "params": best.params, "value": best.value},
            "best_config": config_for(base, best.params).to_dict(),
            "seeds": retrain_seeds(search),
            "run_ids": run_ids,
            "results": {k: {str(s): a for s, a in v.items()} for k, v in results.items()},
            "comparison": row,
            "noise": noise,
            "note": noise_note(row, noise),
            "importances": importances(study),
        }
    )


def _best(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:  # no complete trial
        return None


def _retrain_runs(
    store: Store,
    search: dict[str, Any],
    base: RunConfig,
    params: dict[str, Any],
    submit: Callable[[list[Submission]], list[str]],
) -> list[str]:
    """The retraining runs: found in the store (queued before a kill; those a kill or a cancel
    stopped are queued again), else queued now, the
    best config's and the base's for each fresh seed (all or none, through the submit gate)."""
    found = [
        r for r in search_runs(store, search["id"]) if r.get("trial") is None and r.get("variant")
    ]
    if found:  # a stopped one resumes from its checkpoint
        return requeue_stopped(store, found)
    best = config_for(base, params)
    submissions = [
        Submission(
            config.replace(seed=seed, evaluate_test=True),
            name=f"{search['name']}: {variant} (seed {seed})",
            tags=("search",),
            variant=variant,
            private=bool(search.get("private")),
            search=search["id"],
        )
        for seed in retrain_seeds(search)
        for variant, config in ((BEST, best), (BASE, base))
    ]
    return submit(submissions)


def _test_results(
    store: Store, records: list[dict[str, Any]]
) -> tuple[dict[str, dict[int, float]], dict[str, dict[int, list[int]]]]:
    """``{variant: {seed: test_acc}}`` and ``{variant: {seed: [0/1 per test image]}}`` of the
    completed retraining runs."""
    results: dict[str, dict[int, float]] = {}
    per_image: dict[str, dict[int, list[int]]] = {}
    for record in records:
        acc = (record.get("metrics") or {}).get("test_acc")
        if record["status"] != "completed" or acc is None:
            continue
        seed = int(record["config"]["seed"])
        results.setdefault(record["variant"], {})[seed] = float(acc)
        correct = (store.probe(record["id"]) or {}).get("test_correct")
        if correct is not None:
            per_image.setdefault(record["variant"], {})[seed] = [int(v) for v in correct]
    return results, per_image


def noise_note(row: dict[str, Any], noise: dict[str, float]) -> str:
    """One sentence when the best is not told apart from the base: its interval holds 0, or the
    difference is below the base's noise floor (the larger of one run's binomial standard error
    on the test split and the seed-to-seed standard deviation); empty otherwise."""
    if not row:
        return "the retraining runs did not all complete, so best and base were not compared"
    diff, low, high = row["contribution"], row["ci_low"], row["ci_high"]
    floor = max(
        (v for v in (noise["binomial_se"], noise["seed_sd"]) if math.isfinite(v)), default=0
    )
    if math.isfinite(low) and low <= 0 <= high:
        return (
            f"the search's best is within the noise of the base: best - base = {diff * 100:+.2f} "
            f"points, and its interval [{low * 100:+.2f}, {high * 100:+.2f}] holds 0"
        )
    if abs(diff) < floor:
        return (
            f"the search's best is within the noise floor of the base: best - base = "
            f"{diff * 100:+.2f} points, below the floor of {floor * 100:.2f} points"
        )
    return ""


def importances(study: optuna.Study) -> dict[str, float]:
    """fANOVA importance of each parameter (shares summing to 1), from the finished trials;
    empty while fewer than 2 have completed or nothing varied."""
    import optuna

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < 2:
        return {}
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    try:
        found = optuna.importance.get_param_importances(study, evaluator=evaluator)
    except (ValueError, RuntimeError, ZeroDivisionError):  # one value everywhere, no shared space
        return {}
    return {name: float(v) for name, v in found.items() if math.isfinite(v)}


def _plain(value: Any) -> Any:
    """``value`` with NaN and infinities as None and numpy numbers as Python ones (JSON)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float) or hasattr(value, "item"):
        number = value.item() if hasattr(value, "item") else value
        if isinstance(number, float) and not math.isfinite(number):
            return None
        return number
    return value
