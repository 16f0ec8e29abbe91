"""What every figure of ``workbench.ui.plots`` shares: the palette, the grey of "not
significant", the error raised when data cannot be drawn, and the finite-number check."""

from __future__ import annotations

import math
from typing import Any

from plotly.colors import hex_to_rgb, qualitative

from workbench.errors import WorkbenchError

__all__ = ["NOT_SIGNIFICANT", "PALETTE", "PlotDataError", "is_finite", "palette_colour"]

PALETTE = qualitative.Plotly
NOT_SIGNIFICANT = "#9e9e9e"


class PlotDataError(WorkbenchError, ValueError):
    """The data cannot be drawn as asked (mismatched layers, nothing to plot, ...)."""


def palette_colour(i: int, alpha: float = 1.0) -> str:
    r, g, b = hex_to_rgb(PALETTE[i % len(PALETTE)])
    return f"rgba({r},{g},{b},{alpha})"


def is_finite(value: Any) -> bool:
    return value is not None and isinstance(value, (int, float)) and math.isfinite(value)
