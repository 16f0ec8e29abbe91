"""Ablations: which part of the hybrid loss mattered, with its uncertainty.

Suites are launched from the Distill page (one click), the demo preset below or
`python -m workbench ablate`; this page lists every stored suite the user may see, finished or
not, and shows its results as they come in. A link to a suite that is deleted or private is
"not found" and shows no other suite.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from pages._shared import (
    errors_shown,
    guarded,
    linked_pick,
    live,
    manager,
    require_app,
    set_params,
    show_action_error,
    show_error,
    store,
    user,
)
from workbench.ablation.describe import (
    scratch_sentence,
    suite_intro,
    suite_kind,
    suite_label,
)
from workbench.ablation.published import CAPTION, published_rows
from workbench.ablation.suites import demo_preset, launch_suite, suite_analysis, suite_progress
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
DEMO = demo_preset()


def launch_demo() -> None:
    """Queue the demo preset as this session's user and show it (a callback: before the run)."""
    who = user()
    record = launch_suite(
        DEMO.config,
        store(),
        lambda submissions: manager().submit_many(submissions, who),
        seeds=DEMO.seeds,
        factorial=DEMO.factorial,
        name=DEMO.name,
        owner=who.name,
    )
    ss["suite_pick"] = ss["last_suite"] = record["id"]
    ss["suite_missing"] = None


def set_suite_private(suite_id: str) -> None:
    actions.set_suite_private(store(), suite_id, user(), ss[f"suite_private_{suite_id}"])


st.title("Ablations")
suites = actions.list_suites(store(), user())  # others' private suites: absent
labels = {s["id"]: suite_label(s) for s in suites}  # option text: shown as text, not markdown
linked_pick("suite", labels, "Suite")  # ?suite=ID of a reload or a link
show_action_error()
col_demo, col_shows = st.columns([1, 3], vertical_alignment="center")
col_demo.button(
    "Run the demo ablation",
    key="suite_demo",
    icon=":material/science:",
    on_click=guarded(launch_demo),
    help=f"{DEMO.runs} runs, queued as yours",
)
col_shows.caption(plain(DEMO.shows))
if not suites:
    st.info(
        "No ablation suite yet. Run the demo above, or set up the loss on Distill and press "
        "**Launch ablation suite**, or run `python -m workbench ablate --seeds 3` in a terminal.",
        icon=":material/science:",
    )
    st.page_link("pages/distill.py", label="Go to Distill", icon=":material/tune:")
    st.stop()

picked = ss.get("suite_pick", "")
if picked is not None and picked not in labels:  # a first visit, or the suite went away
    ss["suite_pick"] = ss.get("last_suite") if ss.get("last_suite") in labels else suites[0]["id"]
suite_id = st.selectbox(
    "Suite", list(labels), format_func=labels.get, key="suite_pick", placeholder="Pick a suite"
)
if suite_id is None:
    st.caption(
        "An ablation suite trains one loss with parts of it switched off, over several seeds, "
        "to show which part mattered and by how much."
    )
    st.stop()
ss["suite_missing"] = None
set_params({"suite": suite_id}, owned=("suite",))
suite = actions.get_suite(store(), suite_id, user())
mine = actions.can_change(user(), suite)
kind = suite_kind(suite)
base = RunConfig.from_dict(suite["base"])
st.caption(suite_intro(kind, ACCURACY_LABEL))
col_base, col_private = st.columns([4, 1], vertical_alignment="center")
col_base.caption(
    f"Base: {plain(base.summary())} · {base.epochs} epoch(s) · {suite['seeds']} seed(s) per "
    f"variant · {'factorial (all on/off combinations)' if kind == 'factorial' else kind}"
)
if mine:
    col_private.toggle(
        "Private",
        value=bool(suite.get("private")),
        key=f"suite_private_{suite_id}",
        on_change=guarded(set_suite_private),
        args=(suite_id,),
        help="Only you and the admins see a private suite and its runs.",
    )
elif suite.get("private"):
    col_private.caption("private")


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


def shapley_view(analysis: dict) -> None:
    """Shapley values with their seed interval, what they are measured against, and a note for
    each component whose leave-one-out contribution tells another story."""
    st.subheader("Shapley values")
    table = analysis["shapley_ci"]
    if table.empty:
        st.caption("Shapley values appear once a seed has run every combination.")
        return
    st.caption(plain(analysis["shapley_sentence"]) + " In points, 95% t-interval over seeds.")
    shown = table[["component", "shapley", "ci_low", "ci_high", "n"]].copy()
    for column in ("shapley", "ci_low", "ci_high"):
        shown[column] = shown[column] * 100  # accuracy points, as the contributions
    signed = st.column_config.NumberColumn(format="%+.2f", width=80)
    st.dataframe(
        shown,
        hide_index=True,
        key="shapley_table",
        column_config={c: signed for c in ("shapley", "ci_low", "ci_high")},
    )
    for note in analysis["interactions"]:
        st.info(plain(note["text"]), icon=":material/call_split:")


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
    if analysis["scratch"]:
        st.markdown("**Distillation vs scratch**, " + plain(scratch_sentence(analysis["scratch"])))
    elif kind != "seeds":
        st.caption("Distillation vs scratch appears once full and label only have finished runs.")
    percent = st.column_config.NumberColumn(format="percent", width="small")
    # Stacked, each table at the page's width: side by side, the tables lost their std and
    # verdict columns at 1440 px.
    with st.container():
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
    with st.container():
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
    beside = published_rows(
        store().get_run(e["run_id"]) for e in suite["runs"] if store().has_run(e["run_id"])
    )
    if beside:  # nothing at all when no run of the suite matches a paper's
        st.subheader("Published numbers beside yours")
        st.caption(CAPTION)
        number = st.column_config.NumberColumn(format="%.2f", width="small")
        st.dataframe(
            pd.DataFrame(beside),
            hide_index=True,
            key="published_table",
            column_config={c: number for c in beside[0] if "percent" in c},
        )
    if kind == "factorial":
        shapley_view(analysis)
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
