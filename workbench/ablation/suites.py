"""Ablation suites as stored objects: launch one from a base config, read its results.

A suite is a record of its own in the store (``store.save_suite``) that lists its runs, so the
app shows finished and unfinished suites after a restart. The variants and their statistics
live in ``workbench.ablation.variants`` and ``workbench.ablation.statistics``; this module only
wires them to the store.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from workbench.ablation.describe import scratch_variant, suite_kind
from workbench.ablation.shapley import BASELINE_SENTENCES, interaction_notes, shapley_intervals
from workbench.ablation.statistics import (
    PerImage,
    contributions,
    noise_floor,
    paired_comparison,
    shapley_tables,
    variant_summary,
)
from workbench.ablation.variants import FULL, LABEL_ONLY, suite_configs, suite_results
from workbench.config.run_config import LossWeights, RunConfig
from workbench.data.datasets import load_dataset
from workbench.runs.submit import Submission
from workbench.storage.store import ACTIVE, Store, new_id

__all__ = [
    "SUITE_PRESETS",
    "Submit",
    "SuitePreset",
    "demo_preset",
    "launch_suite",
    "factorial_readout",
    "per_image_results",
    "scratch_comparison",
    "suite_analysis",
    "suite_metric",
    "suite_progress",
]

# Suites worth running as they are: (base config, seeds). "demo ablation" is the setting of
# docs/DEMO_ABLATION.md in which distillation's effect is larger than the noise on a 2-core CPU
# in a few minutes: the mlp student learns from 5 % of digits' training images (a fixed,
# stratified subset, the same for every variant and seed), the small_cnn teacher from all of
# them (Hinton et al. 2015 show soft targets carry most of what a student needs when it sees
# little data). Reproduce the table with ``python bench/demo_ablation.py``.
SUITE_PRESETS: dict[str, tuple[RunConfig, int]] = {
    "demo ablation": (
        RunConfig(
            dataset="digits",
            teacher="small_cnn",
            student="mlp",
            weights=LossWeights(0.3, 0.3, 0.2, 0.2),
            temperature=4.0,
            epochs=60,
            teacher_epochs=15,
            batch_size=16,
            train_fraction=0.05,
            log_every=20,
        ),
        5,
    ),
}


@dataclass(frozen=True)
class SuitePreset:
    """A suite to launch as it is: ``launch_suite(preset.config, store, submit,
    seeds=preset.seeds, factorial=preset.factorial, name=preset.name)``; ``shows``: one line on
    what it shows, for the button that launches it."""

    name: str
    config: RunConfig
    seeds: int
    factorial: bool
    shows: str

    @property
    def kind(self) -> str:
        return "factorial" if self.factorial else "leave-one-out"

    @property
    def runs(self) -> int:
        return len(suite_configs(self.config, seeds=self.seeds, factorial=self.factorial))


def demo_preset() -> SuitePreset:
    """The "demo ablation" of ``SUITE_PRESETS`` (docs/DEMO_ABLATION.md), for the Distill and
    Ablations pages."""
    config, seeds = SUITE_PRESETS["demo ablation"]
    runs = len(suite_configs(config, seeds=seeds))
    shows = (
        f"Leave-one-out on digits, {runs} runs ({seeds} seeds, {config.epochs} epochs, a few "
        f"minutes on a CPU): an {config.student} student that sees 5 % of the training images, "
        f"taught by a {config.teacher}, beats the scratch student by about 6.6 points, almost "
        "all of it from the response term."
    )
    return SuitePreset("demo ablation", config, seeds, False, shows)


# submit([Submission, ...]) -> run ids, all or none (JobManager.submit_many, the submit gate)
Submit = Callable[[list[Submission]], list[str]]


def launch_suite(
    base: RunConfig,
    store: Store,
    submit: Submit,
    *,
    seeds: int = 3,
    factorial: bool = False,
    name: str = "",
    owner: str = "",
    private: bool = False,
) -> dict[str, Any]:
    """Submit every variant x seed of a suite for ``base`` at once and store the suite; returns
    the suite record (``owner``: the user it belongs to; ``submit`` queues the runs as that
    user, all or none, so a refused suite leaves nothing behind; ``private``: the suite and its
    runs are seen by their owner and admins only, ``workbench.lab.access``).

    Leave-one-out: the full loss, each active component removed, and label only. ``factorial``
    runs every on/off combination of the active components instead (and gives Shapley values).
    """
    if base.role != "student":
        raise ValueError("an ablation suite needs a student config")
    configs = suite_configs(base, seeds=seeds, factorial=factorial)
    data = load_dataset(base.dataset, data_path=base.data_path)
    suite_id = new_id("suite-")
    suite = {
        "id": suite_id,
        "owner": owner,
        "private": bool(private),
        "kind": "factorial" if factorial else "leave-one-out",
        "name": name or f"{'factorial' if factorial else 'leave-one-out'}: {base.summary()}",
        "created_at": time.time(),
        "base": base.to_dict(),
        "seeds": seeds,
        "factorial": factorial,
        "players": list(base.weights.active()),
        "num_classes": data.num_classes,
        # Images per evaluation split, for the noise floor (test appears with three splits).
        "n_val": len(data.val_y),
        "n_test": len(data.test_y) if getattr(data, "test_y", None) is not None else None,
        "variants": list(dict.fromkeys(variant for variant, _ in configs)),
        "runs": [],
    }
    submissions = [
        Submission(
            config,
            name=f"{variant} (seed {config.seed})",
            tags=("ablation",),
            suite=suite_id,
            variant=variant,
            private=bool(private),
        )
        for variant, config in configs
    ]
    store.save_suite(suite)  # first: a run never names a suite the store does not have
    try:
        run_ids = submit(submissions)
    except BaseException:
        store.delete_suite(suite_id)
        raise
    suite["runs"] = [
        {"variant": variant, "seed": config.seed, "run_id": run_id}
        for (variant, config), run_id in zip(configs, run_ids, strict=True)
    ]
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


def suite_metric(records: list[dict[str, Any]]) -> tuple[str, str]:
    """The metric the suite's statistics use and its split: ``("test_acc", "test")`` once the
    runs record a test accuracy, else ``("val_acc", "validation")`` (older runs)."""
    if any((r.get("metrics") or {}).get("test_acc") is not None for r in records):
        return "test_acc", "test"
    return "val_acc", "validation"


def per_image_results(store: Store, records: list[dict[str, Any]]) -> dict[str, PerImage]:
    """``{variant: {seed: [0/1 per test image]}}`` from the runs' probes (``test_correct``,
    the correctness of each test image in the split's order); runs without it are left out."""
    out: dict[str, dict[int, list[int]]] = {}
    for record in records:
        if record.get("status") != "completed" or not record.get("variant"):
            continue
        probe = store.probe(record["id"]) or {}
        correct = probe.get("test_correct")
        if correct is None:
            continue
        seed = int(record.get("config", {}).get("seed", 0))
        out.setdefault(record["variant"], {})[seed] = [int(v) for v in correct]
    return out


