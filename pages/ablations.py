"""Ablations: which part of the hybrid loss mattered, with its uncertainty.

Suites are launched from the Distill page (one click) or `python -m workbench ablate`; this page
lists every stored suite, finished or not, and shows its results as they come in.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from pages._shared import (
    errors_shown,
    live,
    manager,
    page_entered,
    require_app,
    set_params,
    show_error,
    store,
    url_notes,
    user,
)
from workbench.ablation.suites import suite_analysis, suite_progress
from workbench.config.run_config import RunConfig
from workbench.runs import permitted as actions
from workbench.storage.store import ACTIVE, FINISHED
from workbench.ui.escape import plain
from workbench.ui.naming import (
    ACCURACY_LABEL,
    ACCURACY_METRIC,
    EPOCH_LABEL,
    EPOCH_METRIC,
    metric_label,
)
from workbench.ui.plots.summaries import contribution_bars
from workbench.ui.tables import latest_accuracy
from workbench.ui.url_state import encode_ids

require_app(__file__)
ss = st.session_state
st.title("Ablations")
st.caption(
    "Each suite trains the full hybrid loss, the loss with each active component removed "
    "(weight 0, the others unchanged) and the label-only baseline, for several seeds. "
    f"A component's contribution is {ACCURACY_LABEL}(full) - {ACCURACY_LABEL}(without it), with "
    "a 95% t-interval over seeds. Everything below updates as the suite's runs finish."
)

suites = actions.list_suites(store(), user())  # others' private suites: absent
labels = {s["id"]: f"{s['name']} ({s['id']})" for s in suites}
linked = st.query_params.get("suite") if page_entered() else None
if linked and linked not in labels:  # deleted, or someone else's private suite
    shown = linked if len(linked) <= 60 else linked[:59] + "…"
    url_notes([plain(f"ignored suite={shown} from the link: not found (deleted, or private)")])
else:
    url_notes()
if not suites:
    st.info(
        "No ablation suite yet. Set up the loss on Distill and press **Launch ablation suite**, "
        "or run `python -m workbench ablate --seeds 3` in a terminal.",
        icon=":material/science:",
    )
    st.page_link("pages/distill.py", label="Go to Distill", icon=":material/tune:")
    st.stop()

if linked in labels:  # a reload or a link
    ss["suite_pick"] = linked
if ss.get("suite_pick") not in labels:
    ss["suite_pick"] = ss.get("last_suite") if ss.get("last_suite") in labels else suites[0]["id"]
suite_id = st.selectbox("Suite", list(labels), format_func=labels.get, key="suite_pick")
set_params({"suite": suite_id}, owned=("suite",))
suite = actions.get_suite(store(), suite_id, user())
mine = actions.can_change(user(), suite)
base = RunConfig.from_dict(suite["base"])
st.caption(
    f"Base: {plain(base.summary())} · {suite['seeds']} seed(s) per variant · "
    f"{'factorial (all on/off combinations)' if suite['factorial'] else 'leave-one-out'}"
)


def suite_rows() -> list[dict]:
    """One row per run of the suite, with its latest accuracy (a running run's last epoch)."""
    rows = []
    for entry in suite["runs"]:
        if store().has_run(entry["run_id"]):
            record = store().get_run(entry["run_id"])
            metrics = record.get("metrics") or {}
            final = metrics.get(EPOCH_METRIC) is not None
            rows.append(
                {
                    "variant": entry["variant"],
                    "seed": entry["seed"],
                    "status": record["status"],
                    ACCURACY_METRIC: metrics.get(ACCURACY_METRIC),
                    EPOCH_METRIC: latest_accuracy(
                        record, None if final else store().epochs(entry["run_id"])
                    ),
                    "run": entry["run_id"],
                }
            )
    return rows


def suite_view(polling: bool) -> None:
    """Progress, contributions, accuracy per variant and the runs: all of it redrawn every
    POLL_S while the suite runs, so the tables fill in as runs finish."""
    progress = suite_progress(store(), suite)
    counts = progress["counts"]
    finished = sum(counts.get(s, 0) for s in FINISHED)
    st.progress(
        finished / max(progress["total"], 1),
        text=f"{finished} of {progress['total']} runs finished",
    )
    st.caption(" · ".join(f"{status}: {n}" for status, n in sorted(counts.items())))
    analysis = suite_analysis(store(), suite)
    summary, contrib = analysis["summary"], analysis["contributions"]
    label = metric_label(analysis.get("metric", ACCURACY_METRIC))  # which split the numbers are
    st.caption(f"Contributions and the variant table use the {label}.")
    percent = st.column_config.NumberColumn(format="percent", width="small")
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
            signed = st.column_config.NumberColumn(format="%+.2f%%", width=96)
            for column in ("contribution", "ci_low", "ci_high"):
                shown[column] = shown[column] * 100  # accuracy points, as everywhere: percent
            st.dataframe(
                shown,
                hide_index=True,
                key="contrib_table",
                column_config={c: signed for c in ("contribution", "ci_low", "ci_high")}
                | {"verdict": st.column_config.TextColumn("verdict", width="medium")},
            )
    with col_table:
        st.subheader(f"{label.capitalize()} per variant")
        if summary.empty:
            st.info("No finished runs yet.")
        else:
            acc_columns = [c for c in summary.columns if "acc" in c or c in ("mean", "std")]
            st.dataframe(
                summary,
                hide_index=True,
                key="variant_table",
                column_config={c: percent for c in acc_columns}
                | {"variant": st.column_config.TextColumn("variant", width="medium")},
            )
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
                column_config={"shapley": st.column_config.NumberColumn(format="%.4f")},
            )
        elif suite["factorial"]:
            st.caption("Shapley values appear once every combination has a finished run.")
    st.subheader("Runs of this suite")
    st.dataframe(
        pd.DataFrame(suite_rows()),
        hide_index=True,
        key="suite_runs",
        column_config={
            ACCURACY_METRIC: st.column_config.NumberColumn(ACCURACY_LABEL, format="percent"),
            EPOCH_METRIC: st.column_config.NumberColumn(
                EPOCH_LABEL, format="percent", help="the last finished epoch's (live)"
            ),
        },
    )
    if polling and progress["done"]:
        st.rerun()  # the full rerun draws the final results without polling


