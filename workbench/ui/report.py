"""What leaves the app with a comparison: a standalone HTML report, and CSV exports that keep
each run's setup.

The report embeds plotly.js inline exactly once (with the first figure), so the file opens
offline and without the app; every later figure reuses it. Table cells and titles are
HTML-escaped, and its run table (``report_run_table``) has a few key columns and the setup in one
wrapped line, so it reads on a page instead of running 2,700 px wide.

The CSV exports have every ``RunConfig`` field as a column of its own (``weights.label``, ...;
``layer_pairs`` as JSON), so a 3-epoch and a 60-epoch run never read the same:
``runs_export`` one row per run, ``epochs_export`` one row per run and epoch (a long table that
pandas or R read as it is).
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from workbench.config.run_config import COMPONENTS, RunConfig, summary_of
from workbench.ui.compare import selection_table
from workbench.ui.naming import ACCURACY_LABEL, ACCURACY_METRIC, EPOCH_LABEL, EPOCH_METRIC

__all__ = [
    "CONFIG_FIELDS",
    "REPORT_RUN_COLUMNS",
    "comparison_report",
    "config_columns",
    "epochs_export",
    "report_run_table",
    "runs_export",
    "setup_text",
]

Record = Mapping[str, Any]
EpochsOf = Callable[[str], Sequence[Mapping[str, Any]]]

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 1200px; padding: 0 1rem; color: #222; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.2rem; margin-top: 2rem; }
div.table-wrap { max-width: 100%; overflow-x: auto; }
table.report-table { border-collapse: collapse; font-size: 0.9rem; max-width: 100%; }
table.report-table th, table.report-table td { border: 1px solid #ddd; padding: 0.25rem 0.6rem;
       text-align: right; max-width: 32rem; white-space: normal; overflow-wrap: anywhere;
       vertical-align: top; }
table.report-table td.setup, table.report-table th.setup { text-align: left; }
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
        table = frame.to_html(escape=True, na_rep="\u2014", border=0, classes="report-table")
        parts.append(f'<div class="table-wrap">{table}</div>')
        parts.append("</section>")
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


# ---------------------------------------------------------------------- exports
CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(RunConfig))
# run_table's columns that are config fields (the export has every field instead) or only
# mean something on screen (a progress bar, an ETA, a duration as text).
_SCREEN_ONLY = ("dataset", "teacher", "student", "weights", "temperature", "seed")
_SCREEN_ONLY += ("progress", "eta", "duration")


def config_columns(config: Mapping[str, Any]) -> dict[str, Any]:
    """Every ``RunConfig`` field of a stored config as a column: ``weights`` as
    ``weights.label`` ... ``weights.relation``, ``layer_pairs`` as JSON text; a field the
    record lacks (written by an older version) is empty."""
    out: dict[str, Any] = {}
    for name in CONFIG_FIELDS:
        value = config.get(name)
        if name == "weights":
            weights = value if isinstance(value, Mapping) else {}
            out |= {f"weights.{c}": weights.get(c) for c in COMPONENTS}
        elif name == "layer_pairs":
            out[name] = json.dumps([list(p) for p in value or ()])
        else:
            out[name] = value
    return out


def runs_export(
    records: Iterable[Record],
    epochs: EpochsOf | None = None,
    names: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """One row per run: its id, the name it is shown by (``names``), its seed group, its
    outcome (``compare.selection_table``: accuracies, agreement, seconds, status) and every
    config field (``role`` once)."""
    records, names = list(records), names or {}
    table = selection_table(records, epochs).drop(columns=list(_SCREEN_ONLY))
    table = table.rename(columns={"config": "summary"})
    table.insert(1, "shown as", [names.get(r["id"], "") for r in records])
    config = pd.DataFrame([config_columns(r.get("config") or {}) for r in records])
    config = config.reindex(columns=[c for c in config_columns({}) if c != "role"])
    tail = ["teacher_source", "tags", "error", "created"]
    head = table.drop(columns=tail)
    return pd.concat([head, config, table[tail]], axis=1)


def epochs_export(
    records: Iterable[Record], epochs: EpochsOf, names: Mapping[str, str] | None = None
) -> pd.DataFrame:
    """One row per run and finished epoch (a long table): ``id``, ``shown as``, ``name``,
    ``epoch``, the epoch's metrics (``val_acc``, ``agreement``, ``train_loss``, ``time``, ...;
    in first-seen order) and every config field, so runs of many setups plot from one file."""
    rows: list[dict[str, Any]] = []
    metrics: dict[str, None] = {}
    names = names or {}
    for record in records:
        config = config_columns(record.get("config") or {})
        who = {"id": record["id"], "shown as": names.get(record["id"], "")}
        who["name"] = record.get("name") or ""
        for row in epochs(record["id"]) or ():
            metrics.update(dict.fromkeys(k for k in row if k != "epoch"))
            rows.append({**who, "epoch": row.get("epoch"), **row, **config})
    columns = ["id", "shown as", "name", "epoch", *metrics, *config_columns({})]
    return pd.DataFrame(rows, columns=columns)


def setup_text(config: Mapping[str, Any]) -> str:
    """A run's setup in one line that wraps: the summary (models, weights, T), then epochs,
    batch size, lr, the loss kinds in use, the weighting and explicit layer pairs."""
    if config.get("role") == "teacher":
        return summary_of(config)
    weights = config.get("weights") or {}
    parts = [summary_of(config)]
    parts.append(f"{config.get('epochs')} ep, bs {config.get('batch_size')}, lr {config.get('lr')}")
    if config.get("optimizer", "adamw") != "adamw" or config.get("schedule", "cosine") != "cosine":
        parts.append(_recipe_text(config))
    if (weights.get("response") or 0) > 0 and config.get("response_kind", "kd") != "kd":
        parts.append(f"response {config['response_kind']}")
    if (weights.get("feature") or 0) > 0:
        parts.append(f"feature {config.get('feature_kind')}")
    if (weights.get("relation") or 0) > 0:
        parts.append(f"relation {config.get('relation_kind')}")
    parts.append(f"{config.get('weighting', 'fixed')} weights")
    if pairs := config.get("layer_pairs"):
        parts.append("pairs " + ", ".join(f"{s}>{t}" for s, t in pairs))
    return "; ".join(parts)


def _recipe_text(config: Mapping[str, Any]) -> str:
    """``sgd, momentum 0.9, wd 0.0005, multistep 150/180/210 x0.1``: a recipe other than the
    default AdamW with a cosine schedule."""
    text = str(config.get("optimizer", "adamw"))
    if text == "sgd":
        text += f", momentum {config.get('momentum')}"
    text += f", wd {config.get('weight_decay')}, {config.get('schedule', 'cosine')}"
    if config.get("schedule") == "multistep":
        milestones = "/".join(str(m) for m in config.get("milestones") or ())
        text += f" {milestones} x{config.get('lr_decay')}"
    if config.get("warmup_epochs"):
        text += f", warm-up {config['warmup_epochs']} ep"
    return text


REPORT_RUN_COLUMNS = ("run", "status", ACCURACY_LABEL, EPOCH_LABEL, "agreement", "setup")


def _percent(value: Any) -> str:
    ok = isinstance(value, int | float) and math.isfinite(value)
    return f"{value:.1%}" if ok else "\u2014"


def report_run_table(
    records: Iterable[Record], names: Mapping[str, str] | None = None
) -> pd.DataFrame:
    """The report's run table: ``REPORT_RUN_COLUMNS`` only, accuracies as percentages (``—``
    for none yet), the setup in one wrapped cell (``setup_text``); the CSV has the rest."""
    rows, names = [], names or {}
    for r in records:
        metrics = r.get("metrics") or {}
        rows.append(
            {
                "run": names.get(r["id"]) or r.get("name") or r["id"],
                "status": r.get("status", ""),
                ACCURACY_LABEL: _percent(metrics.get(ACCURACY_METRIC)),
                EPOCH_LABEL: _percent(metrics.get(EPOCH_METRIC)),
                "agreement": _percent(metrics.get("agreement")),
                "setup": setup_text(r.get("config") or {}),
            }
        )
    return pd.DataFrame(rows, columns=list(REPORT_RUN_COLUMNS))
