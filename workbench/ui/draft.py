"""From the Distill draft to queued runs: the checks that decide whether Launch is enabled, the
widget each message belongs next to, and the launch itself.

The draft is a plain mapping (the page passes ``st.session_state``): the choices of the Models
page (dataset, teacher, student, teacher source, layer pairs) and the fields of the Distill page.
``check_draft`` runs on every rerun of the page, so an invalid field disables Launch and says why
next to the field before anyone clicks; ``launch_errors`` adds, on a click, what only the submit
gate (building the data and the models) can tell. No invalid value is ever replaced by a default: a draft with an
error is not launched at all.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from typing import Any, TypeVar

from workbench.config.choices import FIELD_LABELS
from workbench.config.recipes import RECIPE_FIELDS, apply_presets
from workbench.config.run_config import COMPONENTS, RunConfig, check_run_name
from workbench.errors import ConfigError, IncompatibleModelsError
from workbench.ui.form_values import FormError, build_configs, parse_seeds

__all__ = [
    "DRAFT_FIELDS",
    "FORM_LABELS",
    "MODEL_FIELDS",
    "NOTHING_QUEUED",
    "SLOTS",
    "TEACHER_MODES",
    "check_draft",
    "config_draft",
    "draft_key",
    "draft_values",
    "form_message",
    "launch_errors",
    "launch_message",
    "launch_runs",
    "parse_milestones_text",
    "parse_tags",
    "preset_draft",
    "reset_pairs",
    "route_errors",
    "run_names",
    "teacher_source_error",
    "upload_message",
]

T = TypeVar("T")

TEACHER_MODES = ("train one now", "pick a trained teacher", "upload a checkpoint")
# Where each field's message is shown on the Distill page: the slot under its widgets.
SLOTS = {
    "weights": ("weights",),
    "kinds": ("temperature", "response_kind", "feature_kind", "relation_kind", "weighting"),
    "method": ("dkd_alpha", "dkd_beta", "dkd_warmup", "dist_beta", "dist_gamma"),
    "pairs": ("layer_pairs",),
    "training": ("epochs", "batch_size", "lr", "teacher_epochs"),
    "recipe": (*RECIPE_FIELDS, "augment"),
    "seeds": ("seeds",),
    "device": ("device",),
    "name": ("run_name",),
    "launch": ("form",),
}
# Fields set on the Models page: their messages say to go there.
MODEL_FIELDS = ("dataset", "data_path", "teacher", "student", "teacher_run")


# The Distill and Models pages' labels of the fields whose names differ from them: a message
# names the field as the form does, its setting's name in brackets (what the CLI and a config
# file call it).
FORM_LABELS = {  # the start of a config message -> (the form's label, the setting's name)
    **{f: (FIELD_LABELS[f], f) for f in ("teacher_epochs", "batch_size", "lr")},
    "epochs": (FIELD_LABELS["epochs"], ""),
    **{f"weight {c}": (FIELD_LABELS[f"weights.{c}"], f"weights.{c}") for c in COMPONENTS},
}  # labels: config.choices.FIELD_LABELS, the words the command line uses too
_EMPTY = re.compile(r", got None \(NoneType\)$")


def form_message(message: str) -> str:
    """A config message as the form says it: ``lr must be ... got -1`` -> ``Learning rate (lr)
    must be ... got -1``; an empty number field (``got None``) -> ``...; the field is empty``.
    Other messages are kept as they are."""
    for start, (label, name) in FORM_LABELS.items():
        if message.startswith(f"{start} "):
            message = f"{label}{f' ({name})' if name else ''}{message[len(start) :]}"
            break
    return _EMPTY.sub("; the field is empty", message)


def teacher_source_error(draft: Mapping[str, Any]) -> str | None:
    """Why the chosen teacher source cannot be used (a rejected or missing upload, no picked
    run), or None. A failed upload must never fall back to a teacher trained automatically."""
    mode = draft.get("teacher_mode", TEACHER_MODES[0])
    if mode == TEACHER_MODES[0] or draft.get("teacher_run"):
        return None
    if mode == TEACHER_MODES[2]:
        rejected = draft.get("teacher_upload_error")
        if rejected:
            return (
                f"the uploaded teacher checkpoint was rejected ({rejected}): upload a fixed one "
                "or choose another teacher source on the Models page"
            )
        return (
            "no teacher checkpoint uploaded yet: upload one, or choose another teacher source "
            "on the Models page"
        )
    return "no trained teacher picked: pick one, or train one now on the Models page"


def upload_message(exc: BaseException, filename: str) -> str:
    """The message of a rejected upload, naming the file the user uploaded instead of the
    temporary copy it was checked from (``/tmp/tmpab12cd34.pt`` or just ``tmpab12cd34.pt``)."""
    temp = re.escape(tempfile.gettempdir().rstrip(os.sep) + os.sep)
    return re.sub(rf"(?:{temp})?tmp\w{{6,}}\.pth?\b", filename, str(exc))


def draft_values(draft: Mapping[str, Any]) -> dict[str, Any]:
    """The ``RunConfig`` fields of the draft, as the form builder takes them (values as typed:
    an out-of-range number stays out of range, for ``check_draft`` to reject)."""
    image_folder = draft.get("dataset") == "image_folder"
    return {
        "dataset": draft["dataset"],
        "data_path": str(draft.get("data_path") or "").strip() if image_folder else "",
        "teacher": draft["teacher"],
        "student": draft["student"],
        "teacher_run": draft.get("teacher_run") or ""
        if draft.get("teacher_mode", TEACHER_MODES[0]) != TEACHER_MODES[0]
        else "",
        "teacher_epochs": _number(draft["teacher_epochs"], int),
        "weights": {c: _number(draft[f"w_{c}"], float) for c in COMPONENTS},
        "temperature": _number(draft["temperature"], float),
        "feature_kind": draft["feature_kind"],
        "relation_kind": draft["relation_kind"],
        "weighting": draft["weighting"],
        "layer_pairs": tuple(tuple(p) for p in draft.get("layer_pairs") or ()),
        "epochs": _number(draft["epochs"], int),
        "batch_size": _number(draft["batch_size"], int),
        "lr": _number(draft["lr"], float),
        "device": draft.get("device", "auto"),
        **_method_values(draft),
        **_recipe_values(draft),
    }


def _method_values(draft: Mapping[str, Any]) -> dict[str, Any]:
    """The response method and its settings (a draft from before they existed: the defaults)."""
    kind = draft.get("response_kind", "kd")
    values: dict[str, Any] = {"response_kind": kind}
    fields = {"dkd": ("dkd_alpha", "dkd_beta", "dkd_warmup"), "dist": ("dist_beta", "dist_gamma")}
    for name in fields.get(kind, ()):  # another method's settings stay at their defaults
        if name in draft:
            values[name] = _number(draft[name], int if name == "dkd_warmup" else float)
    return values


def _recipe_values(draft: Mapping[str, Any]) -> dict[str, Any]:
    """The training recipe; milestones typed as ``150, 180, 210`` (used by multistep only)."""
    values: dict[str, Any] = {}
    for name, kind in (("momentum", float), ("weight_decay", float), ("warmup_epochs", int)):
        if name in draft:
            values[name] = _number(draft[name], kind)
    for name in ("optimizer", "schedule", "augment"):
        if name in draft:
            values[name] = draft[name]
    if draft.get("schedule") == "multistep":
        values["milestones"] = parse_milestones_text(draft.get("milestones", ""))
        if "lr_decay" in draft:
            values["lr_decay"] = _number(draft["lr_decay"], float)
    return values


def preset_draft(
    *, recipe: str | None = None, method: str | None = None, student: str = ""
) -> dict[str, Any]:
    """The draft keys a recipe or method preset sets (``workbench.config.recipes``): weights as
    ``w_label`` ..., milestones as text; the CRD recipe's lr follows the ``student``."""
    fields = apply_presets({"student": student}, recipe=recipe, method=method)
    fields.pop("student")
    weights = fields.pop("weights", None)
    if weights is not None:
        fields.update({f"w_{c}": float(weights.get(c, 0.0)) for c in COMPONENTS})
    if "milestones" in fields:
        fields["milestones"] = ", ".join(str(m) for m in fields["milestones"])
    return fields


