"""The class-activation-map grid: one row per test image, its picture first, then the map of
each model (the teacher's, then each run's) laid over it (``workbench.insight.cam_runs``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.insight.cam_runs import CamResult
from workbench.ui.escape import plain_label
from workbench.ui.plots.heatmaps import fit_text
from workbench.ui.plots.style import PlotDataError

__all__ = ["cam_grid", "heat_overlay"]

TILE_PX = 150


def heat_overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """``image`` [H, W, 3] uint8 with ``cam`` [H, W] in [0, 1] blended over it as a
    blue-to-red "jet"-like colour map ([H, W, 3] uint8); alpha grows with the map's value."""
    c = np.clip(np.asarray(cam, dtype=np.float64), 0.0, 1.0)[..., None]  # [H, W, 1]
    heat = np.concatenate(  # piecewise-linear jet: blue -> cyan -> yellow -> red
        [np.clip(1.5 - np.abs(4 * c - k), 0.0, 1.0) for k in (3.0, 2.0, 1.0)], axis=-1
    )  # [H, W, 3]
    weight = alpha * (0.3 + 0.7 * c)
    blended = (1 - weight) * image.astype(np.float64) / 255.0 + weight * heat
    return np.round(np.clip(blended, 0.0, 1.0) * 255).astype(np.uint8)


def cam_grid(result: CamResult, class_names: Sequence[str]) -> go.Figure:
    """Rows: the images; columns: the image, then each model's map over it (titled with the
    model, the class it explains and its prediction)."""
    if not result.panels or not len(result.images):
        raise PlotDataError("no class-activation map to draw: pick images and a CNN run")

    def name(c: int) -> str:
        return str(class_names[c]) if 0 <= c < len(class_names) else str(c)

    rows, cols = len(result.images), 1 + len(result.panels)
    titles = []
    for i, label in enumerate(result.labels):
        titles.append(f"image · label {fit_text(name(label), 12)}")
        for panel in result.panels:
            who = fit_text(plain_label(panel.name), 18)
            titles.append(
                f"{who}<br>explains {name(panel.targets[i])}, says {name(panel.predictions[i])}"
            )
    fig = make_subplots(
        rows=rows,
        cols=cols,
        subplot_titles=titles,
        horizontal_spacing=0.02,
        vertical_spacing=min(0.08, 0.6 / max(rows, 1)),
    )
    for i, image in enumerate(result.images):
        fig.add_trace(go.Image(z=image, hoverinfo="skip"), row=i + 1, col=1)
        for j, panel in enumerate(result.panels):
            picture = heat_overlay(image, panel.maps[i])
            fig.add_trace(go.Image(z=picture, hoverinfo="skip"), row=i + 1, col=j + 2)
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_annotations(font=dict(size=10))
    layers = ", ".join(f"{p.name}: {p.layer}" for p in result.panels)
    fig.update_layout(
        title=f"Grad-CAM ({fit_text(plain_label(layers), 140)})",
        height=80 + rows * (TILE_PX + 40),
        width=max(600, cols * (TILE_PX + 20)),
        margin=dict(t=90, l=10, r=10, b=10),
    )
    return fig
