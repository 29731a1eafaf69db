"""The reporting package (jobs/reports): the chart helper and the table objects the templates lay out.
The pages themselves are checked where they are made (test_run_report.py, test_eval_report.py)."""

from __future__ import annotations

import base64
import re

from jobs.reports import Cell, Table
from jobs.reports.charts import bar_chart


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
