"""Plotly figures and tables that compare runs; pure functions of run data, never the store.

The pages show them with ``st.plotly_chart`` and ``workbench.ui.report`` writes them into a
standalone HTML file. ``curves`` draws training over time, ``heatmaps`` compares layers (CKA,
Gram matrices), ``summaries`` draws sweeps, ablations and config differences, and ``style``
holds what they share (palette, ``PlotDataError``).
"""
