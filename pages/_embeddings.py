"""Compare's embedding maps (issue 21 item 2): UI only. The data comes from
``workbench.ui.insight`` and the figure from ``workbench.ui.plots.embeddings``."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import pandas as pd
import streamlit as st

from workbench.ui import insight
from workbench.ui.escape import plain
from workbench.ui.plots import embeddings

SCORE_COLUMNS = {
    "knn_acc": "kNN acc (embedding)",
    "silhouette": "silhouette (embedding)",
    "map_knn_acc": "kNN acc (map)",
    "map_silhouette": "silhouette (map)",
}


@st.cache_data(show_spinner=False, max_entries=16)
def _maps(key: Hashable, method: str, _inputs: insight.EmbeddingInputs) -> tuple[dict, dict]:
    return insight.embedding_maps_data(_inputs, method)  # ``key`` names the inputs


def embedding_section(
    records: Sequence[Mapping[str, Any]],
    probes: Mapping[str, Mapping[str, Any] | None],
    names: Mapping[str, str],
    key: Hashable,
    chart: Callable[..., object],
) -> list[tuple[str, pd.DataFrame]]:
    """The teacher's and the runs' embedding maps and their scores; returns the report's table."""
    inputs = insight.embedding_inputs(records, probes, names)
    if not (inputs.features or inputs.older or inputs.blind):
        return []
    st.subheader("Embeddings")
    st.caption(
        f"Penultimate features of {len(inputs.labels):,} test images (stratified, the same for "
        "every run), coloured by class; each map is turned onto the first (the teacher's) so "
        "the shared axes compare like with like. kNN: leave-one-out 5-NN accuracy; silhouette "
        "in [-1, 1], higher is better separated; on the full embedding and on the 2-D map."
    )
    if inputs.blind:
        st.caption(f"No embeddings for {plain(', '.join(inputs.blind))}: {insight.BLIND_NOTE}.")
    if inputs.older:
        st.caption(
            f"No embeddings for {plain(', '.join(inputs.older))}: they were trained before they "
            "were recorded; run them again to see this."
        )
    if inputs.other_images:
        st.caption(f"Left out (another dataset's images): {plain(', '.join(inputs.other_images))}.")
    if not inputs.features:
        return []
    if st.session_state.get("compare_map") not in insight.MAP_METHODS:
        st.session_state["compare_map"] = insight.MAP_METHODS[0]
    method = st.segmented_control(
        "Map",
        insight.MAP_METHODS,
        key="compare_map",
        required=True,
        help="PCA is instant; t-SNE (scikit-learn) takes a few seconds per map.",
    )
    with st.spinner(f"{method} of {len(inputs.features)} embeddings…"):
        maps, map_scores = _maps((key, "embeddings"), method, inputs)
    scores = inputs.scores  # the titles: the full embeddings' (the table has both)
    chart(
        f"Embeddings ({method})",
        "compare_embeddings",
        (key, method),
        lambda: embeddings.embedding_maps(
            maps, inputs.labels, inputs.class_names, scores, method=method
        ),
    )
    table = pd.DataFrame(
        [
            {
                "model": name,
                **{
                    column: inputs.scores.get(name, {}).get(field)
                    if not field.startswith("map_")
                    else map_scores.get(name, {}).get(field[4:])
                    for field, column in SCORE_COLUMNS.items()
                },
            }
            for name in maps
        ]
    )
    st.dataframe(table, key="compare_embedding_scores", hide_index=True)
    return [(f"Embedding scores ({method} map)", table)]
