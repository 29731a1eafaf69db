"""Ingest's report: what became of the run's rows (`IngestReport`), written as
`<artifacts>/_reports/<ds>/ingest.json` and `ingest.md` (`jobs.reports`, template `ingest.md`), and summed
up in the job's log."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from jobs.input_accounts import INPUT_COLUMNS, InputAccount, input_row
from jobs.reports import Report

log = logging.getLogger("modalrank.ingest")

STAGE = "ingest"


@dataclass
class IngestReport(Report):
    template = "ingest"

    ds: str
    source: str
    # Per kind, summed over `inputs`: read = ingested (new + changed + unchanged) + deferred + quarantined
    # + superseded. "read" counts rows from the source files and rows taken from `deferred`.
    items_read: int = 0
    items_new: int = 0
    items_changed: int = 0
    items_unchanged: int = 0
    items_deferred: int = 0
    items_quarantined: int = 0
    items_superseded: int = 0
    interactions_read: int = 0
    interactions_new: int = 0
    interactions_changed: int = 0
    interactions_unchanged: int = 0
    interactions_deferred: int = 0
    interactions_quarantined: int = 0
    interactions_superseded: int = 0
    extras_read: dict[str, int] = field(default_factory=dict)
    quarantine_by_reason: dict[str, int] = field(default_factory=dict)
    catalog_rows: int = 0
    interactions_rows: int = 0
    deferred_rows: int = 0  # rows waiting in `deferred` after the run, all dates
    inputs: list[InputAccount] = field(default_factory=list)  # one per input file (and per origin)
    quarantine_table: str = ""  # where the quarantined rows are, for the report's query line
    seconds: float = 0.0

    @property
    def items_ingested(self) -> int:
        return self.items_new + self.items_changed + self.items_unchanged

    @property
    def interactions_ingested(self) -> int:
        return self.interactions_new + self.interactions_changed + self.interactions_unchanged

    def to_json(self) -> dict[str, Any]:
        return super().to_json() | {
            "items_ingested": self.items_ingested,
            "interactions_ingested": self.interactions_ingested,
        }

    def context(self, fmt: str) -> dict[str, Any]:
        return {
            "report": self,
            "input_columns": INPUT_COLUMNS,
            "input_rows": [input_row(account) for account in self.inputs],
            "stage": STAGE,
        }


def sum_accounts(report: IngestReport) -> None:
    """The report's per-kind totals, summed over its inputs (the source's and the deferred table's)."""
    for kind in ("items", "interactions"):
        chosen = [a for a in report.inputs if a.kind == kind]
        for measure in ("rows", "deferred", "quarantined", "superseded"):
            name = f"{kind}_{'read' if measure == 'rows' else measure}"
            setattr(report, name, sum(getattr(a, measure) for a in chosen))
    report.extras_read = {}
    for account in report.inputs:
        if account.kind not in ("items", "interactions"):
            report.extras_read[account.kind] = report.extras_read.get(account.kind, 0) + account.rows


def log_report(report: IngestReport) -> None:
    log.info(
        "items: read %d, ingested %d (new %d, changed %d, unchanged %d), deferred %d, quarantined %d",
        report.items_read,
        report.items_ingested,
        report.items_new,
        report.items_changed,
        report.items_unchanged,
        report.items_deferred,
        report.items_quarantined,
    )
    log.info(
        "interactions: read %d, ingested %d (new %d, changed %d, unchanged %d), deferred %d, quarantined %d",
        report.interactions_read,
        report.interactions_ingested,
        report.interactions_new,
        report.interactions_changed,
        report.interactions_unchanged,
        report.interactions_deferred,
        report.interactions_quarantined,
    )
    for a in report.inputs:
        log.info(
            "%s %s (%s): %d lines, %d rows = ingested %d + deferred %d + quarantined %d + superseded %d",
            a.kind,
            a.input,
            a.origin,
            a.lines,
            a.rows,
            a.ingested,
            a.deferred,
            a.quarantined,
            a.superseded,
        )
    for reason, n in sorted(report.quarantine_by_reason.items()):
        log.info("quarantined %d: %s", n, reason)
    log.info("ingest done in %.1f s", report.seconds)
