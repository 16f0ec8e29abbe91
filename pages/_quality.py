"""Compare's calibration and class-similarity views (issue 21 items 3 and 4): UI only; the data
comes from ``workbench.ui.quality`` and the figures from ``workbench.ui.plots.calibration``."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import plotly.graph_objects as go
import streamlit as st

from workbench.ui.escape import plain
from workbench.ui.insight import BLIND_NOTE
from workbench.ui.plots import calibration
from workbench.ui.quality import quality_views


def quality_section(
    records: Sequence[Mapping[str, Any]],
    probes: Mapping[str, Mapping[str, Any] | None],
    names: Mapping[str, str],
    key: Hashable,
    chart: Callable[[str, str, Hashable, Callable[[], go.Figure]], None],
) -> None:
    """Reliability diagrams and logit-gap heatmaps of the selected student runs."""
    views = quality_views(records, probes, names)
    if not (views.reliability or views.older or views.blind):
        return
    st.subheader("Calibration and class similarities")
    st.caption(
        "Reliability: accuracy against confidence in 15 bins on test (ECE in the legend and the "
        "table; the dashed line is the teacher). Gap: |class-mean logits of the student − the "
        "teacher's| per class (row: the images' class), the table's logit_gap is its mean."
    )
    if views.blind:
        st.caption(f"No calibration data for {plain(', '.join(views.blind))}: {BLIND_NOTE}.")
    if views.older:
        st.caption(
            f"No calibration data for {plain(', '.join(views.older))}: they were trained before "
            "it was recorded; run them again to see this."
        )
    if views.reliability:
        chart(
            "Reliability",
            "compare_reliability",
            key,
            lambda: calibration.reliability_diagram(views.reliability, views.teacher, views.ece),
        )
    if views.gaps:
        chart(
            "Class-similarity gap to the teacher",
            "compare_logit_gap",
            key,
            lambda: calibration.logit_gap_heatmaps(views.gaps, views.class_names),
        )
