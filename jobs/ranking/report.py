"""The evaluation's report: one self-contained HTML page a reader can open anywhere, and a plain-text
table of the same numbers for the terminal and the README.

This module turns the METRICS rows into the page's parts (tables of cells, bar charts); the template
`jobs/reports/templates/evaluate.html` lays them out. The page carries its plots as inline PNGs and its
style inline (`jobs.reports`), so it can be mailed or attached to a run without the files around it; it
never loads anything from elsewhere, and every string that came from data (dataset, model, note, ...)
is escaped by the template. Everything but the PNG bytes is deterministic for the same input.

Nothing here reads tables or starts Spark: the caller hands over the METRICS rows as a DataFrame.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from jobs.artifacts import write_text
from jobs.ranking.metrics import METRIC_NAMES
from jobs.reports import Cell, Table, render
from jobs.reports.charts import bar_chart

METRICS_COLUMNS = ("dataset", "protocol", "model", "metric", "k", "value", "users")
# Protocols in the order a reader meets them (jobs.ranking.data's names); others follow, sorted.
PROTOCOL_ORDER = ("random_75_25", "chrono_80_20", "item_cold_20")
PROTOCOL_DESCRIPTIONS = {
    "random_75_25": "per user, a random 25% of their items is held out",
    "chrono_80_20": "per user, their latest 20% of items is held out",
    "item_cold_20": "20% of items held out with all their interactions; users rank only those unseen items",
}
TERMINAL_COLUMNS = ("ndcg@10", "precision@10", "recall@10", "map@10", "coverage@10", "recall@20", "ndcg@20")

# The modality ablation: the full ranker against rankers given one modality, or all but one.
ABLATION_PROTOCOL = "item_cold_20"
ABLATION_COLUMN = "recall@20"
ONLY_PREFIX = "ranker-only-"
WITHOUT_PREFIX = "ranker-without-"
FULL_RANKER = "ranker"
ABLATION_BASELINES = ("random", "genre")
MODALITY_ORDER = ("text", "image", "audio", "video")
GROUP_COLOURS = {"only": "#4c72b0", "all": "#55a868", "all minus": "#dd8452", "baseline": "#8c8c8c"}

MISSING = "–"  # a model without a value for a column


def metric_label(metric: str, k: int) -> str:
    return f"{metric}@{int(k)}"


def _column_order(label: str) -> tuple[int, int, str]:
    """By k, then the metrics' usual order (ndcg, precision, recall, map, coverage), then by name."""
    metric, _, k = label.rpartition("@")
    rank = METRIC_NAMES.index(metric) if metric in METRIC_NAMES else len(METRIC_NAMES)
    return int(k), rank, metric


def _protocol_order(protocols: Iterable[str]) -> list[str]:
    protocols = set(protocols)
    known = [protocol for protocol in PROTOCOL_ORDER if protocol in protocols]
    return known + sorted(protocols - set(PROTOCOL_ORDER))


def _check_columns(metrics: pd.DataFrame) -> None:
    missing = [column for column in METRICS_COLUMNS if column not in metrics.columns]
    if missing:
        raise ValueError(f"metrics lacks column(s) {missing}")


def _check_one_value_per_cell(metrics: pd.DataFrame) -> None:
    repeated = metrics[metrics.duplicated(["protocol", "model", "metric", "k"], keep=False)]
    if len(repeated):
        first = repeated.iloc[0]
        raise ValueError(
            f"{len(repeated)} metric rows repeat a (protocol, model, metric, k), e.g. "
            f"{first['protocol']}/{first['model']}/{first['metric']}@{first['k']}: "
            "pass one dataset's rows of one run"
        )


def _sort_column(columns: Sequence[str]) -> str | None:
    """ndcg@10, else the first nDCG column, else the first column."""
    if "ndcg@10" in columns:
        return "ndcg@10"
    ndcg = [column for column in columns if column.startswith("ndcg@")]
    return ndcg[0] if ndcg else (columns[0] if columns else None)


def protocol_table(metrics: pd.DataFrame, protocol: str) -> pd.DataFrame:
    """One protocol's numbers: a row per model, a column per metric@k, best model (by nDCG) first.

    Ties, and models without the sorting metric (last), are ordered by model name.
    """
    _check_columns(metrics)
    rows = metrics[metrics["protocol"] == protocol]
    if rows.empty:
        raise ValueError(f"no metrics for protocol {protocol!r}")
    _check_one_value_per_cell(rows)
    labelled = rows.assign(column=[metric_label(m, k) for m, k in zip(rows["metric"], rows["k"], strict=True)])
    table = labelled.pivot(index="model", columns="column", values="value").astype(float)
    table = table[sorted(table.columns, key=_column_order)]
    table.columns.name = None
    sort_by = _sort_column(list(table.columns))
    table = table.sort_index(kind="stable")
    return table.sort_values(sort_by, ascending=False, kind="stable", na_position="last")


