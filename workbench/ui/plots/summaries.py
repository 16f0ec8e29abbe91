"""Figures and tables over many runs at once: the parallel coordinates of a sweep's loss
weights and temperature against accuracy, the bars of an ablation's contributions, and the
table of the config fields in which runs differ."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from workbench.config.run_config import COMPONENTS
from workbench.ui.naming import ACCURACY_LABEL, ACCURACY_METRIC, flat_config, short_names
from workbench.ui.plots.style import NOT_SIGNIFICANT, PlotDataError, is_finite, palette_colour

__all__ = ["config_diff", "contribution_bars", "parallel_coordinates"]


# ---------------------------------------------------------------------- sweeps and ablations
def _weights(record: Mapping[str, Any]) -> dict[str, float]:
    weights = record.get("config", {}).get("weights") or {}
    return {c: float(weights.get(c, 0.0)) for c in COMPONENTS}


def _metric(record: Mapping[str, Any], name: str) -> Any:
    return (record.get("metrics") or {}).get(name)


def parallel_coordinates(records: Iterable[Mapping[str, Any]]) -> go.Figure:
    """``go.Parcoords`` over the four loss weights and the temperature against final val accuracy.

    Lines are coloured by validation accuracy; runs without one (not finished) are left out.
    """
    done = [r for r in records if is_finite(_metric(r, ACCURACY_METRIC))]
    if not done:
        raise PlotDataError(f"no run with a final {ACCURACY_LABEL} yet: wait for runs to finish")
    acc = [float(_metric(r, ACCURACY_METRIC)) for r in done]
    dims = []
    for c in COMPONENTS:
        values = [_weights(r)[c] for r in done]
        # a common 0..1 scale (wider if needed), so equal heights mean equal weights
        dims.append(
            dict(
                label=f"{c} weight",
                values=values,
                range=[0.0, max(1.0, *values)],
                tickformat=".2~f",
            )
        )
    dims.append(
        dict(
            label="temperature",
            values=[r["config"].get("temperature") for r in done],
            tickformat=".3~g",
        )
    )
    dims.append(dict(label=ACCURACY_LABEL, values=acc, tickformat=".1%"))
    fig = go.Figure(
        go.Parcoords(
            line=dict(
                color=acc,
                colorscale="Viridis",
                showscale=True,
                colorbar=dict(title=ACCURACY_LABEL, tickformat=".0%"),
            ),
            dimensions=dims,
        )
    )
    fig.update_layout(
        title=f"loss weights and temperature vs {ACCURACY_LABEL}", margin=dict(l=60, r=60)
    )
    return fig


def contribution_bars(contrib: pd.DataFrame, *, title: str = "") -> go.Figure:
    """Bars of ``contribution`` per ``component`` with symmetric error bars of ``half_width``.

    Takes ``ablation.contributions(...)`` (or any frame with ``component, contribution``; then
    without error bars, e.g. Shapley values). Components whose interval includes 0
    (``distinguishable`` False) are grey and annotated ``"n.s."``.
    """
    if contrib.empty:
        raise PlotDataError(
            "no contributions to draw: the suite needs 'full' and 'without ...' runs"
        )
    n = len(contrib)
    half = contrib["half_width"].astype(float).to_numpy() if "half_width" in contrib else None
    sig = (
        contrib["distinguishable"].astype(bool).to_numpy()
        if "distinguishable" in contrib
        else np.ones(n, dtype=bool)
    )
    value = contrib["contribution"].astype(float).to_numpy()
    colours = [
        NOT_SIGNIFICANT if not s else (palette_colour(0) if v >= 0 else palette_colour(1))
        for s, v in zip(sig, value, strict=True)
    ]
    notes = contrib["note"].fillna("").tolist() if "note" in contrib else [""] * n
    fig = go.Figure(
        go.Bar(
            x=contrib["component"].tolist(),
            y=value,
            marker_color=colours,
            error_y=None
            if half is None
            else dict(type="data", array=half, symmetric=True, visible=True),
            customdata=list(
                zip(np.full(n, math.nan) if half is None else half, notes, strict=True)
            ),
            hovertemplate="%{x}: %{y:+.2%} +- %{customdata[0]:.2%}<br>%{customdata[1]}<extra></extra>",
        )
    )
    for i, component in enumerate(contrib["component"]):
        if sig[i]:
            continue
        top = value[i] + (half[i] if half is not None and math.isfinite(half[i]) else 0.0)
        fig.add_annotation(
            x=component, y=top, text="n.s.", showarrow=False, yshift=10, font=dict(color="#616161")
        )
    fig.add_hline(y=0, line=dict(color="black", width=1))
    fig.update_layout(
        title=title or f"contribution to {ACCURACY_LABEL} (full - without component)",
        yaxis_title=f"{ACCURACY_LABEL} difference",
        yaxis_tickformat="+.1%",
        xaxis_title="component",
        showlegend=False,
    )
    return fig


# ---------------------------------------------------------------------- tables
def config_diff(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """The config fields that differ between runs: one row per field, one column per run.

    Weights are flattened to ``weights.label`` etc.; a field missing from a record counts as
    ``None``. Columns are the runs' short names (``naming.short_names``: a given name, with the
    id when names repeat).
    """
    records = list(records)
    flats = [flat_config(r.get("config", {})) for r in records]
    fields = list(dict.fromkeys(k for f in flats for k in f))
    differing = [k for k in fields if len({json.dumps(f.get(k), default=str) for f in flats}) > 1]
    names = short_names(records)
    data = {
        names[r["id"]]: [f.get(k) for k in differing] for r, f in zip(records, flats, strict=True)
    }
    return pd.DataFrame(data, index=pd.Index(differing, name="field"), dtype=object)
