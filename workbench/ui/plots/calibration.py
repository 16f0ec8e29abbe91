"""How sure and how teacher-like the students are: reliability diagrams of the selected runs and
their teacher overlaid (Guo et al., ICML 2017), and each run's class-similarity gap to its
teacher, ``|M_s - M_t|`` of the class-mean logits (Zhao et al., CVPR 2022, Fig. 5), side by side
on one colour scale. Inputs are the probes' ``reliability``, ``teacher_reliability`` and
``logit_gap_matrix`` (``workbench.training.calibration``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.ui.escape import plain_label
from workbench.ui.plots.heatmaps import tick_labels, wrap_name
from workbench.ui.plots.style import PlotDataError, palette_colour

__all__ = ["GAP_PANELS", "logit_gap_heatmaps", "reliability_diagram"]

GAP_PANELS = 4  # gap heatmaps side by side; more runs get more rows


def _points(bins: Sequence[Mapping[str, float]]) -> tuple[list[float], list[float], list[float]]:
    """The non-empty bins' mean confidence, accuracy and share."""
    kept = [b for b in bins if b["share"] > 0]
    return (
        [b["confidence"] for b in kept],
        [b["accuracy"] for b in kept],
        [b["share"] for b in kept],
    )


def reliability_diagram(
    runs: Mapping[str, Sequence[Mapping[str, float]]],
    teacher: Sequence[Mapping[str, float]] | None = None,
    ece: Mapping[str, float] | None = None,
) -> go.Figure:
    """Accuracy against confidence per bin for each run (``name -> bins``) and the teacher
    (dashed), with the diagonal of perfect calibration; a marker's size is its bin's share."""
    if not runs:
        raise PlotDataError("no run with reliability bins to draw")
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=[0, 1], y=[0, 1], mode="lines", name="calibrated",
            line={"color": "#9e9e9e", "dash": "dot"}, hoverinfo="skip",
        )
    )  # fmt: skip
    series = [(name, bins, i) for i, (name, bins) in enumerate(runs.items())]
    if teacher:
        series.append(("teacher", teacher, -1))
    for name, bins, i in series:
        conf, acc, share = _points(bins)
        label = plain_label(name)
        if ece and name in ece:
            label += f" (ECE {ece[name]:.3f})"
        fig.add_trace(
            go.Scatter(
                x=conf, y=acc, mode="lines+markers", name=label,
                line={"color": "#424242" if i < 0 else palette_colour(i),
                      "dash": "dash" if i < 0 else "solid"},
                marker={"size": [6 + 30 * s for s in share]},
                customdata=share,
                hovertemplate="confidence %{x:.2f}<br>accuracy %{y:.2f}<br>"
                "%{customdata:.1%} of the images<extra></extra>",
            )
        )  # fmt: skip
    fig.update_layout(
        height=420,
        xaxis={"title": "confidence (top softmax probability)", "range": [0, 1]},
        yaxis={"title": "accuracy in the bin", "range": [0, 1]},
        legend={"orientation": "h", "y": -0.25},
        margin={"t": 30},
    )
    return fig


def logit_gap_heatmaps(
    gaps: Mapping[str, Sequence[Sequence[float]]], class_names: Sequence[str]
) -> go.Figure:
    """One heatmap per run of ``|M_s - M_t|`` over classes (row: the images' class, column: the
    logit), the diagonal left blank, all on one colour scale from 0."""
    if not gaps:
        raise PlotDataError("no run with a class-similarity gap to draw")
    names = list(gaps)
    cols = min(GAP_PANELS, len(names))
    rows = -(-len(names) // cols)
    fig = make_subplots(
        rows=rows, cols=cols, subplot_titles=[wrap_name(plain_label(n), 28) for n in names],
        horizontal_spacing=0.04, vertical_spacing=0.12,
    )  # fmt: skip
    top = max((v for g in gaps.values() for i, r in enumerate(g) for j, v in enumerate(r) if i != j),
              default=1.0) or 1.0  # fmt: skip
    classes = [str(c) for c in class_names]
    for k, name in enumerate(names):
        z: list[list[Any]] = [
            [None if i == j else v for j, v in enumerate(row)] for i, row in enumerate(gaps[name])
        ]
        fig.add_trace(
            go.Heatmap(
                z=z, x=classes, y=classes, zmin=0, zmax=top, colorscale="PuBuGn",
                showscale=k == 0, colorbar={"title": "|gap|"},
                hovertemplate="class %{y}, logit %{x}: %{z:.3f}<extra></extra>",
            ),
            row=k // cols + 1, col=k % cols + 1,
        )  # fmt: skip
    ticks = tick_labels(classes, 1100 / cols)
    fig.update_xaxes(type="category", tickvals=ticks, ticktext=ticks)
    fig.update_yaxes(type="category", tickvals=ticks, ticktext=ticks, autorange="reversed")
    fig.update_layout(height=320 * rows + 40, margin={"t": 50})
    return fig