def _format_value(value: float | None) -> str:
    return MISSING if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def format_metrics_table(metrics: pd.DataFrame, protocol: str, columns: Sequence[str] = TERMINAL_COLUMNS) -> str:
    """A markdown table of one protocol, padded so it also reads as a table in a terminal.

    Models are rows, best nDCG@10 first; of `columns`, those the protocol has are shown, in the given
    order; values have 4 decimals, and a model without a value shows "–".
    """
    table = protocol_table(metrics, protocol)
    shown = [column for column in columns if column in table.columns]
    header = ["model", *shown]
    body = [[str(model), *(_format_value(row[column]) for column in shown)] for model, row in table.iterrows()]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        padded = [
            cells[0].ljust(widths[0]),
            *(cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True)),
        ]
        return "| " + " | ".join(padded) + " |"

    rule = "|:" + "-" * (widths[0] + 1) + "|" + "|".join("-" * (width + 1) + ":" for width in widths[1:]) + "|"
    return "\n".join([line(header), rule, *(line(cells) for cells in body)]) + "\n"


# --- HTML: the page's parts as tables and charts; templates/evaluate.html lays them out -------------


def _format_fact(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.6g}"
    return str(value)


def _facts_table(summary: Mapping[str, Any]) -> Table | None:
    if not summary:
        return None
    return Table.of(["fact", "value"], ([name, Cell(_format_fact(v), "number")] for name, v in summary.items()))


def _timings_table(timings: Mapping[str, Any]) -> Table | None:
    if not timings:
        return None
    seconds = {stage: float(value) for stage, value in timings.items()}
    rows: list[list[Cell | str]] = [[stage, Cell(f"{s:,.2f}", "number")] for stage, s in seconds.items()]
    rows.append([Cell("total", emphasis="b"), Cell(f"{sum(seconds.values()):,.2f}", "number", "b")])
    return Table.of(["stage", "seconds"], rows)


def _format_target_number(value: Any) -> str:
    if value is None:
        return MISSING
    return f"{value:.4f}" if isinstance(value, float) else _format_fact(value)


def _targets_table(targets: Sequence[Mapping[str, Any]]) -> Table | None:
    if not targets:
        return None
    rows = (
        (
            Cell(str(target.get("protocol", ""))),
            Cell(str(target.get("description", ""))),
            Cell(_format_target_number(target.get("value")), "number"),
            Cell(_format_target_number(target.get("target")), "number"),
            Cell("✓", "met") if target.get("met") else Cell("✗", "missed"),
        )
        for target in targets
    )
    return Table.of(["protocol", "description", "value", "target", "met"], rows)


def _protocol_section(metrics: pd.DataFrame, protocol: str) -> dict[str, Any]:
    """One protocol's table (the best value of each column in bold) and its nDCG chart."""
    table = protocol_table(metrics, protocol)
    users = sorted(set(int(u) for u in metrics.loc[metrics["protocol"] == protocol, "users"]))
    best = table.max(axis=0, skipna=True)
    rows = []
    for model, row in table.iterrows():
        cells = [Cell(str(model))]
        for column in table.columns:
            is_best = not math.isnan(row[column]) and row[column] == best[column]
            cells.append(Cell(_format_value(row[column]), "number", "strong" if is_best else ""))
        rows.append(cells)
    chart = None
    chart_column = next((column for column in ("ndcg@10", "ndcg@20") if column in table.columns), None)
    if chart_column:
        plotted = table[chart_column].dropna()
        title = f"{chart_column.replace('ndcg', 'nDCG')}: {protocol}"
        alt = f"{chart_column} per model, {protocol}"
        chart = bar_chart([str(model) for model in plotted.index], plotted.tolist(), title, alt)
    return {
        "protocol": protocol,
        "description": PROTOCOL_DESCRIPTIONS.get(protocol),
        "users": ", ".join(map(str, users)),
        "table": Table.of(["model", *table.columns], rows),
        "chart": chart,
    }


def _modality_key(modality: str) -> tuple[int, str]:
    return (MODALITY_ORDER.index(modality) if modality in MODALITY_ORDER else len(MODALITY_ORDER), modality)


