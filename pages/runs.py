"""Runs: every run in the store, live while something trains; one run's curves and actions."""

from __future__ import annotations

import streamlit as st

from pages._shared import (
    errors_shown,
    guarded,
    live,
    manager,
    require_app,
    show_action_error,
    store,
)
from workbench import plots
from workbench.config import COMPONENTS, RunConfig
from workbench.store import ACTIVE
from workbench.views import (
    format_percent,
    history_csv,
    progress_fraction,
    progress_text,
    run_label,
    runs_table,
)

require_app(__file__)
ss = st.session_state
st.title("Runs")


def cancel(run_id: str) -> None:
    manager().cancel(run_id)


def restart(run_id: str) -> None:
    ss["runs_select_next"] = manager().restart(run_id)


def ask_delete(run_id: str | None) -> None:
    ss["confirm_delete"] = run_id


def delete(run_id: str) -> None:
    ss["confirm_delete"] = None
    store().delete_run(run_id)


def rename(run_id: str) -> None:
    tags = ss[f"run_tags_{run_id}"].split(",")
    store().update_run(
        run_id,
        name=ss[f"run_name_{run_id}"].strip(),
        tags=[t.strip() for t in tags if t.strip()],
    )


def run_actions(record: dict) -> None:
    """Cancel, restart, delete, rename/tag and downloads for one run."""
    run_id, status = record["id"], record["status"]
    cols = st.columns(4)
    if status in ACTIVE:
        cols[0].button(
            "Cancel run",
            key="run_cancel",
            icon=":material/stop:",
            on_click=guarded(cancel),
            args=(run_id,),
        )
    elif status in ("interrupted", "cancelled", "failed", "diverged"):
        cols[0].button(
            "Restart run",
            key="run_restart",
            icon=":material/replay:",
            on_click=guarded(restart),
            args=(run_id,),
            help="Queue a fresh run with the same settings.",
        )
    if status not in ACTIVE:
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
    checkpoint = store().checkpoint_path(run_id)
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


def run_detail(record: dict) -> None:
    run_id = record["id"]
    st.progress(progress_fraction(record), text=progress_text(record))
    metrics = record.get("metrics") or {}
    cols = st.columns(4)
    acc = metrics.get("val_acc")
    cols[0].metric("Val accuracy", format_percent(acc))
    teacher_acc = metrics.get("teacher_acc")
    cols[1].metric("Teacher val accuracy", format_percent(teacher_acc))
    agreement = metrics.get("agreement")
    cols[2].metric("Agreement with teacher", format_percent(agreement))
    cols[3].metric("Teacher outputs", record.get("teacher_source") or "-")
    st.caption(RunConfig.from_dict(record["config"]).summary())
    if record.get("teacher_note"):
        st.caption(record["teacher_note"])
    if record.get("error"):
        st.error(f"{record['status']}: {record['error']}", icon=":material/error:")
    left, right = st.columns(2)
    history, epochs = store().history(run_id), store().epochs(run_id)
    with left:
        terms = {
            c: [(row["step"], row[c]) for row in history]
            for c in (*COMPONENTS, "total")
            if any(row.get(c) for row in history)  # an inactive term is constant 0
        }
        if terms:
            st.markdown("**Loss terms** (unweighted)")
            fig = plots.curve_figure(terms, x_title="step", y_title="loss")
            st.plotly_chart(fig, key="run_losses", width="stretch")
        else:
            st.caption("No loss values logged yet.")
    with right:
        if epochs:
            st.markdown("**Validation accuracy**")
            fig = plots.accuracy_curves({run_label(record): epochs})
            st.plotly_chart(fig, key="run_accuracy", width="stretch")
        else:
            st.caption("No epoch finished yet.")
    if record["config"].get("weighting", "fixed") != "fixed" and history:
        st.markdown("**Loss weights** (adapted by the weighting scheme)")
        fig = plots.weight_curves({run_label(record): history})
        st.plotly_chart(fig, key="run_weights", width="stretch")
    run_actions(record)


def runs_view(polling: bool) -> None:
    """The table and the selected run; while ``polling`` it refreshes itself every POLL_S."""
    records = store().list_runs()
    if polling != manager().busy(records):
        st.rerun()  # a full rerun redraws this view polling (or not) as the runs need
    show_action_error()
    if not records:
        st.info("No runs yet: launch one on the Distill page.")
        st.page_link("pages/distill.py", label="Go to Distill", icon=":material/tune:")
        return
    st.dataframe(
        runs_table(records),
        key="runs_table",
        hide_index=True,
        width="stretch",
        column_order=(
            "name",
            "id",
            "role",
            "status",
            "progress",
            "eta",
            "val_acc",
            "duration",
            "config",
            "teacher",
            "tags",
            "error",
        ),
        column_config={
            "progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0),
            "val_acc": st.column_config.NumberColumn("val acc", format="percent"),
            "eta": st.column_config.TextColumn("ETA"),
            "teacher": st.column_config.TextColumn(
                "teacher outputs", help="cache: precomputed teacher outputs; live: teacher forward"
            ),
        },
    )
    by_id = {r["id"]: r for r in records}
    ids = list(by_id)
    if ss.get("runs_select_next") in by_id:  # set by an action after the selectbox was drawn
        ss["runs_selected"] = ss.pop("runs_select_next")
    if ss.get("runs_selected") not in by_id:
        ss["runs_selected"] = ids[0]
    pick_col, compare_col = st.columns([3, 2], vertical_alignment="bottom")
    selected = pick_col.selectbox(
        "Run",
        ids,
        key="runs_selected",
        persist_state="session",
        format_func=lambda r: run_label(by_id[r]),
    )
    with compare_col:
        picks = st.multiselect(
            "Runs to compare",
            ids,
            default=[r for r in ss.get("compare_runs", []) if r in by_id],
            format_func=lambda r: run_label(by_id[r]),
            key="runs_compare_pick",
        )
        if st.button("Open in Compare", key="open_compare", disabled=not picks):
            ss["compare_runs"] = list(picks)
            st.switch_page("pages/compare.py")
    run_detail(by_id[selected])
    if not polling:
        st.button("Refresh", key="runs_refresh", icon=":material/refresh:")


with errors_shown():
    polling = manager().busy()
    live(runs_view, polling=polling)(polling)
