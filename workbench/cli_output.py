"""What the command line prints: progress events on stderr, one run, a list of runs or a suite
as text, and the JSON objects of ``--json``.

One accuracy vocabulary, the app's (``workbench.ui.naming``): ``test_acc`` (the test split, that
nothing in training saw) is a finished run's headline and is always named; ``val_acc`` is named
as validation (what every epoch measured); agreement with the teacher says its split
(``agreement_test``, ``agreement_val``). A metric that does not exist yet is "—"."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from typing import Any

from workbench.config.run_config import COMPONENTS, summary_of

__all__ = [
    "DASH",
    "Progress",
    "accuracies",
    "number",
    "one_line",
    "print_epochs",
    "print_record",
    "print_runs",
    "print_suite",
    "reader_gone",
    "result_json",
    "suite_json",
]

DASH = "—"  # a metric that does not exist yet (a queued run's accuracy)


def number(value: Any) -> str:
    """``0.9583``, or "—" for a metric that does not exist (yet): None, or NaN."""
    return DASH if value is None or value != value else f"{value:.4f}"


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
            line = f"[{who}] epoch {event['epoch']}/{event['epochs']} val acc {number(event['val_acc'])}"
            if event.get("agreement") is not None:  # measured on the validation split
                line += f" val agreement {number(event['agreement'])}"
            print(line, file=self.stream)
        elif phase == "wait":
            print(f"[{who}] {event['message']}", file=self.stream)
        elif phase == "end":
            print(
                f"[{who}] {event['status']}"
                + (f": {event['error']}" if event.get("error") else ""),
                file=self.stream,
            )


def accuracies(
    record: dict[str, Any], epochs: list[dict[str, Any]] | None = None
) -> dict[str, float | None]:
    """A run's accuracies, each named with its split (None until the run has finished):
    ``test_acc`` (the headline), ``val_acc`` (the last epoch's validation accuracy),
    ``teacher_test_acc``, ``agreement_test`` and ``agreement_val`` (the last epoch's, from
    ``epochs``, the run's epoch rows). ``teacher_acc`` and ``agreement`` are kept, as ever the
    test split's (the same values as ``teacher_test_acc`` and ``agreement_test``)."""
    metrics = record.get("metrics") or {}
    finished = metrics.get("val_acc") is not None
    return {
        "test_acc": metrics.get("test_acc"),
        "val_acc": metrics.get("val_acc"),
        "teacher_test_acc": metrics.get("teacher_acc"),
        "teacher_acc": metrics.get("teacher_acc"),
        "agreement_test": metrics.get("agreement"),
        "agreement": metrics.get("agreement"),
        "agreement_val": epochs[-1].get("agreement") if finished and epochs else None,
    }


def result_json(
    record: dict[str, Any], epochs: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """One run for ``run --json``, ``resume --json`` and ``runs --json`` (``accuracies``)."""
    metrics = record.get("metrics") or {}
    return {
        "run_id": record["id"],
        "status": record["status"],
        **accuracies(record, epochs),
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
        "metric": analysis.get("metric", "test_acc"),  # what "mean" and "contribution" are of
        "split": analysis.get("split", "test"),
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
    acc = "val acc" if analysis.get("split") == "validation" else "test acc"  # old runs: val
    for row in analysis["summary"].to_dict(orient="records"):
        print(
            f"  {row['variant']:<22} {acc} {number(row['mean'])} +- {number(row['std'])} "
            f"(n={row['n']})"
        )
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


def print_record(record: dict[str, Any], epochs: list[dict[str, Any]] | None = None) -> None:
    """One run: its headline test accuracy with the validation one beside it (an unfinished run's
    validation accuracy is that of its last epoch, from ``epochs``, as on the Runs page), the
    teacher's and the agreement for a student, the final losses. A run that never read the test
    split (a search's trial) says so instead of showing blanks."""
    from workbench.ui.tables import latest_accuracy

    metrics = record.get("metrics") or {}
    config = record["config"]  # as stored: not validated again against today's bounds
    print(f"run {record['id']} ({record['status']}): {one_line(summary_of(config))}")
    if record.get("error"):
        print(f"  error: {record['error']}")
    val = number(latest_accuracy(record, epochs))
    last_agreement = (epochs or [{}])[-1].get("agreement")
    if config.get("evaluate_test") is False:  # a search's trial: chosen on validation only
        who = f"trial {record.get('trial')} of a search" if record.get("search") else "this run"
        print(f"  validation accuracy {val} (the test split is not read by {who})")
        print(f"  agreement with teacher {number(last_agreement)} (validation)")
    else:
        print(f"  test accuracy {number(metrics.get('test_acc'))} (validation {val})")
    if config.get("role") != "teacher" and config.get("evaluate_test") is not False:
        print(f"  teacher test accuracy {number(metrics.get('teacher_acc'))}")
        test = metrics.get("agreement")
        both = (
            f" (test; validation {number(last_agreement)})"
            if test is not None or last_agreement is not None
            else ""
        )
        print(f"  agreement with teacher {number(test)}{both}")
    for key in COMPONENTS:
        value = metrics.get("final_losses", {}).get(key)
        if value is not None and (config.get("weights") or {}).get(key, 0) > 0:
            print(f"  final {key} loss: {value:.4f}")
    if record.get("seconds") is not None:
        print(f"  seconds: {record['seconds']:.1f}")


def print_epochs(epochs: list[dict[str, Any]]) -> None:
    """Each epoch's validation accuracy and agreement (what ``show`` lists under the run)."""
    for row in epochs:
        agreement = row.get("agreement")
        line = f"  epoch {row['epoch']}: val acc {number(row.get('val_acc'))}"
        print(line + (f", val agreement {number(agreement)}" if agreement is not None else ""))


RUN_COLUMNS = ("id", "status", "test acc", "val acc", "owner", "name", "config", "queue")


def print_runs(records: list[dict[str, Any]], places: dict[str, Any], epochs_of: Any) -> None:
    """The runs one per line under a header naming the columns, each padded to its widest cell
    (the last, ``queue``, only for queued runs: their place and expected start). ``val acc`` of
    an unfinished run is its last epoch's (``epochs_of(run_id)``), as on the Runs page."""
    from workbench.ui.tables import latest_accuracy, queue_text

    rows = []
    for r in records:
        metrics = r.get("metrics") or {}
        final = metrics.get("val_acc") is not None
        rows.append(
            (
                r["id"],
                r["status"],
                number(metrics.get("test_acc")),
                number(latest_accuracy(r, None if final else epochs_of(r["id"]))),
                one_line(r.get("owner") or "-") + (" (private)" if r.get("private") else ""),
                one_line(r.get("name") or "") or "-",
                one_line(summary_of(r["config"])),
                f"[{queue_text(places[r['id']])}]" if r["id"] in places else "",
            )
        )
    widths = [max(len(c) for c in column) for column in zip(RUN_COLUMNS, *rows, strict=True)]
    for row in (RUN_COLUMNS, *rows):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


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
