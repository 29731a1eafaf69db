"""The run report's page (`jobs.run_report`): its sections in reading order, as tables of cells and
charts, for `templates/run.md` and `templates/run.html` to lay out. Both formats show the same sections;
the HTML adds colour, links and the two charts (seconds per stage, quarantined rows by reason).

Pure: it reads the `RunReport` object, never a file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from jobs.input_accounts import INPUT_COLUMNS
from jobs.reports import Cell, Table
from jobs.reports.charts import Image, bar_chart

if TYPE_CHECKING:
    from jobs.run_report import RunReport, StageSummary

# What the page says for a stage whose report is absent.
NO_REPORT = "no report (failed or not run)"


@dataclass(frozen=True)
class Section:
    """A heading, then (each where present) a sentence with a link, a table and charts."""

    heading: str
    level: int
    text: str = ""
    table: Table | None = None
    link: str = ""  # a report file the section points to
    charts: tuple[Image, ...] = ()  # drawn after the section, on the HTML page only


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


def _cell(column: str, text: str) -> Cell:
    if column == "reports":
        return Cell(text, links=tuple(text.split()))
    if column in VERDICT_COLUMNS:
        return Cell(text, "met" if text in GOOD_WORDS else "missed")
    if column in NUMBER_COLUMNS or "@" in column:
        return Cell(text, "number")
    return Cell(text)


def _table(header: tuple[str, ...], rows) -> Table:
    """Cells styled by their column: verdicts in colour, numbers right-aligned, report names as links."""
    return Table(header, tuple(tuple(_cell(c, text) for c, text in zip(header, row, strict=True)) for row in rows))


def _stage_row(s: StageSummary) -> tuple:
    seconds = "–" if s.seconds is None else str(s.seconds)
    if s.work_seconds is not None:
        seconds += f" ({s.work_seconds} {s.work})"
    counts = ", ".join(f"{name.replace('_', ' ')} {value:,}" for name, value in s.counts.items())
    if s.status != "reported":
        return s.stage, f"{s.status.upper()}: {s.detail}", seconds, counts, "", " ".join(s.links)
    return s.stage, "reported", seconds, counts, s.detail, " ".join(s.links)


def outcome(run: RunReport) -> str:
    return "Every stage reported." if run.complete else "Problems: " + "; ".join(run.problems) + "."


def _evaluation_sections(evaluation: dict) -> list[Section]:
    result = [
        Section(f"Evaluation: {evaluation['dataset']}", 2, "Plots and the ablation:", link=evaluation["report"])
    ]
    for protocol, rows in evaluation["tables"].items():
        header = tuple(rows[0]) if rows else ()
        cells = tuple(tuple(_value_text(row[column]) for column in header) for row in rows)
        result.append(Section(protocol, 3, "", _table(header, cells)))
    targets = tuple(
        (
            *(_value_text(t.get(key)) for key in ("protocol", "description", "value")),
            "met" if t.get("met") else "NOT met",
        )
        for t in evaluation["targets"]
    )
    if targets:
        result.append(Section("Targets", 3, "", _table(("protocol", "target", "value", "met"), targets)))
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
        Section("Publish gate", 2, verdict, _table(("check", "result", "detail"), checks)),
        Section(against, 3, "", _table(("check", "number", "value"), drift)),
    ]


def _short_number(value: float) -> str:
    return f"{value:,.1f}".removesuffix(".0")


def _seconds_chart(stages: list[StageSummary]) -> tuple[Image, ...]:
    seconds = {s.stage: s.seconds for s in stages if s.seconds is not None}
    if not seconds:
        return ()
    work = [s.work_seconds or 0 for s in stages if s.seconds is not None]
    # A sum, not the night's wall time: the extractors run side by side.
    return (
        bar_chart(
            list(seconds),
            list(seconds.values()),
            f"Seconds per stage ({sum(seconds.values()):,.0f} s summed)",
            "seconds per stage",
            colours="#a6bddb",
            value_text=_short_number,
            inner=work,
            legend=("whole stage", "extracting, fitting, training"),
        ),
    )


def _quarantine_chart(quarantine: list[dict]) -> tuple[Image, ...]:
    if not quarantine:
        return ()
    labels, rows = [f"{q['stage']}: {q['reason']}" for q in quarantine], [q["rows"] for q in quarantine]
    chart = bar_chart(
        labels,
        rows,
        "Quarantined rows by stage and reason",
        "quarantined rows",
        colours="#dd8452",
        value_text=_short_number,
    )
    return (chart,)


def sections(run: RunReport, charts: bool = False) -> list[Section]:
    """The report's sections in reading order, as plain text cells; with their charts where `charts`."""
    stage_header = ("stage", "status", "seconds", "counts", "outcome", "reports")
    stages = _table(stage_header, (_stage_row(s) for s in run.stages))
    result = [Section("Stages", 2, "", stages, charts=_seconds_chart(run.stages) if charts else ())]
    if run.ingest_inputs:
        cells = tuple(tuple(_value_text(row.get(column)) for column in INPUT_COLUMNS) for row in run.ingest_inputs)
        text = "Every input: rows read = ingested + deferred + quarantined + superseded."
        result.append(Section("Ingest inputs", 2, text, _table(INPUT_COLUMNS, cells), link="ingest.md"))
    if run.quarantine:
        quarantined = tuple((q["stage"], q["reason"], str(q["rows"])) for q in run.quarantine)
        plots = _quarantine_chart(run.quarantine) if charts else ()
        result.append(
            Section("Quarantined rows", 2, "", _table(("stage", "reason", "rows"), quarantined), charts=plots)
        )
    else:
        note = f"None ({run.quarantine_note})." if run.quarantine_note else "None."
        result.append(Section("Quarantined rows", 2, note))
    for evaluation in run.evaluation:
        result += _evaluation_sections(evaluation)
    return result + _gate_sections(run.gate)