# RunConfig fields the Distill draft holds under their own names, as they are
DRAFT_FIELDS = (
    "dataset", "data_path", "teacher", "student", "teacher_epochs", "temperature",
    "response_kind", "dkd_alpha", "dkd_beta", "dkd_warmup", "dist_beta", "dist_gamma",
    "optimizer", "momentum", "weight_decay", "schedule", "lr_decay", "warmup_epochs", "augment",
    "feature_kind", "relation_kind", "weighting", "epochs", "batch_size", "lr",
)  # fmt: skip


def config_draft(config: RunConfig) -> dict[str, Any]:
    """The draft keys that show ``config`` in the Distill form (the inverse of
    ``draft_values``: ``draft_values(config_draft(c))`` gives back ``c``'s fields the form has;
    seed, train_fraction and log_every are not on the form)."""
    draft: dict[str, Any] = {field: getattr(config, field) for field in DRAFT_FIELDS}
    draft.update({f"w_{c}": v for c, v in config.weights.as_dict().items()})
    draft["milestones"] = ", ".join(str(m) for m in config.milestones)
    draft["teacher_run"] = config.teacher_run
    draft["teacher_mode"] = TEACHER_MODES[1] if config.teacher_run else TEACHER_MODES[0]
    draft["layer_pairs"] = tuple(tuple(p) for p in config.layer_pairs)
    draft["device"] = config.device
    return draft


