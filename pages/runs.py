"""Runs: every run in the store, live while something trains; one run's curves and actions.

The selected run, the suite filter and the chart options live in the URL
(``/runs?run=ID&suite=ID&smooth=0.6``)."""

from __future__ import annotations

import streamlit as st

from pages._shared import (
    errors_shown,
    guarded,
    live,
    manager,
    page_entered,
    require_app,
    set_params,
    settings,
    show_action_error,
    store,
    url_notes,
    user,
)
from workbench.config.run_config import COMPONENTS, RunConfig
from workbench.distill.gradient_shares import weak_terms
from workbench.lab.identity import confusable_names
from workbench.runs import permitted as actions
from workbench.runs.queue import RESUMABLE
from workbench.storage import training_state as checkpoints
from workbench.storage.store import ACTIVE, FINISHED
from workbench.ui.draft import parse_tags
from workbench.ui.escape import plain
from workbench.ui.naming import (
    ACCURACY_LABEL,
    ACCURACY_METRIC,
    EPOCH_LABEL,
    EPOCH_METRIC,
    option_label,
    short_names,
)
from workbench.ui.plots import curves
from workbench.ui.plots.style import PlotDataError
from workbench.ui.tables import (
    MISSING,
    RUNS_PAGE_COLUMNS,
    format_percent,
    history_csv,
    latest_accuracy,
    progress_fraction,
    progress_text,
    run_table,
    suite_column,
    suite_names,
)
from workbench.ui.url_state import Steps, dropped_notes, encode_ids, encode_value, read_params

require_app(__file__)
ss = st.session_state
st.title("Runs")
# widget key -> (query parameter, default): the view settings a link restores
VIEW = {
    "runs_x": ("x", "step"),
    "runs_smooth": ("smooth", 0.0),
    "runs_log": ("log", False),
    "runs_mine": ("mine", False),
    "runs_suite": ("suite", ""),  # "": every run, a suite id: that suite's runs
}
SMOOTHING = Steps(0.0, 0.95, 0.05)  # the slider's range: a link's value outside it is dropped
notes: list[str] = []
SUITES = suite_names(actions.list_suites(store(), user()))  # the suites this user may see
if page_entered():
    params = st.query_params.to_dict()
    ss["runs_linked"] = params.get("run")  # "not found" when this user may not see it
    if params.get("run"):
        ss["runs_select_next"] = params["run"]
    read, dropped = read_params(
        params,
        {param: default for param, default in VIEW.values()},
        {"x": tuple(curves.X_AXES), "smooth": SMOOTHING, "suite": ("", *SUITES)},
    )
    for key, (param, default) in VIEW.items():
        ss[key] = read.get(param, default)
    notes = dropped_notes(params, dropped)
url_notes(notes)


def cancel(run_id: str) -> None:
    manager().cancel(run_id, user())


def restart(run_id: str) -> None:
    ss["runs_select_next"] = manager().restart(run_id, user())


def resume(run_id: str) -> None:
    ss["runs_select_next"] = manager().resume(run_id, user())


def ask_delete(run_id: str | None) -> None:
    ss["confirm_delete"] = run_id


def delete(run_id: str) -> None:
    ss["confirm_delete"] = None
    manager().delete(run_id, user())


def rename(run_id: str) -> None:
    manager().rename(
        run_id,
        user(),
        name=ss[f"run_name_{run_id}"].strip(),
        tags=parse_tags(ss[f"run_tags_{run_id}"]),
    )


def set_private(run_id: str) -> None:
    manager().set_private(run_id, ss[f"run_private_{run_id}"], user())


