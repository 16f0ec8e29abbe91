"""Search: which loss weights, temperature and methods work best, found by Optuna, checked on test.

A search is set up from the current Distill draft (its base config) and driven here, in a
thread of the app (``workbench.search.background``); the app's job manager trains its trials'
runs. The page lists every search the user may see and shows the selected one live: progress,
Optuna's figures, the trial table with links to the runs, and, once the budget is spent, the
best trial retrained on fresh seeds against the base on test. ``?search=ID`` selects a search;
a link to one that is deleted or private is "not found" and shows no other search.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from pages._shared import (
    guarded,
    linked_pick,
    live,
    manager,
    require_app,
    set_params,
    settings,
    show_action_error,
    show_error,
    store,
    user,
)
from workbench.config.run_config import RunConfig
from workbench.errors import ConfigError
from workbench.lab.access import can_change, can_see
from workbench.search.background import driver_of, start_driver, stop_driver
from workbench.search.command import search_json
from workbench.search.driver import finished_trials
from workbench.search.searches import (
    MAX_SEEDS,
    MAX_TRIALS,
    create_search,
    get_search,
    list_searches,
    open_study,
)
from workbench.search.space import DEFAULT_RANGES, KIND_SLOTS
from workbench.ui.draft import check_draft, config_draft
from workbench.ui.escape import plain
from workbench.ui.plots.search import (
    contour_figure,
    history_figure,
    importance_figure,
    parallel_figure,
    searched_params,
    trial_rows,
)
from workbench.ui.plots.style import PlotDataError

require_app(__file__)
ss = st.session_state
OVER = [*DEFAULT_RANGES, *KIND_SLOTS]  # what a search can vary, as create_search names it


def free_name() -> str:
    """``search N``, the first N no stored search is named by (names are unique in the store)."""
    taken = {s["name"] for s in list_searches(store())}
    number = len(taken) + 1
    while f"search {number}" in taken:
        number += 1
    return f"search {number}"


def draft_base() -> tuple[RunConfig | None, str | None]:
    """The Distill draft's config (its first seed), or the first reason it cannot run."""
    configs, errors = check_draft(ss)
    if errors:
        field, message = next(iter(errors.items()))
        return None, f"{field}: {message}"
    return configs[0], None


def start_search() -> None:
    """Store a search of the draft and drive it here (a callback: before the run)."""
    base, problem = draft_base()
    if base is None:
        raise ConfigError(f"the Distill draft cannot run ({problem}): fix it on Distill")
    who = user()
    record = create_search(
        store(),
        base,
        name=ss["search_name"],
        over=",".join(ss["search_over"]),
        trials=int(ss["search_trials"]),
        seeds=int(ss["search_seeds"]),
        retrain_seeds=int(ss["search_retrain"]),
        prune=bool(ss["search_prune"]),
        owner=who.name,
        private=bool(ss["search_private"]),
    )
    start_driver(
        store(), record["id"], user=who, quotas=settings().user_quotas(), submit=submit_as(who)
    )
    ss["search_pick"] = record["id"]
    ss["search_missing"] = None
    ss["search_name"] = free_name()  # the next search needs another name


def submit_as(who):
    """The trials' runs queued through the app's job manager as ``who`` (it starts them at
    once)."""
    jobs = manager()
    return lambda submissions: jobs.submit_many(submissions, who)


def continue_search(search_id: str) -> None:
    who = user()
    if not start_driver(
        store(), search_id, user=who, quotas=settings().user_quotas(), submit=submit_as(who)
    ):
        ss["search_note"] = "The search is still being driven (it stops at its next poll)."


def stop_search(search_id: str) -> None:
    if not stop_driver(store(), search_id, user=user()):
        ss["search_note"] = (
            "This app does not drive the search: stop it where it runs (Ctrl-C in its terminal)."
        )


def open_in_distill(config: dict, name: str) -> None:
    """The best config into the Distill draft (its widgets show it), then Distill."""
    best = RunConfig.from_dict(config)
    ss.update(config_draft(best))
    ss["pairs_for"] = (best.teacher, best.student, best.dataset, best.data_path)  # kept as set
    ss["run_name"] = f"{name}: best"
    st.switch_page("pages/distill.py")


# ---------------------------------------------------------------------------------- set up
st.title("Search")
searches = [s for s in list_searches(store()) if can_see(user(), s)]  # others' private: absent
labels = {s["id"]: f"{s['name']} ({s['id']})" for s in searches}  # shown as text
linked_pick("search", labels, "Search")  # ?search=ID of a reload or a link
show_action_error()
if note := ss.pop("search_note", None):
    st.info(note, icon=":material/info:")

