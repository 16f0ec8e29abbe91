"""Similarity analysis: ``cka_matrix`` (each layer's statistics once) against ``linear_cka`` per
pair (each pair from scratch), for 8 student x 8 teacher layers at N = 1,000, 2,000 and 5,000
probe samples.

The features are synthetic float32 [N, D] with widths like small CNN probe layers, some narrower
and some wider than N: student D = 16 ... 2,048, teacher D = 32 ... 2,048 and 6,144 (the widest
is a Gram matrix at every N; D = 2,048 is one at N = 1,000 and N = 2,000). Each measurement runs
in its own subprocess, and its peak memory is the growth of the peak resident set over what the
inputs already took (the peak is reset after they are made: Linux ``/proc/self/clear_refs``;
tracemalloc does not see torch's allocations). The per-pair baseline runs 8 of the 64 pairs,
a permutation that holds every layer once, and its time is scaled by 8; its values are checked
against the matrix.

    .venv/bin/python bench/analysis.py [--sizes 1000 2000 5000]

Last line: ``speed-up of cka_matrix over per-pair linear_cka: N=1000 Xx, ...``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from workbench.analysis import cka_matrix, linear_cka

STUDENT_WIDTHS = (16, 32, 64, 128, 256, 512, 1024, 2048)
TEACHER_WIDTHS = (32, 64, 128, 256, 512, 1024, 2048, 6144)
# A permutation: every student and every teacher layer once, so 64 / 8 times the time of these
# pairs counts each layer's statistics exactly as often as the 64 pairs do (only the cross
# terms are estimated).
PAIRS = [(i, (3 * i) % 8) for i in range(8)]


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


def child(n: int, method: str) -> None:
    students = features(n, STUDENT_WIDTHS, seed=1)
    teachers = features(n, TEACHER_WIDTHS, seed=2)
    before = _reset_peak()
    started = time.perf_counter()
    if method == "matrix":
        values = cka_matrix(students, teachers)
        result = {"pairs": {f"{i},{j}": float(values[i, j]) for i, j in PAIRS}}
    else:
        result = {"pairs": {f"{i},{j}": linear_cka(students[i], teachers[j]) for i, j in PAIRS}}
    result["seconds"] = time.perf_counter() - started
    result["peak_mb"] = _peak_mb() - before
    result["inputs_mb"] = sum(f.nbytes for f in students + teachers) / 2**20
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 5000])
    parser.add_argument("--child", nargs=2, metavar=("N", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(int(args.child[0]), args.child[1])
        return
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; 8 x 8 layers, student "
        f"widths {STUDENT_WIDTHS}, teacher widths {TEACHER_WIDTHS}; per-pair baseline on "
        f"{len(PAIRS)} of 64 pairs, time scaled x{64 / len(PAIRS):g}"
    )
    speedups = []
    for n in args.sizes:
        runs = {}
        for method in ("matrix", "pairwise"):
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(n), method],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            runs[method] = json.loads(out.strip().splitlines()[-1])
        m, p = runs["matrix"], runs["pairwise"]
        pair_s = p["seconds"] * 64 / len(PAIRS)
        diff = max(abs(m["pairs"][k] - p["pairs"][k]) for k in m["pairs"])
        speedups.append(f"N={n} {pair_s / m['seconds']:.1f}x")
        print(
            f"N={n}: cka_matrix {m['seconds']:.2f} s, peak +{m['peak_mb']:.0f} MB; per-pair "
            f"linear_cka {pair_s:.2f} s (64 pairs, est.), peak +{p['peak_mb']:.0f} MB; inputs "
            f"{m['inputs_mb']:.0f} MB float32; max |difference| {diff:.1e}"
        )
    print("speed-up of cka_matrix over per-pair linear_cka: " + ", ".join(speedups))


if __name__ == "__main__":
    main()
