"""A comparison report: figures and tables in one standalone HTML file.

plotly.js is embedded inline exactly once (with the first figure), so the file opens offline and
without the app; every later figure reuses it. Table cells and titles are HTML-escaped.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

import pandas as pd
import plotly.graph_objects as go

__all__ = ["comparison_report"]

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 1200px; padding: 0 1rem; color: #222; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.2rem; margin-top: 2rem; }
table.report-table { border-collapse: collapse; font-size: 0.9rem; }
table.report-table th, table.report-table td { border: 1px solid #ddd; padding: 0.25rem 0.6rem;
       text-align: right; }
table.report-table th { background: #f4f4f4; }
""".strip()


def _figure_html(fig: go.Figure, index: int) -> str:
    height = fig.layout.height or 480
    return fig.to_html(
        full_html=False,
        include_plotlyjs=index == 0,  # inline plotly.js once, before the first figure needs it
        div_id=f"figure-{index}",  # stable ids: the same report renders to the same file
        default_height=f"{height}px",
        default_width="100%",
        config={"displaylogo": False, "responsive": True},
    )


def comparison_report(
    title: str,
    figures: Sequence[tuple[str, go.Figure]],
    tables: Sequence[tuple[str, pd.DataFrame]],
) -> str:
    """A standalone HTML document: ``title``, then each figure, then each table, with headings.

    Figures come from ``fig.to_html(full_html=False, ...)`` with plotly.js inline in the first
    one; tables from ``DataFrame.to_html(escape=True)`` (missing values shown as an em dash).
    """
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>\n{_STYLE}\n</style>",
        "</head>",
        "<body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for i, (caption, fig) in enumerate(figures):
        parts.append('<section class="figure">')
        parts.append(f"<h2>{html.escape(caption)}</h2>")
        parts.append(_figure_html(fig, i))
        parts.append("</section>")
    for caption, frame in tables:
        parts.append('<section class="table">')
        parts.append(f"<h2>{html.escape(caption)}</h2>")
        parts.append(frame.to_html(escape=True, na_rep="\u2014", border=0, classes="report-table"))
        parts.append("</section>")
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)
