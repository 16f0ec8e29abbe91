"""Compare: pick runs from a filtered table; overlay their curves, diff their configs, compare
what their students learned (CKA, Gram matrices, pair cosines, per-class accuracy) and export
it all as one HTML report. The logic lives in ``workbench.ui.compare`` and ``workbench.ui.plots``.

The selection and the view settings live in the URL (``/compare?runs=ID1,ID2&group=seed``)."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from pages._cka import CKA_KEYS, CKA_PARAMS, cka_section
from pages._embeddings import embedding_section
from pages._gallery import gallery_section
from pages._quality import quality_section
from pages._shared import (
    errors_shown,
    page_entered,
    require_app,
    set_params,
    store,
    url_notes,
    user,
)
from workbench.ablation.published import CAPTION, published_rows
from workbench.runs import permitted as actions
from workbench.ui import compare, report
from workbench.ui.escape import plain
from workbench.ui.naming import (
    ACCURACY_LABEL,
    ACCURACY_METRIC,
    EPOCH_LABEL,
    option_label,
    short_names,
)
from workbench.ui.plots import curves, heatmaps, summaries
from workbench.ui.plots.style import PlotDataError
from workbench.ui.url_state import (
    Steps,
    decode_ids,
    dropped_notes,
    encode_ids,
    encode_value,
    read_params,
)

require_app(__file__)
ss = st.session_state
st.title("Compare")
# widget key -> (query parameter, default): the view settings a link restores
VIEW = {
    "compare_group": ("group", compare.SEED_GROUP),
    "compare_colour": ("colour", compare.NO_GROUP),
    "compare_component": ("loss", "total"),
    "compare_x": ("x", "step"),
    "compare_smooth": ("smooth", 0.0),
    "compare_log": ("log", False),
    "compare_cka_per_run": ("cka_per_run", False),
}
SMOOTHING = Steps(0.0, 0.95, 0.05)  # the slider's range: a link's value outside it is dropped
figures: list[tuple[str, go.Figure]] = []  # what the page shows, for the HTML report
tables: list[tuple[str, pd.DataFrame]] = []
PERCENT = st.column_config.NumberColumn(format="percent", width="small")


@st.cache_data(show_spinner=False, max_entries=512)
def run_data(home: str, version: tuple) -> dict:
    """A run's epochs, history and probe; ``version`` (``compare.data_version``) changes with them."""
    run_id = version[0]
    return {
        "epochs": store().epochs(run_id),
        "history": store().history(run_id),
        "probe": store().probe(run_id),
    }


@st.cache_data(show_spinner=False, max_entries=64)
def cached_figure(name: str, key: Hashable, _build: Callable[[], go.Figure]) -> go.Figure:
    # ``key`` names everything the figure depends on; ``_build`` is not hashed. Rebuilt from
    # its dict, the new figure orders its layout as a cached copy does, so a clickable chart's
    # spec, hence its widget id and its selection, stays the same on the click's rerun.
    return go.Figure(_build().to_dict())


def chart(
    caption: str,
    name: str,
    key: Hashable,
    build: Callable[[], go.Figure],
    *,
    on_select: str = "ignore",
) -> object:
    """Draw a figure (built once per ``key``) and keep it for the report; returns the chart's
    selection state when ``on_select`` is "rerun" (clickable bars)."""
    try:
        fig = cached_figure(name, key, build)
    except PlotDataError as exc:  # the data cannot be drawn as asked: say why
        st.warning(plain(exc), icon=":material/info:")
        return None
    figures.append((caption, fig))
    if on_select == "ignore":
        return st.plotly_chart(fig, key=name, width="stretch")
    return st.plotly_chart(
        fig, key=name, width="stretch", on_select=on_select, selection_mode="points"
    )


