"""The run report: one page per run date that says what every stage of the night did.

Reads the stage reports in `<artifacts>/_reports/<ds>/` (`ingest.json`, `extract_<modality>.json`,
`fuse.json`, `train.json`, `evaluate_<dataset>.json`, `publish.json`) and the date's `quarantine`
rows, and writes beside them `run.json`, `run.md` and `run.html` (self-contained: style and plots
inline). Row counts, seconds, quarantined rows by stage and reason, the evaluation tables, the
publish gate and its drift numbers, and links to each stage's own report.

It runs last in the DAG whatever happened upstream, so it must never fail because a stage did: a
stage without a report is shown as "no report (failed or not run)", an unreadable one as such, and a
lake without a quarantine table as having none. It never starts Spark (delta-rs reads the one table
it needs), so it takes seconds.

    python -m jobs.run_report --ds 2026-11-25 [--lake lake] [--fail-if-incomplete]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from features.registry import BUILT_IN
from jobs import artifacts
from jobs.config import PipelineConfig, add_run_arguments, configure_logging, load_run_config
from jobs.input_accounts import INPUT_COLUMNS, InputAccount

# The evaluation report's table and image helpers, so both pages look and escape alike.
from jobs.ranking.report import (
    HTML_STYLE,
    PROTOCOL_ORDER,
    TERMINAL_COLUMNS,
    escape_html,
    html_table,
    png_img,
    protocol_table,
)

log = logging.getLogger("modalrank.run_report")

NO_REPORT = "no report (failed or not run)"
# The evaluation rows of a run report: a placeholder stage when no evaluate_<dataset>.json exists.
EVALUATE = "evaluate"
RUN_FILES = ("run.json", "run.md", "run.html")


@dataclass
class StageSummary:
    stage: str  # the report's name: `extract_text`, `evaluate_demo`, …
    status: str  # "reported", "missing" or "unreadable"
    seconds: float | None = None
    work_seconds: float | None = None  # the part spent on the stage's real work, where the job times it
    work: str = ""  # what that work is: "extracting", "fitting", "training"
    counts: dict = field(default_factory=dict)  # rows and items, by what they count
    detail: str = ""  # one sentence: the outcome, or why the report is absent
    links: list = field(default_factory=list)  # the stage's report files, relative to the run report


@dataclass
class RunReport:
    ds: str
    generated_at: str
    complete: bool  # every expected stage reported, and the publish gate passed
    problems: list = field(default_factory=list)
    stages: list = field(default_factory=list)
    quarantine: list = field(default_factory=list)  # {stage, reason, rows}, most rows first within a stage
    quarantine_note: str = ""
    evaluation: list = field(default_factory=list)  # per dataset: {dataset, tables, targets}
    gate: dict | None = None  # {passed, published, previous_ds, checks, drift}; None without publish.json
    ingest_inputs: list = field(default_factory=list)  # ingest.json's `inputs`: one row per input file


# ---------------------------------------------------------------------------------------------------
# Reading: the only functions that touch files or tables


def read_stage_reports(folder: Path) -> dict[str, dict | str]:
    """{report name: its JSON}, or the error text where a file exists but does not parse (a job killed
    while writing)."""
    reports: dict[str, dict | str] = {}
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        if path.name in RUN_FILES:
            continue
        try:
            payload = json.loads(path.read_text())
            reports[path.stem] = payload if isinstance(payload, dict) else f"not a JSON object: {path.name}"
        except (OSError, ValueError) as error:
            reports[path.stem] = f"{type(error).__name__}: {error}"
    return reports


def read_quarantine_counts(config: PipelineConfig, ds: dt.date) -> pd.DataFrame | str:
    """Rows per (stage, reason) quarantined on `ds`, or why there are none to count."""
    from deltalake import DeltaTable

    from jobs.config import delta_rs_uri
    from jobs.consume import read_frame

    path = delta_rs_uri(config.table_path("quarantine"))
    try:
        if not DeltaTable.is_deltatable(path):
            return "the lake has no quarantine table yet"
        # Through Arrow's own filesystem: jobs.consume.arrow_filesystem says why.
        rows = read_frame(DeltaTable(path), partitions=[("ds", "=", ds.isoformat())], columns=["stage", "reason"])
    except Exception as error:  # whatever delta-rs raises, the rest of the page still matters
        return f"the quarantine table could not be read: {type(error).__name__}: {error}"
    return quarantine_counts(rows)


def quarantine_counts(rows: pd.DataFrame) -> pd.DataFrame:
    counts = rows.groupby(["stage", "reason"]).size().rename("rows").reset_index()
    return counts.sort_values(["stage", "rows", "reason"], ascending=[True, False, True], ignore_index=True)


# ---------------------------------------------------------------------------------------------------
# Building the report: pure


def expected_stages(found: list[str], imported: list[str]) -> list[str]:
    """Stages in pipeline order: the ones every night runs, plus any imported or evaluated ones found."""
    extracts = [f"extract_{m}" for m in BUILT_IN]
    extracts += sorted({f"extract_{name}" for name in imported} | {n for n in found if n.startswith("extract_")})
    evaluations = sorted(n for n in found if n.startswith("evaluate_")) or [EVALUATE]
    return ["ingest", *dict.fromkeys(extracts), "fuse", "train", *evaluations, "publish"]


def _number(value) -> int:
    return int(value or 0)


def summarise_stage(stage: str, report: dict) -> StageSummary:
    """Counts, seconds and a one-line outcome from one stage's JSON (fields as the jobs write them)."""
    get = report.get
    summary = StageSummary(stage, "reported", seconds=get("seconds"))
    if stage == "ingest":
        parts = ("read", "ingested", "deferred", "quarantined", "superseded")
        summary.counts = {
            f"{what}_{part}": _number(get(f"{what}_{part}"))
            for what in ("items", "interactions")
            for part in parts
        }
        summary.detail = f"source {get('source', '?')}; catalog {get('catalog_rows', '?')} rows after the run"
    elif stage.startswith("extract_"):
        summary.work_seconds, summary.work = get("extract_seconds"), "extracting"
        summary.counts = {
            "catalog_items": _number(get("catalog_items")),
            "extracted": _number(get("extracted")),
            "skipped_up_to_date": _number(get("up_to_date")),
            "ok": _number(get("ok")),
            "failed": _number(get("failed")),
            "no_media": _number(get("missing")),
        }
        summary.detail = f"{get('extractor', '?')} v{get('extractor_version', '?')}"
    elif stage == "fuse":
        summary.work_seconds, summary.work = get("fit_seconds"), "fitting"
        summary.counts = {"catalog_items": _number(get("catalog_items")), "fused_items": _number(get("items"))}
        summary.counts |= {f"items_with_{m}": _number(n) for m, n in (get("items_by_modality") or {}).items()}
        summary.detail = f"fusion {get('fusion_version', '?')} ({get('projections', '?')} projections)"
    elif stage == "train":
        facts = get("facts") or {}
        summary.work_seconds, summary.work = get("training_seconds"), "training"
        summary.counts = {
            "training_pairs": _number(facts.get("interactions (unique user-item pairs)")),
            "training_users": _number(facts.get("users")),
            "training_items": _number(facts.get("items")),
            "epochs": len(get("epochs") or []),
        }
        reused = "reused" if get("reused") else "trained"
        summary.detail = f"{reused} {get('version', '?')} on data up to {get('trained_ds') or get('ds')}"
    elif stage.startswith("evaluate_"):
        facts, targets = get("facts") or {}, get("targets") or []
        summary.seconds = (get("timings") or {}).get("total")  # its JSON keeps the seconds with the timings
        summary.counts = {"users": _number(facts.get("users")), "items": _number(facts.get("items"))}
        protocols = sorted({row.get("protocol") for row in get("metrics") or []})
        summary.detail = f"protocols {', '.join(protocols) or 'none'}"
        if targets:
            summary.detail += f"; {sum(bool(t.get('met')) for t in targets)} of {len(targets)} targets met"
    elif stage == "publish":
        summary.counts = {
            "published_rows": _number(get("rows")) if get("published") else 0,
            "users": _number(get("users")),
            "items_listed": _number(get("items_listed")),
            "cold_items_listed": _number(get("cold_items_listed")),
            "eligible_items": _number(get("eligible_items")),
        }
        failed = [c["name"] for c in get("checks") or [] if not c.get("passed")]
        summary.detail = (
            f"published {get('rows')} rows with {get('model_version', '?')}"
            if get("published")
            else f"quality gate FAILED ({', '.join(failed) or 'see publish.md'}): nothing published"
        )
    return summary


