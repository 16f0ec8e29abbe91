"""Figures of a search's Optuna study: the optimization history, the parallel coordinates of the
trials, the parameter importances (fANOVA, Hutter et al. 2014) and the contour of two chosen
parameters, all Optuna's own (``optuna.visualization``), and the rows of the trial table.

Each figure needs finished trials: with too few, or with a parameter no complete trial took,
it raises ``PlotDataError`` with one line a page shows instead of the figure.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from workbench.errors import first_line
from workbench.ui.plots.style import PlotDataError
from workbench.ui.url_state import encode_ids

if TYPE_CHECKING:
    import optuna
    import plotly.graph_objects as go

__all__ = [
    "contour_figure",
    "history_figure",
    "importance_figure",
    "parallel_figure",
    "run_link",
    "searched_params",
    "trial_rows",
]

VALUE_LABEL = "mean validation accuracy"


def _complete(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    import optuna

    return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))


def _drawn(plot: Callable[..., go.Figure], study: optuna.Study, need: int, **kw: Any) -> go.Figure:
    """``plot(study, **kw)`` once ``need`` trials are complete; Optuna's warnings (experimental,
    too few trials) and errors become one ``PlotDataError`` line."""
    done = len(_complete(study))
    if done < need:
        raise PlotDataError(
            f"needs {need} complete trial{'s' if need > 1 else ''}, the search has {done} so far"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            figure = plot(study, target_name=VALUE_LABEL, **kw)
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:  # Optuna's "cannot plot"
            raise PlotDataError(f"cannot be drawn yet: {first_line(exc)}") from None
    # the page titles each figure: Optuna's own title would say it twice
    figure.update_layout(title=None, margin={"l": 10, "r": 10, "t": 30, "b": 10}, height=380)
    return figure


def history_figure(study: optuna.Study) -> go.Figure:
    """Each complete trial's value and the best so far, trial by trial."""
    from optuna.visualization import plot_optimization_history

    return _drawn(plot_optimization_history, study, 1)


def parallel_figure(study: optuna.Study) -> go.Figure:
    """One line per complete trial through its parameters to its value."""
    from optuna.visualization import plot_parallel_coordinate

    return _drawn(plot_parallel_coordinate, study, 1)


def importance_figure(study: optuna.Study) -> go.Figure:
    """fANOVA's share of the value's variance each parameter explains (two trials at least);
    seeded as the search's result computes it (``workbench.search.result.importances``), so the
    figure and the result's numbers agree."""
    from optuna.importance import FanovaImportanceEvaluator
    from optuna.visualization import plot_param_importances

    return _drawn(plot_param_importances, study, 2, evaluator=FanovaImportanceEvaluator(seed=0))


def contour_figure(study: optuna.Study, first: str, second: str) -> go.Figure:
    """The value over two parameters, interpolated between the complete trials."""
    from optuna.visualization import plot_contour

    if first == second:
        raise PlotDataError("pick two different parameters")
    both = [t for t in _complete(study) if first in t.params and second in t.params]
    if len(both) < 2:
        raise PlotDataError(f"needs 2 complete trials that took both {first} and {second}")
    return _drawn(plot_contour, study, 2, params=[first, second])


def searched_params(trials: Iterable[Mapping[str, Any]]) -> list[str]:
    """The parameter names the trials took, in the order they first appear."""
    names: dict[str, None] = {}
    for trial in trials:
        names.update(dict.fromkeys(trial["params"]))
    return list(names)


def run_link(run_ids: list[str]) -> str | None:
    """A relative link to the runs: the Runs page for one, Compare for several."""
    if not run_ids:
        return None
    if len(run_ids) == 1:
        return f"runs?run={run_ids[0]}"
    return f"compare?runs={encode_ids(run_ids)}"


def trial_rows(trials: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per trial of ``search_json``: number, state, value, one column per parameter
    (empty where a trial did not take it), its run ids and a link to them."""
    trials = list(trials)
    names = searched_params(trials)
    return [
        {
            "trial": t["number"],
            "state": t["state"],
            "value": t["value"],
            **{name: t["params"].get(name) for name in names},
            "run ids": ", ".join(t["run_ids"]),
            "open": run_link(list(t["run_ids"])),
        }
        for t in trials
    ]
