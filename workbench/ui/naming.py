"""What a run is called on screen: one short name per run, made from what tells it apart.

As in W&B and Aim, a run shown among others is named by the config fields whose values differ
between the runs shown (``"at · bs 32 · 5 ep"``), or by the name a user gave it. Every legend,
subplot title, table header and selector of the app takes its names from ``short_names``, so a
run is called the same everywhere on a page: a selector's chip (``option_label``) is the table's
name, at most ``MAX_NAME`` characters, and the run id appears (its random part, last) only when
nothing else tells two runs apart. Name a subset of the runs a page lists with ``among=`` the
page's runs, and the subset gets the names the page's table gives them.

Layer pairs are compared as the pairs a run distilled through: a config that paired the layers
automatically (``layer_pairs = []``) counts as the explicit pairs it resolved to when the record
says so (its ``pairs`` field, ``RESOLVED_PAIRS``), so a CLI suite and the app's identical suite
get the same names.

The accuracies the app shows are named here too: ``ACCURACY_METRIC`` / ``ACCURACY_LABEL`` for a
finished run's headline number (the test split, which nothing in training looked at), and
``EPOCH_METRIC`` / ``EPOCH_LABEL`` for the per-epoch curves and a running run's latest value (the
validation split). Every accuracy on screen carries one of the two labels.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "ACCURACY_LABEL",
    "ACCURACY_METRIC",
    "MAX_NAME",
    "RESOLVED_PAIRS",
    "EPOCH_LABEL",
    "EPOCH_METRIC",
    "field_text",
    "flat_config",
    "group_fields",
    "metric_label",
    "option_label",
    "short_names",
]

ACCURACY_METRIC = "test_acc"  # a finished run's headline accuracy: the test split
ACCURACY_LABEL = "test acc"  # ... and what it is called on screen
EPOCH_METRIC = "val_acc"  # the accuracy of every epoch (and of a running run): validation
EPOCH_LABEL = "val acc"
MAX_NAME = 40  # characters of a run's name on screen (a chip, a legend entry, a table cell)
RESOLVED_PAIRS = "pairs"  # a record's field: the layer pairs its run distilled through
PAIRS_SHOWN = 20  # characters of layer pairs written out; more are counted ("3 pairs")

# Fields that never tell runs apart on screen (where a run ran, how often it logged).
_HIDDEN = ("device", "log_every", "data_path")
# How a field's value is written in a short name; ``{}`` is the value. Fields not listed are
# written ``field value``.
_FORMATS = {
    "role": "{}",
    "dataset": "{}",
    "teacher": "{} teacher",
    "student": "{}",
    "teacher_run": "teacher run {}",
    "teacher_epochs": "teacher {} ep",
    "response_kind": "{}",
    "feature_kind": "{}",
    "relation_kind": "{}",
    "weighting": "{}",
    "temperature": "T {}",
    "optimizer": "{}",
    "schedule": "{}",
    "milestones": "milestones {}",
    "weight_decay": "wd {}",
    "epochs": "{} ep",
    "batch_size": "bs {}",
    "lr": "lr {}",
    "seed": "seed {}",
    "weights.label": "label {}",
    "weights.response": "resp {}",
    "weights.feature": "feat {}",
    "weights.relation": "rel {}",
}


def metric_label(metric: str) -> str:
    """How an accuracy metric is named on screen: ``val_acc`` -> ``"val acc"``, ``test_acc`` ->
    ``"test acc"`` (every accuracy says its split)."""
    labels = {ACCURACY_METRIC: ACCURACY_LABEL, EPOCH_METRIC: EPOCH_LABEL}
    return labels.get(metric, metric.replace("_", " "))


def flat_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A config dict with ``weights`` flattened to ``weights.label`` etc. and lists as JSON
    text (hashable, comparable): the fields a run can be named, grouped or coloured by."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        elif isinstance(value, (list, tuple)):
            flat[key] = json.dumps(value)
        else:
            flat[key] = value
    return flat


def flat_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """``flat_config`` of a run's config, automatic layer pairs replaced by the pairs the
    record says they resolved to (``RESOLVED_PAIRS``): how a run is compared for its name."""
    flat = flat_config(record.get("config") or {})
    resolved = record.get(RESOLVED_PAIRS)
    if flat.get("layer_pairs") == "[]" and resolved:
        flat["layer_pairs"] = json.dumps([list(p) for p in resolved])
    return flat


def field_text(field: str, value: Any) -> str:
    """One field of a short name: ``bs 32``, ``5 ep``, ``T 4``, ``at``."""
    if isinstance(value, float):
        value = f"{value:g}"
    elif field == "layer_pairs":
        pairs = json.loads(value) if isinstance(value, str) else value
        written = ",".join(f"{s}>{t}" for s, t in pairs) if pairs else "auto"
        if len(written) > PAIRS_SHOWN:  # "block1>layer2.0,block2>..." would fill a chip
            return f"{len(pairs)} pairs {pairs[0][0]}>{pairs[0][1]}…"
        return f"pairs {written}"
    elif value is None or value == "":
        value = "-"
    return _FORMATS.get(field, field.replace("_", " ") + " {}").format(value)


def group_fields(records: Iterable[Mapping[str, Any]]) -> list[str]:
    """Every config field of ``records`` (flattened) that a view can group or colour by."""
    fields: dict[str, None] = {}
    for record in records:
        fields.update(dict.fromkeys(flat_config(record.get("config") or {})))
    return [f for f in fields if f not in _HIDDEN]


# The order of the fields in a short name: what a distillation run is about first.
_PRIORITY = (
    "role", "student", "teacher", "dataset", "weights.label", "weights.response",
    "weights.feature", "weights.relation", "response_kind", "feature_kind", "relation_kind",
    "weighting", "temperature", "dkd_beta", "dkd_alpha", "dist_beta", "dist_gamma", "optimizer",
    "schedule", "epochs", "batch_size", "lr", "teacher_epochs", "layer_pairs", "teacher_run",
    "seed",
)  # fmt: skip
MAX_FIELDS = 5  # more than this many differing fields: the first ones, then the id


def _same_key(value: Any) -> Any:
    """A key under which two field values are equal exactly when their JSON texts are (1 and 1.0
    and True stay apart), without writing JSON for the plain values a flat config holds."""
    if value is None or isinstance(value, str | bool | int | float):
        return (type(value).__name__, value)
    return json.dumps(value, sort_keys=True, default=str)


def _differing(flats: Sequence[Mapping[str, Any]]) -> list[str]:
    fields = list(dict.fromkeys(k for f in flats for k in f if k not in _HIDDEN))
    differing = [k for k in fields if len({_same_key(f.get(k)) for f in flats}) > 1]
    rank = {k: i for i, k in enumerate(_PRIORITY)}
    return sorted(differing, key=lambda k: rank.get(k, len(rank)))[:MAX_FIELDS]


def short_names(
    records: Iterable[Mapping[str, Any]], *, among: Iterable[Mapping[str, Any]] | None = None
) -> dict[str, str]:
    """``{run id: short unique name}`` for the runs shown together (named as they are among the
    runs ``among``, when given: a page's chart of a few runs then calls them what its table of
    all its runs does).

    A run's name is the name a user gave it, else the fields whose values differ between these
    runs (``"at · bs 32 · 5 ep"``; at most ``MAX_FIELDS``, the loss first), else its role
    (``"student"``, ``"teacher"``). A name that repeats gets what differs among the runs that
    share it (``"KD · seed 1"``), and the run id if even that repeats (``"full · 3f9a2c"``: the
    id's random part, or the whole id when that part repeats). Names are at most ``MAX_NAME``
    characters (cut with "…"). So one run alone is named by its name or role, and two runs that
    differ only by seed are ``"seed 0"`` and ``"seed 1"``.
    """
    records = list(records)
    context = records
    if among is not None:
        context = list(among)
        known = {r["id"] for r in context}
        context += [r for r in records if r["id"] not in known]
    names = _unique_names(context)
    return {r["id"]: names[r["id"]] for r in records}


def _unique_names(records: list[Mapping[str, Any]]) -> dict[str, str]:
    flats = [flat_record(r) for r in records]
    differing = _differing(flats)
    names = []
    for record, flat in zip(records, flats, strict=True):
        if record.get("name"):
            names.append(str(record["name"]))
            continue
        parts = [field_text(k, flat.get(k)) for k in differing]
        if len(" · ".join(parts)) > MAX_NAME:  # the last field (the seed, often) stays whole
            names.append(_joined(" · ".join(parts[:-1]), parts[-1]))
        else:
            names.append(" · ".join(parts) or str(record.get("role") or "run"))
    # A name that repeats: what differs among the runs that share it ("KD · seed 1").
    sharing: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        sharing.setdefault(name, []).append(i)
    extras = [""] * len(names)
    for same in sharing.values():
        if len(same) < 2:
            continue
        among = _differing([flats[i] for i in same])
        for i in same:
            extras[i] = " · ".join(field_text(k, flats[i].get(k)) for k in among)
    names = [_joined(name, extra) for name, extra in zip(names, extras, strict=True)]
    counts = Counter(names)
    tags = _short_ids([r["id"] for r in records])
    out: dict[str, str] = {}
    taken: set[str] = set()
    for record, name in zip(records, names, strict=True):
        if counts[name] > 1 or name in taken:  # only the id tells it apart: last, short
            tag = tags[record["id"]]
            room = MAX_NAME - len(tag) - 3
            name = f"{_cut(name, room)} · {tag}" if room > 1 else tag
        out[record["id"]] = name
        taken.add(name)
    return out


def _joined(name: str, extra: str) -> str:
    """``name · extra`` in at most ``MAX_NAME`` characters, cutting ``name`` (what the runs
    sharing it have in common) before ``extra`` (what tells them apart: "seed 3")."""
    if not extra:
        return _cut(name, MAX_NAME)
    extra = _cut(extra, MAX_NAME // 2)
    room = MAX_NAME - len(extra) - 3
    return f"{_cut(name, room)} · {extra}" if room > 1 else _cut(extra, MAX_NAME)


def _short_ids(ids: Sequence[str]) -> dict[str, str]:
    """Each id's random part (``20261127-181501-3f9a2c`` -> ``3f9a2c``), the whole id where
    that part repeats."""
    parts = {run_id: str(run_id).rsplit("-", 1)[-1] for run_id in ids}
    counts = Counter(parts.values())
    return {run_id: part if counts[part] == 1 else str(run_id) for run_id, part in parts.items()}


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def option_label(name: str, run_id: str) -> str:
    """A run in a selector (a chip): its ``short_names`` name, which is what the table and the
    legends call it, cut to ``MAX_NAME``. The name is unique among the runs it was made for (the
    id is in it when nothing else tells runs apart), and a selector's values are run ids, so a
    rename never moves a selection. ``run_id`` is kept for callers written before."""
    del run_id
    return _cut(name, MAX_NAME)