def unbalanced_inputs(inputs: list[dict]) -> list[str]:
    """Inputs whose rows do not add up (ingest refuses to write such a run; an edited report might)."""
    accounts = [InputAccount.from_record(row) for row in inputs]
    return [f"{a.input}: {a.rows} rows read, {a.settled} accounted for" for a in accounts if a.problems()]


def evaluation_tables(dataset: str, report: dict) -> dict:
    """One dataset's metrics as {protocol: [{model, metric@k: value}]}, best nDCG@10 first, and its targets."""
    metrics = pd.DataFrame(report.get("metrics") or [])
    tables = {}
    if not metrics.empty:
        metrics = metrics.assign(dataset=dataset) if "dataset" not in metrics else metrics
        protocols = [p for p in PROTOCOL_ORDER if p in set(metrics.protocol)]
        for protocol in protocols + sorted(set(metrics.protocol) - set(PROTOCOL_ORDER)):
            table = protocol_table(metrics, protocol)
            shown = [column for column in TERMINAL_COLUMNS if column in table.columns]
            tables[protocol] = [
                {"model": model, **{c: None if math.isnan(row[c]) else float(row[c]) for c in shown}}
                for model, row in table[shown].iterrows()
            ]
    return {
        "dataset": dataset,
        "report": f"evaluate_{dataset}.html",
        "tables": tables,
        "targets": report.get("targets") or [],
    }