def parse_milestones_text(text: Any) -> Any:
    """``"150, 180, 210"`` -> ``(150, 180, 210)``; text that is not whole numbers is returned as
    it is, for the config check to name."""
    parts = [p.strip() for p in str(text or "").split(",") if p.strip()]
    try:
        return tuple(int(p) for p in parts)
    except ValueError:
        return str(text)


def _number(value: Any, kind: type) -> Any:
    # An empty number field is None: kept as is, so the config check names the field.
    if value is None:
        return None
    try:
        return kind(value)
    except (TypeError, ValueError):
        return value


def draft_key(draft: Mapping[str, Any]) -> str:
    """A key that changes whenever the draft does (messages of a click last until then)."""
    try:
        values = draft_values(draft)
    except KeyError:
        values = {}
    return repr((values, draft.get("seeds"), draft.get("teacher_mode")))


def check_draft(draft: Mapping[str, Any]) -> tuple[list[RunConfig], dict[str, str]]:
    """``(one config per seed, {})`` for a draft that can be launched, else ``([], errors)``
    with a message per field (``"form"`` for what belongs to no single field)."""
    errors: dict[str, str] = {}
    try:
        seeds = parse_seeds(draft.get("seeds", "1"))
    except FormError as exc:
        errors.update(exc.errors)
        seeds = (0,)
    configs: list[RunConfig] = []
    try:
        configs = build_configs(draft_values(draft), seeds)
    except FormError as exc:
        errors.update({field: form_message(text) for field, text in exc.errors.items()})
    if draft.get("layer_pairs_error"):
        errors["layer_pairs"] = draft["layer_pairs_error"]
    if problem := teacher_source_error(draft):
        errors["teacher_run"] = problem
    try:  # the same rule as the CLI's --name: one printable line
        check_run_name(draft.get("run_name", ""))
    except ConfigError as exc:
        errors["run_name"] = str(exc)
    return ([], errors) if errors else (configs, {})


