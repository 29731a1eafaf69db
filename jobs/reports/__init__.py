"""The one reporting path: a stage declares its report as a dataclass; this package writes it for machines
(JSON) and renders it for people (Markdown, and HTML where the stage has a page) from Jinja2 templates.

A stage's report is a `@dataclass` that also derives from `Report`. Its fields are the facts (counts,
seconds, versions) and `to_json()` is what machines read: the run report (`jobs.run_report`) reads the
stage reports by these field names, never by the labels the pages show people. `template` names the
templates in `templates/` (`<template>.md`, `<template>.html`) that turn the report into pages; they see
what `context(fmt)` returns (by default the report itself, as `report`). `write_report` renders every page
first and then writes each file through the artifact store (`jobs.artifacts`), so a reader sees a whole
file or the previous one, and a report whose template fails leaves the previous files as they were.

Templates: HTML is autoescaped (every string from data is escaped; the pages load nothing from elsewhere:
style inline, plots as data URIs from `jobs.reports.charts`); Markdown is not. Tables in both go through
the macros in `templates/macros.html` and `templates/macros.md`, fed with `Table` and `Cell` objects.

Pure: jinja2 and the standard library. Never Spark, so the evaluation report (`jobs.ranking.report`) and
the run report use it without loading pyspark.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import jinja2

from jobs import artifacts

if TYPE_CHECKING:
    from jobs.config import PipelineConfig

_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader(__name__, "templates"),  # this package, whatever it is installed as
    autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default_for_string=False),
    # A misspelt field is an error, never an empty cell.
    undefined=jinja2.StrictUndefined,
    # Block tags on lines of their own leave no blank lines behind, so the templates can be indented.
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)


def render(template: str, **context: Any) -> str:
    """The text of `templates/<template>` with `context`."""
    return _TEMPLATES.get_template(template).render(**context)


@dataclasses.dataclass(frozen=True)
class Cell:
    """One table cell: its text (both formats), and for HTML a class, an emphasis tag or links.

    `css`: "number" (right-aligned), "met" or "missed" (a verdict in colour). `emphasis`: "b" or
    "strong" around the text. `links`: files the cell links to, shown by name (the text is ignored).
    """

    text: str
    css: str = ""
    emphasis: str = ""
    links: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Table:
    """A table as both formats lay it out: a header row and rows of cells."""

    header: tuple[str, ...]
    rows: tuple[tuple[Cell, ...], ...] = ()

    @classmethod
    def of(cls, header: Sequence[str], rows: Iterable[Sequence[Cell | str]]) -> Table:
        """A table from cells, where a plain string is a plain cell."""
        return cls(
            tuple(header),
            tuple(tuple(c if isinstance(c, Cell) else Cell(c) for c in row) for row in rows),
        )


class Report:
    """The base of a stage's report dataclass: how it is serialised and which templates render it.

    Subclasses set `template`, and `formats` when they have an HTML page too. `to_json` is the
    dataclass's fields (override it to add derived numbers); `sort_json_keys` keeps each report's JSON
    as its readers have always seen it.
    """

    template: ClassVar[str]
    formats: ClassVar[tuple[str, ...]] = ("md",)
    sort_json_keys: ClassVar[bool] = True

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]  # subclasses are dataclasses

    def json_text(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=self.sort_json_keys, default=str) + "\n"

    def context(self, fmt: str) -> dict[str, Any]:
        """What the `<template>.<fmt>` template sees."""
        return {"report": self}

    def render(self, fmt: str) -> str:
        return render(f"{self.template}.{fmt}", **self.context(fmt))


def write_report(config: PipelineConfig, ds: dt.date | str, name: str, report: Report) -> Path:
    """Write `<name>.md` (and `<name>.html` where the report has a page), then `<name>.json`, into the
    date's report folder; return the page a person opens (the HTML where there is one).

    The JSON goes last: a stage whose JSON is there has all its files (the run report counts a stage
    as reported by its JSON).
    """
    folder = config.reports_dir / str(ds)
    pages = {fmt: report.render(fmt) for fmt in report.formats}
    for fmt, text in pages.items():
        artifacts.write_text(folder / f"{name}.{fmt}", text)
    artifacts.write_text(folder / f"{name}.json", report.json_text())
    return folder / f"{name}.{report.formats[-1]}"
