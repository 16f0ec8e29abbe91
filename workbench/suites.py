"""Ablation suites as stored objects: launch one from a base config, read its results.

A suite is a record of its own in the store (``store.save_suite``) that lists its runs, so the
app shows finished and unfinished suites after a restart. The statistics themselves live in
``workbench.ablation``; this module only wires them to the store.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pandas as pd

from workbench.ablation import (
    contributions,
    factorial_values,
    shapley_values,
    suite_configs,
    suite_results,
    variant_summary,
)
from workbench.config import RunConfig
from workbench.data import load_dataset
from workbench.store import ACTIVE, Store, new_id

__all__ = ["Submit", "launch_suite", "suite_progress", "suite_analysis"]

# submit(config, name=..., tags=..., suite=..., variant=...) -> run id (JobManager.submit fits)
Submit = Callable[..., str]


def launch_suite(
    base: RunConfig,
    store: Store,
    submit: Submit,
    *,
    seeds: int = 3,
    factorial: bool = False,
    name: str = "",
) -> dict[str, Any]:
    """Store a suite for ``base`` and submit every variant x seed; returns the suite record.

    Leave-one-out: the full loss, each active component removed, and label only. ``factorial``
    runs every on/off combination of the active components instead (and gives Shapley values).
    """
    if base.role != "student":
        raise ValueError("an ablation suite needs a student config")
    configs = suite_configs(base, seeds=seeds, factorial=factorial)
    suite_id = new_id("suite-")
    suite = {
        "id": suite_id,
        "name": name or f"{'factorial' if factorial else 'leave-one-out'}: {base.summary()}",
        "created_at": time.time(),
        "base": base.to_dict(),
        "seeds": seeds,
        "factorial": factorial,
        "players": list(base.weights.active()),
        "num_classes": load_dataset(base.dataset, data_path=base.data_path).num_classes,
        "variants": list(dict.fromkeys(variant for variant, _ in configs)),
        "runs": [],
    }
    store.save_suite(suite)
    for variant, config in configs:
        run_id = submit(
            config,
            name=f"{variant} (seed {config.seed})",
            tags=["ablation"],
            suite=suite_id,
            variant=variant,
        )
        suite["runs"].append({"variant": variant, "seed": config.seed, "run_id": run_id})
        store.save_suite(suite)
    return suite


def _records(store: Store, suite: dict[str, Any]) -> list[dict[str, Any]]:
    records = []
    for entry in suite["runs"]:
        if store.has_run(entry["run_id"]):
            records.append(store.get_run(entry["run_id"]))
    return records


def suite_progress(store: Store, suite: dict[str, Any]) -> dict[str, Any]:
    """Counts of the suite's runs by status, and whether any is still queued or running."""
    counts = Counter(r["status"] for r in _records(store, suite))
    missing = len(suite["runs"]) - sum(counts.values())
    if missing:
        counts["deleted"] = missing
    return {
        "total": len(suite["runs"]),
        "counts": dict(counts),
        "done": not any(counts.get(s, 0) for s in ACTIVE),
    }


def suite_analysis(store: Store, suite: dict[str, Any], confidence: float = 0.95) -> dict[str, Any]:
    """Per-variant accuracy, leave-one-out contributions with intervals, Shapley values.

    Works on whatever has finished: unfinished seeds are left out, so the numbers firm up as
    runs complete. Shapley values appear once every combination of a factorial suite has a run.
    """
    results = suite_results(_records(store, suite))
    summary = (
        variant_summary(results)
        if results
        else pd.DataFrame(columns=["variant", "n", "mean", "std"])
    )
    try:
        contrib = contributions(results, confidence=confidence)
    except (KeyError, ValueError):  # no finished "full" run yet
        contrib = pd.DataFrame()
    shapley = None
    if suite.get("factorial"):
        try:
            values = factorial_values(results, suite["players"], suite["num_classes"])
            shapley = shapley_values(values, suite["players"])
        except ValueError:
            shapley = None
    return {"results": results, "summary": summary, "contributions": contrib, "shapley": shapley}