def build_run_report(
    ds: str,
    generated_at: str,
    reports: dict[str, dict | str],
    quarantine: pd.DataFrame | str,
    imported: list[str],
    files: set[str],
) -> RunReport:
    """The run report from the stage JSONs (or why one is unreadable), the quarantine counts (or why
    there are none), the configured imported modalities and the names of the files in the folder."""
    run = RunReport(ds, generated_at, complete=True)
    for stage in expected_stages(list(reports), imported):
        payload = reports.get(stage)
        if payload is None:
            summary = StageSummary(stage, "missing", detail=NO_REPORT)
        elif isinstance(payload, str):
            summary = StageSummary(stage, "unreadable", detail=payload)
        else:
            try:
                summary = summarise_stage(stage, payload)
                if stage.startswith("evaluate_"):
                    run.evaluation.append(evaluation_tables(stage.removeprefix("evaluate_"), payload))
                if stage == "ingest":
                    run.ingest_inputs = list(payload.get("inputs") or [])
                    run.problems += [f"ingest: {p}" for p in unbalanced_inputs(run.ingest_inputs)]
                if stage == "publish":
                    run.gate = {
                        k: payload.get(k) for k in ("passed", "published", "previous_ds", "checks", "drift")
                    }
                    if not payload.get("published"):
                        run.problems.append(f"{stage}: {summary.detail}")
            except (KeyError, TypeError, ValueError, AttributeError) as error:
                # A report in a format this page does not know must not cost the night its run report.
                summary = StageSummary(stage, "unreadable", detail=f"{type(error).__name__}: {error}")
        if summary.status != "reported":
            run.problems.append(f"{stage}: {summary.detail}")
        summary.links = [f"{stage}.{ext}" for ext in ("html", "md", "json") if f"{stage}.{ext}" in files]
        run.stages.append(summary)
    run.complete = not run.problems
    if isinstance(quarantine, str):
        run.quarantine_note = quarantine
    else:
        run.quarantine = [
            {"stage": r.stage, "reason": r.reason, "rows": int(r.rows)} for r in quarantine.itertuples()
        ]
    return run


# ---------------------------------------------------------------------------------------------------
# Rendering: pure text. Both pages show the same sections; the HTML adds colour, links and plots.


@dataclass(frozen=True)
class Section:
    heading: str
    level: int
    text: str = ""
    header: tuple = ()
    rows: tuple = ()  # rows of cell texts
    link: str = ""  # a report file the section points to


# Columns whose cells say whether something went well, and the words that say it.
VERDICT_COLUMNS = ("status", "result", "met")
GOOD_WORDS = ("reported", "pass", "met")
NUMBER_COLUMNS = ("seconds", "rows", "value")


def _value_text(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4f}"
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


def _stage_row(s: StageSummary) -> tuple:
    seconds = "–" if s.seconds is None else str(s.seconds)
    if s.work_seconds is not None:
        seconds += f" ({s.work_seconds} {s.work})"
    counts = ", ".join(f"{name.replace('_', ' ')} {value:,}" for name, value in s.counts.items())
    if s.status != "reported":
        return s.stage, f"{s.status.upper()}: {s.detail}", seconds, counts, "", " ".join(s.links)
    return s.stage, "reported", seconds, counts, s.detail, " ".join(s.links)


