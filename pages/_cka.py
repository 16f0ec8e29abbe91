"""Compare's CKA views (heatmaps, the difference against a baseline, the same-layer bars): UI
only. With seeds grouped, a unit's CKA is the mean of its seeds and the bars carry ± sd
(``workbench.ui.compare``); the "per run" toggle draws every run on its own instead."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import plotly.graph_objects as go
import streamlit as st

from workbench.ui import compare
from workbench.ui.plots import cka_seeds, heatmaps

CKA_PARAMS = ("cka_base", "cka_run")  # the CKA difference's two runs (unit labels)
CKA_KEYS = ("compare_baseline", "compare_diff_run")
Chart = Callable[[str, str, Hashable, Callable[[], go.Figure]], None]


def cka_section(
    chosen: Sequence[Mapping[str, Any]],
    units: Mapping[str, Sequence[Mapping[str, Any]]],
    probes: Mapping[str, Mapping[str, Any]],
    run_probes: Mapping[str, Mapping[str, Any] | None],
    key: Hashable,
    chart: Chart,
    keep_valid: Callable[..., None],
) -> dict[str, str]:
    """Draw the CKA views of ``probes`` (one per unit); returns the URL's difference params."""
    grouped = any(len(members) > 1 for members in units.values())
    per_run = grouped and st.toggle(
        "CKA per run",
        key="compare_cka_per_run",
        help="Seed groups show their seeds' mean CKA (± sd in the hover and the bars); this "
        "draws every run on its own instead.",
    )
    if per_run:
        single = compare.units(chosen, group_by=compare.NO_GROUP)
        probes, _ = compare.probe_units(single, run_probes)
        key = (key, "per run")
    with_cka = {label: p for label, p in probes.items() if compare.has_probe_data(p, "cka")}
    if not with_cka:
        if probes:
            st.caption("No CKA: the probed runs had no teacher.")
        return {}
    if grouped and not per_run:
        st.caption("A seed group's heatmap is the mean of its seeds; the hover gives ± sd.")
    chart("Linear CKA", "compare_cka", key, lambda: heatmaps.cka_heatmaps(with_cka, per_row=4))
    table = compare.same_layer_table(with_cka)
    chart(
        "Same-layer CKA",
        "compare_same_layer_cka",
        key,
        lambda: cka_seeds.same_layer_bars(table),
    )
    return _difference(with_cka, key, chart, keep_valid)


def _difference(
    with_cka: Mapping[str, Mapping[str, Any]], key: Hashable, chart: Chart, keep_valid
) -> dict[str, str]:
    names = list(with_cka)
    if len(names) < 2:
        return {}
    st.markdown("**CKA difference** against a baseline")
    col_base, col_run = st.columns(2)
    # by default the two comparable runs that differ most (two alike show only zeros)
    pair = compare.most_different_pair(with_cka)
    keep_valid("compare_baseline", names, pair[0] if pair else compare.default_baseline(with_cka))
    baseline = col_base.selectbox("Baseline", names, key="compare_baseline")
    others = compare.comparable_first(with_cka, baseline)
    keep_valid("compare_diff_run", others, pair[1] if pair and pair[1] in others else None)
    other = col_run.selectbox("Run", others, key="compare_diff_run")
    chart(
        f"CKA({other}) - CKA({baseline})",
        "compare_cka_diff",
        (key, other, baseline),
        lambda: heatmaps.cka_difference(
            with_cka[other], with_cka[baseline], label=other, baseline_label=baseline
        ),
    )
    return {CKA_PARAMS[0]: baseline, CKA_PARAMS[1]: other}
