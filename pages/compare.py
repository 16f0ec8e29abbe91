"""Compare: validation accuracy and loss curves of several runs, overlaid."""

from __future__ import annotations

import streamlit as st

from pages._shared import errors_shown, store
from workbench import plots
from workbench.views import run_label, runs_table

ss = st.session_state
st.title("Compare")

with errors_shown():
    records = store().list_runs()
    by_id = {r["id"]: r for r in records}
    if not records:
        st.info("No runs yet: launch some on the Distill page.")
        st.page_link("pages/distill.py", label="Go to Distill", icon=":material/tune:")
        st.stop()
    # Drop runs deleted meanwhile before the widget reads its value.
    ss["compare_runs"] = [r for r in ss.get("compare_runs", []) if r in by_id]
    selected = st.multiselect(
        "Runs",
        list(by_id),
        key="compare_runs",
        persist_state="session",
        format_func=lambda r: run_label(by_id[r]),
        placeholder="Pick runs here or on the Runs page",
    )
    if not selected:
        st.info("Pick one or more runs to overlay their curves.")
        st.stop()

    chosen = [by_id[r] for r in selected]
    labels = {r["id"]: run_label(r) for r in chosen}
    st.dataframe(
        runs_table(chosen),
        key="compare_table",
        hide_index=True,
        width="stretch",
        column_order=("name", "id", "status", "val_acc", "duration", "config", "teacher", "tags"),
        column_config={"val_acc": st.column_config.NumberColumn("val acc", format="percent")},
    )
    left, right = st.columns(2)
    epochs = {labels[r]: store().epochs(r) for r in selected}
    histories = {labels[r]: store().history(r) for r in selected}
    with left:
        if any(epochs.values()):
            st.markdown("**Validation accuracy**")
            fig = plots.accuracy_curves(epochs)
            st.plotly_chart(fig, key="compare_accuracy", width="stretch")
        else:
            st.caption("None of these runs has finished an epoch yet.")
    with right:
        if any(histories.values()):
            st.markdown("**Total training loss**")
            fig = plots.loss_curves(histories, "total")
            st.plotly_chart(fig, key="compare_losses", width="stretch")
        else:
            st.caption("None of these runs has logged a loss yet.")
