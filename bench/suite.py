"""Whole suites on the CPU: a cached 5-run leave-one-out suite against five student-only runs,
with and without what runs of one process share (``workbench.training.teacher_pool``), and an 18-run suite
against 18 single runs.

The suite is ``workbench.ablation.variants.leave_one_out_variants`` of the hybrid loss minus "without
label" (full, without response, without feature, without relation, label only): 5 runs of a
small student against a much larger teacher (resnet34 -> small_cnn on digits by default; the
teacher keeps random weights, which cost the same as trained ones), teacher cache on (so the
probe's teacher features are cached too). The student-only suite is the same 5 runs as scratch
students with no teacher at all.

Each round, in one process, the arms alternating (their order reversed every other round):

- ``student``: the 5 student-only runs;
- ``warm``: the cached suite once more against a teacher whose cache entries exist and that
  the process's previous runs used (the teacher lent from the pool, its layers and the probe's
  teacher Gram matrices kept): what every run of a suite after its first pays;
- ``fresh``: the same suite after ``warm.clear()``: the entries on disk, nothing in the process
  (a worker's first suite against this teacher: its first run loads the teacher);
- ``cold``: the cached suite against a newly imported teacher (a new run id: empty cache and
  nothing warm, so its first run builds the teacher-output and probe entries);
- ``reload``: the cached suite with ``warm.clear()`` before every run: the disk entries exist
  but nothing is kept in the process, as when each run starts in a new process (and as every
  run did before ``workbench.training.teacher_pool``).

Ratios are of the medians over rounds, wall and this process's CPU time (when they part ways,
other processes were competing for the cores). With ``--profile`` the warm suite and the
student-only suite run once more under cProfile, and the CPU time of each part of a run (setup,
training steps, validation and checkpoint, final metrics and probe) is printed side by side.

The 18-run suite is leave_one_out_variants in full (6 variants) x 3 seeds against a new teacher;
a single run is its "full" variant, seed 0, against a new teacher (cold: it builds the entries
and loads the teacher) and again after ``warm.clear()`` (entries on disk, nothing warm: a single
run in a new process), each ``--single`` times (median). The suite is compared with 18 runs as
jobs of their own (one cold single, 17 singles in a new process) and with 18 of either.

    .venv/bin/python bench/suite.py [--epochs 2] [--rounds 3] [--no-suite18] [--profile]
                                    [--threads 1] [--smoke]

``--smoke``: one round of one epoch against a small_cnn teacher, the 18-run suite with one seed
(6 runs) and one single run of each kind (a check that the script runs, e.g. in
tests/test_bench.py; its ratios are not measurements).

Last line: ``cached 5-run suite / 5 student-only runs: warm X (CPU Y), fresh process ..., new
teacher ..., each run reloading ..., target <= 2.5; 18-run suite / 18 single runs: X (CPU Y)
against 18 jobs of their own ..., ... against 18 cold singles, ... against 18 singles in a new
process``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import shutil
import statistics
import tempfile
import time

import torch

from workbench.ablation.variants import leave_one_out_variants, without_name
from workbench.config.run_config import LossWeights, RunConfig
from workbench.data.datasets import load_dataset
from workbench.models.registry import build_model, count_params
from workbench.storage.store import Store
from workbench.training import teacher_pool as warm
from workbench.training.loop import run
from workbench.training.teachers import import_teacher

# The parts of a run in the profile: (label, file suffix, function name), cumulative seconds.
PARTS = (
    ("whole runs", "loop.py", "run"),
    ("setup (data, teacher, models, cache entries)", "loop.py", "prepare"),
    ("training steps", "steps.py", "train_epoch"),
    ("  of which gradient shares", "gradient_shares.py", "gradient_shares"),
    ("  of which the hybrid loss forward", "hybrid.py", "forward"),
    ("validation, checkpoint, manifest", "steps.py", "end_epoch"),
    ("final metrics, weights and probe", "steps.py", "finish"),
    ("  of which the probe", "probe.py", "run_probe"),
    ("  of which the probe's CKA", "probe.py", "_cka"),
)
SMOKE = {"teacher": "small_cnn", "epochs": 1, "rounds": 1, "seeds": 1, "single": 1}  # --smoke


def suite(configs: list[RunConfig], store: Store, *, reload: bool = False) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of the runs, one after another; with
    ``reload`` nothing is kept warm between them."""
    wall, cpu = time.perf_counter(), time.process_time()
    for config in configs:
        if reload:
            warm.clear()
        record = run(config, store)
        assert record["status"] == "completed", record.get("error")
        assert record.get("teacher_source") in (None, "cache"), record.get("teacher_note")
    return time.perf_counter() - wall, time.process_time() - cpu


