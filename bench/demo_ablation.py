"""Reproduce the table of docs/DEMO_ABLATION.md: the "demo ablation" suite preset, trained and
analysed from scratch in a fresh store.

The preset (``workbench.ablation.suites.SUITE_PRESETS["demo ablation"]``): a small_cnn teacher trained on
all of digits' training split, an mlp student trained on a fixed stratified 5 % of it, the
course's hybrid loss 0.3/0.3/0.2/0.2, leave-one-out over the four components plus the scratch
student, 5 seeds. Everything runs on the CPU, offline.

    KDWB_HOME=$(mktemp -d) .venv/bin/python bench/demo_ablation.py [--seeds 5] [--figures DIR]
        [--smoke]

Prints Markdown: the accuracy of every variant, the contributions (paired t interval, Holm,
McNemar per image, seeds needed), the noise floor, the gradient shares of the full loss and the
terms that barely act, what the student learned (calibration, logit correlation and embedding
scores of the full hybrid against the scratch student, with paired intervals), and the wall
time. It refuses to report when the engine does not apply
``train_fraction`` (the run record's ``metrics.train_size`` must be the subset's size).

``--smoke``: 2 seeds, the students 2 epochs and the teacher 1 (a check that the script runs, e.g.
in tests/test_bench.py; its figures are not measurements).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from typing import Any

from workbench.ablation.statistics import paired_comparison
from workbench.ablation.suites import SUITE_PRESETS, launch_suite, suite_analysis
from workbench.ablation.variants import FULL, LABEL_ONLY, suite_results
from workbench.data.datasets import load_dataset, train_subset
from workbench.distill.gradient_shares import SHARE_FIELDS, weak_terms
from workbench.distill.model_pair import inspect_pair
from workbench.storage.store import Store
from workbench.training.loop import run

SMOKE = {"seeds": 2, "epochs": 2, "teacher_epochs": 1}  # --smoke
# What the student learned (issue 21), on the test split: metric -> (shown name, scale, unit).
LEARNED = {
    "ece": ("ECE (15 bins)", 100, "points"),
    "nll": ("NLL", 1, "nats"),
    "logit_gap": ("logit gap: mean off-diagonal |M_s - M_t| of class-mean logits", 1, ""),
    "knn_acc": ("k-NN accuracy of the embeddings", 100, "points"),
    "silhouette": ("silhouette of the embeddings", 1, ""),
}


def _pct(x: float, digits: int = 2) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:.{digits}f}"


def _p(x: float) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.2g}"


def learned_table(records: list[dict[str, Any]]) -> None:
    """Full hybrid against the scratch student on each of ``LEARNED``'s metrics: the means,
    the paired difference over seeds and its t interval (``paired_comparison``)."""
    print(
        "\nWhat the student learned, full hybrid against the scratch student (label only), on "
        "the test split; difference = full - scratch, paired t interval over seeds\n"
    )
    print("| metric | full | scratch | difference | 95% CI | p |\n|---|---:|---:|---:|---|---:|")
    for metric, (shown, scale, unit) in LEARNED.items():
        results = suite_results(records, metric=metric)
        if FULL not in results or LABEL_ONLY not in results:
            print(f"| {shown} | n/a | n/a | | | |")
            continue
        row = paired_comparison(results, FULL, LABEL_ONLY)
        full, scratch = (sum(results[v].values()) / len(results[v]) for v in (FULL, LABEL_ONLY))
        d = 2 if scale == 100 else 3
        print(
            f"| {shown}{f' ({unit})' if unit else ''} | {scale * full:.{d}f} | "
            f"{scale * scratch:.{d}f} | {scale * row['contribution']:+.{d}f} | "
            f"[{scale * row['ci_low']:+.{d}f}, {scale * row['ci_high']:+.{d}f}] | "
            f"{_p(row['p_value'])} |"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=None, help="default: the preset's")
    parser.add_argument("--figures", default="", help="write the contribution chart here (HTML)")
    parser.add_argument("--smoke", action="store_true", help=f"tiny sizes: {SMOKE}")
    args = parser.parse_args()
    home = os.environ.get("KDWB_HOME") or tempfile.mkdtemp(prefix="kdwb-demo-")
    config, preset_seeds = SUITE_PRESETS["demo ablation"]
    seeds = args.seeds or preset_seeds
    if args.smoke:
        seeds = args.seeds or SMOKE["seeds"]
        config = config.replace(epochs=SMOKE["epochs"], teacher_epochs=SMOKE["teacher_epochs"])
    store = Store(home)
    inspect_pair(config.teacher, config.student, config.dataset, config=config)
    queued: list[tuple[str, Any]] = []

    def submit(submissions):
        run_ids = [
            store.create_run(s.config, name=s.name, tags=s.tags, suite=s.suite, variant=s.variant)
            for s in submissions
        ]
        queued.extend((run_id, s.config) for run_id, s in zip(run_ids, submissions, strict=True))
        return run_ids

    started = time.time()
    suite = launch_suite(config, store, submit, seeds=seeds, name="demo ablation")
    data = load_dataset(config.dataset, data_path=config.data_path)
    expected = len(train_subset(data.train_y, config.train_fraction))
    for i, (run_id, cfg) in enumerate(queued, start=1):
        record = run(cfg, store, run_id=run_id)
        print(
            f"[{time.time() - started:6.0f}s] run {i}/{len(queued)} {record.get('variant')} "
            f"seed {cfg.seed}: {record['status']}",
            file=sys.stderr,
        )
        if i == 1 and record["status"] == "completed":
            size = (record.get("metrics") or {}).get("train_size")
            if size != expected:
                print(
                    f"the engine trained on {size} images, not the {expected} of train_fraction="
                    f"{config.train_fraction}: it does not apply train_fraction yet",
                    file=sys.stderr,
                )
                return 2
    elapsed = time.time() - started
    analysis = suite_analysis(store, store.get_suite(suite["id"]))
    split = analysis["split"]
    summary, contrib, noise = analysis["summary"], analysis["contributions"], analysis["noise"]

    print(f"## Demo ablation: {config.summary()}, {seeds} seeds\n")
    print(
        f"Accuracy on the **{split}** split ({noise['n_test']} images), % (mean, sd over seeds)\n"
    )
    print("| variant | n | mean | sd |\n|---|---:|---:|---:|")
    for row in summary.to_dict(orient="records"):
        print(f"| {row['variant']} | {row['n']} | {_pct(row['mean'])} | {_pct(row['std'])} |")
    print(
        "\nContribution of each component = acc(full) - acc(without it), percentage points; "
        "paired t interval over seeds, Holm-adjusted p over the four components, "
        "McNemar on the same test images pooled over seeds (b: only full right, c: only the "
        "variant right)\n"
    )
    print(
        "| component | contribution | 95% CI | p | p (Holm) | distinguishable | b / c | "
        "McNemar p (Holm) | seeds needed |\n|---|---:|---|---:|---:|---|---:|---:|---:|"
    )
    for row in contrib.to_dict(orient="records"):
        bc = f"{row['b']:.0f} / {row['c']:.0f}" if math.isfinite(row["b"]) else "n/a"
        print(
            f"| {row['component']} | {100 * row['contribution']:+.2f} | "
            f"[{100 * row['ci_low']:+.2f}, {100 * row['ci_high']:+.2f}] | {_p(row['p_value'])} | "
            f"{_p(row['p_holm'])} | {'yes' if row['distinguishable'] else 'no'} | {bc} | "
            f"{_p(row['p_mcnemar_holm'])} | {row['seeds_needed']:.0f} |"
        )
    results = analysis["results"]
    if FULL in results and LABEL_ONLY in results:
        per_image = analysis.get("per_image") or {}
        row = paired_comparison(results, FULL, LABEL_ONLY, per_image=per_image)
        bc = f"b / c = {row['b']:.0f} / {row['c']:.0f}, " if math.isfinite(row["b"]) else ""
        print(
            f"\nDistillation as a whole, full hybrid - scratch student (label only): "
            f"{100 * row['contribution']:+.2f} points [{100 * row['ci_low']:+.2f}, "
            f"{100 * row['ci_high']:+.2f}], paired t p = {_p(row['p_value'])}; McNemar "
            f"{bc}p = {_p(row['p_mcnemar'])}"
        )
    print(
        f"\nNoise floor: binomial standard error of one run's accuracy on {noise['n_test']} "
        f"images {_pct(noise['binomial_se'])} points; seed-to-seed sd of the full variant "
        f"{_pct(noise['seed_sd'])} points"
    )
    full_runs = [
        r
        for r in (store.get_run(rid) for rid, _ in queued)
        if r.get("variant") == FULL and r["status"] == "completed"
    ]
    histories = [store.history(r["id"]) for r in full_runs]
    rows = [row for h in histories for row in h if SHARE_FIELDS["label"] in row]
    if rows:
        tail = rows[len(rows) // 2 :]
        shares = {k: sum(r.get(f, 0.0) for r in tail) / len(tail) for k, f in SHARE_FIELDS.items()}
        print(
            "\nGradient shares of the full loss (second half of training, mean over seeds): "
            + ", ".join(f"{k} {_pct(v, 1)}%" for k, v in shares.items())
        )
        for h in histories[:1]:
            for weak in weak_terms(h, config.weights.as_dict()):
                print(f"- seed 0: {weak['message']}")
    learned_table([store.get_run(rid) for rid, _ in queued])
    print(f"\nWall time: {elapsed:.0f} s for {len(queued)} runs (teacher included)")
    if args.figures:
        from workbench.ui.plots.summaries import contribution_bars

        os.makedirs(args.figures, exist_ok=True)
        fig = contribution_bars(contrib, title=f"Demo ablation: contributions ({split} split)")
        path = os.path.join(args.figures, "demo_ablation_contributions.html")
        fig.write_html(path, include_plotlyjs="cdn")
        print(f"\nFigure: {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
