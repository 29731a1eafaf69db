"""The evaluation's report: one self-contained HTML file a reader can open anywhere, and a plain-text
table of the same numbers for the terminal and the README.

The HTML carries its plots as inline base64 PNGs and its style in a <style> element, so it can be
mailed or attached to a run without the files around it. It never loads anything from elsewhere,
and every string that came from data (dataset, model, note, ...) goes through html.escape.

Plots are drawn on matplotlib `Figure` objects rendered by Agg: no pyplot, so no global figure state
and no display is ever needed. Everything but the PNG bytes is deterministic for the same input.

Nothing here reads tables or starts Spark: the caller hands over the METRICS rows as a DataFrame.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from jobs.artifacts import write_text
from jobs.ranking.metrics import METRIC_NAMES

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


# --- HTML -------------------------------------------------------------------------------------------

HTML_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { margin-bottom: 0.2em; }
table { border-collapse: collapse; margin: 0.8em 0 1.4em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.7em; }
th { background: #f2f2f2; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
td.met { color: #1a7f37; font-weight: bold; text-align: center; }
td.missed { color: #c62828; font-weight: bold; text-align: center; }
.muted { color: #666; }
img { max-width: 100%; }
"""


def escape_html(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _plot_text(text: str) -> str:
    # matplotlib reads $...$ as mathematics; a model name is plain text.
    return text.replace("$", r"\$")


def _format_fact(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.6g}"
    return str(value)


def html_table(header: Sequence[str], rows: Iterable[Sequence[str]], caption: str | None = None) -> str:
    """Cells are HTML already (escaped by the caller); header cells are escaped here."""
    parts = ["<table>"]
    if caption:
        parts.append(f"<caption>{escape_html(caption)}</caption>")
    parts.append("<tr>" + "".join(f"<th>{escape_html(cell)}</th>" for cell in header) + "</tr>")
    parts.extend("<tr>" + "".join(row) + "</tr>" for row in rows)
    parts.append("</table>")
    return "\n".join(parts)


def png_img(figure: Figure, alt: str) -> str:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    # No "Software" chunk: the PNG does not change with the matplotlib patch release.
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img src="data:image/png;base64,{encoded}" alt="{escape_html(alt)}">'


def _bar_chart(
    labels: Sequence[str], values: Sequence[float], title: str, colours: Sequence[str] | None = None
) -> Figure:
    """Horizontal bars, the first label at the top, each bar's value written at its end."""
    figure = Figure(figsize=(7.5, 0.38 * len(labels) + 1.2))
    axes = figure.add_subplot()
    positions = list(range(len(labels)))
    axes.barh(positions, values, color=colours or "#4c72b0")
    axes.set_yticks(positions, labels=[_plot_text(label) for label in labels])
    axes.invert_yaxis()
    axes.set_title(_plot_text(title))
    top = max(values, default=0.0)
    axes.set_xlim(0, top * 1.18 if top > 0 else 1)
    for position, value in zip(positions, values, strict=True):
        axes.text(value, position, f" {value:.4f}", va="center", fontsize=8)
    axes.spines[["top", "right"]].set_visible(False)
    return figure


def _header_section(context: Mapping[str, Any]) -> str:
    dataset, ds = context["dataset"], context["ds"]
    parts = [
        f"<h1>modalrank evaluation: {escape_html(dataset)}</h1>",
        f'<p class="muted">Dataset <b>{escape_html(dataset)}</b>, run date <b>{escape_html(ds)}</b>.</p>',
    ]
    summary = context.get("summary") or {}
    if summary:
        rows = (
            [f"<td>{escape_html(name)}</td>", f'<td class="number">{escape_html(_format_fact(v))}</td>']
            for name, v in summary.items()
        )
        parts += ["<h2>Dataset</h2>", html_table(["fact", "value"], rows)]
    timings = context.get("timings") or {}
    if timings:
        seconds = {stage: float(value) for stage, value in timings.items()}
        rows = [
            [f"<td>{escape_html(stage)}</td>", f'<td class="number">{s:,.2f}</td>'] for stage, s in seconds.items()
        ]
        rows.append(["<td><b>total</b></td>", f'<td class="number"><b>{sum(seconds.values()):,.2f}</b></td>'])
        parts += ["<h2>Timings</h2>", html_table(["stage", "seconds"], rows)]
    return "\n".join(parts)


def _format_target_number(value: Any) -> str:
    if value is None:
        return MISSING
    return f"{value:.4f}" if isinstance(value, float) else _format_fact(value)


def _targets_section(targets: Sequence[Mapping[str, Any]]) -> str:
    if not targets:
        return ""
    rows = []
    for target in targets:
        met = bool(target.get("met"))
        value, goal = target.get("value"), target.get("target")
        rows.append(
            [
                f"<td>{escape_html(target.get('protocol', ''))}</td>",
                f"<td>{escape_html(target.get('description', ''))}</td>",
                f'<td class="number">{escape_html(_format_target_number(value))}</td>',
                f'<td class="number">{escape_html(_format_target_number(goal))}</td>',
                '<td class="met">✓</td>' if met else '<td class="missed">✗</td>',
            ]
        )
    return "<h2>Targets</h2>\n" + html_table(["protocol", "description", "value", "target", "met"], rows)


def _notes_section(notes: Sequence[str]) -> str:
    if not notes:
        return ""
    return "<h2>Notes</h2>\n<ul>\n" + "\n".join(f"<li>{escape_html(note)}</li>" for note in notes) + "\n</ul>"


def _protocol_section(metrics: pd.DataFrame, protocol: str) -> str:
    table = protocol_table(metrics, protocol)
    users = sorted(set(int(u) for u in metrics.loc[metrics["protocol"] == protocol, "users"]))
    description = PROTOCOL_DESCRIPTIONS.get(protocol)
    parts = [f'<h2 id="protocol-{escape_html(protocol)}">{escape_html(protocol)}</h2>']
    intro = (
        f"{escape_html(description)}. " if description else ""
    ) + f"Users evaluated: {escape_html(', '.join(map(str, users)))}."
    parts.append(f'<p class="muted">{intro}</p>')

    best = table.max(axis=0, skipna=True)
    rows = []
    for model, row in table.iterrows():
        cells = [f"<td>{escape_html(model)}</td>"]
        for column in table.columns:
            text = escape_html(_format_value(row[column]))
            is_best = not math.isnan(row[column]) and row[column] == best[column]
            cells.append(f'<td class="number">{f"<strong>{text}</strong>" if is_best else text}</td>')
        rows.append(cells)
    parts.append(html_table(["model", *table.columns], rows))

    chart_column = next((column for column in ("ndcg@10", "ndcg@20") if column in table.columns), None)
    if chart_column:
        plotted = table[chart_column].dropna()
        title = f"{chart_column.replace('ndcg', 'nDCG')}: {protocol}"
        figure = _bar_chart([str(model) for model in plotted.index], plotted.tolist(), title)
        parts.append(png_img(figure, f"{chart_column} per model, {protocol}"))
    return "\n".join(parts)


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


def _ablation_section(metrics: pd.DataFrame) -> str:
    rows = ablation_rows(metrics)
    heading = f"<h2>Modality ablation ({escape_html(ABLATION_PROTOCOL)}, {escape_html(ABLATION_COLUMN)})</h2>"
    if not rows:
        nothing = f"No {ONLY_PREFIX}* or {WITHOUT_PREFIX}* models were evaluated."
        return f'{heading}\n<p class="muted">{escape_html(nothing)}</p>'
    explanation = (
        '<p class="muted">On items no model saw in training, only content can rank: "only X" ranks with one '
        'modality, "all minus X" with all but X, "all" is the full ranker.</p>'
    )
    figure = _bar_chart(
        [label for _, label, _, _ in rows],
        [value for *_, value in rows],
        f"{ABLATION_COLUMN}: {ABLATION_PROTOCOL}",
        colours=[GROUP_COLOURS[group] for group, *_ in rows],
    )
    table = html_table(
        ["group", "model", ABLATION_COLUMN],
        (
            [
                f"<td>{escape_html(group)}</td>",
                f"<td>{escape_html(model)}</td>",
                f'<td class="number">{value:.4f}</td>',
            ]
            for group, _, model, value in rows
        ),
    )
    return "\n".join([heading, explanation, png_img(figure, "modality ablation"), table])


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


def render_evaluation_report(metrics: pd.DataFrame, context: Mapping[str, Any]) -> str:
    """The report's HTML text; see write_evaluation_report."""
    rows = _run_rows(metrics, context)
    title = f"modalrank evaluation: {context['dataset']} {context['ds']}"
    sections = [
        _header_section(context),
        _targets_section(context.get("targets") or []),
        _notes_section(context.get("notes") or []),
        *(_protocol_section(rows, protocol) for protocol in _protocol_order(rows["protocol"].unique())),
        _ablation_section(rows),
    ]
    body = "\n".join(section for section in sections if section)
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{escape_html(title)}</title>\n'
        f"<style>{HTML_STYLE}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


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