def run_actions(record: dict) -> None:
    """Cancel, resume, restart, delete, rename/tag, visibility and downloads for one run; the
    owner's actions only for its owner and admins (the library refuses them to others too)."""
    run_id, status = record["id"], record["status"]
    mine = actions.can_change(user(), record)
    cols = st.columns(4)
    if not mine:
        st.caption(
            f"Owned by **{plain(record.get('owner') or 'no one')}**: only they or an admin can cancel, "
            "resume, delete, rename or hide it. Restart queues a copy as your own run."
        )
    if status in ACTIVE and mine:
        cols[0].button(
            "Cancel run",
            key="run_cancel",
            icon=":material/stop:",
            on_click=guarded(cancel),
            args=(run_id,),
        )
    elif status in FINISHED and status != "completed":
        if status in RESUMABLE and mine:
            saved = checkpoints.state_path(store().home, run_id).exists()
            cols[0].button(
                "Resume run",
                key="run_resume",
                icon=":material/play_arrow:",
                on_click=guarded(resume),
                args=(run_id,),
                help="Continue from the end of its last finished epoch."
                if saved
                else "It never finished an epoch: it starts over, under the same id.",
            )
        cols[0].button(
            "Restart run",
            key="run_restart",
            icon=":material/replay:",
            on_click=guarded(restart),
            args=(run_id,),
            help="Queue a fresh run with the same settings.",
        )
    if status not in ACTIVE and mine:
        if ss.get("confirm_delete") == run_id:
            cols[1].warning("Delete this run and its checkpoint?")
            cols[1].button(
                "Yes, delete",
                key="run_delete_yes",
                type="primary",
                on_click=guarded(delete),
                args=(run_id,),
            )
            cols[1].button("Keep it", key="run_delete_no", on_click=ask_delete, args=(None,))
        else:
            cols[1].button(
                "Delete run",
                key="run_delete",
                icon=":material/delete:",
                on_click=ask_delete,
                args=(run_id,),
            )
    checkpoint = store().weights_path(run_id)
    cols[2].download_button(
        "Download checkpoint",
        data=checkpoint.read_bytes if checkpoint.exists() else b"",
        file_name=f"{run_id}.pt",
        mime="application/octet-stream",
        key="run_download_checkpoint",
        on_click="ignore",
        disabled=not checkpoint.exists(),
        icon=":material/download:",
    )
    cols[3].download_button(
        "Download metrics (CSV)",
        data=lambda: history_csv(store().history(run_id)),
        file_name=f"{run_id}-history.csv",
        mime="text/csv",
        key="run_download_csv",
        on_click="ignore",
        icon=":material/table:",
    )
    if not mine:
        return
    cols[0].toggle(
        "Private",
        value=bool(record.get("private")),
        key=f"run_private_{run_id}",
        on_change=guarded(set_private),
        args=(run_id,),
        help="Only you and the admins see a private run.",
    )
    with st.form("run_rename"):
        st.text_input("Name", value=record.get("name") or "", key=f"run_name_{run_id}")
        st.text_input(
            "Tags (comma separated)",
            value=", ".join(record.get("tags") or []),
            key=f"run_tags_{run_id}",
        )
        st.form_submit_button(
            "Save name and tags", key="run_rename_save", on_click=guarded(rename), args=(run_id,)
        )


def run_detail(record: dict, name: str) -> None:
    run_id = record["id"]
    st.progress(progress_fraction(record), text=progress_text(record))
    metrics = record.get("metrics") or {}
    history, epochs = store().history(run_id), store().epochs(run_id)
    cols = st.columns(5)
    if metrics.get(ACCURACY_METRIC) is not None:
        cols[0].metric(ACCURACY_LABEL, format_percent(metrics[ACCURACY_METRIC]))
    else:  # running, cancelled, failed: where it got to
        label = f"{EPOCH_LABEL} (last epoch)"
        cols[0].metric(label, format_percent(latest_accuracy(record, epochs)))
    cols[1].metric("val acc", format_percent(metrics.get("val_acc")))  # what training saw
    cols[2].metric(f"teacher {ACCURACY_LABEL}", format_percent(metrics.get("teacher_acc")))
    cols[3].metric("Agreement with teacher (test)", format_percent(metrics.get("agreement")))
    cols[4].metric("Teacher outputs", record.get("teacher_source") or MISSING)
    st.caption(plain(RunConfig.from_dict(record["config"]).summary()))
    if record.get("teacher_note"):
        st.caption(plain(record["teacher_note"]))
    if record.get("error"):
        st.error(plain(f"{record['status']}: {record['error']}"), icon=":material/error:")
    x, smoothing, log_y = ss["runs_x"], ss["runs_smooth"], ss["runs_log"]
    left, right = st.columns(2)
    with left:
        terms = {
            c: [(row[x], row[c]) for row in history if row.get(x) is not None]
            for c in (*COMPONENTS, "total")
            if any(row.get(c) for row in history)  # an inactive term is constant 0
        }
        if terms:
            st.markdown("**Loss terms** (unweighted; the response term carries T²)")
            fig = curves.curve_figure(
                terms,
                x_title=curves.X_AXES[x],
                y_title="loss",
                smoothing=smoothing,
                log_y=log_y,
            )
            st.plotly_chart(fig, key="run_losses", width="stretch")
        else:
            st.caption("No loss values logged yet.")
    with right:
        if epochs:
            st.markdown(f"**{EPOCH_LABEL.capitalize()}** per epoch")
            fig = curves.accuracy_curves({name: epochs}, x="time" if x == "time" else "epoch")
            st.plotly_chart(fig, key="run_accuracy", width="stretch")
        else:
            st.caption("No epoch finished yet.")
    if record["config"].get("weighting", "fixed") != "fixed" and history:
        st.markdown("**Loss weights** (adapted by the weighting scheme)")
        fig = curves.weight_curves({name: history}, x=x)
        st.plotly_chart(fig, key="run_weights", width="stretch")
    shares_shown(record, history, x)
    run_actions(record)


