"""Words about a suite for the pages and the CLI: its kind, its picker label, its introduction.

Plain text, no markup: a page passes the user's part (the suite's name) through
``workbench.ui.escape.plain`` where it renders markdown; a selectbox option is shown as text.
"""

from __future__ import annotations

import math
import re
import time
from typing import Any

from workbench.ablation.variants import LABEL_ONLY, coalition_name

__all__ = [
    "SUITE_KINDS",
    "scratch_sentence",
    "scratch_variant",
    "suite_intro",
    "suite_kind",
    "suite_label",
]

# leave-one-out: full, each component removed, label only; factorial: every on/off combination;
# seeds: one config over several seeds (the seed-to-seed noise alone).
SUITE_KINDS = ("leave-one-out", "factorial", "seeds")
NAME_CHARS = 40  # of the suite's name in a picker label


def suite_kind(suite: dict[str, Any]) -> str:
    """``"leave-one-out"``, ``"factorial"`` or ``"seeds"`` (a suite that records its ``kind``
    keeps it; older suites say only whether they are ``factorial``)."""
    kind = suite.get("kind")
    if kind in SUITE_KINDS:
        return kind
    return "factorial" if suite.get("factorial") else "leave-one-out"


def _count(n: Any, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def suite_label(suite: dict[str, Any]) -> str:
    """One line that tells suites apart in a picker: ``name · kind · E epochs × S seeds · date``
    (``· private``) ``· id``. The name is cut to ``NAME_CHARS`` and kept on one line."""
    name = re.sub(r"\s+", " ", str(suite.get("name") or suite.get("id", ""))).strip()
    if len(name) > NAME_CHARS:
        name = name[: NAME_CHARS - 1] + "…"
    epochs = (suite.get("base") or {}).get("epochs", "?")
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(suite.get("created_at") or 0))
    parts = [
        name,
        suite_kind(suite),
        f"{_count(epochs, 'epoch')} × {_count(suite.get('seeds', '?'), 'seed')}",
        when,
    ]
    if suite.get("private"):
        parts.append("private")
    return " · ".join([*parts, str(suite.get("id", ""))])  # the id: as runs' option_label


def scratch_variant(suite: dict[str, Any]) -> str | None:
    """The suite's variant that is the scratch student (label weight 1, nothing else), or None.

    Leave-one-out suites call it ``"label only"``; a factorial suite names it after its
    coalition (``"without response"`` when label and response are the only players) and has
    none when the label term is not among its players."""
    kind = suite_kind(suite)
    if kind == "leave-one-out":
        return LABEL_ONLY
    players = list(suite.get("players") or [])
    if kind == "factorial" and "label" in players:
        return coalition_name(["label"], players)
    return None


def suite_intro(kind: str, accuracy: str) -> str:
    """What a suite of ``kind`` trains and what the page computes from it (``accuracy``: the
    name of the metric, e.g. ``"test accuracy"``)."""
    scratch = (
        f"Distillation vs scratch is {accuracy}(full) - {accuracy}(label only), the scratch "
        "student, paired by seed with a 95% t-interval."
    )
    if kind == "factorial":
        return (
            "A factorial suite trains every on/off combination of the active loss components "
            "(the label only scratch student among them), for several seeds. A component's "
            f"Shapley value is its effect on {accuracy} averaged over all combinations, "
            "measured against the label only student, with a 95% t-interval over seeds; its "
            f"leave-one-out contribution, {accuracy}(full) - {accuracy}(without it), is the "
            f"last step only. {scratch} Everything below updates as the runs finish."
        )
    if kind == "seeds":
        return (
            "This suite trains one config with several seeds: the spread of its "
            f"{accuracy} is the seed-to-seed noise any difference must clear. Everything "
            "below updates as the runs finish."
        )
    return (
        "Each suite trains the full hybrid loss, the loss with each active component removed "
        "(weight 0, the others unchanged) and the label only baseline, for several seeds. "
        f"A component's contribution is {accuracy}(full) - {accuracy}(without it), with a 95% "
        f"t-interval over seeds. {scratch} Everything below updates as the suite's runs finish."
    )


def scratch_sentence(row: dict[str, Any]) -> str:
    """Distillation vs scratch (``suites.scratch_comparison``) in one sentence, in points."""
    mean, n = 100 * row["contribution"], row["n"]
    low, high = 100 * row["ci_low"], 100 * row["ci_high"]
    who = f"full - {row['variant']}" + ("" if row["variant"] == LABEL_ONLY else " (label only)")
    if math.isfinite(low) and math.isfinite(high):
        verdict = "distinguishable from noise" if row["distinguishable"] else "within the noise"
        return (
            f"{who}: {mean:+.2f} points, 95% interval {low:+.2f} to {high:+.2f} over {n} "
            f"paired seed(s), {verdict}."
        )
    why = row.get("note") or "no interval"
    return f"{who}: {mean:+.2f} points over {n} paired seed(s) ({why})."
