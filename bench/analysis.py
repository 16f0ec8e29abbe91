"""Similarity analysis: ``cka_matrix`` against its previous version and against torch-cka.

Two sets of cases, 8 student x 8 teacher layers each:

- **towers** (the case of issue 12): two MLP towers of 8 ``Linear -> Tanh`` blocks, widths 256
  (student) and 512 (teacher), random weights, on N random inputs of 64 features (N = 1,000 and
  5,000); the features are the 8 Tanh outputs of each. Timed on the same features (as in the
  issue): ``cka_matrix`` in the form it picks and in the other one, and the previous
  ``cka_matrix`` (``bench/analysis_before.py``, a frozen copy); and from the inputs to the
  matrix: ``cka_matrix`` after forward passes with hooks, against
  ``torch_cka.CKA(...).compare(...)`` with one batch of all N samples (its forward
  passes included). torch-cka is a benchmark-only comparison, not a project dependency:
  ``.venv/bin/pip install torch-cka tqdm matplotlib`` (its module imports both). Its values are
  the unbiased HSIC estimator of Nguyen, Raghu and Kornblith (ICLR 2021), so they differ from
  the linear CKA by O(1/N); the maximum difference is printed. Its cost per pair is two N x N x N
  products in float32, so above N = 2,000 it runs on one student layer against the 8 teacher
  layers (every row costs the same: equal widths) and its time is multiplied by 8.
- **synthetic** (the cases of the earlier benchmark): post-ReLU-like float32 [N, D] features
  sharing a low-rank signal, student D = 16 ... 2,048, teacher D = 32 ... 2,048 and 6,144, at
  N = 1,000, 2,000 and 5,000: the previous ``cka_matrix`` against the new one, each in its own
  subprocess (for its peak memory: the growth of the peak resident set over the inputs, reset
  with Linux ``/proc/self/clear_refs``), alternating ``--repeats`` times.

Every case alternates the methods in one process or one run, so the ratios compare like with
like on a machine shared with other work; the best of the repeats is reported (other work only
ever adds time).

    .venv/bin/python bench/analysis.py [--tower-sizes 1000 5000] [--sizes 1000 2000 5000]
                                       [--repeats 3] [--threads 1] [--smoke]

``--smoke``: N = 300 for both sets, one repeat, and no torch-cka when it is not installed (a
check that the script runs, e.g. in tests/test_bench.py; its ratios are not measurements).

On a machine loaded by other work, ``--threads 1`` gives steadier ratios: with 2 threads every
parallel region waits for its slowest thread, and a descheduled thread stalls them all.

Last line: ``cka_matrix vs torch-cka: N=1000 Xx, ...; new vs previous cka_matrix: ...``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # analysis_before, run as a script

import analysis_before  # noqa: E402

from workbench.distill.similarity import FORMS, cka_form, cka_matrix  # noqa: E402
from workbench.distill.taps import FeatureTaps  # noqa: E402

STUDENT_WIDTHS = (16, 32, 64, 128, 256, 512, 1024, 2048)
TEACHER_WIDTHS = (32, 64, 128, 256, 512, 1024, 2048, 6144)
TOWER_DEPTH, TOWER_IN, TOWER_WIDTHS = 8, 64, (256, 512)
TCKA_FULL_UP_TO = 2000  # above this N, torch-cka runs one student layer (x 8)
SMOKE = {"tower_sizes": [300], "sizes": [300], "repeats": 1}  # --smoke


# ------------------------------------------------------------------------------ towers
def tower(width: int, seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    blocks: list[nn.Module] = []
    d = TOWER_IN
    for _ in range(TOWER_DEPTH):
        blocks += [nn.Linear(d, width), nn.Tanh()]
        d = width
    return nn.Sequential(*blocks).eval()


def tanh_paths(model: nn.Sequential) -> list[str]:
    return [name for name, m in model.named_children() if isinstance(m, nn.Tanh)]


@torch.no_grad()
def tower_features(model: nn.Sequential, x: torch.Tensor) -> list[torch.Tensor]:
    with FeatureTaps(model, tanh_paths(model)) as taps:
        model(x)
        return list(taps.features)  # [N, width] each


def torch_cka(student, teacher, x, student_layers) -> torch.Tensor:
    from torch.utils.data import DataLoader, TensorDataset
    from torch_cka import CKA

    loader = DataLoader(TensorDataset(x), batch_size=len(x))
    cka = CKA(
        student,
        teacher,
        model1_name="student",
        model2_name="teacher",
        model1_layers=student_layers,
        model2_layers=tanh_paths(teacher),
        device="cpu",
    )
    cka.compare(loader, loader)
    return cka.export()["CKA"].double()


def child_towers(n: int, repeats: int, with_torch_cka: bool = True) -> None:
    student, teacher = tower(TOWER_WIDTHS[0], seed=1), tower(TOWER_WIDTHS[1], seed=2)
    x = torch.randn(n, TOWER_IN, generator=torch.Generator().manual_seed(3))
    s_feats, t_feats = tower_features(student, x), tower_features(teacher, x)
    picked = cka_form(n, [f.shape[1] for f in s_feats], [f.shape[1] for f in t_feats])
    other = next(f for f in FORMS if f != picked)
    rows = tanh_paths(student) if n <= TCKA_FULL_UP_TO else tanh_paths(student)[:1]
    methods = ("new", "new_total", "new_other", "before", "torch_cka")
    times: dict[str, list[float]] = {k: [] for k in methods}
    cpu: dict[str, list[float]] = {k: [] for k in times}
    times["forward"] = []
    values = {}

    def timed(name: str, fn, scale: float = 1.0) -> None:
        wall, proc = time.perf_counter(), time.process_time()
        values[name] = fn()
        times[name].append((time.perf_counter() - wall) * scale)
        cpu[name].append((time.process_time() - proc) * scale)

    def forward() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return tower_features(student, x), tower_features(teacher, x)

    values["new_total"] = cka_matrix(*forward())  # warm-up: the first call pays one-off costs

    for r in range(repeats):
        timed("new_total", lambda: cka_matrix(*forward()))  # from the inputs, like torch-cka
        started = time.perf_counter()
        forward()
        times["forward"].append(time.perf_counter() - started)
        on_features = [  # on the same features, in the reverse order every other repeat
            ("new", lambda: cka_matrix(s_feats, t_feats)),
            ("new_other", lambda: cka_matrix(s_feats, t_feats, form=other)),
            ("before", lambda: analysis_before.cka_matrix(s_feats, t_feats)),
        ]
        for name, fn in on_features if r % 2 == 0 else on_features[::-1]:
            timed(name, fn)
        if with_torch_cka and (r == 0 or n <= TCKA_FULL_UP_TO):  # at 5,000: minutes a run
            scale = len(tanh_paths(student)) / len(rows)
            timed("torch_cka", lambda: torch_cka(student, teacher, x, rows), scale)
    new = values["new"]
    print(
        json.dumps(
            {
                "form": picked,
                "other": other,
                "tcka_rows": len(rows),
                "times": times,
                "cpu": cpu,
                "diff_other": float((new - values["new_other"]).abs().max()),
                "diff_before": float((new - values["before"]).abs().max()),
                "diff_torch_cka": float((new[: len(rows)] - values["torch_cka"]).abs().max())
                if with_torch_cka
                else float("nan"),
            }
        )
    )


# ------------------------------------------------------------------------------ synthetic
def features(n: int, widths: tuple[int, ...], seed: int) -> list[torch.Tensor]:
    """Post-ReLU-like features that share a low-rank signal, so the CKA values are not tiny."""
    g = torch.Generator().manual_seed(seed)
    signal = torch.randn(n, 8, generator=g)
    out = []
    for d in widths:
        mix = torch.randn(8, d, generator=g)
        out.append((signal @ mix + torch.randn(n, d, generator=g)).relu_())  # [N, D]
    return out


def _reset_peak() -> float:
    """Reset the peak resident set to the current one (Linux: clear_refs 5) and return the
    current one in MB; without /proc, fall back to getrusage's lifetime peak."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return _status_mb("VmRSS")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _peak_mb() -> float:
    try:
        return _status_mb("VmHWM")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise OSError(f"no {field} in /proc/self/status")


