"""The run report: one page per run date that says what every stage of the night did.

Reads the stage reports in `<artifacts>/_reports/<ds>/` (`ingest.json`, `extract_<modality>.json`,
`fuse.json`, `train.json`, `evaluate_<dataset>.json`, `publish.json`) and the date's `quarantine`
rows, and writes beside them `run.json`, `run.md` and `run.html` (self-contained: style and plots
inline). Row counts, seconds, quarantined rows by stage and reason, the evaluation tables, the
publish gate and its drift numbers, and links to each stage's own report. It reads each stage's JSON
by the field names of the stage's report dataclass (`jobs.reports.Report`), never by the labels a page
shows; `jobs.reports.run_page` and the `run.*` templates make the pages.

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
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from features.registry import BUILT_IN
from jobs.config import PipelineConfig, add_run_arguments, configure_logging, load_run_config
from jobs.input_accounts import InputAccount
from jobs.ranking.report import PROTOCOL_ORDER, TERMINAL_COLUMNS, protocol_table
from jobs.reports import Report, write_report
from jobs.reports.run_page import NO_REPORT, outcome, sections

log = logging.getLogger("modalrank.run_report")

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
class RunReport(Report):
    template = "run"
    formats = ("md", "html")
    sort_json_keys = False

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

    def context(self, fmt: str) -> dict:
        return {"run": self, "outcome": outcome(self), "sections": sections(self, charts=fmt == "html")}


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
        summary.work_seconds, summary.work = get("training_seconds"), "training"
        summary.counts = {key: _number(get(key)) for key in ("training_pairs", "training_users", "training_items")}
        summary.counts["epochs"] = len(get("epochs") or [])
        reused = "reused" if get("reused") else "trained"
        summary.detail = f"{reused} {get('version', '?')} on data up to {get('trained_ds') or get('ds')}"
    elif stage.startswith("evaluate_"):
        targets = get("targets") or []
        summary.counts = {"users": _number(get("users")), "items": _number(get("items"))}
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
    write_report(config, ds, "run", run)
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
