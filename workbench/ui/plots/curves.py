"""Line figures of training over time: accuracy, loss terms, loss weights and gradient shares
per step, epoch or second, and the grouping of runs that differ only by seed.

Inputs are the epoch and history rows of ``docs/ARCHITECTURE.md``; outputs are ``go.Figure``
objects. Curves of several seeds of one configuration are drawn as their mean with a +-1 std
band, ``mean(x) = 1/n sum_r y_r(x)`` and ``std(x) = sqrt(1/(n-1) sum_r (y_r(x) - mean(x))^2)``
over the runs ``r`` that logged ``x``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from workbench.config.run_config import COMPONENTS, fingerprint_of
from workbench.ui.escape import plain_label
from workbench.ui.naming import EPOCH_LABEL, EPOCH_METRIC, short_names
from workbench.ui.plots.style import PlotDataError, is_finite, palette_colour

__all__ = [
    "X_AXES",
    "accuracy_curves",
    "curve_figure",
    "gradient_share_curves",
    "group_runs",
    "loss_curves",
    "smooth",
    "weight_curves",
]

Point = tuple[float, float]
Row = Mapping[str, Any]
# One run's rows, or a group (several seeds) of runs' rows.
Runs = Mapping[str, Sequence[Row] | Sequence[Sequence[Row]]]


# ---------------------------------------------------------------------- curves
def _is_group_of_points(points: Sequence[Any]) -> bool:
    """True for ``[[(x, y), ...], ...]`` (runs of a group), False for ``[(x, y), ...]``."""
    seq = (list, tuple, np.ndarray)
    return bool(points) and all(
        isinstance(p, seq) and (len(p) == 0 or isinstance(p[0], seq)) for p in points
    )


def _tidy(series: Mapping[str, Sequence[Any]] | pd.DataFrame) -> pd.DataFrame:
    """Curves as a tidy frame ``label, run, x, y``; missing or non-finite y dropped."""
    if isinstance(series, pd.DataFrame):
        missing = {"label", "x", "y"} - set(series.columns)
        if missing:
            raise PlotDataError(
                f"a curve table needs columns label, x, y; missing {sorted(missing)}"
            )
        frame = series.copy()
        if "run" not in frame.columns:  # rows that share label and x are seeds of one group
            frame["run"] = frame.groupby(["label", "x"]).cumcount()
        frame = frame[["label", "run", "x", "y"]]
    else:
        rows = []
        for label, points in series.items():
            points = list(points)
            runs = points if _is_group_of_points(points) else [points]
            for r, run in enumerate(runs):
                rows.extend({"label": label, "run": r, "x": x, "y": y} for x, y in run)
        frame = pd.DataFrame(rows, columns=["label", "run", "x", "y"])
    frame["y"] = pd.to_numeric(frame["y"], errors="coerce")
    return frame[np.isfinite(frame["y"].astype(float))]


def smooth(y: Sequence[float], weight: float) -> np.ndarray:
    """Exponential moving average as in TensorBoard, debiased so the first points are not pulled
    towards 0: ``m_t = w m_{t-1} + (1 - w) y_t``, shown as ``m_t / (1 - w^t)``; ``weight`` 0 is
    no smoothing."""
    y = np.asarray(y, dtype=float)
    if not 0.0 <= weight < 1.0:
        raise PlotDataError(f"smoothing must be in [0, 1), got {weight}")
    if weight == 0.0 or y.size == 0:
        return y
    out, m = np.empty_like(y), 0.0
    for t, value in enumerate(y, start=1):
        m = weight * m + (1.0 - weight) * value
        out[t - 1] = m / (1.0 - weight**t)
    return out


def curve_figure(
    series: Mapping[str, Sequence[Any]] | pd.DataFrame,
    *,
    title: str = "",
    x_title: str = "",
    y_title: str = "",
    band: bool = True,
    log_y: bool = False,
    smoothing: float = 0.0,
    colours: Mapping[str, int] | None = None,
    percent: bool = False,
) -> go.Figure:
    """Overlaid curves, one per label; a label with several runs is drawn as mean +- std.

    ``series`` is ``{label: [(x, y), ...]}`` for a single run, ``{label: [[(x, y), ...], ...]}``
    for a group of runs (seeds), or a tidy ``DataFrame`` with columns ``label, x, y`` and
    optionally ``run`` (without it, rows sharing label and x are the group's runs). Runs of a
    group are aligned on equal x; the band is ``mean +- std`` at each x (std 0 where one run
    logged that x). Band traces are named ``"<label> +std"`` / ``"<label> -std"``.

    ``smoothing`` applies ``smooth`` to the mean and the band; ``colours`` maps a label to a
    palette index (labels that share a value of a "colour by" field share a colour); ``percent``
    shows y as a percentage (accuracy: one unit everywhere) on a fixed 0..100 % axis. A click on
    a legend entry hides or shows that curve (and its band); a double click isolates it.

    Long because it builds one Plotly figure: the traces, then the axes, legend and hover settings that belong
    to them; split into helpers, one figure's layout would be read in pieces.
    """
    frame = _tidy(series)
    fig = go.Figure()
    number = ".1%" if percent else ".4f"
    for i, (label, curve) in enumerate(frame.groupby("label", sort=False)):
        colour = (colours or {}).get(str(label), i)
        shown = plain_label(label)  # a run's name: Plotly would render <a href> in it
        runs = curve["run"].nunique()
        agg = curve.groupby("x", sort=True)["y"].agg(["mean", "std", "count"])
        x, mean = agg.index.to_numpy(), smooth(agg["mean"].to_numpy(), smoothing)
        std = agg["std"].fillna(0.0).to_numpy()
        mode = "lines+markers" if len(x) <= 30 else "lines"
        if runs > 1 and band:
            common = dict(x=x, mode="lines", line=dict(width=0), legendgroup=shown)
            common |= dict(showlegend=False, hoverinfo="skip")
            fig.add_trace(go.Scatter(y=mean + std, name=f"{shown} +std", **common))
            fig.add_trace(
                go.Scatter(
                    y=mean - std,
                    name=f"{shown} -std",
                    fill="tonexty",
                    fillcolor=palette_colour(colour, 0.2),
                    **common,
                )
            )
        hover = f"%{{fullData.name}}<br>x %{{x}}<br>y %{{y:{number}}}"
        if runs > 1:
            hover += f" +- %{{customdata[0]:{number}}} (n=%{{customdata[1]}})"
        fig.add_trace(
            go.Scatter(
                x=x,
                y=mean,
                name=shown,
                mode=mode,
                line=dict(color=palette_colour(colour)),
                legendgroup=shown,
                customdata=np.stack([std, agg["count"].to_numpy()], axis=1),
                hovertemplate=hover + "<extra></extra>",
            )
        )
    labels = frame["label"].nunique()
    # Few curves: a legend row above the plot. Many: a column on the right that scrolls, so the
    # legend never takes more room than the plot.
    legend = (
        dict(orientation="h", yanchor="bottom", y=1.02, x=0)
        if labels <= 4
        else dict(orientation="v", yanchor="top", y=1.0, x=1.02, font=dict(size=11))
    )
    fig.update_layout(
        xaxis_title=plain_label(x_title),
        yaxis_title=plain_label(y_title),
        hovermode="x unified",
        legend=legend | dict(itemclick="toggle", itemdoubleclick="toggleothers"),
        margin=dict(t=60, b=40, l=50, r=20),
    )
    if title:
        # The horizontal legend above the plot grows a row per few curves and would run into a
        # title there; with a title, the title keeps the top and the legend moves to the
        # figure's bottom edge (both push the margins, so neither overlaps the plot).
        fig.update_layout(
            title=dict(
                text=plain_label(title), yref="container", y=1.0, yanchor="top", pad=dict(t=10)
            )
        )
        if labels <= 4:
            fig.update_layout(legend=dict(yref="container", yanchor="bottom", y=0.0))
    if percent:
        fig.update_yaxes(tickformat=".0%", range=[0.0, 1.0])
    if log_y:
        fig.update_yaxes(type="log", range=None)
    return fig


def _is_group(rows: Sequence[Any]) -> bool:
    return bool(rows) and not isinstance(rows[0], Mapping)


def _points(runs: Runs, x_key: str, y_key: str) -> dict[str, list[list[Point]]]:
    """``{label: [run points, ...]}`` from rows; rows lacking a finite y are skipped."""
    out: dict[str, list[list[Point]]] = {}
    for label, rows in runs.items():
        group = list(rows) if _is_group(rows) else [rows]
        out[label] = [
            [
                (row[x_key], row[y_key])
                for row in run
                if is_finite(row.get(y_key)) and row.get(x_key) is not None
            ]
            for run in group
        ]
    return out


X_AXES = {"step": "step", "epoch": "epoch", "time": "time (s)"}


def accuracy_curves(
    runs: Runs,
    metric: str = EPOCH_METRIC,
    *,
    band: bool = True,
    x: str = "epoch",
    smoothing: float = 0.0,
    colours: Mapping[str, int] | None = None,
) -> go.Figure:
    """Accuracy (or ``agreement``, ``train_loss``) per epoch (or ``x="time"``) from epoch rows.

    ``runs`` maps a label to one run's epoch rows or to a list of several runs' epoch rows.
    Accuracies are drawn in percent on a 0..100 % axis; epochs are whole numbers.
    """
    if x not in ("epoch", "time"):
        raise PlotDataError(f"epoch rows are drawn by epoch or time, not {x!r}")
    titles = {EPOCH_METRIC: EPOCH_LABEL, "agreement": "teacher-student agreement (val)"}
    fig = curve_figure(
        _points(runs, x, metric),
        x_title=X_AXES[x],
        y_title=titles.get(metric, metric.replace("_", " ")),
        band=band,
        smoothing=smoothing,
        colours=colours,
        percent=metric in (EPOCH_METRIC, "agreement") or metric.endswith("_acc"),
    )
    if x == "epoch":
        fig.update_xaxes(tickformat="d", dtick=1 if _max_x(fig) <= 20 else None, rangemode="tozero")
    return fig


def _max_x(fig: go.Figure) -> float:
    return max((max(t.x) for t in fig.data if t.x is not None and len(t.x)), default=0)


def loss_curves(
    runs: Runs,
    component: str = "total",
    *,
    x: str = "step",
    band: bool = True,
    log_y: bool = False,
    smoothing: float = 0.0,
    colours: Mapping[str, int] | None = None,
) -> go.Figure:
    """One (unweighted) loss term per logged step from history rows, one curve per label; ``x``
    is ``step``, ``time`` or ``epoch`` (then the mean of the epoch's logged steps)."""
    if component not in (*COMPONENTS, "total"):
        raise PlotDataError(
            f"unknown loss component {component!r}; choose one of {', '.join((*COMPONENTS, 'total'))}"
        )
    if x not in X_AXES:
        raise PlotDataError(f"x must be one of {', '.join(X_AXES)}, not {x!r}")
    return curve_figure(
        _points(runs, x, component),
        x_title=X_AXES[x],
        y_title=f"{component} loss",
        band=band,
        log_y=log_y,
        smoothing=smoothing,
        colours=colours,
    )


def weight_curves(
    runs: Runs, component: str | None = None, *, x: str = "step", band: bool = True
) -> go.Figure:
    """Loss weights per step (``w_<component>`` of the history rows), e.g. of adaptive schemes.

    With ``component`` one curve per label; without, one curve per label and component that is
    ever non-zero, labelled ``"<label>: <component>"`` (just the component for a single label).
    """
    if component is not None and component not in COMPONENTS:
        raise PlotDataError(f"unknown loss component {component!r}; choose one of {COMPONENTS}")
    if component is not None:
        series = _points(runs, x, f"w_{component}")
        return curve_figure(series, x_title=x, y_title=f"{component} weight", band=band)
    series = {}
    for label, rows in runs.items():
        for c in COMPONENTS:
            pts = _points({label: rows}, x, f"w_{c}")[label]
            if any(y != 0 for run in pts for _, y in run):
                series[c if len(runs) == 1 else f"{label}: {c}"] = pts
    return curve_figure(series, x_title=x, y_title="loss weight", band=band)


def gradient_share_curves(history: Sequence[Mapping[str, Any]], *, x: str = "step") -> go.Figure:
    """Each active term's share of the student's gradient (``g_<component>`` history fields,
    ``workbench.distill.gradient_shares``) per logged step of one run, in percent: what the weights really
    do, beside the loss curves."""
    if x not in X_AXES:
        raise PlotDataError(f"x must be one of {', '.join(X_AXES)}, not {x!r}")
    series = {}
    for c in COMPONENTS:
        pts = _points({c: history}, x, f"g_{c}")[c]
        if any(y > 0 for run in pts for _, y in run):
            series[c] = pts
    if not series:
        raise PlotDataError("no gradient shares logged: they are measured every log_every steps")
    return curve_figure(
        series, x_title=X_AXES[x], y_title="share of the gradient", band=False, percent=True
    )


# ---------------------------------------------------------------------- grouping runs
def group_runs(records: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """Group runs whose configs differ only by seed: ``{readable label: [records]}``.

    The key is the run's identity without its seed (``config.fingerprint_of(config,
    exclude_seed=True)``); the label is the suite variant, the name the group's runs share, or the short name
    (``naming.short_names``) of the group among the groups shown, plus ``" (n seeds)"`` for a
    group of n runs with n different seeds (``" (n runs)"`` when seeds repeat). Groups keep the
    order in which they first appear.
    """
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for record in records:
        key = fingerprint_of(record.get("config", {}), exclude_seed=True)
        groups.setdefault(key, []).append(record)
    # a group is named like a run among the other groups, by what differs apart from the seed
    stand_ins = []
    for fingerprint, members in groups.items():
        config = {k: v for k, v in (members[0].get("config") or {}).items() if k != "seed"}
        names = {m.get("name") for m in members}
        variants = {m.get("variant") for m in members}
        if len(variants) == 1 and not {None, ""} & variants:
            name = str(next(iter(variants)))
        elif len(names) == 1 and not {None, ""} & names:
            name = str(next(iter(names)))
        else:
            name = ""
        stand_ins.append({**members[0], "id": fingerprint[:6], "name": name, "config": config})
    names = short_names(stand_ins)
    labelled: dict[str, list[Mapping[str, Any]]] = {}
    for stand_in, members in zip(stand_ins, groups.values(), strict=True):
        seeds = {(m.get("config") or {}).get("seed") for m in members}
        count = f"{len(members)} seeds" if len(seeds) == len(members) else f"{len(members)} runs"
        labelled[names[stand_in["id"]] + (f" ({count})" if len(members) > 1 else "")] = members
    return labelled