def keep_valid(key: str, options: Sequence[object], default: object = None) -> None:
    """Reset a widget's choice that is no longer among its options (the selection changed) to
    ``default`` (the first option). Set, not deleted: the browser then shows the new choice."""
    if ss.get(key) not in options:
        ss[key] = options[0] if default is None else default


def select_runs(run_ids: list[str]) -> None:
    ss["compare_runs"] = run_ids


# ------------------------------------------------------------------------- the runs table
if page_entered():
    ss["compare_mine"] = st.query_params.get("mine") == "1"
mine_only = st.toggle("Mine only", key="compare_mine", help="Only the runs you own")
records = actions.list_runs(store(), user(), mine=mine_only)  # others' private runs: absent
by_id = {r["id"]: r for r in records}
notes: list[str] = []
if page_entered():  # a reload, a link, or Open in Compare: the URL says what to show
    params = st.query_params.to_dict()
    if "runs" in params:
        ss["compare_runs"] = decode_ids(params["runs"], by_id)
        missing = [i for i in dict.fromkeys(params["runs"].split(",")) if i and i not in by_id]
        if missing and not mine_only:  # deleted, or someone else's private run
            shown = ", ".join(i if len(i) <= 40 else i[:39] + "…" for i in missing[:5])
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            st.warning(
                f"Not found: {plain(shown)}{more} (deleted, or private).",
                icon=":material/search_off:",
            )
    choices = compare.group_choices(records)  # of every run: a superset of the selection's
    read, dropped = read_params(
        params,
        {param: default for param, default in VIEW.values()},
        {
            "group": choices,
            "colour": choices,
            "loss": compare.LOSS_CHOICES,
            "x": tuple(curves.X_AXES),
            "smooth": SMOOTHING,
        },
    )
    for key, (param, default) in VIEW.items():
        ss[key] = read.get(param, default)
    for key, param in zip(CKA_KEYS, CKA_PARAMS, strict=True):  # checked against the runs below
        if isinstance(params.get(param), str):
            ss[key] = params[param][:500]
    notes = dropped_notes(params, dropped)
url_notes(notes)
if not records:
    st.info("No runs yet: launch some on the Distill page.")
    st.page_link("pages/distill.py", label="Go to Distill", icon=":material/tune:")
    st.stop()

values = compare.filter_values(records)
chosen_filters = {}
for column, name in zip(st.columns(len(compare.FILTERS)), compare.FILTERS, strict=True):
    # a run deleted meanwhile takes its values out of the options: drop them from the choice
    ss[f"compare_f_{name}"] = [v for v in ss.get(f"compare_f_{name}", []) if v in values[name]]
    chosen_filters[name] = column.multiselect(
        name, values[name], key=f"compare_f_{name}", placeholder="any"
    )
shown = compare.filter_runs(records, chosen_filters)
table = compare.selection_table(shown, store().epochs)
names_all = short_names(records)
table.insert(1, "shown as", [names_all[i] for i in table["id"]])
st.dataframe(
    table,
    key="compare_table",
    hide_index=True,
    width="stretch",
    column_order=[
        "shown as",
        ACCURACY_METRIC,
        "status",
        "group",
        *(
            c
            for c in table.columns
            if c
            not in (
                "shown as",
                "name",
                "group",
                "status",
                ACCURACY_METRIC,
                "progress",
                "eta",
                "duration",
                "config",
            )
        ),
    ],
    column_config={
        "shown as": st.column_config.TextColumn("name", width="large"),
        ACCURACY_METRIC: st.column_config.NumberColumn(
            ACCURACY_LABEL, format="percent", width="small"
        ),
        "group": st.column_config.TextColumn("seed group", width="medium"),
        "teacher_acc": st.column_config.NumberColumn(
            f"teacher {ACCURACY_LABEL}", format="percent", width="small"
        ),
        "agreement": PERCENT,
        "temperature": st.column_config.NumberColumn("T", format="%g", width="small"),
        "seconds": st.column_config.NumberColumn("seconds", format="%.0f", width="small"),
        "created": st.column_config.DatetimeColumn("created", format="YYYY-MM-DD HH:mm"),
    },
)
shown_ids = [r["id"] for r in shown]
col_csv, col_epochs, col_pick, _ = st.columns([1, 1.2, 1, 1])
col_csv.download_button(
    "Download table (CSV)",
    data=lambda: report.runs_export(shown, store().epochs, names_all).to_csv(index=False),
    file_name="kd-runs.csv",
    mime="text/csv",
    key="compare_table_csv",
    on_click="ignore",
    icon=":material/table:",
    help="One row per run of the table, with every config field as a column.",
)
col_epochs.download_button(
    "Download metrics per epoch (CSV)",
    data=lambda: report.epochs_export(shown, store().epochs, names_all).to_csv(index=False),
    file_name="kd-epochs.csv",
    mime="text/csv",
    key="compare_epochs_csv",
    on_click="ignore",
    icon=":material/timeline:",
    help="One row per run and epoch of the table's runs (a long table), with each run's config.",
)
col_pick.button(
    f"Compare these {len(shown_ids)} runs",
    key="compare_select_shown",
    on_click=select_runs,
    args=(shown_ids,),
    disabled=not shown_ids,
)