done = suite_progress(store(), suite)["done"]
live(suite_view, polling=not done)(not done)

col_open, col_cancel = st.columns(2)
if col_open.button(
    "Open these runs in Compare", key="suite_compare", icon=":material/compare_arrows:"
):
    picked = [r["run"] for r in suite_rows() if r["status"] == "completed"]
    ss["compare_runs"] = picked
    st.switch_page("pages/compare.py", query_params={"runs": encode_ids(picked)})
if not mine:
    col_cancel.caption(
        f"Suite of **{plain(suite.get('owner') or 'no one')}**: only they or an admin can cancel or "
        "delete it."
    )
elif not done and col_cancel.button("Cancel the unfinished runs", key="suite_cancel"):
    with errors_shown():
        for r in suite_rows():
            if r["status"] in ACTIVE:
                manager().cancel(r["run"], user())
    st.rerun()
elif done:
    if ss.get("confirm_delete_suite") == suite_id:
        col_cancel.warning("Delete this suite? Its runs stay on the Runs page.")
        if col_cancel.button("Yes, delete the suite", key="suite_delete_yes", type="primary"):
            actions.delete_suite(store(), suite_id, user())
            ss["confirm_delete_suite"] = None
            ss.pop("suite_pick", None)
            st.rerun()
        if col_cancel.button("Keep it", key="suite_delete_no"):
            ss["confirm_delete_suite"] = None
            st.rerun()
    elif col_cancel.button("Delete suite", key="suite_delete", icon=":material/delete:"):
        ss["confirm_delete_suite"] = suite_id
        st.rerun()
