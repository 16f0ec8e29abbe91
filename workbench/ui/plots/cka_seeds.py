"""The "same-layer CKA" bars: for each compared unit, the linear CKA of each student layer with
its corresponding teacher layer (``workbench.ui.compare.same_layer_table``), with the seeds'
standard deviation as error bars when a unit groups several seeds, the figure research repos
draw by hand with 3-seed error bars."""

from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go

from workbench.ui.escape import plain_label
from workbench.ui.plots.heatmaps import wrap_name
from workbench.ui.plots.style import PALETTE, PlotDataError

__all__ = ["same_layer_bars"]


def same_layer_bars(table: pd.DataFrame) -> go.Figure:
    """Grouped bars: x the corresponding layer pairs, one bar per unit (``run``), height the
    CKA (a seed group's mean) and, where ``seeds`` > 1, an error bar of ± ``sd``."""
    if table.empty:
        raise PlotDataError(
            "none of the selected runs has a CKA matrix: pick student runs that had a teacher"
        )
    runs = list(dict.fromkeys(table["run"]))
    fig = go.Figure()
    for i, run in enumerate(runs):
        rows = table[table["run"] == run]
        sd = [
            s if n > 1 and not math.isnan(s) else 0.0
            for s, n in zip(rows["sd"], rows["seeds"], strict=True)
        ]
        seeds = int(rows["seeds"].max())
        name = plain_label(run)
        fig.add_trace(
            go.Bar(
                x=list(rows["pair"]),
                y=list(rows["cka"]),
                name=wrap_name(name, 40),
                marker_color=PALETTE[i % len(PALETTE)],
                error_y=dict(type="data", array=sd, visible=seeds > 1),
                customdata=[[s, n] for s, n in zip(rows["sd"], rows["seeds"], strict=True)],
                hovertemplate=f"{name.replace('%', '%%')}<br>%{{x}}<br>CKA %{{y:.3f}}"
                + (" ± %{customdata[0]:.3f} (sd of %{customdata[1]} seeds)" if seeds > 1 else "")
                + "<extra></extra>",
            )
        )
    fig.update_layout(
        barmode="group",
        title="same-layer CKA" + (" (mean ± sd over seeds)" if (table["seeds"] > 1).any() else ""),
        yaxis=dict(title="linear CKA", range=[0, 1.05]),
        xaxis=dict(title="student layer → corresponding teacher layer", tickangle=-30),
        height=max(420, 120 + 22 * len(runs)),  # the legend column: one line per unit
        margin=dict(b=120),
    )
    return fig