ss["compare_runs"] = compare.valid_selection(ss.get("compare_runs"), by_id)
selected = st.multiselect(
    "Runs to compare",
    compare.selection_options(shown_ids, ss["compare_runs"]),
    key="compare_runs",
    persist_state="session",
    format_func=lambda r: option_label(names_all[r], r),
    placeholder="Pick runs here, or open them from the Runs or Ablations page",
)
chosen = [by_id[r] for r in selected]
choices = compare.group_choices(chosen)
keep_valid("compare_group", choices, compare.SEED_GROUP)
keep_valid("compare_colour", choices, compare.NO_GROUP)
col_group, col_colour, col_component = st.columns(3, vertical_alignment="bottom")
group_by = col_group.selectbox(
    "Group by",
    choices,
    key="compare_group",
    help="'seeds of one config': runs that differ only by seed become one curve (mean ± std "
    "band), heatmap and column; a config field: runs that share its value do.",
)
colour_by = col_colour.selectbox(
    "Colour by",
    choices,
    key="compare_colour",
    help="Curves that share this field's value share a colour.",
)
component = col_component.selectbox(
    "Loss component (loss and weight curves)", compare.LOSS_CHOICES, key="compare_component"
)
col_x, col_smooth, col_log = st.columns([1, 2, 1], vertical_alignment="bottom")
x_axis = col_x.segmented_control("x axis", list(curves.X_AXES), key="compare_x", required=True)
smoothing = col_smooth.slider("Smoothing", 0.0, 0.95, step=0.05, key="compare_smooth")
log_y = col_log.toggle("log scale (losses)", key="compare_log")
grouped = group_by != compare.NO_GROUP
units = compare.units(chosen, group_by=group_by)
colours = compare.colours(units, colour_by)
home = str(store().home)
data = {r["id"]: run_data(home, compare.data_version(r)) for r in chosen}
# Everything a figure of the selection depends on: who is in which unit, and their data.
key = (
    tuple((label, tuple(m["id"] for m in members)) for label, members in units.items()),
    tuple(compare.data_version(r) for r in chosen),
    group_by,
    colour_by,
    smoothing,
)
set_params(
    {"runs": encode_ids(selected)}
    | ({"mine": "1"} if mine_only else {})
    | {  # a widget drawn only sometimes (the per-run CKA toggle) may have no value yet
        param: encode_value(ss[k])
        for k, (param, default) in VIEW.items()
        if ss.get(k, default) != default
    },
    owned=("runs", "mine", *(param for param, _ in VIEW.values())),
)
if not chosen:
    st.info("Pick runs above to overlay their curves and compare their layers.")

