"""Teacher-output cache: a leave-one-out suite with the cache, without it, and student-only.

The suite is ``workbench.ablation.variants.leave_one_out_variants`` of the hybrid loss (full, without
response, without feature, without relation, label only): 5 runs of a small student against a
much larger teacher (resnet34 -> small_cnn on digits by default; the teacher keeps random weights,
which cost the same as trained ones). In one process, each round runs:

- ``student-only``: the same 5 runs as scratch students (label weight only) with no teacher at
  all: the floor that a perfect cache could reach;
- ``cached``: ``teacher_cache=True`` from an empty cache (the first run builds the entry; that is
  counted, and the build time is printed);
- ``uncached``: ``teacher_cache=False``, the teacher runs live on every batch;
- ``cached again``: the cached suite once more, warm (as the next seed of a suite would).

Every suite is timed end to end (``loop.run`` per run: setup, training, validation, probe),
``--rounds`` times (each round with a new teacher run id, so from an empty cache); the ratios are
of the medians. This process's CPU time (user + system) is printed beside the wall time: when the
two part ways, other processes were competing for the cores.
With ``--profile`` the cached suite runs once more (warm) under cProfile and the top entries are
printed.

    .venv/bin/python bench/teacher_cache.py [--teacher resnet34] [--epochs 2] [--rounds 2] [--profile]
        [--smoke]

``--smoke``: one round of one epoch against a small_cnn teacher (a check that the script runs,
e.g. in tests/test_bench.py; its ratios are not measurements).

Last line: ``cached/student-only: wall X (warm Y), CPU ..., target <= 1.20; uncached/cached
speed-up: wall X (warm Y), CPU ...``.
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
from workbench.training.loop import run
from workbench.training.teachers import import_teacher

NAMES = {
    "student": "student-only",
    "cold": "cached (cold cache, build included)",
    "uncached": "uncached",
    "warm": "cached again (warm cache, e.g. the next seed)",
}
SMOKE = {"teacher": "small_cnn", "epochs": 1, "rounds": 1}  # --smoke


def suite(configs: list[RunConfig], store: Store) -> tuple[tuple[float, float], list[dict]]:
    """(wall seconds, CPU seconds of this process) of the runs, and their records."""
    wall, cpu = time.perf_counter(), time.process_time()
    records = [run(config, store) for config in configs]
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    for record in records:
        assert record["status"] == "completed", record["error"]
    return (wall, cpu), records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="resnet34")
    parser.add_argument("--student", default="small_cnn")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--data-path", default="", help="the folder, for --dataset image_folder")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--smoke", action="store_true", help=f"tiny sizes: {SMOKE}")
    args = parser.parse_args()
    if args.smoke:  # explicit options still win over these
        parser.set_defaults(**SMOKE)
        args = parser.parse_args()

    home = tempfile.mkdtemp(prefix="kdwb-bench-")
    store = Store(home)
    data = load_dataset(args.dataset, data_path=args.data_path)
    torch.manual_seed(1234)
    teacher = build_model(args.teacher, data.input_shape, data.num_classes)
    student = build_model(args.student, data.input_shape, data.num_classes)
    torch.save(teacher.state_dict(), f"{home}/teacher.pt")
    base = RunConfig(
        dataset=args.dataset,
        data_path=args.data_path,
        teacher=args.teacher,
        student=args.student,
        weights=LossWeights(0.3, 0.3, 0.2, 0.2),
        epochs=args.epochs,
        batch_size=args.batch_size,
        device=args.device,
        log_every=10,
    )
    # The 5-run suite of the issue: leave_one_out_variants also leaves out the label term when
    # it is active; that run answers another question (is the label needed?) and is dropped.
    variants = {
        name: w for name, w in leave_one_out_variants(base).items() if name != without_name("label")
    }
    print(
        f"{args.teacher} ({count_params(teacher) / 1e6:.1f}M) -> {args.student} "
        f"({count_params(student) / 1e3:.0f}k) on {args.dataset} ({len(data.train_x)} train, "
        f"{len(data.val_x)} val), {args.epochs} epoch(s), batch {args.batch_size}, "
        f"device {args.device}, torch threads {torch.get_num_threads()}; "
        f"variants: {', '.join(variants)}"
    )
    # No teacher at all: no teacher_run, and an imported teacher is not registered under the
    # teacher fingerprint, so the engine finds none to probe against.
    scratch = [
        base.replace(weights=LossWeights(1.0, 0.0, 0.0, 0.0), seed=i) for i in range(len(variants))
    ]

    times: dict[str, list[tuple[float, float]]] = {k: [] for k in NAMES}
    for r in range(args.rounds):
        # A new teacher run id per round: new cache keys, so every round starts cold.
        teacher_run = import_teacher(
            store,
            f"{home}/teacher.pt",
            teacher=args.teacher,
            dataset=args.dataset,
            data_path=args.data_path,
        )
        cached = [
            base.replace(weights=w, teacher_run=teacher_run, teacher_cache=True)
            for w in variants.values()
        ]
        uncached = [c.replace(teacher_cache=False) for c in cached]
        times["student"].append(suite(scratch, store)[0])
        seconds, records = suite(cached, store)
        times["cold"].append(seconds)
        assert all(r["teacher_source"] == "cache" for r in records if r["teacher_source"])
        note = next(r["teacher_note"] for r in records if r["teacher_note"])
        times["uncached"].append(suite(uncached, store)[0])
        times["warm"].append(suite(cached, store)[0])
        print(
            f"round {r + 1} (wall s / CPU s): "
            + ", ".join(f"{NAMES[k]} {v[-1][0]:.1f} / {v[-1][1]:.1f}" for k, v in times.items())
            + f"; {note}"
        )
    med = {k: [statistics.median(t[i] for t in v) for i in (0, 1)] for k, v in times.items()}
    print(
        "medians (wall s / CPU s): "
        + ", ".join(f"{NAMES[k]} {v[0]:.1f} / {v[1]:.1f}" for k, v in med.items())
    )

    if args.profile:  # the cached suite once more, warm: what is left when the cache works
        profiler = cProfile.Profile()
        profiler.enable()
        suite(cached, store)
        profiler.disable()
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(30)
        print(out.getvalue())

    store.close()
    shutil.rmtree(home, ignore_errors=True)
    w = {k: v[0] for k, v in med.items()}
    c = {k: v[1] for k, v in med.items()}
    print(
        f"cached/student-only: wall {w['cold'] / w['student']:.2f} (warm "
        f"{w['warm'] / w['student']:.2f}), CPU {c['cold'] / c['student']:.2f} (warm "
        f"{c['warm'] / c['student']:.2f}), target <= 1.20; uncached/cached speed-up: wall "
        f"{w['uncached'] / w['cold']:.2f} (warm {w['uncached'] / w['warm']:.2f}), CPU "
        f"{c['uncached'] / c['cold']:.2f} (warm {c['uncached'] / c['warm']:.2f})"
    )


if __name__ == "__main__":
    main()
