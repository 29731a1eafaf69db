"""The reporting package (jobs/reports): writing a report's files, escaping, the chart helper and the
table objects the templates lay out. The pages' contents are checked where they are made
(test_run_report.py, test_eval_report.py)."""

from __future__ import annotations

import base64
import json
import re
from dataclasses import asdict, dataclass

import jinja2
import pytest

from jobs.config import load_config
from jobs.reports import Cell, Report, Table, write_report
from jobs.reports.charts import bar_chart
from jobs.run_report import build_run_report

DAY = "2026-11-25"


def png_bytes(uri: str) -> bytes:
    match = re.fullmatch(r"data:image/png;base64,([A-Za-z0-9+/=]+)", uri)
    assert match, uri[:60]
    return base64.b64decode(match.group(1))


def test_the_bar_chart_is_a_png_data_uri_with_its_alt_text():
    image = bar_chart(["ranker", "cost in $ and $$"], [0.3, 0.1], "nDCG@10: $5 models", "nDCG per model")
    assert image.alt == "nDCG per model"
    assert png_bytes(image.uri).startswith(b"\x89PNG\r\n\x1a\n")
    # Two renderings of the same chart are the same picture: nothing in it depends on the clock.
    assert bar_chart(["ranker", "cost in $ and $$"], [0.3, 0.1], "nDCG@10: $5 models", "x").uri == image.uri


def test_the_bar_chart_draws_parts_inside_bars_and_counts_without_values():
    with_parts = bar_chart(["a", "b"], [10.0, 4.0], "seconds", "s", inner=[6.0, 0.0], legend=("whole", "part"))
    counts = bar_chart(["a", "b"], [3, 1], "rows", "r", value_text=str)
    assert png_bytes(with_parts.uri) != png_bytes(counts.uri)
    empty = bar_chart([], [], "nothing", "n")  # a page with nothing to plot still renders
    assert png_bytes(empty.uri).startswith(b"\x89PNG")


def test_a_table_of_strings_is_a_table_of_plain_cells():
    table = Table.of(["model", "ndcg@10"], [["ranker", Cell("0.3000", "number", "strong")]])
    assert table == Table(("model", "ndcg@10"), ((Cell("ranker"), Cell("0.3000", "number", "strong")),))


def test_write_report_writes_the_pages_and_then_the_json_and_escapes_only_the_html(tmp_path):
    config = load_config(lake=str(tmp_path / "lake"))
    # A stage whose JSON could not be read, with markup in the reason: text on both pages.
    run = build_run_report(DAY, "now", {"fuse": "ValueError: <b>bad</b> & worse"}, "no table", [], set())
    page = write_report(config, DAY, "run", run)

    folder = config.reports_dir / DAY
    assert page == folder / "run.html"
    assert sorted(path.name for path in folder.iterdir()) == ["run.html", "run.json", "run.md"]  # no temporaries
    assert json.loads((folder / "run.json").read_text()) == json.loads(json.dumps(asdict(run)))
    assert "UNREADABLE: ValueError: <b>bad</b> & worse" in (folder / "run.md").read_text()
    html = (folder / "run.html").read_text()
    assert "UNREADABLE: ValueError: &lt;b&gt;bad&lt;/b&gt; &amp; worse" in html and "<b>bad" not in html


@dataclass
class TrainReportWithoutItsFields(Report):
    template = "train"  # train.md reads fields this report does not have

    ds: str


def test_a_report_its_template_cannot_render_leaves_the_previous_files(tmp_path):
    config = load_config(lake=str(tmp_path / "lake"))
    folder = config.reports_dir / DAY
    folder.mkdir(parents=True)
    (folder / "train.json").write_text('{"previous": true}\n')
    with pytest.raises(jinja2.UndefinedError, match="reused"):
        write_report(config, DAY, "train", TrainReportWithoutItsFields(DAY))
    assert sorted(path.name for path in folder.iterdir()) == ["train.json"]
    assert (folder / "train.json").read_text() == '{"previous": true}\n'
