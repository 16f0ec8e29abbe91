"""Engine overhead: ``loop.run`` against a minimal hand-written distillation loop.

Both train the same student (small_cnn) against the same frozen teacher (resnet18, random
weights: accuracy does not change the cost of a step) on digits, with the same batch size,
optimizer, schedule and hybrid loss (all four terms: label, response, feature, relation), in one
process. The teacher cache is OFF for the engine, so both run the teacher live on every batch.

A step's time is read between two logged steps of the same epoch (log_every = 5: from the
first logged step at least 5 steps into the epoch to the epoch's last logged step, e.g. steps
5 -> 15 of digits' 16 steps at batch 64), so warm-up, the epoch-end validation and the
engine's setup and probe are not counted; the hand loop syncs (``loss.item()``) at the same
steps. The two alternate, ``--repeats``
times each; the ratio is of the medians, in wall time and in this process's CPU time (user +
system; with 2 threads it is about twice the wall time when the cores are free, and both grow
when other processes compete for them, so a disturbed repeat shows in both).

    .venv/bin/python bench/engine_overhead.py [--teacher resnet18] [--repeats 5] [--epochs 1]
        [--device cuda] [--dataset image_folder --data-path DIR] [--engine MODULE] [--smoke]

``--smoke``: one repeat against a small_cnn teacher (a check that the script runs, e.g. in
tests/test_bench.py; its ratio is not a measurement).

``--engine`` times another module's ``run`` (a saved copy of the old engine, for before/after).
On CUDA the hand loop uses bf16 autocast and channels-last models and inputs, as the engine does.

Last line: ``engine/hand step-time ratio: wall X.XXX, CPU Y.YYY (target <= 1.10)``.
"""

from __future__ import annotations

import argparse
import importlib
import platform
import shutil
import statistics
import tempfile
import time

import torch

from workbench.config.run_config import LossWeights, RunConfig
from workbench.data.datasets import load_dataset
from workbench.distill.hybrid import HybridLoss
from workbench.distill.taps import build_adapters, pair_layers
from workbench.models.registry import build_model, feature_layers
from workbench.storage.store import Store
from workbench.training.loop import run
from workbench.training.teachers import import_teacher

LOG_EVERY = 5
SMOKE = {"teacher": "small_cnn", "repeats": 1}  # --smoke


Stamp = tuple[int, float, float]  # (step, wall seconds, CPU seconds of this process)


def _stamp(step: int) -> Stamp:
    return step, time.perf_counter(), time.process_time()