def child_synthetic(n: int, method: str) -> None:
    students = features(n, STUDENT_WIDTHS, seed=1)
    teachers = features(n, TEACHER_WIDTHS, seed=2)
    fn = cka_matrix if method == "new" else analysis_before.cka_matrix
    before = _reset_peak()
    started = time.perf_counter()
    values = fn(students, teachers)
    result = {"seconds": time.perf_counter() - started, "peak_mb": _peak_mb() - before}
    result["values"] = values.flatten().tolist()
    result["inputs_mb"] = sum(f.nbytes for f in students + teachers) / 2**20
    print(json.dumps(result))


def _child(*args: str, threads: int = 0) -> dict:
    command = [sys.executable, __file__, "--threads", str(threads), "--child", *args]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _secs(runs: list[dict]) -> str:
    return ", ".join(f"{r['seconds']:.2f}" for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tower-sizes", type=int, nargs="*", default=[1000, 5000])
    parser.add_argument("--sizes", type=int, nargs="*", default=[1000, 2000, 5000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)"
    )
    parser.add_argument("--no-torch-cka", action="store_true", help="towers without torch-cka")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--smoke", action="store_true", help=f"tiny sizes: {SMOKE}")
    args = parser.parse_args()
    if args.smoke:  # explicit options still win over these
        parser.set_defaults(**SMOKE)
        args = parser.parse_args()
        if importlib.util.find_spec("torch_cka") is None:
            args.no_torch_cka = True  # a benchmark-only comparison, not a dependency
            print("torch-cka is not installed: the towers run without it")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        kind, n, rest = args.child[0], int(args.child[1]), args.child[2]
        if kind == "towers":
            child_towers(n, int(rest), with_torch_cka=args.child[3:] != ["no-torch-cka"])
        else:
            child_synthetic(n, rest)
        return
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.repeats} repeats, "
        "best of the repeats (the least disturbed by other work on the machine); times in s"
    )
    summary_tcka, summary_old = [], []
    for n in args.tower_sizes:
        extra = ["no-torch-cka"] if args.no_torch_cka else []
        r = _child("towers", str(n), str(args.repeats), *extra, threads=args.threads)
        if args.no_torch_cka:
            r["times"]["torch_cka"] = r["cpu"]["torch_cka"] = [float("nan")]
        t = {k: min(v) for k, v in r["times"].items()}
        c = {k: min(v) for k, v in r["cpu"].items()}
        summary_tcka.append(
            f"N={n} {t['torch_cka'] / t['new_total']:.1f}x (features only "
            f"{t['torch_cka'] / t['new']:.1f}x)"
        )
        summary_old.append(f"towers N={n} {t['before'] / t['new']:.2f}x")
        est = (
            "" if r["tcka_rows"] == 8 else f" (1 of 8 rows x 8, {len(r['times']['torch_cka'])} run)"
        )
        print(
            f"towers N={n}: on the same features: cka_matrix ({r['form']}) {t['new']:.3f} "
            f"(CPU {c['new']:.3f}), the {r['other']} form {t['new_other']:.3f} (CPU "
            f"{c['new_other']:.3f}), previous cka_matrix {t['before']:.3f} (CPU "
            f"{c['before']:.3f}); from the inputs (forward passes {t['forward']:.3f} included): "
            f"cka_matrix {t['new_total']:.3f} (CPU {c['new_total']:.3f}), torch-cka "
            f"{t['torch_cka']:.2f} (CPU {c['torch_cka']:.2f}){est}"
        )
        print(
            f"  speed-up over torch-cka: {t['torch_cka'] / t['new_total']:.1f}x from the inputs "
            f"(CPU {c['torch_cka'] / c['new_total']:.1f}x), {t['torch_cka'] / t['new']:.1f}x on "
            f"the features (CPU {c['torch_cka'] / c['new']:.1f}x); over the previous cka_matrix "
            f"{t['before'] / t['new']:.2f}x (CPU {c['before'] / c['new']:.2f}x); over the other "
            f"form {t['new_other'] / t['new']:.2f}x (CPU {c['new_other'] / c['new']:.2f}x); max "
            f"|diff| previous {r['diff_before']:.1e}, other form {r['diff_other']:.1e}, torch-cka "
            f"(unbiased HSIC) {r['diff_torch_cka']:.1e}"
        )
    for n in args.sizes:
        runs: dict[str, list[dict]] = {"before": [], "new": []}
        for _ in range(args.repeats):
            for method in runs:
                runs[method].append(_child("synthetic", str(n), method, threads=args.threads))
        s = {k: min(r["seconds"] for r in v) for k, v in runs.items()}
        peak = {k: max(r["peak_mb"] for r in v) for k, v in runs.items()}
        diff = max(
            abs(a - b)
            for a, b in zip(runs["new"][0]["values"], runs["before"][0]["values"], strict=True)
        )
        form = cka_form(n, STUDENT_WIDTHS, TEACHER_WIDTHS)
        summary_old.append(f"synthetic N={n} {s['before'] / s['new']:.2f}x")
        print(
            f"synthetic N={n}: cka_matrix ({form}) {s['new']:.2f} (runs "
            f"{_secs(runs['new'])}), peak "
            f"+{peak['new']:.0f} MB; previous {s['before']:.2f} (runs "
            f"{_secs(runs['before'])}), peak "
            f"+{peak['before']:.0f} MB; inputs {runs['new'][0]['inputs_mb']:.0f} MB float32; "
            f"speed-up {s['before'] / s['new']:.2f}x; max |diff| {diff:.1e}"
        )
    print(
        "cka_matrix vs torch-cka: "
        + ", ".join(summary_tcka)
        + "; new vs previous cka_matrix: "
        + ", ".join(summary_old)
    )


if __name__ == "__main__":
    main()
