"""What the command line prints: progress events on stderr, one run or suite as text, and the
JSON objects of ``--json``."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from typing import Any

from workbench.config.run_config import COMPONENTS, summary_of

__all__ = [
    "Progress",
    "one_line",
    "print_record",
    "print_suite",
    "reader_gone",
    "result_json",
    "suite_json",
]


class Progress:
    """Prints engine events to stderr: epoch, step, loss, ETA."""

    def __init__(self, stream=None):
        self._stream = stream

    @property
    def stream(self):
        return self._stream or sys.stderr  # looked up late, so redirections apply

    def __call__(self, event: dict[str, Any]) -> None:
        who = "teacher" if event["role"] == "teacher" else "student"
        phase = event["phase"]
        if phase == "step":
            eta = event.get("eta_s")
            eta_text = f" ETA {eta:.0f}s" if eta is not None else ""
            print(
                f"[{who}] epoch {event['epoch']}/{event['epochs']} step {event['step']}/{event['total_steps']} "
                f"loss {event['losses']['total']:.4f}{eta_text}",
                file=self.stream,
            )
        elif phase == "epoch":
            line = (
                f"[{who}] epoch {event['epoch']}/{event['epochs']} val_acc {event['val_acc']:.4f}"
            )
            if event.get("agreement") is not None:
                line += f" agreement {event['agreement']:.4f}"
            print(line, file=self.stream)
        elif phase == "wait":
            print(f"[{who}] {event['message']}", file=self.stream)
        elif phase == "end":
            print(
                f"[{who}] {event['status']}"
                + (f": {event['error']}" if event.get("error") else ""),
                file=self.stream,
            )


def result_json(record: dict[str, Any]) -> dict[str, Any]:
    metrics = record.get("metrics") or {}
    return {
        "run_id": record["id"],
        "status": record["status"],
        "val_acc": metrics.get("val_acc"),
        "teacher_acc": metrics.get("teacher_acc"),
        "agreement": metrics.get("agreement"),
        "losses": metrics.get("final_losses", {}),
        "seconds": record.get("seconds"),
        "teacher_source": record.get("teacher_source"),
        "error": record.get("error"),
    }


def suite_json(suite: dict[str, Any], analysis: dict[str, Any]) -> dict[str, Any]:
    contrib = analysis["contributions"]
    return {
        "suite_id": suite["id"],
        "seeds": suite["seeds"],
        "factorial": suite["factorial"],
        "variants": analysis["summary"].to_dict(orient="records"),
        "contributions": [
            {
                k: row[k]
                for k in ("component", "contribution", "ci_low", "ci_high", "distinguishable", "n")
            }
            for row in contrib.to_dict(orient="records")
        ],
        "shapley": analysis["shapley"],
    }


def print_suite(suite: dict[str, Any], analysis: dict[str, Any]) -> None:
    print(f"suite {suite['id']}: {suite['name']}")
    for row in analysis["summary"].to_dict(orient="records"):
        print(f"  {row['variant']:<22} acc {row['mean']:.4f} +- {row['std']:.4f} (n={row['n']})")
    for row in analysis["contributions"].to_dict(orient="records"):
        verdict = "" if row["distinguishable"] else "  (not distinguishable from noise)"
        print(
            f"  contribution of {row['component']:<9} {row['contribution']:+.4f} "
            f"[{row['ci_low']:+.4f}, {row['ci_high']:+.4f}]{verdict}"
        )
    if analysis["shapley"]:
        for component, value in analysis["shapley"].items():
            print(f"  Shapley value of {component:<9} {value:+.4f}")


def one_line(text: str) -> str:
    """``text`` with control characters escaped (``\\n``), so that a name stored before names
    were checked cannot break a listing of one run per line."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in str(text))


def print_record(record: dict[str, Any]) -> None:
    metrics = record.get("metrics") or {}
    config = record["config"]  # as stored: not validated again against today's bounds
    print(f"run {record['id']} ({record['status']}): {one_line(summary_of(config))}")
    if record.get("error"):
        print(f"  error: {record['error']}")
    for key in ("val_acc", "teacher_acc", "agreement"):
        if metrics.get(key) is not None:
            print(f"  {key}: {metrics[key]:.4f}")
    for key in COMPONENTS:
        value = metrics.get("final_losses", {}).get(key)
        if value is not None and (config.get("weights") or {}).get(key, 0) > 0:
            print(f"  final {key} loss: {value:.4f}")
    if record.get("seconds") is not None:
        print(f"  seconds: {record['seconds']:.1f}")


def reader_gone() -> int:
    """The reader of stdout went away (``runs | head -1``): end quietly with 141 (128 +
    SIGPIPE), what a shell reports for ``cat`` or ``ls`` in the same pipe. As the Python docs
    advise (signal, "Note on SIGPIPE"), stdout is pointed at devnull so that the flush at exit
    does not raise again."""
    with contextlib.suppress(OSError, ValueError):  # ValueError: stdout replaced, no fileno
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return 128 + signal.SIGPIPE
