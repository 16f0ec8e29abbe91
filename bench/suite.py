"""Whole suites on the CPU: a cached 5-run leave-one-out suite against five student-only runs,
with and without the probe's teacher features cached, and an 18-run suite against 18 single runs.

The suite is ``workbench.ablation.leave_one_out_variants`` of the hybrid loss minus "without
label" (full, without response, without feature, without relation, label only): 5 runs of a
small student against a much larger teacher (resnet34 -> small_cnn on digits by default; the
teacher keeps random weights, which cost the same as trained ones), teacher cache on. The
student-only suite is the same 5 runs as scratch students with no teacher at all.

The probe's teacher-feature cache (``run_probe(..., store=, teacher_id=)``, issue 12 item 2) is
switched on and off here by wrapping the ``run_probe`` that the engine calls (the engine passes
neither argument until it is wired; the wrapper sets both, or sets ``store=None`` for "off").
Each round, in one process: the student-only suite, then the cached suite with and without the
probe cache, each cold (a newly imported teacher run id: empty cache) and warm (once more, as the
next seed would), and a third arm "memo" (probe cache on, plus a stand-in for an engine change
proposed to lead: ``feature_layers`` found once per architecture instead of by a dry forward pass
of the teacher in every run), the order of the arms reversed every other round. Ratios are of
the medians; this process's CPU time is printed beside the wall time (when they part ways, other
processes were competing for the cores).

The 18-run suite is leave_one_out_variants in full (6 variants) x 3 seeds against a new teacher,
probe cache on; a single run is its "full" variant, seed 0, alone against another new teacher
(cold: it builds the teacher-output and probe entries) and once more (warm). With ``--profile``
the warm cached suite runs once more under cProfile.

    .venv/bin/python bench/suite.py [--epochs 2] [--rounds 2] [--no-suite18] [--profile]
                                    [--threads 1]

Last line: ``cached 5-run suite / 5 student-only runs: probe cached X (warm Y), probe uncached
X (warm Y), target <= 2.5; 18-run suite / 18 single runs: X (cold single), Y (warm single)``.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import pstats
import shutil
import statistics
import sys
import tempfile
import time

import torch

import workbench.probe
from workbench.ablation import leave_one_out_variants, without_name
from workbench.config import LossWeights, RunConfig
from workbench.data import load_dataset
from workbench.engine import import_teacher, run
from workbench.models import build_model, count_params
from workbench.store import Store


@contextlib.contextmanager
def probe_cache(store: Store, teacher_run: str | None, on: bool):
    """Every module of workbench that imported ``run_probe`` calls it with the probe cache on
    (``store``, ``teacher_id``) or off (``store=None``) inside this block."""
    original = workbench.probe.run_probe

    def wired(**kwargs):
        if on:
            kwargs.setdefault("store", store)
            kwargs.setdefault("teacher_id", teacher_run)
        else:
            kwargs["store"] = None
        return original(**kwargs)

    patched = [
        m
        for name, m in list(sys.modules.items())
        if name.startswith("workbench.") and getattr(m, "run_probe", None) is original
    ]
    for m in patched:
        m.run_probe = wired
    try:
        yield
    finally:
        for m in patched:
            m.run_probe = original


@contextlib.contextmanager
def layers_once(on: bool):
    """A stand-in for an engine change proposed to lead (not made here): the candidate layers of
    a model found once per architecture instead of by a dry forward pass in every run (the
    teacher's pass touches all its weights). Memoises ``feature_layers`` where the engine
    imported it, keyed on the model class, the input shape and the parameter shapes."""
    import workbench.models

    original = workbench.models.feature_layers
    memo: dict = {}

    def once(model, input_shape):
        key = (type(model), tuple(input_shape), tuple(p.shape for p in model.parameters()))
        if key not in memo:
            memo[key] = original(model, input_shape)
        return memo[key]

    patched = [
        m
        for name, m in list(sys.modules.items())
        if name.startswith("workbench.")
        and getattr(m, "feature_layers", None) is original
        and m is not workbench.models
    ]
    if on:
        for m in patched:
            m.feature_layers = once
    try:
        yield
    finally:
        for m in patched:
            m.feature_layers = original


def suite(configs: list[RunConfig], store: Store) -> tuple[tuple[float, float], list[dict]]:
    """(wall seconds, CPU seconds of this process) of the runs, and their records."""
    wall, cpu = time.perf_counter(), time.process_time()
    records = [run(config, store) for config in configs]
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    for record in records:
        assert record["status"] == "completed", record.get("error")
    return (wall, cpu), records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="resnet34")
    parser.add_argument("--student", default="small_cnn")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the 18-run suite")
    parser.add_argument("--no-suite18", action="store_true")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    home = tempfile.mkdtemp(prefix="kdwb-bench-")
    store = Store(home)
    data = load_dataset(args.dataset)
    torch.manual_seed(1234)
    teacher = build_model(args.teacher, data.input_shape, data.num_classes)
    student = build_model(args.student, data.input_shape, data.num_classes)
    torch.save(teacher.state_dict(), f"{home}/teacher.pt")
    base = RunConfig(
        dataset=args.dataset,
        teacher=args.teacher,
        student=args.student,
        weights=LossWeights(0.3, 0.3, 0.2, 0.2),
        epochs=args.epochs,
        batch_size=args.batch_size,
        device="cpu",
        log_every=10,
        teacher_cache=True,
    )
    all_variants = leave_one_out_variants(base)
    variants = {k: w for k, w in all_variants.items() if k != without_name("label")}
    print(
        f"{args.teacher} ({count_params(teacher) / 1e6:.1f}M) -> {args.student} "
        f"({count_params(student) / 1e3:.0f}k) on {args.dataset} ({len(data.train_x)} train, "
        f"{len(data.val_x)} val), {args.epochs} epoch(s), batch {args.batch_size}, CPU, torch "
        f"threads {torch.get_num_threads()}; 5-run suite: {', '.join(variants)}"
    )
    scratch = [
        base.replace(weights=LossWeights(1.0, 0.0, 0.0, 0.0), seed=i) for i in range(len(variants))
    ]

    def new_teacher() -> str:  # a new run id: new cache keys, an empty cache
        return import_teacher(
            store, f"{home}/teacher.pt", teacher=args.teacher, dataset=args.dataset
        )

    keys = ("student", "on_cold", "on_warm", "off_cold", "off_warm", "memo_cold", "memo_warm")
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in keys}
    notes = []
    for r in range(args.rounds):  # (flush: the rounds show while the next one runs)
        times["student"].append(suite(scratch, store)[0])
        arms = ("on", "off", "memo") if r % 2 == 0 else ("memo", "off", "on")
        for arm in arms:
            teacher_run = new_teacher()
            configs = [base.replace(weights=w, teacher_run=teacher_run) for w in variants.values()]
            on = arm != "off"
            with probe_cache(store, teacher_run, on), layers_once(arm == "memo"):
                seconds, records = suite(configs, store)
                times[f"{arm}_cold"].append(seconds)
                times[f"{arm}_warm"].append(suite(configs, store)[0])
            assert all(x["teacher_source"] in (None, "cache") for x in records)
            if arm == "on":
                notes = sorted({str(store.probe(x["id"]).get("teacher_features")) for x in records})
        print(
            f"round {r + 1} (wall s / CPU s): "
            + ", ".join(f"{k} {v[-1][0]:.1f} / {v[-1][1]:.1f}" for k, v in times.items()),
            flush=True,
        )
    print(f"probe teacher features (probe cache on): {notes}")
    med = {k: [statistics.median(t[i] for t in v) for i in (0, 1)] for k, v in times.items()}
    print(
        "medians (wall s / CPU s): "
        + ", ".join(f"{k} {v[0]:.1f} / {v[1]:.1f}" for k, v in med.items())
    )
    w = {k: v[0] for k, v in med.items()}
    c = {k: v[1] for k, v in med.items()}
    summary = (
        f"cached 5-run suite / 5 student-only runs: probe cached {w['on_cold'] / w['student']:.2f} "
        f"(warm {w['on_warm'] / w['student']:.2f}; CPU {c['on_cold'] / c['student']:.2f}, warm "
        f"{c['on_warm'] / c['student']:.2f}), probe uncached {w['off_cold'] / w['student']:.2f} "
        f"(warm {w['off_warm'] / w['student']:.2f}; CPU {c['off_cold'] / c['student']:.2f}, warm "
        f"{c['off_warm'] / c['student']:.2f}), target <= 2.5; with the layers found once per "
        f"architecture (proposed engine change) {w['memo_cold'] / w['student']:.2f} (warm "
        f"{w['memo_warm'] / w['student']:.2f}; CPU {c['memo_cold'] / c['student']:.2f}, warm "
        f"{c['memo_warm'] / c['student']:.2f})"
    )

    if args.profile:  # the warm cached suite once more: what is left when both caches work
        teacher_run = new_teacher()
        configs = [base.replace(weights=w, teacher_run=teacher_run) for w in variants.values()]
        with probe_cache(store, teacher_run, True):
            suite(configs, store)
            profiler = cProfile.Profile()
            profiler.enable()
            suite(configs, store)
            profiler.disable()
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats("cumulative").print_stats(40)
        stats.sort_stats("tottime").print_stats(15)
        print(out.getvalue())

    if not args.no_suite18:
        single_teacher = new_teacher()
        single = base.replace(weights=all_variants["full"], teacher_run=single_teacher, seed=0)
        with probe_cache(store, single_teacher, True):
            cold = suite([single], store)[0]
            warm = suite([single], store)[0]
        teacher_run = new_teacher()
        configs = [
            base.replace(weights=w, teacher_run=teacher_run, seed=s)
            for s in range(args.seeds)
            for w in all_variants.values()
        ]
        with probe_cache(store, teacher_run, True):
            whole, records = suite(configs, store)
        train_s = sum(x["seconds"] for x in records)
        k = len(configs)
        print(
            f"{k}-run suite ({len(all_variants)} variants x {args.seeds} seeds): wall "
            f"{whole[0]:.1f} s (CPU {whole[1]:.1f}; sum of the runs' own seconds {train_s:.1f}); "
            f"single run: cold {cold[0]:.2f} s, warm {warm[0]:.2f} s; {k} x single: cold "
            f"{k * cold[0]:.1f} s, warm {k * warm[0]:.1f} s"
        )
        summary += (
            f"; {k}-run suite / {k} single runs: {whole[0] / (k * cold[0]):.2f} (cold single), "
            f"{whole[0] / (k * warm[0]):.2f} (warm single)"
        )
    store.close()
    shutil.rmtree(home, ignore_errors=True)
    print(summary)


if __name__ == "__main__":
    main()
