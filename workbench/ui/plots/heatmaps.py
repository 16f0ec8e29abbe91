"""Heatmaps that compare layers: linear CKA of student vs teacher layers (several runs on one
colour scale), the CKA difference of two runs, and the Gram matrices of one distilled pair.

- CKA heatmaps (Kornblith et al. 2019, "Similarity of Neural Network Representations
  Revisited", ICML) of several runs share one colour scale, so equal colours mean equal CKA.
- Gram heatmaps (Tung & Mori 2019, "Similarity-Preserving Knowledge Distillation", ICCV) order
  the probe samples by class, so class blocks show on the diagonal.

Inputs are the probes of ``docs/ARCHITECTURE.md``; outputs are ``go.Figure`` objects.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.ui.escape import plain_label
from workbench.ui.plots.style import PlotDataError

__all__ = [
    "DIFFERENCE_RANGE",
    "cka_difference",
    "cka_heatmaps",
    "difference_range",
    "fit_text",
    "gram_heatmaps",
    "tick_labels",
    "wrap_name",
]


# ---------------------------------------------------------------------- layer comparison
FIGURE_PX = 1100  # the width a figure gets on the wide page at 1440 px (beside the sidebar)
TICK_PX = 18  # what one tick label needs along its axis: 12 px text, rotated 45 degrees, a gap
TICK_FONT = 11


def tick_labels(labels: Sequence[str], axis_px: float) -> list[str]:
    """The labels an axis of ``axis_px`` can name without overlap (``TICK_PX`` each): all of
    them, or every second, third, ... one; the hover still names every cell."""
    labels = list(labels)
    step = max(1, math.ceil(len(labels) * TICK_PX / max(axis_px, 1.0)))
    return labels[::step]


def _layer_axes(
    fig: go.Figure,
    col: int,
    teacher: Sequence[str],
    student: Sequence[str],
    row: int = 1,
    *,
    size_px: tuple[float, float] = (FIGURE_PX, 400),
) -> None:
    # Category axes with explicit ticks: a path such as "0" must not become the number 0.
    # ``size_px``: the panel's (width, height), which decides how many labels fit.
    shown_t, shown_s = tick_labels(teacher, size_px[0]), tick_labels(student, size_px[1])
    fig.update_xaxes(
        type="category",
        tickmode="array",
        tickvals=shown_t,
        ticktext=shown_t,
        tickangle=-45,
        tickfont=dict(size=TICK_FONT),
        title_text="teacher layer",
        row=row,
        col=col,
    )
    fig.update_yaxes(
        type="category",
        tickmode="array",
        tickvals=shown_s,
        ticktext=shown_s,
        tickfont=dict(size=TICK_FONT),
        autorange="reversed",  # forward order from the top
        title_text="student layer" if col == 1 else None,
        row=row,
        col=col,
    )


def _cka(probe: Mapping[str, Any]) -> np.ndarray | None:
    cka = probe.get("cka")
    return None if cka is None else np.asarray(cka, dtype=float)


def cka_heatmaps(
    probes: Mapping[str, Mapping[str, Any]],
    zmin: float = 0.0,
    zmax: float = 1.0,
    *,
    per_row: int | None = None,
) -> go.Figure:
    """Side-by-side linear-CKA heatmaps ``[student layer, teacher layer]``, one per run.

    All heatmaps use one shared colour axis (``layout.coloraxis``, ``cmin=zmin``,
    ``cmax=zmax``), so equal colours mean equal CKA across runs. Runs without a CKA matrix
    (no teacher) are left out and named in the title. ``per_row`` wraps the heatmaps into rows
    of at most that many (default: all in one row).

    Long because it builds one Plotly figure: the traces, then the axes, legend and hover settings that belong
    to them; split into helpers, one figure's layout would be read in pieces.
    """
    drawable = {label: p for label, p in probes.items() if _cka(p) is not None}
    skipped = [label for label in probes if label not in drawable]
    if not drawable:
        raise PlotDataError(
            "none of the selected runs has a CKA matrix: CKA is measured only for runs with a "
            "teacher (pick student runs that distilled from one)"
        )
    n = len(drawable)
    cols = min(n, per_row) if per_row else n
    grid_rows = math.ceil(n / cols)
    layers = max(len(p["student_layers"]) for p in drawable.values())
    row_px = max(220, 26 * layers)  # the heatmap itself
    gap_px = 150  # rotated teacher-layer ticks, the axis title, the next row's subplot titles
    height = max(380, 160 + 26 * layers) + (grid_rows - 1) * (row_px + gap_px)
    # A subplot title must fit its column (about 7 px a character at 12 px on a 1400 px page):
    # names wrap onto two lines between their parts, the rest is cut with an ellipsis; the
    # hover names the run in full.
    fit = max(12, int(1100 / cols / 7))
    spacing = min(0.12, 1.0 / (cols - 1) - 1e-3) if cols > 1 else 0.0
    panel_px = FIGURE_PX * (1.0 - spacing * (cols - 1)) / cols
    fig = make_subplots(
        rows=grid_rows,
        cols=cols,
        subplot_titles=[wrap_name(label, fit) for label in drawable],
        horizontal_spacing=spacing,
        vertical_spacing=min(gap_px / (height - 200), 1.0 / (grid_rows - 1) - 1e-3)
        if grid_rows > 1
        else 0.0,
    )
    fig.update_annotations(font=dict(size=12))
    for i, (label, probe) in enumerate(drawable.items()):
        row, col = i // cols + 1, i % cols + 1
        teacher, student = list(probe["teacher_layers"]), list(probe["student_layers"])
        name = plain_label(label).replace("%", "%%")
        spread, seeds = probe.get("cka_sd"), int(probe.get("cka_seeds") or 1)
        value = "CKA %{z:.3f}"
        if spread is not None and seeds > 1:  # a seed group: its mean, and the seeds' sd
            value = f"CKA %{{z:.3f}} ± %{{customdata:.3f}} (mean ± sd of {seeds} seeds)"
        fig.add_trace(
            go.Heatmap(
                z=_cka(probe),
                x=teacher,
                y=student,
                zmin=zmin,
                zmax=zmax,
                customdata=np.asarray(spread, dtype=float) if spread is not None else None,
                coloraxis="coloraxis",
                name=plain_label(label),
                hovertemplate=f"{name}<br>student %{{y}}<br>teacher %{{x}}<br>{value}"
                "<extra></extra>",
            ),
            row=row,
            col=col,
        )
        _layer_axes(fig, col, teacher, student, row=row, size_px=(panel_px, row_px))
    title = "linear CKA, student layer vs teacher layer"
    if skipped:
        title += f" (no CKA: {plain_label(', '.join(map(str, skipped)))})"
    fig.update_layout(
        title=title,
        coloraxis=dict(cmin=zmin, cmax=zmax, colorscale="Viridis", colorbar=dict(title="CKA")),
        height=height,
        margin=dict(t=80, b=120),
    )
    return fig


def cka_difference(
    probe: Mapping[str, Any],
    baseline_probe: Mapping[str, Any],
    *,
    label: str = "run",
    baseline_label: str = "baseline",
) -> go.Figure:
    """Heatmap of ``CKA(run) - CKA(baseline)`` on a diverging scale centred at 0 with a fixed,
    symmetric range (``difference_range``: +-0.2 unless a cell is larger), stated in the title,
    so a tiny difference looks tiny.

    Positive (red) cells: this run's student layer resembles that teacher layer more than the
    baseline's does. Needs the same student and teacher layer lists in both probes.
    """
    a, b = _cka(probe), _cka(baseline_probe)
    if a is None or b is None:
        missing = label if a is None else baseline_label
        raise PlotDataError(f"{missing} has no CKA matrix (it ran without a teacher)")
    for side in ("student_layers", "teacher_layers"):
        if list(probe[side]) != list(baseline_probe[side]):
            raise PlotDataError(
                f"CKA difference needs the same {side.replace('_', ' ')} in both runs: "
                f"{label} has {list(probe[side])}, {baseline_label} has "
                f"{list(baseline_probe[side])}; compare runs of the same teacher and student"
            )
    teacher, student = list(probe["teacher_layers"]), list(probe["student_layers"])
    delta = a - b
    limit = difference_range(delta)
    fig = make_subplots(rows=1, cols=1)
    fig.add_trace(
        go.Heatmap(
            z=delta,
            x=teacher,
            y=student,
            zmin=-limit,
            zmax=limit,
            zmid=0.0,
            colorscale="RdBu_r",
            colorbar=dict(title="delta CKA", tickformat="+.2f"),
            hovertemplate="student %{y}<br>teacher %{x}<br>delta %{z:+.3f}<extra></extra>",
        ),
        row=1,
        col=1,
    )
    height = max(380, 160 + 26 * len(student))
    _layer_axes(fig, 1, teacher, student, size_px=(FIGURE_PX, height - 180))
    fig.update_layout(
        title=f"CKA({plain_label(fit_text(label, 40))}) - "
        f"CKA({plain_label(fit_text(baseline_label, 40))}); "
        f"colour range fixed at ±{limit:.2f}",
        height=height,
        margin=dict(t=60, b=120),
    )
    return fig


DIFFERENCE_RANGE = 0.2  # a CKA difference this large is a strong effect (full colour)


def difference_range(delta: np.ndarray, base: float = DIFFERENCE_RANGE) -> float:
    """The half-range of the symmetric colour scale of a difference heatmap: ``base`` (so a
    0.0005 difference stays pale), widened to the next 0.1 when a cell goes beyond it."""
    finite = np.abs(np.asarray(delta, dtype=float))
    finite = finite[np.isfinite(finite)]
    peak = float(finite.max()) if finite.size else 0.0
    return base if peak <= base else math.ceil(peak * 10 - 1e-9) / 10


def wrap_name(name: str, width: int, lines: int = 2) -> str:
    """A run's short name on at most ``lines`` lines of ``width`` characters (``<br>`` between),
    broken between its `` · `` parts; only what does not fit then is cut (``fit_text``)."""
    out: list[str] = []
    for part in str(name).split(" · "):
        if out and len(out[-1]) + 3 + len(part) <= width:
            out[-1] += " · " + part
        else:
            out.append(part)
    if len(out) > lines:
        out = [*out[: lines - 1], " · ".join(out[lines - 1 :])]
    return "<br>".join(plain_label(fit_text(line, width)) for line in out)  # tags: ours only


def fit_text(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters with an ellipsis (titles that fit their column)."""
    text = str(text)
    return text if len(text) <= width else text[: max(1, width - 1)].rstrip() + "…"