def ablation_rows(metrics: pd.DataFrame) -> list[tuple[str, str, str, float]]:
    """(group, label, model, recall@20) for the ablation chart: only X, all, all minus X, baselines.

    Empty when the item-cold protocol has no single-modality or leave-one-out ranker.
    """
    rows = metrics[(metrics["protocol"] == ABLATION_PROTOCOL)]
    if rows.empty:
        return []
    table = protocol_table(metrics, ABLATION_PROTOCOL)
    if ABLATION_COLUMN not in table.columns:
        return []
    values = table[ABLATION_COLUMN].dropna()
    models = set(values.index)
    only = sorted((m.removeprefix(ONLY_PREFIX) for m in models if m.startswith(ONLY_PREFIX)), key=_modality_key)
    without = sorted(
        (m.removeprefix(WITHOUT_PREFIX) for m in models if m.startswith(WITHOUT_PREFIX)), key=_modality_key
    )
    if not only and not without:
        return []
    chosen = [("only", f"only {x}", ONLY_PREFIX + x) for x in only]
    if FULL_RANKER in models:
        chosen.append(("all", "all", FULL_RANKER))
    chosen += [("all minus", f"all minus {x}", WITHOUT_PREFIX + x) for x in without]
    chosen += [("baseline", model, model) for model in ABLATION_BASELINES if model in models]
    return [(group, label, model, float(values[model])) for group, label, model in chosen]


def _ablation_section(metrics: pd.DataFrame) -> dict[str, Any]:
    rows = ablation_rows(metrics)
    section: dict[str, Any] = {
        "protocol": ABLATION_PROTOCOL,
        "column": ABLATION_COLUMN,
        "table": None,
        "chart": None,
    }
    if rows:
        section["chart"] = bar_chart(
            [label for _, label, _, _ in rows],
            [value for *_, value in rows],
            f"{ABLATION_COLUMN}: {ABLATION_PROTOCOL}",
            "modality ablation",
            colours=[GROUP_COLOURS[group] for group, *_ in rows],
        )
        section["table"] = Table.of(
            ["group", "model", ABLATION_COLUMN],
            ((group, model, Cell(f"{value:.4f}", "number")) for group, _, model, value in rows),
        )
    else:
        section["nothing"] = f"No {ONLY_PREFIX}* or {WITHOUT_PREFIX}* models were evaluated."
    return section


def _run_rows(metrics: pd.DataFrame, context: Mapping[str, Any]) -> pd.DataFrame:
    """This report's rows: the context's dataset, and its run date where the frame has a ds column."""
    _check_columns(metrics)
    rows = metrics[metrics["dataset"].astype(str) == str(context["dataset"])]
    if "ds" in rows.columns:
        ds = context["ds"]
        ds_text = ds.isoformat() if isinstance(ds, dt.date) else str(ds)
        rows = rows[rows["ds"].astype(str).str[:10] == ds_text[:10]]
    if rows.empty:
        raise ValueError(f"no metrics for dataset {context['dataset']!r} on {context['ds']}")
    return rows


def evaluation_page(metrics: pd.DataFrame, context: Mapping[str, Any]) -> dict[str, Any]:
    """What `templates/evaluate.html` shows: the page's tables and charts; arguments as in
    write_evaluation_report."""
    rows = _run_rows(metrics, context)
    return {
        "dataset": context["dataset"],
        "ds": context["ds"],
        "facts": _facts_table(context.get("summary") or {}),
        "timings": _timings_table(context.get("timings") or {}),
        "targets": _targets_table(context.get("targets") or []),
        "notes": context.get("notes") or [],
        "protocols": [
            _protocol_section(rows, protocol) for protocol in _protocol_order(rows["protocol"].unique())
        ],
        "ablation": _ablation_section(rows),
    }


def render_evaluation_report(metrics: pd.DataFrame, context: Mapping[str, Any]) -> str:
    """The report's HTML text; see write_evaluation_report."""
    return render("evaluate.html", **evaluation_page(metrics, context))


def write_evaluation_report(path: Path, metrics: pd.DataFrame, context: dict) -> Path:
    """Write the evaluation's self-contained HTML report to `path` and return it.

    `metrics`: METRICS rows (dataset, protocol, model, metric, k, value, users; a ds column, if any,
    is filtered to the context's). `context`: ds, dataset, and optionally summary (fact → value),
    timings (stage → seconds), notes (strings), targets (dicts of protocol, description, value,
    target, met).
    """
    path = Path(path)
    text = render_evaluation_report(metrics, context)
    write_text(path, text)
    return path
