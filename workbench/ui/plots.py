"""Plotly figures and tables that compare runs; pure functions of run data, never the store.

Inputs are the plain records, history rows, epoch rows and probes of ``docs/ARCHITECTURE.md``;
outputs are ``go.Figure`` objects (or ``DataFrame`` tables) that the pages show with
``st.plotly_chart`` and that ``workbench.ui.report`` writes into a standalone HTML file.

- Curves of several seeds of one configuration are drawn as their mean with a +-1 std band,
  ``mean(x) = 1/n sum_r y_r(x)`` and ``std(x) = sqrt(1/(n-1) sum_r (y_r(x) - mean(x))^2)``
  over the runs ``r`` that logged ``x``.
- CKA heatmaps (Kornblith et al. 2019, "Similarity of Neural Network Representations
  Revisited", ICML) of several runs share one colour scale, so equal colours mean equal CKA.
- Gram heatmaps (Tung & Mori 2019, "Similarity-Preserving Knowledge Distillation", ICCV) order
  the probe samples by class, so class blocks show on the diagonal.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import hex_to_rgb, qualitative
from plotly.subplots import make_subplots

from workbench.config.run_config import COMPONENTS, fingerprint_of
from workbench.errors import WorkbenchError
from workbench.ui.naming import (
    ACCURACY_LABEL,
    ACCURACY_METRIC,
    EPOCH_LABEL,
    EPOCH_METRIC,
    flat_config,
    short_names,
)

__all__ = [
    "PlotDataError",
    "curve_figure",
    "accuracy_curves",
    "loss_curves",
    "weight_curves",
    "group_runs",
    "cka_heatmaps",
    "cka_difference",
    "gram_heatmaps",
    "parallel_coordinates",
    "contribution_bars",
    "config_diff",
    "smooth",
    "difference_range",
    "fit_text",
    "wrap_name",
]

Point = tuple[float, float]
Row = Mapping[str, Any]
# One run's rows, or a group (several seeds) of runs' rows.
Runs = Mapping[str, Sequence[Row] | Sequence[Sequence[Row]]]

PALETTE = qualitative.Plotly
NOT_SIGNIFICANT = "#9e9e9e"


class PlotDataError(WorkbenchError, ValueError):
    """The data cannot be drawn as asked (mismatched layers, nothing to plot, ...)."""


def _colour(i: int, alpha: float = 1.0) -> str:
    r, g, b = hex_to_rgb(PALETTE[i % len(PALETTE)])
    return f"rgba({r},{g},{b},{alpha})"


def _finite(value: Any) -> bool:
    return value is not None and isinstance(value, (int, float)) and math.isfinite(value)


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
        runs = curve["run"].nunique()
        agg = curve.groupby("x", sort=True)["y"].agg(["mean", "std", "count"])
        x, mean = agg.index.to_numpy(), smooth(agg["mean"].to_numpy(), smoothing)
        std = agg["std"].fillna(0.0).to_numpy()
        mode = "lines+markers" if len(x) <= 30 else "lines"
        if runs > 1 and band:
            common = dict(x=x, mode="lines", line=dict(width=0), legendgroup=str(label))
            common |= dict(showlegend=False, hoverinfo="skip")
            fig.add_trace(go.Scatter(y=mean + std, name=f"{label} +std", **common))
            fig.add_trace(
                go.Scatter(
                    y=mean - std,
                    name=f"{label} -std",
                    fill="tonexty",
                    fillcolor=_colour(colour, 0.2),
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
                name=str(label),
                mode=mode,
                line=dict(color=_colour(colour)),
                legendgroup=str(label),
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
        xaxis_title=x_title,
        yaxis_title=y_title,
        hovermode="x unified",
        legend=legend | dict(itemclick="toggle", itemdoubleclick="toggleothers"),
        margin=dict(t=60, b=40, l=50, r=20),
    )
    if title:
        # The horizontal legend above the plot grows a row per few curves and would run into a
        # title there; with a title, the title keeps the top and the legend moves to the
        # figure's bottom edge (both push the margins, so neither overlaps the plot).
        fig.update_layout(
            title=dict(text=title, yref="container", y=1.0, yanchor="top", pad=dict(t=10))
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
                if _finite(row.get(y_key)) and row.get(x_key) is not None
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


# ---------------------------------------------------------------------- layer comparison
def _layer_axes(
    fig: go.Figure, col: int, teacher: Sequence[str], student: Sequence[str], row: int = 1
) -> None:
    # Category axes with explicit ticks: a path such as "0" must not become the number 0.
    fig.update_xaxes(
        type="category",
        tickmode="array",
        tickvals=list(teacher),
        ticktext=list(teacher),
        tickangle=-45,
        title_text="teacher layer",
        row=row,
        col=col,
    )
    fig.update_yaxes(
        type="category",
        tickmode="array",
        tickvals=list(student),
        ticktext=list(student),
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
    fig = make_subplots(
        rows=grid_rows,
        cols=cols,
        subplot_titles=[wrap_name(label, fit) for label in drawable],
        horizontal_spacing=min(0.12, 1.0 / (cols - 1) - 1e-3) if cols > 1 else 0.0,
        vertical_spacing=min(gap_px / (height - 200), 1.0 / (grid_rows - 1) - 1e-3)
        if grid_rows > 1
        else 0.0,
    )
    fig.update_annotations(font=dict(size=12))
    for i, (label, probe) in enumerate(drawable.items()):
        row, col = i // cols + 1, i % cols + 1
        teacher, student = list(probe["teacher_layers"]), list(probe["student_layers"])
        name = str(label).replace("%", "%%")
        fig.add_trace(
            go.Heatmap(
                z=_cka(probe),
                x=teacher,
                y=student,
                zmin=zmin,
                zmax=zmax,
                coloraxis="coloraxis",
                name=str(label),
                hovertemplate=f"{name}<br>student %{{y}}<br>teacher %{{x}}<br>CKA %{{z:.3f}}"
                "<extra></extra>",
            ),
            row=row,
            col=col,
        )
        _layer_axes(fig, col, teacher, student, row=row)
    title = "linear CKA, student layer vs teacher layer"
    if skipped:
        title += f" (no CKA: {', '.join(skipped)})"
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
    _layer_axes(fig, 1, teacher, student)
    fig.update_layout(
        title=f"CKA({fit_text(label, 40)}) - CKA({fit_text(baseline_label, 40)}); "
        f"colour range fixed at ±{limit:.2f}",
        height=max(380, 160 + 26 * len(student)),
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
    return "<br>".join(fit_text(line, width) for line in out)


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
    ticktext = [names[c] if 0 <= c < len(names) else str(c) for c in labels[starts]]
    s_path, t_path = entry["pair"]
    fig = make_subplots(
        rows=1,
        cols=3,
        subplot_titles=[f"teacher {t_path}", f"student {s_path}", "|teacher - student|"],
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
        title=f"Gram matrices of pair {s_path} -> {t_path} (samples sorted by class)",
        coloraxis=dict(colorscale="Viridis", colorbar=dict(x=split + 0.005, thickness=12, len=0.9)),
        coloraxis2=dict(colorscale="Reds", cmin=0.0, colorbar=dict(x=1.0, thickness=12, len=0.9)),
        height=430,
        margin=dict(t=80, b=80),
    )
    return fig


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
    done = [r for r in records if _finite(_metric(r, ACCURACY_METRIC))]
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
        NOT_SIGNIFICANT if not s else (_colour(0) if v >= 0 else _colour(1))
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