def _outcome(run: RunReport) -> str:
    return "Every stage reported." if run.complete else "Problems: " + "; ".join(run.problems) + "."


def _evaluation_sections(evaluation: dict) -> list[Section]:
    result = [
        Section(f"Evaluation: {evaluation['dataset']}", 2, "Plots and the ablation:", link=evaluation["report"])
    ]
    for protocol, rows in evaluation["tables"].items():
        header = tuple(rows[0]) if rows else ()
        cells = tuple(tuple(_value_text(row[column]) for column in header) for row in rows)
        result.append(Section(protocol, 3, "", header, cells))
    targets = tuple(
        (
            *(_value_text(t.get(key)) for key in ("protocol", "description", "value")),
            "met" if t.get("met") else "NOT met",
        )
        for t in evaluation["targets"]
    )
    if targets:
        result.append(Section("Targets", 3, "", ("protocol", "target", "value", "met"), targets))
    return result


def _gate_sections(gate: dict | None) -> list[Section]:
    if gate is None:
        return [Section("Publish gate", 2, f"publish: {NO_REPORT}.")]
    verdict = "Gate passed; lists published." if gate["published"] else "Gate FAILED: nothing published."
    checks = tuple((c["name"], "pass" if c["passed"] else "FAIL", c["detail"]) for c in gate["checks"] or [])
    drift = tuple(
        (check, name, _value_text(value))
        for check, numbers in (gate["drift"] or {}).items()
        for name, value in numbers.items()
    )
    against = f"Drift against {gate['previous_ds'] or 'no earlier date'}"
    return [
        Section("Publish gate", 2, verdict, ("check", "result", "detail"), checks),
        Section(against, 3, "", ("check", "number", "value"), drift),
    ]


def sections(run: RunReport) -> list[Section]:
    """The report's sections in reading order, as plain text cells."""
    stage_header = ("stage", "status", "seconds", "counts", "outcome", "reports")
    result = [Section("Stages", 2, "", stage_header, tuple(_stage_row(s) for s in run.stages))]
    if run.ingest_inputs:
        cells = tuple(tuple(_value_text(row.get(column)) for column in INPUT_COLUMNS) for row in run.ingest_inputs)
        text = "Every input: rows read = ingested + deferred + quarantined + superseded."
        result.append(Section("Ingest inputs", 2, text, INPUT_COLUMNS, cells, link="ingest.md"))
    if run.quarantine:
        quarantined = tuple((q["stage"], q["reason"], str(q["rows"])) for q in run.quarantine)
        result.append(Section("Quarantined rows", 2, "", ("stage", "reason", "rows"), quarantined))
    else:
        note = f"None ({run.quarantine_note})." if run.quarantine_note else "None."
        result.append(Section("Quarantined rows", 2, note))
    for evaluation in run.evaluation:
        result += _evaluation_sections(evaluation)
    return result + _gate_sections(run.gate)


def render_markdown(run: RunReport) -> str:
    lines = [f"# Run report — run date {run.ds}", "", f"Written {run.generated_at}. {_outcome(run)}"]
    for section in sections(run):
        lines += ["", "#" * section.level + " " + section.heading, ""]
        if section.text:
            lines += [f"{section.text} [{section.link}]({section.link})" if section.link else section.text, ""]
        if section.header:
            lines += ["| " + " | ".join(section.header) + " |", "|" + "---|" * len(section.header)]
            lines += ["| " + " | ".join(row) + " |" for row in section.rows]
    return "\n".join(lines) + "\n"


def _bar_chart(labels: list[str], values: list[float], title: str, inner: list[float] | None = None) -> Figure:
    """Horizontal bars, first label on top; `inner`, where given, is drawn darker inside each bar."""
    figure = Figure(figsize=(7.5, 0.38 * len(labels) + 1.4))
    axes = figure.add_subplot()
    positions = list(range(len(labels)))
    axes.barh(positions, values, color="#a6bddb" if inner else "#dd8452", label="whole stage")
    if inner:
        axes.barh(positions, inner, color="#4c72b0", label="extracting, fitting, training")
        axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, fontsize=8, frameon=False)
    else:
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # rows are counted, never fractional
    # matplotlib reads $...$ as mathematics; a quarantine reason is plain text.
    axes.set_yticks(positions, labels=[label.replace("$", r"\$") for label in labels])
    axes.invert_yaxis()
    axes.set_title(title)
    for position, value in zip(positions, values, strict=True):
        axes.text(value, position, f" {value:,.1f}".removesuffix(".0"), va="center", fontsize=8)
    axes.spines[["top", "right"]].set_visible(False)
    return figure