def launch_errors(launch: Callable[[], T]) -> tuple[T | None, dict[str, str], Exception | None]:
    """Call ``launch`` (which queues the draft's runs through the submit gate, where the data
    and models are built once) and sort out what the gate refused: ``(result, {}, None)`` when
    the runs were queued, ``(None, {field: message}, None)`` for layer pairs that do not fit,
    ``(None, {}, error)`` for anything else (e.g. the dataset is not on disk: its message says
    how to get it; a quota reached)."""
    try:
        return launch(), {}, None
    except IncompatibleModelsError as exc:
        return None, {"layer_pairs": str(exc)}, None
    except Exception as exc:  # shown as it is: the library's errors carry the fix
        return None, {}, exc


NOTHING_QUEUED = {"kind": "nothing"}  # what the Launch buttons' message slot says instead


def launch_message(
    message: Mapping[str, Any] | None, key: str, *, blocked: bool, refused: bool
) -> Mapping[str, Any] | None:
    """What the one message slot under the Launch buttons shows: the latest outcome only.

    ``message``: the last launch's ``{"kind": "runs" | "suite", ..., "for": draft key}``;
    ``key``: the draft's key now; ``blocked``: the draft has errors; ``refused``: the last click
    queued nothing. A refused click, or a draft that has errors and changed since the last
    launch, shows ``NOTHING_QUEUED`` in place of an older "Queued ..." (never both)."""
    if refused or (blocked and (message is None or message.get("for") != key)):
        return NOTHING_QUEUED
    return message


def route_errors(errors: Mapping[str, str]) -> dict[str, list[str]]:
    """``{slot: messages}``: each message once, under the widgets of its field (``SLOTS``);
    Models-page fields in one line under Launch that says to change them there."""
    routed: dict[str, list[str]] = {}
    for slot, fields in SLOTS.items():
        found = list(dict.fromkeys(errors[f] for f in fields if f in errors))
        if found:
            routed[slot] = found
    model = [errors[f] for f in MODEL_FIELDS if f in errors]
    if model:
        routed.setdefault("launch", []).insert(
            0, "Change this on the Models page: " + "; ".join(model)
        )
    placed = {f for fields in SLOTS.values() for f in fields} | set(MODEL_FIELDS)
    rest = [message for field, message in errors.items() if field not in placed]
    if rest:
        routed.setdefault("launch", []).extend(rest)
    return routed


def run_names(name: str, seeds: Sequence[int]) -> list[str]:
    """The names of the runs of one launch: the given name, with ``· seed N`` for several."""
    name = name.strip()
    if not name or len(seeds) == 1:
        return [name] * len(seeds)
    return [f"{name} · seed {s}" for s in seeds]


def parse_tags(text: str) -> list[str]:
    """``"baseline, at ,"`` -> ``["baseline", "at"]`` (each tag once, in order)."""
    return list(dict.fromkeys(t.strip() for t in str(text).split(",") if t.strip()))


def launch_runs(
    configs: Sequence[RunConfig],
    submit_many: Callable[[list[Any]], list[str]],
    *,
    name: str = "",
    tags: str = "",
) -> list[str]:
    """Queue one run per config with the draft's name and tags, all at once through
    ``submit_many`` (``JobManager.submit_many``: all or none); returns the run ids."""
    from workbench.runs.submit import Submission  # torch: only when Launch is pressed

    names = run_names(name, [c.seed for c in configs])
    tag_list = tuple(parse_tags(tags))
    return submit_many(
        [Submission(c, name=n, tags=tag_list) for c, n in zip(configs, names, strict=True)]
    )


def reset_pairs(
    state: MutableMapping[str, Any], choices: Iterable[Any], suggested: Sequence[tuple[str, str]]
) -> bool:
    """Start the layer pairs from ``suggested`` when the teacher/student/dataset ``choices``
    changed since they were set (on Models or Distill); returns whether they were reset.
    ``state["pairs_suggested"]`` keeps the suggestion (pairs equal to it stay out of the URL)."""
    choices = tuple(choices)
    state["pairs_suggested"] = tuple(tuple(p) for p in suggested)
    if state.get("pairs_for") == choices:
        return False
    state["pairs_for"] = choices
    state["layer_pairs"] = state["pairs_suggested"]
    return True