def gram_heatmaps(probe: Mapping[str, Any], pair_index: int = 0) -> go.Figure:
    """Teacher, student and ``|teacher - student|`` Gram matrices of one distilled layer pair.

    Samples are sorted (stably) by class; lines mark class boundaries at ``b - 0.5`` for every
    index ``b`` where the class changes, and the ticks name each class at its block centre.
    Teacher and student share one colour axis; the difference has its own.

    Long because it builds one Plotly figure: the traces, then the axes, legend and hover settings that belong
    to them; split into helpers, one figure's layout would be read in pieces.
    """
    grams = probe.get("grams") or []
    if not grams:
        raise PlotDataError(
            "this run has no Gram matrices: they are recorded for distilled layer pairs of "
            "runs with a teacher"
        )
    if not -len(grams) <= pair_index < len(grams):
        raise PlotDataError(
            f"pair_index {pair_index} is out of range: the run has {len(grams)} pair(s)"
        )
    entry = grams[pair_index]
    labels = np.asarray(probe["gram_labels"]).astype(int)
    order = np.argsort(labels, kind="stable")
    labels = labels[order]
    teacher = np.asarray(entry["teacher"], dtype=float)[np.ix_(order, order)]  # [M, M]
    student = np.asarray(entry["student"], dtype=float)[np.ix_(order, order)]  # [M, M]
    m = len(labels)
    if teacher.shape != (m, m) or student.shape != (m, m):
        raise PlotDataError(
            f"Gram matrices {teacher.shape} / {student.shape} do not match {m} probe labels"
        )
    names = list(probe.get("class_names") or [])
    starts = [0, *(np.flatnonzero(np.diff(labels)) + 1).tolist()]
    ends = [*starts[1:], m]
    centres = [(s + e - 1) / 2 for s, e in zip(starts, ends, strict=True)]
    # class names are folder names of an image folder: text, never tags
    ticktext = [plain_label(names[c]) if 0 <= c < len(names) else str(c) for c in labels[starts]]
    s_path, t_path = entry["pair"]
    fig = make_subplots(
        rows=1,
        cols=3,
        subplot_titles=[
            plain_label(f"teacher {t_path}"),
            plain_label(f"student {s_path}"),
            "|teacher - student|",
        ],
        horizontal_spacing=0.09,
    )
    index = np.arange(m)
    shapes = []  # collected and set once: fig.add_shape per line takes ~15 ms each
    panels = [
        (teacher, "coloraxis"),
        (student, "coloraxis"),
        (np.abs(teacher - student), "coloraxis2"),
    ]
    for col, (z, axis) in enumerate(panels, start=1):
        fig.add_trace(
            go.Heatmap(
                z=z,
                x=index,
                y=index,
                coloraxis=axis,
                hovertemplate="sample %{y} vs %{x}<br>%{z:.3f}<extra></extra>",
            ),
            row=1,
            col=col,
        )
        # white lines on the Viridis panels, dark ones on the white-to-red difference panel
        line = dict(color="white" if col < 3 else "rgba(0,0,0,0.45)", width=1)
        refs = dict(xref=f"x{col if col > 1 else ''}", yref=f"y{col if col > 1 else ''}")
        for b in starts[1:]:
            shapes.append(
                dict(type="line", x0=b - 0.5, x1=b - 0.5, y0=-0.5, y1=m - 0.5, line=line, **refs)
            )
            shapes.append(
                dict(type="line", x0=-0.5, x1=m - 0.5, y0=b - 0.5, y1=b - 0.5, line=line, **refs)
            )
        ticks = dict(
            tickmode="array", tickvals=centres, ticktext=ticktext, showgrid=False, zeroline=False
        )
        fig.update_xaxes(range=[-0.5, m - 0.5], tickangle=-45, **ticks, row=1, col=col)
        fig.update_yaxes(
            range=[m - 0.5, -0.5],
            scaleanchor=f"x{col if col > 1 else ''}",
            # the rows are in the same class order in every panel: name them once, on the left,
            # where they do not collide with the shared colour bar between panels 2 and 3
            showticklabels=col == 1,
            **ticks,
            row=1,
            col=col,
        )
    split = fig.layout.xaxis2.domain[1]
    fig.update_layout(
        shapes=shapes,
        title=f"Gram matrices of pair {plain_label(s_path)} -> {plain_label(t_path)} "
        "(samples sorted by class)",
        coloraxis=dict(colorscale="Viridis", colorbar=dict(x=split + 0.005, thickness=12, len=0.9)),
        coloraxis2=dict(colorscale="Reds", cmin=0.0, colorbar=dict(x=1.0, thickness=12, len=0.9)),
        height=430,
        margin=dict(t=80, b=80),
    )
    return fig