def _html_cell(column: str, text: str) -> str:
    if column == "reports":
        return (
            "<td>"
            + " ".join(f'<a href="{escape_html(name)}">{escape_html(name)}</a>' for name in text.split())
            + "</td>"
        )
    if column in VERDICT_COLUMNS:
        return f'<td class="{"met" if text in GOOD_WORDS else "missed"}">{escape_html(text)}</td>'
    if column in NUMBER_COLUMNS or "@" in column:
        return f'<td class="number">{escape_html(text)}</td>'
    return f"<td>{escape_html(text)}</td>"


def _plots(run: RunReport, heading: str) -> list[str]:
    """The plots that follow a section: seconds after the stages, reasons after the quarantine."""
    if heading == "Stages" and (timed := [s for s in run.stages if s.seconds is not None]):
        # A sum, not the night's wall time: the extractors run side by side.
        title = f"Seconds per stage ({sum(s.seconds for s in timed):,.0f} s summed)"
        seconds, work = [s.seconds for s in timed], [s.work_seconds or 0 for s in timed]
        return [png_img(_bar_chart([s.stage for s in timed], seconds, title, work), "seconds per stage")]
    if heading == "Quarantined rows" and run.quarantine:
        labels, rows = (
            [f"{q['stage']}: {q['reason']}" for q in run.quarantine],
            [q["rows"] for q in run.quarantine],
        )
        return [png_img(_bar_chart(labels, rows, "Quarantined rows by stage and reason"), "quarantined rows")]
    return []


def render_html(run: RunReport) -> str:
    parts = [
        f"<h1>modalrank run report: {escape_html(run.ds)}</h1>",
        f'<p class="muted">Written {escape_html(run.generated_at)}.</p>',
        f'<p class="{"met" if run.complete else "missed"}">{escape_html(_outcome(run))}</p>',
    ]
    for section in sections(run):
        parts.append(f"<h{section.level}>{escape_html(section.heading)}</h{section.level}>")
        if section.text:
            link = (
                f' <a href="{escape_html(section.link)}">{escape_html(section.link)}</a>' if section.link else ""
            )
            parts.append(f"<p>{escape_html(section.text)}{link}</p>")
        if section.header:
            rows = (
                [_html_cell(c, text) for c, text in zip(section.header, row, strict=True)] for row in section.rows
            )
            parts.append(html_table(section.header, rows))
        parts += _plots(run, section.heading)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>modalrank run {escape_html(run.ds)}</title>\n<style>{HTML_STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(parts)
        + "\n</body>\n</html>\n"
    )


# ---------------------------------------------------------------------------------------------------
# The job


def write_run_report(config: PipelineConfig, ds: dt.date) -> RunReport:
    """Read the date's stage reports and quarantine rows; write `run.json`, `run.md` and `run.html`."""
    folder = config.reports_dir / ds.isoformat()
    reports = read_stage_reports(folder)
    files = {path.name for path in folder.iterdir()} if folder.is_dir() else set()
    generated_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    quarantine = read_quarantine_counts(config, ds)
    run = build_run_report(
        ds.isoformat(), generated_at, reports, quarantine, sorted(config.imported_vectors), files
    )
    artifacts.write_text(folder / "run.json", json.dumps(asdict(run), indent=2, default=str) + "\n")
    artifacts.write_text(folder / "run.md", render_markdown(run))
    artifacts.write_text(folder / "run.html", render_html(run))
    for problem in run.problems:
        log.warning("run %s: %s", run.ds, problem)
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_arguments(parser)
    parser.add_argument(
        "--fail-if-incomplete",
        action="store_true",
        help="exit 1 after writing the report when a stage has no report or the publish gate failed",
    )
    args = parser.parse_args(argv)
    configure_logging()
    config = load_run_config(args)
    run = write_run_report(config, args.ds)
    print(config.reports_dir / run.ds / "run.html")
    return 1 if args.fail_if_incomplete and not run.complete else 0


if __name__ == "__main__":
    raise SystemExit(main())