def shares_shown(record: dict, history: list[dict], x: str) -> None:
    """Each term's share of the student's gradient, and a note on the terms that barely act."""
    weights = record["config"].get("weights") or {}
    if sum(1 for w in weights.values() if w > 0) < 2 or not history:
        return
    st.markdown("**Share of the gradient** per term (what the weights really do)")
    try:
        fig = curves.gradient_share_curves(history, x="step" if x == "epoch" else x)
        st.plotly_chart(fig, key="run_shares", width="stretch")
    except PlotDataError as exc:
        st.caption(plain(exc))
    for weak in weak_terms(history, weights):
        st.warning(plain(weak["message"]), icon=":material/trending_down:")


def chart_options() -> None:
    """Curve options: x by step, epoch or time; smoothing; log scale (for the T²-scaled term)."""
    col_x, col_smooth, col_log = st.columns([1, 2, 1], vertical_alignment="bottom")
    # None from a fragment rerun that raced the first draw
    if ss.get("runs_x") not in curves.X_AXES:
        ss["runs_x"] = VIEW["runs_x"][1]
    col_x.segmented_control("x axis", list(curves.X_AXES), key="runs_x", required=True)
    col_smooth.slider("Smoothing", 0.0, 0.95, step=0.05, key="runs_smooth")
    col_log.toggle("log scale (losses)", key="runs_log")


def not_found_notice(visible_ids: set[str]) -> None:
    """A linked run this user may not see (private, deleted) is "not found", nothing more."""
    linked = ss.get("runs_linked")
    if linked and linked not in visible_ids:
        shown = linked if len(linked) <= 60 else linked[:59] + "…"
        st.warning(
            f"Run {plain(shown)} not found: it was deleted, or it is private.",
            icon=":material/search_off:",
        )


def look_alike_owners(records: list[dict]) -> None:
    """For admins: owners whose names pass for another user's (``аdmin`` for ``admin``)."""
    if not user().admin:
        return
    owners = {r.get("owner") for r in records}
    found = [c for c in confusable_names([*settings().admins, *owners]) if c.name in owners]
    if found:
        st.warning(
            "Look-alike user names (check who they are): "
            + "; ".join(plain(c.message()) for c in found),
            icon=":material/warning:",
        )


def runs_filtered(seen: list[dict]) -> list[dict]:
    """The filters over the table (mine only, one suite) and the runs they keep."""
    mine_col, suite_col = st.columns([1, 3], vertical_alignment="bottom")
    mine_col.toggle("Mine only", key="runs_mine", help="Only the runs you own")
    if ss.get("runs_suite") not in ("", *SUITES):  # a suite deleted meanwhile
        ss["runs_suite"] = ""
    suite_col.selectbox(
        "Suite",
        ("", *SUITES),
        key="runs_suite",
        format_func=lambda s: plain(SUITES[s]) if s else "every run",
        help="Only the runs of one ablation suite",
    )
    records = actions.shown(seen, user(), mine=ss["runs_mine"])
    if ss["runs_suite"]:
        records = [r for r in records if r.get("suite") == ss["runs_suite"]]
    return records


