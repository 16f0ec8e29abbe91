"""2-D maps of the teacher's and each run's penultimate embeddings on the same test images, side
by side on shared axes, points coloured by class (issue 21, "Embeddings").

The maps come from ``workbench.ui.insight.embedding_maps_data``: PCA (the first two stored
components) or t-SNE (van der Maaten & Hinton, JMLR 2008), each aligned onto the first map by
orthogonal Procrustes, so shared axes with one scale compare like with like. Each subplot's
title carries the leave-one-out k-NN accuracy and silhouette (Rousseeuw 1987) it is given
(Compare passes those of the full embeddings), so a map is read with a number, not only as a
picture.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative, sample_colorscale
from plotly.subplots import make_subplots

from workbench.ui.escape import plain_label
from workbench.ui.plots.heatmaps import FIGURE_PX, wrap_name
from workbench.ui.plots.style import PALETTE, PlotDataError, is_finite

__all__ = ["MAP_PANELS", "class_colours", "embedding_maps", "score_line"]

MAP_PANELS = 4  # maps side by side; more runs get more rows
GOLDEN = (math.sqrt(5) - 1) / 2  # hue step that keeps consecutive classes far apart


def class_colours(n: int) -> list[str]:
    """``n`` distinct class colours: the house palette (10), Plotly's Dark24 (24), beyond that
    ``n`` hues of the cyclic HSV scale taken at steps of the golden ratio, so that classes
    ``c`` and ``c + 1`` never get neighbouring hues."""
    if n <= len(PALETTE):
        return list(PALETTE[:n])
    if n <= len(qualitative.Dark24):
        return list(qualitative.Dark24[:n])
    return sample_colorscale("HSV", [(i * GOLDEN) % 1.0 for i in range(n)])


def score_line(scores: Mapping[str, float] | None) -> str:
    """``"kNN 93.1 % · sil 0.41"`` of a map's scores (``knn_acc`` a share, ``silhouette``);
    a missing or undefined score shows as ``–``, no scores as an empty string."""
    if not scores:
        return ""
    knn, sil = scores.get("knn_acc"), scores.get("silhouette")
    knn_text = f"{100 * knn:.1f} %" if is_finite(knn) else "–"
    sil_text = f"{sil:.2f}" if is_finite(sil) else "–"
    return f"kNN {knn_text} · sil {sil_text}"


def _checked(maps: Mapping[str, np.ndarray], labels: np.ndarray) -> dict[str, np.ndarray]:
    """The maps as float [N, 2] arrays; PlotDataError for what cannot be drawn."""
    if not maps:
        raise PlotDataError(
            "no embedding map to draw: pick runs whose probe has a test view (run them again "
            "if they were probed before the views)"
        )
    n = len(labels)
    out = {}
    for name, points in maps.items():
        points = np.asarray(points, dtype=float)
        if points.ndim != 2 or points.shape != (n, 2):
            raise PlotDataError(
                f"the map of {name!r} has shape {points.shape}, expected ({n}, 2): one 2-D point "
                "per labelled image; maps of runs on other test images cannot share a figure"
            )
        if not np.isfinite(points).all():
            raise PlotDataError(f"the map of {name!r} has non-finite coordinates")
        out[name] = points
    return out


def _shared_range(maps: Mapping[str, np.ndarray]) -> tuple[list[float], list[float]]:
    """``(x range, y range)`` that hold every map, of one span (equal aspect), 5 % padding."""
    stacked = np.concatenate(list(maps.values()))  # [n_maps * N, 2]
    low, high = stacked.min(axis=0), stacked.max(axis=0)  # [2] each
    centre = (low + high) / 2
    half = max(float(np.max(high - low)) / 2 * 1.05, 1e-9)
    return (
        [float(centre[0] - half), float(centre[0] + half)],
        [float(centre[1] - half), float(centre[1] + half)],
    )


def _layout(n: int, per_row: int) -> dict[str, Any]:
    """The grid of ``n`` square panels in rows of ``per_row``: columns, rows, spacings and
    height (panels about as tall as they are wide at ``FIGURE_PX``)."""
    if per_row < 1:
        raise PlotDataError(f"per_row must be >= 1, got {per_row}")
    cols = min(per_row, n)
    rows = math.ceil(n / cols)
    h_spacing = min(0.03, 1.0 / (cols - 1) - 1e-3) if cols > 1 else 0.0
    plot_px = FIGURE_PX - 60 - 140  # less the margins and the class legend
    panel_px = min(460.0, max(160.0, plot_px * (1.0 - h_spacing * (cols - 1)) / cols))
    gap_px = 62  # a subplot title: up to two lines of the name and the scores
    area_px = rows * panel_px + (rows - 1) * gap_px
    return dict(
        cols=cols,
        rows=rows,
        horizontal_spacing=h_spacing,
        vertical_spacing=gap_px / area_px if rows > 1 else 0.0,
        height=int(area_px + 80 + 30),  # the figure title and the top titles, a bottom margin
        fit=max(12, int(FIGURE_PX / cols / 7)),  # characters a subplot title may have
    )


def _class_traces(
    maps: Mapping[str, np.ndarray], labels: np.ndarray, class_names: Sequence[str], decimals: int
) -> list[dict[str, Any]]:
    """One ``scattergl`` trace per map and class, as plain dicts on the named axes of subplot
    ``i`` (``x``, ``x2``, ...): 2,100 traces (21 maps, 100 classes) in about a second, where
    ``go.Scattergl`` objects and numpy arrays take three."""
    names = [plain_label(c) for c in class_names]
    present = np.unique(labels)  # [K'] the classes among the images
    colours = class_colours(max(len(names), int(present.max(initial=-1)) + 1))
    size = 3 if len(labels) > 500 else 4 if len(labels) > 200 else 6
    members = {int(c): np.flatnonzero(labels == c) for c in present}  # class -> [n_c]
    traces = []
    for i, (name, points) in enumerate(maps.items()):
        points = np.round(points, decimals)  # [N, 2]
        for c, index in members.items():
            traces.append(
                dict(
                    type="scattergl",
                    x=points[index, 0].tolist(),
                    y=points[index, 1].tolist(),
                    xaxis=f"x{i + 1 if i else ''}",
                    yaxis=f"y{i + 1 if i else ''}",
                    mode="markers",
                    name=names[c] if 0 <= c < len(names) else str(c),
                    legendgroup=f"class {c}",
                    showlegend=i == 0,
                    marker=dict(size=size, color=colours[c], opacity=0.8),
                    customdata=index.tolist(),
                    meta=plain_label(name),
                    hovertemplate="%{fullData.name}<br>image %{customdata}<extra>%{meta}</extra>",
                )
            )
    return traces


def embedding_maps(
    maps: Mapping[str, np.ndarray],
    labels: np.ndarray,
    class_names: Sequence[str],
    scores: Mapping[str, Mapping[str, float]] | None = None,
    *,
    method: str = "PCA",
    per_row: int = MAP_PANELS,
) -> go.Figure:
    """One scatter subplot per map (``name -> [N, 2]``, in the mapping's order: the teacher's
    first), in rows of ``per_row``, all on the same x and y range with one scale (the first
    subplot's y axis anchored to its x axis, every other axis matching the first's), so
    zooming one map zooms all. Points are coloured by class, one ``Scattergl`` trace per class
    per subplot in one legend group per class: clicking a class in the legend hides it in every
    map. The hover names the class and the image's index in the subset; each title carries the
    run's name (wrapped, cut to fit) and ``score_line(scores[name])``."""
    labels = np.asarray(labels).reshape(-1)
    checked = _checked(maps, labels)
    grid = _layout(len(checked), per_row)
    titles = []
    for name in checked:
        line = score_line((scores or {}).get(name))
        titles.append(wrap_name(name, grid["fit"]) + (f"<br>{line}" if line else ""))
    fig = make_subplots(
        rows=grid["rows"],
        cols=grid["cols"],
        subplot_titles=titles,
        horizontal_spacing=grid["horizontal_spacing"],
        vertical_spacing=grid["vertical_spacing"],
    )
    fig.update_annotations(font=dict(size=11))
    x_range, y_range = _shared_range(checked)
    # 1e-4 of the span is far below a pixel; fewer digits keep the figure's JSON small
    decimals = max(0, 4 - math.floor(math.log10(x_range[1] - x_range[0])))
    fig.add_traces(_class_traces(checked, labels, class_names, decimals))
    axis = dict(showticklabels=False, ticks="", zeroline=False)
    fig.update_xaxes(range=x_range, matches="x", **axis)
    fig.update_yaxes(range=y_range, matches="y", **axis)
    fig.layout.xaxis.matches = fig.layout.yaxis.matches = None  # the axes the others match
    fig.layout.yaxis.update(scaleanchor="x", scaleratio=1)
    fig.update_layout(
        title=f"{plain_label(method)} maps of the penultimate embeddings, aligned onto the "
        "first; shared axes, one scale",
        height=grid["height"],
        margin=dict(t=80, b=30, l=30, r=20),
        legend=dict(title="class", itemsizing="constant", tracegroupgap=0),
    )
    return fig