def profile_parts(configs: list[RunConfig], store: Store) -> dict[str, float]:
    """Cumulative CPU seconds of each of ``PARTS`` in one pass of the runs under cProfile (CPU
    time: on a loaded machine, wall time charges other processes' turns to whatever ran)."""
    profiler = cProfile.Profile(time.process_time)
    profiler.enable()
    suite(configs, store)
    profiler.disable()
    stats = pstats.Stats(profiler, stream=io.StringIO()).stats  # type: ignore[attr-defined]
    parts = {}
    for label, file, name in PARTS:
        parts[label] = sum(
            row[3]
            for (path, _line, func), row in stats.items()
            if path.endswith(file) and func == name
        )
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="resnet34")
    parser.add_argument("--student", default="small_cnn")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the 18-run suite")
    parser.add_argument("--single", type=int, default=3, help="repeats of each single run")
    parser.add_argument("--no-suite18", action="store_true")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)"
    )
    parser.add_argument("--smoke", action="store_true", help=f"tiny sizes: {SMOKE}")
    args = parser.parse_args()
    if args.smoke:  # explicit options still win over these
        parser.set_defaults(**SMOKE)
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

    def new_teacher() -> str:  # a new run id: new cache keys, an empty cache, nothing warm
        return import_teacher(
            store, f"{home}/teacher.pt", teacher=args.teacher, dataset=args.dataset
        )

    def suite_of(teacher_run: str) -> list[RunConfig]:
        return [base.replace(weights=w, teacher_run=teacher_run) for w in variants.values()]

    known = suite_of(new_teacher())
    suite(known, store)  # builds its entries; warms the process
    keys = ("student", "warm", "fresh", "cold", "reload")
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in keys}
    for r in range(args.rounds):  # (flush: the rounds show while the next one runs)
        for arm in keys if r % 2 == 0 else keys[::-1]:
            if arm == "student":
                times[arm].append(suite(scratch, store))
            elif arm == "cold":
                warm.clear()
                times[arm].append(suite(suite_of(new_teacher()), store))
            else:
                if arm == "warm":  # whatever ran before, the process now holds this teacher
                    suite(known[:1], store)
                if arm == "fresh":
                    warm.clear()
                times[arm].append(suite(known, store, reload=arm == "reload"))
        print(
            f"round {r + 1} (wall s / CPU s): "
            + ", ".join(f"{k} {v[-1][0]:.2f} / {v[-1][1]:.2f}" for k, v in times.items()),
            flush=True,
        )
    med = {k: [statistics.median(t[i] for t in v) for i in (0, 1)] for k, v in times.items()}
    print(
        "medians (wall s / CPU s): "
        + ", ".join(f"{k} {v[0]:.2f} / {v[1]:.2f}" for k, v in med.items())
    )
    w = {k: v[0] / med["student"][0] for k, v in med.items()}
    c = {k: v[1] / med["student"][1] for k, v in med.items()}
    summary = (
        f"cached 5-run suite / 5 student-only runs: warm {w['warm']:.2f} (CPU {c['warm']:.2f}), "
        f"fresh process {w['fresh']:.2f} (CPU {c['fresh']:.2f}), new teacher {w['cold']:.2f} "
        f"(CPU {c['cold']:.2f}), each run reloading {w['reload']:.2f} (CPU {c['reload']:.2f}), "
        "target <= 2.5"
    )

    if args.profile:
        suite(known, store)
        profiled = {"warm suite": profile_parts(known, store)}
        profiled["student-only"] = profile_parts(scratch, store)
        print(f"{'profile (cumulative CPU s)':50} {'warm suite':>11} {'student-only':>13}")
        for label, *_ in PARTS:
            a, b = profiled["warm suite"][label], profiled["student-only"][label]
            print(f"{label:50} {a:11.3f} {b:13.3f}")

    if not args.no_suite18:
        summary += suite18(args, base, all_variants, store, new_teacher)
    store.close()
    shutil.rmtree(home, ignore_errors=True)
    print(summary)


def suite18(args, base: RunConfig, all_variants: dict, store: Store, new_teacher) -> str:
    """The 18-run suite against a new teacher, and single runs of its first config: cold (a new
    teacher: builds the entries) and in a new process (``warm.clear()``: the entries on disk)."""
    colds, reloads = [], []
    for _ in range(args.single):
        single = base.replace(weights=all_variants["full"], teacher_run=new_teacher(), seed=0)
        warm.clear()
        colds.append(suite([single], store))
        warm.clear()
        reloads.append(suite([single], store))
    cold, reload = (
        statistics.median(s[0] for s in colds),
        statistics.median(s[0] for s in reloads),
    )
    cold_cpu = statistics.median(s[1] for s in colds)
    reload_cpu = statistics.median(s[1] for s in reloads)
    teacher_run = new_teacher()
    configs = [
        base.replace(weights=w, teacher_run=teacher_run, seed=s)
        for s in range(args.seeds)
        for w in all_variants.values()
    ]
    warm.clear()
    whole = suite(configs, store)
    k = len(configs)
    print(
        f"{k}-run suite ({len(all_variants)} variants x {args.seeds} seeds): wall {whole[0]:.1f} s "
        f"(CPU {whole[1]:.1f}); single run (median of {args.single}, wall / CPU s): cold "
        f"{cold:.2f} / {cold_cpu:.2f} {[round(s[0], 2) for s in colds]}, in a new process "
        f"{reload:.2f} / {reload_cpu:.2f} {[round(s[0], 2) for s in reloads]}; {k} x single: "
        f"cold {k * cold:.1f} s, new process {k * reload:.1f} s",
        flush=True,
    )
    jobs, jobs_cpu = cold + (k - 1) * reload, cold_cpu + (k - 1) * reload_cpu
    return (
        f"; {k}-run suite / {k} single runs: {whole[0] / jobs:.2f} (CPU "
        f"{whole[1] / jobs_cpu:.2f}) against {k} jobs of their own (the first cold, the others "
        f"each in a new process), {whole[0] / (k * cold):.2f} (CPU {whole[1] / (k * cold_cpu):.2f}) "
        f"against {k} cold singles, {whole[0] / (k * reload):.2f} (CPU "
        f"{whole[1] / (k * reload_cpu):.2f}) against {k} singles in a new process"
    )


if __name__ == "__main__":
    main()