def engine_step_times(config: RunConfig, store: Store, engine_run=run) -> list[tuple[float, float]]:
    """(wall, CPU) seconds per step of ``loop.run``, stamped in ``on_step`` at logged steps
    (the engine calls it right after the logged step's one sync)."""
    stamps: list[Stamp] = []

    def on_step(event: dict) -> None:
        if event["phase"] == "step":
            stamps.append(_stamp(event["step"]))

    record = engine_run(config, store, on_step=on_step)
    assert record["status"] == "completed", record["error"]
    assert record["teacher_source"] == "live", record["teacher_source"]
    return _per_step(stamps, record["progress"]["total_steps"] // config.epochs, config.epochs)


def windows(steps_per_epoch: int, epochs: int) -> list[tuple[int, int]]:
    """The timed (first, last) global steps of each epoch: logged steps (multiples of
    LOG_EVERY, as both loops log them) at least LOG_EVERY steps into the epoch, the first and
    the last of them; an epoch with fewer than two has none."""
    out = []
    for e in range(epochs):
        start, end = e * steps_per_epoch, (e + 1) * steps_per_epoch
        logged = [s for s in range(start + LOG_EVERY, end + 1) if s % LOG_EVERY == 0]
        if len(logged) >= 2:
            out.append((logged[0], logged[-1]))
    return out


def _per_step(stamps: list[Stamp], steps_per_epoch: int, epochs: int) -> list[tuple[float, float]]:
    """(wall, CPU) seconds per step over each epoch's timed window (``windows``)."""
    at = {step: (wall, cpu) for step, wall, cpu in stamps}
    out = []
    for a, b in windows(steps_per_epoch, epochs):
        assert a in at and b in at, f"steps {a} and {b} were not both logged"
        out.append(tuple((at[b][i] - at[a][i]) / (b - a) for i in (0, 1)))
    return out


def hand_step_times(
    config: RunConfig, teacher_state: dict[str, torch.Tensor]
) -> list[tuple[float, float]]:
    """The loop one would write by hand: tensors in memory, hooks, no store, no callbacks; on
    CUDA with bf16 autocast and channels-last convolutional models, as the engine does."""
    device = torch.device(config.device)
    cuda = device.type == "cuda"
    data = load_dataset(config.dataset, data_path=config.data_path)
    teacher = build_model(config.teacher, data.input_shape, data.num_classes)
    teacher.load_state_dict(teacher_state)
    teacher.eval().requires_grad_(False)
    torch.manual_seed(config.seed)
    student = build_model(config.student, data.input_shape, data.num_classes)
    s_layers = feature_layers(student, data.input_shape)
    t_layers = feature_layers(teacher, data.input_shape)
    pairs = pair_layers(s_layers, t_layers)
    hybrid = HybridLoss(
        config.weights,
        temperature=config.temperature,
        feature_kind=config.feature_kind,
        relation_kind=config.relation_kind,
        adapters=build_adapters(pairs, s_layers, t_layers),
    ).to(device)
    student.to(device)
    teacher.to(device)
    optimizer = torch.optim.AdamW(
        list(student.parameters()) + list(hybrid.parameters()), lr=config.lr
    )
    s_out: dict[str, torch.Tensor] = {}
    t_out: dict[str, torch.Tensor] = {}
    modules_s, modules_t = dict(student.named_modules()), dict(teacher.named_modules())
    for s, t in pairs:
        modules_s[s].register_forward_hook(lambda m, i, o, s=s: s_out.__setitem__(s, o))
        modules_t[t].register_forward_hook(lambda m, i, o, t=t: t_out.__setitem__(t, o))

    x_all, y_all = data.train_x.to(device), data.train_y.to(device)
    val_x, val_y = data.val_x.to(device), data.val_y.to(device)
    if cuda:
        student.to(memory_format=torch.channels_last)
        teacher.to(memory_format=torch.channels_last)
        x_all = x_all.contiguous(memory_format=torch.channels_last)
    n, batch = len(x_all), config.batch_size
    steps_per_epoch = n // batch
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=steps_per_epoch * config.epochs
    )
    generator = torch.Generator().manual_seed(config.seed)
    stamps: list[Stamp] = []
    step = 0
    student.train()
    for _epoch in range(config.epochs):
        order = torch.randperm(n, generator=generator).to(device)
        for b in range(steps_per_epoch):
            idx = order[b * batch : (b + 1) * batch]
            x, y = x_all[idx], y_all[idx]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                logits = student(x)
                with torch.no_grad():
                    t_logits = teacher(x)
                terms = hybrid(
                    logits,
                    y,
                    t_logits,
                    [s_out[s] for s, _ in pairs],
                    [t_out[t] for _, t in pairs],
                )
            optimizer.zero_grad(set_to_none=True)
            terms["total"].backward()
            optimizer.step()
            scheduler.step()
            step += 1
            if step % LOG_EVERY == 0:
                terms["total"].item()  # what a hand loop prints
                stamps.append(_stamp(step))
        with torch.no_grad():  # a hand loop validates each epoch too
            student.eval()
            (student(val_x).argmax(1) == val_y).float().mean().item()
            student.train()
    return _per_step(stamps, steps_per_epoch, config.epochs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="resnet18")
    parser.add_argument("--student", default="small_cnn")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--data-path", default="", help="the folder, for --dataset image_folder")
    parser.add_argument(
        "--engine",
        default="workbench.training.loop",
        help="module whose run() to time (before/after)",
    )
    parser.add_argument("--smoke", action="store_true", help=f"tiny sizes: {SMOKE}")
    args = parser.parse_args()
    if args.smoke:  # explicit options still win over these
        parser.set_defaults(**SMOKE)
        args = parser.parse_args()

    home = tempfile.mkdtemp(prefix="kdwb-bench-")
    store = Store(home)
    data = load_dataset(args.dataset, data_path=args.data_path)
    steps_per_epoch = len(data.train_x) // args.batch_size
    timed = windows(steps_per_epoch, args.epochs)
    if not timed:
        raise SystemExit(
            f"{steps_per_epoch} steps per epoch: too few to time two logged steps "
            f"(log_every {LOG_EVERY}); lower --batch-size"
        )
    torch.manual_seed(1234)
    teacher_state = build_model(args.teacher, data.input_shape, data.num_classes).state_dict()
    path = f"{home}/teacher.pt"
    torch.save(teacher_state, path)
    teacher_run = import_teacher(
        store, path, teacher=args.teacher, dataset=args.dataset, data_path=args.data_path
    )
    config = RunConfig(
        dataset=args.dataset,
        data_path=args.data_path,
        teacher=args.teacher,
        student=args.student,
        teacher_run=teacher_run,
        weights=LossWeights(0.3, 0.3, 0.2, 0.2),
        epochs=args.epochs,
        batch_size=args.batch_size,
        device=args.device,
        teacher_cache=False,
        log_every=LOG_EVERY,
    )
    print(
        f"{_machine(args.device)}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; {args.teacher} -> {args.student} on {args.dataset}, "
        f"batch {args.batch_size}, {args.epochs} epoch(s) x {args.repeats} repeats, "
        f"{steps_per_epoch} steps per epoch, steps "
        f"{', '.join(f'{a}->{b}' for a, b in timed)} timed, teacher cache off"
    )
    engine_run = importlib.import_module(args.engine).run
    engine: list[tuple[float, float]] = []
    hand: list[tuple[float, float]] = []
    for r in range(args.repeats):
        e = engine_step_times(config, store, engine_run)
        h = hand_step_times(config, teacher_state)
        engine += e
        hand += h
        print(f"repeat {r + 1} (ms/step, wall / CPU): engine {_ms(e)}, hand {_ms(h)}")
    print(f"median (ms/step, wall / CPU): engine {_ms(engine)}, hand {_ms(hand)}")
    wall = statistics.median(t for t, _ in engine) / statistics.median(t for t, _ in hand)
    cpu = statistics.median(c for _, c in engine) / statistics.median(c for _, c in hand)
    store.close()
    shutil.rmtree(home, ignore_errors=True)
    print(f"engine/hand step-time ratio: wall {wall:.3f}, CPU {cpu:.3f} (target <= 1.10)")


def _machine(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    try:
        with open("/proc/cpuinfo") as fh:
            names = [line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")]
        return f"{names[0]} x {len(names)}"
    except (OSError, IndexError):
        return platform.machine()


def _ms(times: list[tuple[float, float]]) -> str:
    wall = statistics.median(t for t, _ in times) * 1e3
    cpu = statistics.median(c for _, c in times) * 1e3
    return f"{wall:.1f} / {cpu:.1f}"


if __name__ == "__main__":
    main()