# Pixel widths: the key columns (name, status, test and val acc) fit a 1440 px window whole.
RUNS_COLUMN_CONFIG = {
    "shown as": st.column_config.TextColumn("name", width=220),
    "status": st.column_config.TextColumn("status", width=84),
    ACCURACY_METRIC: st.column_config.NumberColumn(
        ACCURACY_LABEL,
        format="percent",
        width=76,
        help="A finished run's accuracy on the test split (nothing in training saw it)",
    ),
    EPOCH_METRIC: st.column_config.NumberColumn(
        EPOCH_LABEL,
        format="percent",
        width=76,
        help="The validation accuracy of the last finished epoch (live while a run "
        "trains; kept by a cancelled run)",
    ),
    "progress": st.column_config.ProgressColumn(
        "progress", min_value=0.0, max_value=1.0, width="small"
    ),
    "suite": st.column_config.TextColumn("suite", width="medium"),
    "id": st.column_config.TextColumn("id", width=180),  # 22 characters, whole
    "queue": st.column_config.TextColumn(
        "queue",
        width=150,
        help="A queued run's place in the fair order (round-robin across users) and "
        "when it is expected to start",
    ),
    # pixel widths that fit "59 min 59 s" whole (the issue saw "1 min 1")
    "eta": st.column_config.TextColumn("ETA", width=96),
    "duration": st.column_config.TextColumn("duration", width=96),
    "config": st.column_config.TextColumn("config", width="large"),
    "teacher_source": st.column_config.TextColumn(
        "teacher outputs", help="cache: precomputed teacher outputs; live: teacher forward"
    ),
}


def runs_table(records: list[dict], names: dict[str, str], plan: dict) -> None:
    """The table of runs, its key columns first (name, status, test and val accuracy)."""
    table = run_table(records, epochs=store().epochs, plan=plan)
    table.insert(1, "shown as", [names[i] for i in table["id"]])
    table["suite"] = suite_column(records, SUITES)
    st.dataframe(
        table,
        key="runs_table",
        hide_index=True,
        width="stretch",
        placeholder=MISSING,  # a queued run's accuracy: "—", not "None"
        column_order=RUNS_PAGE_COLUMNS,
        column_config=RUNS_COLUMN_CONFIG,
    )


def runs_view(polling: bool) -> None:
    """The table and the selected run; while ``polling`` it refreshes itself every POLL_S."""
    everything = store().list_runs()
    if polling != manager().busy(everything):
        st.rerun()  # a full rerun redraws this view polling (or not) as the runs need
    show_action_error()
    seen = actions.shown(everything, user())
    records = runs_filtered(seen)
    not_found_notice({r["id"] for r in seen})
    look_alike_owners(seen)
    if not records:
        if seen:
            st.info("No runs match these filters.")
            return
        st.info("No runs yet: launch one on the Distill page.")
        st.page_link("pages/distill.py", label="Go to Distill", icon=":material/tune:")
        return
    names = short_names(records, among=seen)  # a filter does not rename a run
    runs_table(records, names, manager().queue_plan(everything))
    by_id = {r["id"]: r for r in records}
    ids = list(by_id)
    if ss.get("runs_select_next") in by_id:  # set by an action, a link or Distill's Open Runs
        ss["runs_run"] = ss.pop("runs_select_next")
    if ss.get("runs_run") not in by_id:
        ss["runs_run"] = ids[0]
    # The selection is held in runs_run, not in the widget: a renamed run changes the option's
    # label, and the selectbox must not jump to another run then.
    ss["runs_selected"] = ss["runs_run"]
    pick_col, compare_col = st.columns([3, 2], vertical_alignment="bottom")
    pick_col.selectbox(
        "Run",
        ids,
        key="runs_selected",
        format_func=lambda r: option_label(names[r], r),
        on_change=lambda: ss.update(runs_run=ss["runs_selected"]),
    )
    with compare_col:
        picks = st.multiselect(
            "Runs to compare",
            ids,
            default=[r for r in ss.get("compare_runs", []) if r in by_id],
            format_func=lambda r: option_label(names[r], r),
            key="runs_compare_pick",
        )
        if st.button("Open in Compare", key="open_compare", disabled=not picks):
            ss["compare_runs"] = list(picks)
            st.switch_page("pages/compare.py", query_params={"runs": encode_ids(picks)})
    chart_options()
    set_params(
        {"run": ss["runs_run"]}
        | {
            param: encode_value(ss[key])
            for key, (param, default) in VIEW.items()
            if ss[key] != default
        },
        owned=("run", *(param for param, _ in VIEW.values())),
    )
    run_detail(by_id[ss["runs_run"]], names[ss["runs_run"]])
    if not polling:
        st.button("Refresh", key="runs_refresh", icon=":material/refresh:")


with errors_shown():
    polling = manager().busy()
    live(runs_view, polling=polling)(polling)
