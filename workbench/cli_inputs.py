"""What the command line reads: the run flags and ``--config`` as a ``RunConfig``, and the checks
of the other values a command takes (``--user``, ``--slots``) that name what is wrong; and Ctrl-C, which a suite reads as "stop the suite".

Flags are read as text and converted by ``RunConfig.parse_field``, so a bad value gets the same
one-line message (field and allowed range) as in a TOML file or the app; ``in_form_words`` then
names the field as the app's form does, the field name in brackets (``Learning rate (lr) must
be ...``)."""

from __future__ import annotations

import argparse
import contextlib
import re
import signal
import threading
from collections.abc import Iterator
from typing import Any

from workbench.config.choices import FIELD_LABELS
from workbench.config.recipes import METHODS, RECIPES, apply_presets
from workbench.config.run_config import COMPONENTS, RunConfig, parse_weights
from workbench.errors import WorkbenchError, quoted

__all__ = [
    "FORM_LABELS",
    "MAX_SLOTS",
    "RUN_FLAGS",
    "add_run_flags",
    "check_slots",
    "config_from_args",
    "first_ctrl_c_sets",
    "in_form_words",
    "parse_pair",
]

# RunConfig fields with a flag of their own (--data-path for data_path, ...).
RUN_FLAGS = (
    "dataset",
    "data_path",
    "teacher",
    "student",
    "teacher_run",
    "epochs",
    "teacher_epochs",
    "batch_size",
    "lr",
    "temperature",
    "response_kind",
    "dkd_alpha",
    "dkd_beta",
    "dkd_warmup",
    "dist_beta",
    "dist_gamma",
    "feature_kind",
    "relation_kind",
    "weighting",
    "optimizer",
    "momentum",
    "weight_decay",
    "schedule",
    "lr_decay",
    "warmup_epochs",
    "seed",
    "device",
    "log_every",
    "train_fraction",
)
# --method's words: "dkd" for "DKD (Zhao et al. 2022)".
METHOD_FLAGS = {
    name.split(" (")[0].lower().replace(" + ", "+"): name for name in METHODS
}  # kd, dkd, dist, crd, reviewkd, dkd+reviewkd+crd
# What the app's forms (Models, Distill) call a RunConfig field; a field without a widget there
# (log_every, train_fraction, ...) is named by its field name alone.
FORM_LABELS = FIELD_LABELS  # the form's words (config.choices), one list for app and CLI
# "lr must ...", "config file run.toml: lr must ...", "weight label must ...": the field a
# config check names at the start of its message (or after the file it names).
_FIELD_FIRST = re.compile(r"(^|: )(weight (?:" + "|".join(COMPONENTS) + r")|\w+) must ")
# Runs one worker trains at once: a slot is a training thread with its own model and batches,
# so past a few per device they only compete; 64 covers a large multi-GPU host.
MAX_SLOTS = 64


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="a TOML file of RunConfig fields; flags override it")
    for field in RUN_FLAGS:
        parser.add_argument("--" + field.replace("_", "-"), dest=field, default=None)
    parser.add_argument(
        "--recipe", choices=list(RECIPES), help="a training recipe's fields (flags override them)"
    )
    parser.add_argument(
        "--method",
        choices=list(METHOD_FLAGS),
        help="a method preset with its paper's settings (flags override them)",
    )
    parser.add_argument(
        "--milestones", help="epochs after which multistep decays, e.g. 150,180,210"
    )
    parser.add_argument("--weights", help="e.g. label=0.3,response=0.3,feature=0.2,relation=0.2")
    parser.add_argument(
        "--layer-pairs", help="student:teacher module paths, e.g. block2:layer2.1,block3:layer4.1"
    )
    parser.add_argument(
        "--augment", action="store_true", default=None, help="random shifts (and flips for RGB)"
    )
    parser.add_argument(
        "--no-teacher-cache", dest="teacher_cache", action="store_false", default=None
    )
    parser.add_argument("--name", default="", help="a name for the run in the store")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """A RunConfig from ``--config`` (if any) overridden by the flags given."""
    base = RunConfig.from_toml(args.config).to_dict() if args.config else {}
    if getattr(args, "student", None) is not None:  # the recipe's lr may depend on it
        base["student"] = args.student
    method = METHOD_FLAGS.get(getattr(args, "method", None) or "")
    base = apply_presets(base, recipe=getattr(args, "recipe", None), method=method)
    for field in RUN_FLAGS:
        text = getattr(args, field, None)
        if text is not None:
            base[field] = RunConfig.parse_field(field, text)
    for field in ("augment", "teacher_cache"):  # store_true / store_false: real booleans
        value = getattr(args, field, None)
        if value is not None:
            base[field] = value
    if args.weights:
        base["weights"] = parse_weights(args.weights).as_dict()
    if getattr(args, "milestones", None) is not None:
        base["milestones"] = parse_milestones(args.milestones)
    if args.layer_pairs:
        base["layer_pairs"] = [parse_pair(p) for p in args.layer_pairs.split(",") if p.strip()]
    return RunConfig.from_dict(base)


def in_form_words(message: str) -> str:
    """A config error as the form says it, with the field in brackets for the CLI and TOML:
    ``lr must be ...`` -> ``Learning rate (lr) must be ...``. A message that names no field the
    forms have is returned as it is."""

    def labelled(match: re.Match[str]) -> str:
        field = match.group(2).replace("weight ", "weights.")
        label = FORM_LABELS.get(field)
        if label is None:
            return match.group(0)
        return f"{match.group(1)}{label} ({field}) must "

    return _FIELD_FIRST.sub(labelled, message, count=1)


def parse_milestones(text: str) -> list[int]:
    """``150,180,210`` -> ``[150, 180, 210]``; RunConfig checks that they rise and fit."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise WorkbenchError(
            f"milestones must be whole epochs separated by commas, e.g. 150,180,210; got "
            f"{quoted(text)}"
        ) from None


def parse_pair(text: str) -> tuple[str, str]:
    student, sep, teacher = text.strip().partition(":")
    if not sep or not student or not teacher:
        raise WorkbenchError(
            f"a layer pair looks like student_path:teacher_path, got {quoted(text)}"
        )
    return student, teacher


def check_slots(slots: int) -> None:
    if not 1 <= slots <= MAX_SLOTS:
        raise WorkbenchError(
            f"--slots must be a whole number from 1 to {MAX_SLOTS} (the runs this worker trains "
            f"at once), got {slots}"
        )


@contextlib.contextmanager
def first_ctrl_c_sets(stop: threading.Event) -> Iterator[None]:
    """While inside: the first Ctrl-C (SIGINT) sets ``stop`` (the run in progress ends at its
    next step, ``cancelled``), a second one raises ``KeyboardInterrupt`` as usual. The handler
    only sets the event: printing from it could re-enter a write to stderr in progress."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signals are the main thread's (a test calling main from a thread)
        return

    def first(signum: int, frame: Any) -> None:
        stop.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = signal.signal(signal.SIGINT, first)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
