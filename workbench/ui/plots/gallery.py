"""The disagreement gallery's figures (``workbench.insight.disagreements``): the paged grid of
test images, each with its label, both predictions and both models' probability bars, and the
per-class accuracy chart whose bars a click turns into the gallery's class filter."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.insight.disagreements import Tile
from workbench.ui.escape import plain_label
from workbench.ui.plots.heatmaps import fit_text
from workbench.ui.plots.style import PlotDataError, palette_colour

__all__ = ["gallery_figure", "per_class_accuracy_bars"]

TILE_PX = 150
BARS_PX = 90
STUDENT, TEACHER = 0, 1  # palette slots: the student's colour, the teacher's


def _name(class_names: Sequence[str], c: int) -> str:
    return fit_text(plain_label(str(class_names[c])), 10) if 0 <= c < len(class_names) else str(c)


def gallery_figure(
    images: np.ndarray,
    tiles: Sequence[Tile],
    class_names: Sequence[str],
    *,
    columns: int = 4,
    student_name: str = "student",
) -> go.Figure:
    """A grid of ``images`` ([M, H, W, 3] uint8), each titled with its label and both
    predictions, above a bar chart of both models' probabilities of its top classes."""
    if not len(tiles) or len(images) != len(tiles):
        raise PlotDataError("no image to show: this group has none for the chosen class")
    columns = max(1, min(columns, len(tiles)))
    rows = math.ceil(len(tiles) / columns)
    who = fit_text(plain_label(student_name), 16)
    fig = make_subplots(
        rows=2 * rows,
        cols=columns,
        subplot_titles=_tile_titles(tiles, class_names, columns, who),
        row_heights=[TILE_PX, BARS_PX] * rows,
        horizontal_spacing=0.04,
        vertical_spacing=min(0.06, 0.5 / max(2 * rows, 1)),
    )
    for i, (image, tile) in enumerate(zip(images, tiles, strict=True)):
        row, col = 2 * (i // columns) + 1, i % columns + 1
        fig.add_trace(go.Image(z=image, hoverinfo="skip"), row=row, col=col)
        _add_bars(fig, tile, class_names, who, first=i == 0, row=row + 1, col=col)
    for r in range(rows):
        fig.update_xaxes(showticklabels=False, showgrid=False, row=2 * r + 1)
        fig.update_yaxes(showticklabels=False, showgrid=False, row=2 * r + 1)
    fig.update_annotations(font=dict(size=10))
    fig.update_layout(
        barmode="group",
        height=60 + rows * (TILE_PX + BARS_PX + 60),
        width=max(600, columns * (TILE_PX + 40)),
        margin=dict(t=60, l=10, r=10, b=10),
        legend=dict(orientation="h", y=1.02, yanchor="bottom", x=0),
    )
    return fig


def _tile_titles(
    tiles: Sequence[Tile], class_names: Sequence[str], columns: int, who: str
) -> list[str]:
    """One title per subplot, row by row: each image's label and both predictions, and
    an empty title over every bar chart and every unused cell."""
    titles: list[str] = []
    for start in range(0, len(tiles), columns):
        chunk = tiles[start : start + columns]
        titles += [
            f"label {_name(class_names, t.label)}<br>{who}: {_name(class_names, t.student_prediction)}"
            f" · teacher: {_name(class_names, t.teacher_prediction)}"
            for t in chunk
        ] + [""] * (columns - len(chunk))
        titles += [""] * columns  # the bar row
    return titles


def _add_bars(
    fig: go.Figure,
    tile: Tile,
    class_names: Sequence[str],
    who: str,
    *,
    first: bool,
    row: int,
    col: int,
) -> None:
    """Both models' probabilities of the tile's top classes, grouped, under its image."""
    names = [_name(class_names, c) for c in tile.classes]
    for slot, label, probs in (
        (STUDENT, who, tile.student_probs),
        (TEACHER, "teacher", tile.teacher_probs),
    ):
        fig.add_trace(
            go.Bar(
                x=names,
                y=probs,
                name=label,
                legendgroup=label,
                showlegend=first,
                marker_color=palette_colour(slot),
                hovertemplate=f"{label}: p(%{{x}}) = %{{y:.3f}}<extra></extra>",
            ),
            row=row,
            col=col,
        )
    fig.update_yaxes(range=[0, 1], row=row, col=col, tickfont=dict(size=8), nticks=3)
    fig.update_xaxes(row=row, col=col, tickfont=dict(size=8))


def per_class_accuracy_bars(
    per_class: Mapping[str, Sequence[float]], class_names: Sequence[str]
) -> go.Figure:
    """Grouped bars: each model's accuracy per class (a model per colour, the teacher's
    first). Every bar carries its class index as ``customdata``, which a click selects."""
    if not per_class:
        raise PlotDataError("no per-class accuracy to draw")
    names = [plain_label(str(c)) for c in class_names]
    fig = go.Figure()
    for model, values in per_class.items():
        if len(values) != len(class_names):
            raise PlotDataError(f"{model}: {len(values)} accuracies for {len(class_names)} classes")
        fig.add_trace(
            go.Bar(
                x=names,
                y=[None if not math.isfinite(v) else v for v in values],
                customdata=list(range(len(class_names))),
                name=plain_label(model),
                marker_color=palette_colour(TEACHER if model == "teacher" else STUDENT),
                hovertemplate="%{x}: %{y:.1%}<extra>" + plain_label(model) + "</extra>",
            )
        )
    fig.update_layout(
        barmode="group",
        yaxis=dict(title="accuracy", range=[0, 1.02], tickformat=".0%"),
        xaxis=dict(title="class", type="category"),
        clickmode="event+select",
        height=320,
        margin=dict(t=40, l=10, r=10, b=10),
        legend=dict(orientation="h", y=1.02, yanchor="bottom", x=0),
    )
    return fig