with st.expander("New search from the Distill draft", expanded=not searches):
    base, problem = draft_base()
    if base is None:
        st.warning(plain(f"The Distill draft cannot run ({problem})."), icon=":material/warning:")
        st.page_link("pages/distill.py", label="Fix it on Distill", icon=":material/tune:")
    else:
        st.caption(f"Base: {plain(base.summary())} · {base.epochs} epoch(s)")
    ss.setdefault("search_name", free_name())
    col_name, col_trials, col_seeds, col_retrain = st.columns([3, 1, 1, 1])
    col_name.text_input("Name", key="search_name", max_chars=120)
    col_trials.number_input(
        "Trials", min_value=1, max_value=MAX_TRIALS, value=20, key="search_trials"
    )
    col_seeds.number_input(
        "Seeds per trial", min_value=1, max_value=MAX_SEEDS, value=1, key="search_seeds"
    )
    col_retrain.number_input(
        "Retrain seeds",
        min_value=1,
        max_value=MAX_SEEDS,
        value=5,
        key="search_retrain",
        help="Fresh seeds on which the best trial and the base are trained again and compared "
        "on test: the trials chose on validation, so their best value is biased upwards.",
    )
    st.multiselect(
        "What to search",
        OVER,
        default=["weights", "temperature"],
        key="search_over",
        help="weights: each weight the base turns on, 0 to 1; temperature: 1 to 10 (log); "
        "a kind: every method of its slot. DKD's and DIST's settings only with that method.",
    )
    col_prune, col_private, col_start = st.columns([1, 1, 2], vertical_alignment="center")
    col_prune.toggle(
        "Prune", value=True, key="search_prune", help="Stop trials that fall behind the median."
    )
    col_private.toggle("Private", value=False, key="search_private")
    col_start.button(
        "Start search",
        key="search_start",
        type="primary",
        icon=":material/travel_explore:",
        disabled=base is None,
        on_click=guarded(start_search),
    )
    runs = int(ss["search_trials"]) * int(ss["search_seeds"]) + 2 * int(ss["search_retrain"])
    st.caption(f"About {runs} runs, queued as yours; the app trains them.")

if not searches:
    st.info(
        "No search yet. Set up the loss on Distill, then start one above, or run "
        "`python -m workbench search --name NAME` in a terminal.",
        icon=":material/travel_explore:",
    )
    st.stop()

# ---------------------------------------------------------------------------------- watch
picked = ss.get("search_pick", "")
if picked is not None and picked not in labels:  # a first visit, or the search went away
    ss["search_pick"] = searches[0]["id"]
search_id = st.selectbox(
    "Search", list(labels), format_func=labels.get, key="search_pick", placeholder="Pick a search"
)
if search_id is None:
    st.caption("A search tries loss weights and settings with Optuna and keeps the best.")
    st.stop()
ss["search_missing"] = None
set_params({"search": search_id}, owned=("search",))


def figures(study, trials: list[dict]) -> None:
    """Optuna's figures, each with a one-line note while it cannot be drawn."""
    col_history, col_importance = st.columns(2)
    drawn = [
        (col_history, "Optimization history", "search_history", history_figure),
        (col_importance, "Parameter importances", "search_importances", importance_figure),
        (st.container(), "Parallel coordinates", "search_parallel", parallel_figure),
    ]
    for where, title, key, draw in drawn:
        with where:
            st.markdown(f"**{title}**")
            try:
                st.plotly_chart(draw(study), key=key)
            except PlotDataError as exc:
                st.caption(f"{title}: {plain(exc)}")
    names = searched_params(trials)
    if len(names) < 2:
        return
    st.markdown("**Contour of two parameters**")
    col_a, col_b = st.columns(2)
    first = col_a.selectbox("First parameter", names, index=0, key="search_contour_a")
    second = col_b.selectbox("Second parameter", names, index=1, key="search_contour_b")
    try:
        st.plotly_chart(contour_figure(study, first, second), key="search_contour")
    except PlotDataError as exc:
        st.caption(f"Contour: {plain(exc)}")