# ------------------------------------------------------------------------- curves
if chosen:
    st.subheader("Training curves")
    with errors_shown():
        epochs = compare.curve_runs(units, {i: d["epochs"] for i, d in data.items()})
        histories = compare.curve_runs(units, {i: d["history"] for i, d in data.items()})
        if silent := [label for label in units if label not in epochs]:
            st.caption(f"No finished epoch yet: {plain(', '.join(silent))}.")
        # Side by side for a few curves; one under the other for many, so that the legend
        # column beside each plot leaves the plot most of the width.
        left, right = st.columns(2) if len(units) <= 6 else (st.container(), st.container())
        with left:
            st.markdown(f"**{EPOCH_LABEL.capitalize()}** per epoch")
            if epochs:
                acc_x = "time" if x_axis == "time" else "epoch"
                chart(
                    EPOCH_LABEL.capitalize(),
                    "compare_accuracy",
                    (key, acc_x),
                    lambda: curves.accuracy_curves(
                        epochs, band=grouped, x=acc_x, smoothing=smoothing, colours=colours
                    ),
                )
        with right:
            st.markdown(f"**{component.capitalize()} loss** (unweighted)")
            if histories:
                chart(
                    f"{component.capitalize()} loss",
                    "compare_losses",
                    (key, component, x_axis, log_y),
                    lambda: curves.loss_curves(
                        histories,
                        component,
                        band=grouped,
                        x=x_axis,
                        log_y=log_y,
                        smoothing=smoothing,
                        colours=colours,
                    ),
                )
        if histories and not compare.adaptive_weighting(chosen):
            st.caption("Loss weights over time: not drawn, every selected run has fixed weights.")
        elif histories:
            st.markdown("**Loss weights over time**")
            st.caption("How the adaptive schemes moved them. For 'total', every non-zero weight.")
            weight = None if component == "total" else component
            chart(
                "Loss weights",
                "compare_weights",
                (key, weight, x_axis),
                lambda: curves.weight_curves(histories, weight, band=grouped, x=x_axis),
            )

# ------------------------------------------------------------------------- config diff
if chosen:
    st.subheader("What differs")
    with errors_shown():
        diff = compare.diff_table(units)
        if diff.empty:
            st.caption("The selected runs share one config (apart from seeds).")
        else:
            st.dataframe(diff, key="compare_config_diff", width="stretch")
            tables.append(("Config fields that differ", diff))