def suite_analysis(store: Store, suite: dict[str, Any], confidence: float = 0.95) -> dict[str, Any]:
    """Per-variant accuracy, leave-one-out contributions (paired t, Holm, McNemar), the noise
    floor, and Shapley values under both baselines.

    Works on whatever has finished: unfinished seeds are left out, so the numbers firm up as
    runs complete. Shapley values appear once every combination of a factorial suite has a run.
    Keys: ``results, summary, contributions, shapley`` (chance baseline, as before),
    ``shapley_tables`` (``{"chance": ..., "label only": ...}``), ``noise`` (``noise_floor`` of
    the full variant), ``per_image`` (``{variant: {seed: [0/1]}}`` on the test split, for
    ``ablation.paired_comparison``), ``metric`` and ``split`` (which accuracy the numbers are),
    ``scratch`` (distillation vs scratch, ``scratch_comparison``), and the Shapley readout of
    ``factorial_readout`` (``shapley_ci``, ``shapley_baseline``, ``shapley_sentence``,
    ``interactions``).
    """
    records = _records(store, suite)
    metric, split = suite_metric(records)
    results = suite_results(records, metric=metric)
    per_image = per_image_results(store, records) if split == "test" else {}
    summary = (
        variant_summary(results)
        if results
        else pd.DataFrame(columns=["variant", "n", "mean", "std"])
    )
    contrib = (  # no finished "full" run yet: nothing to compare with
        contributions(results, confidence=confidence, per_image=per_image)
        if FULL in results
        else pd.DataFrame()
    )
    n_test = suite.get("n_test") if split == "test" else suite.get("n_val")
    if per_image.get(FULL):
        n_test = len(next(iter(per_image[FULL].values())))
    noise = noise_floor(results.get(FULL, {}), n_test)
    return {
        "results": results,
        "summary": summary,
        "contributions": contrib,
        "noise": noise,
        "per_image": per_image,
        "metric": metric,
        "split": split,
        "scratch": scratch_comparison(suite, results, per_image, confidence),
        **factorial_readout(suite, results, contrib, confidence),
    }


def scratch_comparison(
    suite: dict[str, Any],
    results: dict[str, dict[int, float]],
    per_image: dict[str, PerImage],
    confidence: float = 0.95,
) -> dict[str, Any] | None:
    """Distillation vs scratch: ``paired_comparison`` of the full variant against the suite's
    scratch student (``describe.scratch_variant``) with ``variant`` naming it; None until both
    have a finished run (or when the suite has no scratch student)."""
    scratch = scratch_variant(suite)
    if scratch is None or FULL not in results or scratch not in results or scratch == FULL:
        return None
    row = paired_comparison(results, FULL, scratch, confidence=confidence, per_image=per_image)
    return {"variant": scratch, **row}


def factorial_readout(
    suite: dict[str, Any],
    results: dict[str, dict[int, float]],
    contrib: pd.DataFrame,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """The Shapley part of ``suite_analysis`` (empty values for a suite that is not
    factorial): ``shapley`` (chance baseline), ``shapley_tables`` (both baselines),
    ``shapley_ci`` (``shapley.shapley_intervals`` under the label only baseline, or chance when
    the suite has no scratch student), ``shapley_baseline`` and ``shapley_sentence`` (what the
    values are measured against), ``interactions`` (``shapley.interaction_notes`` against the
    leave-one-out contributions)."""
    out: dict[str, Any] = {
        "shapley": None,
        "shapley_tables": {},
        "shapley_ci": pd.DataFrame(),
        "shapley_baseline": None,
        "shapley_sentence": "",
        "interactions": [],
    }
    if suite_kind(suite) != "factorial":
        return out
    players, classes = suite["players"], suite["num_classes"]
    tables = shapley_tables(results, players, classes)
    baseline = LABEL_ONLY if tables.get(LABEL_ONLY) else "chance"
    ci = shapley_intervals(results, players, classes, baseline=baseline, confidence=confidence)
    loo = {}
    if not contrib.empty:
        loo = dict(zip(contrib["component"], contrib["contribution"], strict=True))
    shown = dict(zip(ci["component"], ci["shapley"], strict=True)) if not ci.empty else {}
    out.update(
        shapley=tables.get("chance"),
        shapley_tables=tables,
        shapley_ci=ci,
        shapley_baseline=baseline,
        shapley_sentence=BASELINE_SENTENCES[baseline],
        interactions=interaction_notes(shown, loo),
    )
    return out