def trial_table(trials: list[dict]) -> None:
    st.subheader("Trials")
    if not trials:
        st.caption("The first trial's runs are queued; it appears here as it starts.")
        return
    rows = pd.DataFrame(trial_rows(trials))
    st.dataframe(
        rows,
        hide_index=True,
        key="search_trials_table",
        column_config={
            "value": st.column_config.NumberColumn("validation accuracy", format="percent"),
            "open": st.column_config.LinkColumn(
                "runs", display_text=r"runs?=(.*)$", help="the trial's runs on Runs or Compare"
            ),
        },
    )


def points(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:+.2f}"


def final_view(search: dict) -> None:
    """The best trial retrained on fresh seeds against the base, on test."""
    result = search["result"]
    st.subheader("Result on test")
    best = result.get("best")
    if best is None:
        st.info(plain(result.get("note") or "No trial completed."), icon=":material/info:")
        return
    shown = ", ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in best["params"].items()
    )
    st.markdown(
        f"**Best trial {best['number']}** (validation {best['value'] * 100:.2f}%): {plain(shown)}"
    )
    row = result.get("comparison") or {}
    col_diff, col_ci, col_p = st.columns(3)
    col_diff.metric("best - base on test (points)", points(row.get("contribution")))
    col_ci.metric("95% interval", f"[{points(row.get('ci_low'))}, {points(row.get('ci_high'))}]")
    p = row.get("p_mcnemar")
    col_p.metric("McNemar p", "n/a" if p is None else f"{p:.3g}")
    seeds = ", ".join(str(s) for s in result.get("seeds") or [])
    st.caption(plain(f"Over the fresh seeds {seeds}. " + (row.get("note") or "")).strip())
    if result.get("note"):
        st.info(plain(result["note"]), icon=":material/info:")
    if shares := result.get("importances"):
        table = pd.DataFrame({"parameter": list(shares), "importance": list(shares.values())})
        st.dataframe(
            table,
            hide_index=True,
            key="search_importance_table",
            column_config={"importance": st.column_config.ProgressColumn(min_value=0, max_value=1)},
        )


def search_view(search_id: str, polling: bool) -> None:
    """Progress, the driver, the figures, the trials and the result: redrawn every POLL_S while
    someone drives the search."""
    search = get_search(store(), search_id)
    study = open_study(store(), search)
    done = len(finished_trials(study))
    st.progress(
        min(done / search["trials"], 1.0), text=f"{done} of {search['trials']} trials finished"
    )
    driver = driver_of(store(), search_id)
    if search.get("result") is not None:
        st.caption("Done: the budget is spent and the best trial was retrained on test.")
    elif driver:
        st.caption(f"Driven by {plain(driver)}.")
    else:
        st.caption("No one drives it now: press Continue to go on from where it stopped.")
    if search.get("error"):
        st.error(plain(f"The driver stopped: {search['error']}"), icon=":material/error:")
    trials = search_json(store(), search, study)["trials"]
    figures(study, trials)
    trial_table(trials)
    if search.get("result") is not None:
        final_view(search)
    if polling and (driver is None or search.get("result") is not None):
        st.rerun()  # the full rerun draws it without polling


search = get_search(store(), search_id)
base = RunConfig.from_dict(search["base"])
st.caption(
    f"Base: {plain(base.summary())} · over {plain(search['over'])} · {search['seeds']} seed(s) "
    f"per trial · {search['retrain_seeds']} retrain seed(s) · "
    f"{'median pruning' if search.get('prune', True) else 'no pruning'}"
    + (" · private" if search.get("private") else "")
)
driven = driver_of(store(), search_id) is not None
mine = can_change(user(), search)
col_open, col_stop, col_continue = st.columns(3)
if mine and driven:
    col_stop.button(
        "Stop", key="search_stop", icon=":material/stop:", on_click=guarded(stop_search),
        args=(search_id,), help="The driver stops at its next poll; the trial's runs go on.",
    )  # fmt: skip
elif mine and search.get("result") is None:
    col_continue.button(
        "Continue", key="search_continue", icon=":material/play_arrow:",
        on_click=guarded(continue_search), args=(search_id,),
    )  # fmt: skip
elif not mine:
    col_stop.caption(f"Search of **{plain(search.get('owner') or 'no one')}**.")
if (search.get("result") or {}).get("best_config") and col_open.button(
    "Open best in Distill", key="search_open_best", icon=":material/tune:"
):
    try:
        open_in_distill(search["result"]["best_config"], search["name"])
    except ConfigError as exc:  # a best config stored under older bounds
        show_error(exc)
live(search_view, polling=driven and search.get("result") is None)(
    search_id, driven and search.get("result") is None
)