# ------------------------------------------------------------------------- layers
cka_params: dict[str, str] = {}  # the CKA difference's runs, for the URL (when it is drawn)
if chosen:
    st.subheader("What the students learned")
    with errors_shown():
        probes, unprobed = compare.probe_units(units, {i: d["probe"] for i, d in data.items()})
        if unprobed:
            st.caption(
                f"No probe for {plain(', '.join(unprobed))}: teacher runs and runs that did not finish "
                "are not probed."
            )
        cka_params = cka_section(
            chosen, units, probes, {i: d["probe"] for i, d in data.items()}, key, chart, keep_valid
        )

        gram_runs = [
            r["id"]
            for r in chosen
            if data[r["id"]]["probe"] and compare.has_probe_data(data[r["id"]]["probe"], "grams")
        ]
        if gram_runs:
            st.markdown("**Gram matrices** of a distilled layer pair (samples sorted by class)")
            labels = short_names(chosen)
            col_run, col_pair = st.columns(2)
            keep_valid("compare_gram_run", gram_runs)
            gram_run = col_run.selectbox(
                "Run", gram_runs, key="compare_gram_run", format_func=labels.get
            )
            pairs = [g["pair"] for g in data[gram_run]["probe"]["grams"]]
            keep_valid("compare_gram_pair", range(len(pairs)))
            pair = col_pair.selectbox(
                "Layer pair",
                range(len(pairs)),
                key="compare_gram_pair",
                format_func=lambda i: f"{pairs[i][0]} -> {pairs[i][1]}",
            )
            chart(
                f"Gram matrices of {labels[gram_run]}, pair {pairs[pair][0]} -> {pairs[pair][1]}",
                "compare_gram",
                (key, gram_run, pair),
                lambda: heatmaps.gram_heatmaps(data[gram_run]["probe"], pair),
            )

        # One under the other, each as wide as the page: beside each other, a table of many
        # runs was cut off at 1440 px.
        st.markdown("**Cosine of adapted features** per layer pair")
        cosines = compare.pair_cosine_table(probes)
        if cosines.empty:
            st.caption("Recorded for runs that trained with a feature loss.")
        else:
            fmt = {
                c: st.column_config.NumberColumn(
                    heatmaps.fit_text(c, 24), format="%.3f", width="small"
                )
                for c in cosines.columns
            }
            st.dataframe(cosines, key="compare_pair_cosine", column_config=fmt)
            tables.append(("Cosine of adapted features per layer pair", cosines))
        st.markdown(f"**{ACCURACY_LABEL.capitalize()} per class** and agreement with the teacher")
        per_class = compare.per_class_table(probes)
        if per_class.empty:
            st.caption("Recorded when a student run finishes.")
        else:
            fitted, flipped = compare.fit_columns(per_class)  # a row per run when that fits
            if flipped:
                st.caption("One row per run: a column per run would not fit the page.")
            fmt = {"_index": st.column_config.TextColumn(width="medium")}
            fmt |= {
                c: st.column_config.NumberColumn(
                    heatmaps.fit_text(c, 24), format="percent", width="small"
                )
                for c in fitted.columns
            }
            st.dataframe(fitted, key="compare_per_class", column_config=fmt)
            tables.append(("Accuracy per class", per_class))

set_params(cka_params, owned=CKA_PARAMS)
if chosen:
    probes_by_id = {i: d["probe"] for i, d in data.items()}
    quality_section(chosen, probes_by_id, names_all, key, chart)
    with errors_shown():
        tables += embedding_section(chosen, probes_by_id, names_all, key, chart)
    gallery_section(chosen, probes_by_id, names_all, key, chart, user(), store())

# ------------------------------------------------------------------------- sweeps
st.subheader(f"Loss weights and temperature vs {ACCURACY_LABEL}")
st.caption("Every finished student run in the filtered table, not only the selection.")
with errors_shown():
    seed_groups = group_by == compare.SEED_GROUP
    sweep = compare.parcoords_records(shown, grouped=seed_groups)
    chart(
        f"Loss weights and temperature vs {ACCURACY_LABEL}",
        "compare_parcoords",
        (tuple(compare.data_version(r) for r in shown), seed_groups),
        lambda: summaries.parallel_coordinates(sweep),
    )

# ------------------------------------------------------------------------- published numbers
if beside := published_rows(shown):  # no run of the table matches a paper's: nothing at all
    st.subheader("Published numbers beside yours")
    st.caption(CAPTION)
    beside_table = pd.DataFrame(beside)
    number = st.column_config.NumberColumn(format="%.2f", width="small")
    fmt = {c: number for c in beside_table.columns if "percent" in c}
    st.dataframe(beside_table, key="compare_published", hide_index=True, column_config=fmt)
    tables.append(("Published numbers beside yours", beside_table))

# ------------------------------------------------------------------------- export
st.subheader("Export")
report_tables = (
    [("Runs", report.report_run_table(chosen, names_all)), *tables] if chosen else tables
)
st.download_button(
    "Download this comparison (HTML)",
    data=lambda: report.comparison_report("KD Workbench comparison", figures, report_tables),
    file_name="kd-comparison.html",
    mime="text/html",
    key="compare_report",
    on_click="ignore",
    icon=":material/download:",
    help="One standalone file with the figures and tables above; it opens offline. The CSV "
    "downloads above have every config field.",
)
