"""Ablations: which part of the hybrid loss mattered, with its uncertainty.

Suites are launched from the Distill page (one click) or `python -m workbench ablate`; this page
lists every stored suite, finished or not, and shows its results as they come in.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from pages._shared import live, manager, require_app, show_error, store
from workbench.config import RunConfig
from workbench.plots import contribution_bars
from workbench.suites import suite_analysis, suite_progress

require_app(__file__)
ss = st.session_state
st.title("Ablations")
st.caption(
    "Each suite trains the full hybrid loss, the loss with each active component removed "
    "(weight 0, the others unchanged) and the label-only baseline, for several seeds. "
    "A component's contribution is accuracy(full) - accuracy(without it), with a 95% "
    "t-interval over seeds."
)

suites = store().list_suites()
if not suites:
    st.info(
        "No ablation suite yet. Set up the loss on Distill and press **Launch ablation suite**, "
        "or run `python -m workbench ablate --seeds 3` in a terminal.",
        icon=":material/science:",
    )
    st.page_link("pages/distill.py", label="Go to Distill", icon=":material/tune:")
    st.stop()

labels = {s["id"]: f"{s['name']} ({s['id']})" for s in suites}
if ss.get("suite_pick") not in labels:
    ss["suite_pick"] = ss.get("last_suite") if ss.get("last_suite") in labels else suites[0]["id"]
suite_id = st.selectbox("Suite", list(labels), format_func=labels.get, key="suite_pick")
suite = store().get_suite(suite_id)
base = RunConfig.from_dict(suite["base"])
st.caption(
    f"Base: {base.summary()} · {suite['seeds']} seed(s) per variant · "
    f"{'factorial (all on/off combinations)' if suite['factorial'] else 'leave-one-out'}"
)


def suite_status(polling: bool) -> None:
    progress = suite_progress(store(), suite)
    counts = progress["counts"]
    finished = sum(
        counts.get(s, 0) for s in ("completed", "failed", "cancelled", "diverged", "interrupted")
    )
    st.progress(
        finished / max(progress["total"], 1),
        text=f"{finished} of {progress['total']} runs finished",
    )
    st.caption(" · ".join(f"{status}: {n}" for status, n in sorted(counts.items())))
    if polling and progress["done"]:
        st.rerun()  # the full rerun draws the final results without polling


progress = suite_progress(store(), suite)
live(suite_status, polling=not progress["done"])(not progress["done"])

analysis = suite_analysis(store(), suite)
summary, contrib = analysis["summary"], analysis["contributions"]

col_chart, col_table = st.columns([3, 2])
with col_chart:
    st.subheader("Contribution of each component")
    if contrib.empty:
        st.info("Contributions appear once the full loss and a variant have finished runs.")
    else:
        try:
            st.plotly_chart(contribution_bars(contrib), key="contrib_chart")
        except Exception as exc:
            show_error(exc)
        shown = contrib[
            ["component", "contribution", "ci_low", "ci_high", "n", "distinguishable"]
        ].copy()
        shown["verdict"] = [
            "distinguishable" if d else "not distinguishable from noise"
            for d in shown.pop("distinguishable")
        ]
        st.dataframe(shown, hide_index=True, key="contrib_table")
with col_table:
    st.subheader("Accuracy per variant")
    if summary.empty:
        st.info("No finished runs yet.")
    else:
        st.dataframe(summary, hide_index=True, key="variant_table")
    if analysis["shapley"]:
        st.subheader("Shapley values")
        st.dataframe(
            pd.DataFrame(
                {
                    "component": list(analysis["shapley"]),
                    "shapley": list(analysis["shapley"].values()),
                }
            ),
            hide_index=True,
        )
    elif suite["factorial"]:
        st.caption("Shapley values appear once every combination has a finished run.")

st.subheader("Runs of this suite")
rows = []
for entry in suite["runs"]:
    if store().has_run(entry["run_id"]):
        record = store().get_run(entry["run_id"])
        acc = (record.get("metrics") or {}).get("val_acc")
        rows.append(
            {
                "variant": entry["variant"],
                "seed": entry["seed"],
                "status": record["status"],
                "val_acc": acc,
                "run": entry["run_id"],
            }
        )
st.dataframe(pd.DataFrame(rows), hide_index=True, key="suite_runs")
col_open, col_cancel = st.columns(2)
if col_open.button(
    "Open these runs in Compare", key="suite_compare", icon=":material/compare_arrows:"
):
    ss["compare_runs"] = [r["run"] for r in rows if r["status"] == "completed"]
    st.switch_page("pages/compare.py")
if not progress["done"] and col_cancel.button("Cancel the unfinished runs", key="suite_cancel"):
    for r in rows:
        if r["status"] in ("queued", "running"):
            manager().cancel(r["run"])
    st.rerun()
