"""The evaluation report: a self-contained HTML file from a hand-made METRICS frame, and the plain-text
table printed to the terminal.

The HTML is read as a reader sees it (headings, table cells, emphasis, inline images; `ReportPage`),
so a template that changes the markup but keeps the content does not break these tests."""

from __future__ import annotations

import html
import re
from collections import defaultdict
from dataclasses import dataclass
from html.parser import HTMLParser

import pandas as pd
import pytest

from jobs.ranking.report import ablation_rows, format_metrics_table, write_evaluation_report

DATASET = "demo-small"


def metrics_frame(values: dict[tuple[str, str], dict[str, float]], users: int = 20) -> pd.DataFrame:
    """{(protocol, model): {"ndcg@10": 0.3, ...}} → METRICS-shaped rows."""
    rows = []
    for (protocol, model), by_column in values.items():
        for column, value in by_column.items():
            metric, k = column.split("@")
            rows.append((DATASET, protocol, model, metric, int(k), value, users))
    return pd.DataFrame(rows, columns=["dataset", "protocol", "model", "metric", "k", "value", "users"])


# item_cold_20 comes first here; the report still shows random_75_25 first.
METRICS = metrics_frame(
    {
        ("item_cold_20", "ranker"): {"ndcg@10": 0.12, "recall@20": 0.20},
        ("item_cold_20", "random"): {"ndcg@10": 0.02, "recall@20": 0.05},
        ("random_75_25", "popularity"): {"ndcg@10": 0.20, "recall@10": 0.28, "recall@20": 0.35},
        ("random_75_25", "ranker"): {"ndcg@10": 0.30, "recall@10": 0.25, "recall@20": 0.40},
        ("random_75_25", "random"): {"ndcg@10": 0.01, "recall@10": 0.02, "recall@20": 0.03},
    }
)

CONTEXT = {
    "ds": "2026-11-25",
    "dataset": DATASET,
    "summary": {"users": 20, "items": 40, "interactions": 200, "<script>key</script>": "x"},
    "timings": {"fit": 1.25, "score": 0.5},
    "notes": ['<script>alert("boo")</script> is only text here'],
    "targets": [
        {"protocol": "random_75_25", "description": "ndcg@10 ≥ 0.25", "value": 0.30, "target": 0.25, "met": True},
        {
            "protocol": "item_cold_20",
            "description": "recall@20 ≥ 0.30",
            "value": 0.20,
            "target": 0.30,
            "met": False,
        },
    ],
}


@pytest.fixture(scope="module")
def report_text(tmp_path_factory) -> str:
    """Rendered once for the module: the tests below only read it."""
    folder = tmp_path_factory.mktemp("report")
    path = write_evaluation_report(folder / "out" / "report.html", METRICS, CONTEXT)
    assert path == folder / "out" / "report.html"
    assert path.is_file()
    return path.read_text(encoding="utf-8")


@dataclass(frozen=True)
class Cell:
    text: str  # whitespace collapsed, entities decoded
    bold: bool  # shown in <b> or <strong>: the report's emphasis (a column's best value, the total)


class ReportPage(HTMLParser):
    """An HTML page as its content: `headings` (the <h2> texts, in order) and, under each heading, its
    tables (rows of `Cell`s, the header row first) and its count of inline PNG images."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.headings: list[str] = []
        self.tables: dict[str, list[list[list[Cell]]]] = defaultdict(list)
        self.inline_pngs: dict[str, int] = defaultdict(int)
        self._heading: list[str] | None = None
        self._row: list[Cell] | None = None
        self._cell: list[str] | None = None
        self._cell_bold = False
        self._bold_depth = 0
        self.feed(html)
        self.close()

    @property
    def _section(self) -> str:
        return self.headings[-1] if self.headings else ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "h2":
            self._heading = []
        elif tag == "table":
            self.tables[self._section].append([])
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell, self._cell_bold = [], False
        elif tag in ("b", "strong"):
            self._bold_depth += 1
        elif tag == "img" and (dict(attrs).get("src") or "").startswith("data:image/png;base64,"):
            self.inline_pngs[self._section] += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "h2" and self._heading is not None:
            self.headings.append(" ".join("".join(self._heading).split()))
            self._heading = None
        elif tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append(Cell(" ".join("".join(self._cell).split()), self._cell_bold))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.tables[self._section][-1].append(self._row)
            self._row = None
        elif tag in ("b", "strong"):
            self._bold_depth -= 1

    def handle_data(self, data: str) -> None:
        if self._heading is not None:
            self._heading.append(data)
        if self._cell is not None:
            self._cell.append(data)
            self._cell_bold = self._cell_bold or (self._bold_depth > 0 and bool(data.strip()))

    def table(self, heading: str) -> list[list[Cell]]:
        """The one table under `heading`."""
        (table,) = self.tables[heading]
        return table

    def texts(self, heading: str) -> list[list[str]]:
        """The one table under `heading` as text, the header row first."""
        return [[cell.text for cell in row] for row in self.table(heading)]


@pytest.fixture(scope="module")
def page(report_text) -> ReportPage:
    return ReportPage(report_text)


def test_header_names_the_dataset_the_date_the_facts_and_the_timings(report_text, page):
    assert f"modalrank evaluation: {DATASET}" in report_text
    assert "2026-11-25" in report_text
    assert ["interactions", "200"] in page.texts("Dataset")
    # 1.25 + 0.5 seconds, with two decimals; the total in bold.
    timings = page.table("Timings")
    assert ["fit", "1.25"] in page.texts("Timings")
    assert timings[-1] == [Cell("total", bold=True), Cell("1.75", bold=True)]
    assert not any(cell.bold for row in timings[:-1] for cell in row)


def test_protocols_appear_in_their_reading_order_with_every_model(page):
    assert page.headings.index("random_75_25") < page.headings.index("item_cold_20")
    assert {row[0] for row in page.texts("random_75_25")[1:]} == {"ranker", "popularity", "random"}
    assert {row[0] for row in page.texts("item_cold_20")[1:]} == {"ranker", "random"}


def test_models_are_sorted_by_ndcg_at_10_and_the_best_of_each_column_is_bold(page):
    header, *rows = page.table("random_75_25")
    columns = [cell.text for cell in header]
    assert columns == ["model", "ndcg@10", "recall@10", "recall@20"]
    assert [[cell.text for cell in row] for row in rows] == [
        ["ranker", "0.3000", "0.2500", "0.4000"],
        ["popularity", "0.2000", "0.2800", "0.3500"],
        ["random", "0.0100", "0.0200", "0.0300"],
    ]
    # ndcg@10 and recall@20: ranker is best; recall@10: popularity is.
    bold = {(row[0].text, column) for row in rows for column, cell in zip(columns, row, strict=True) if cell.bold}
    assert bold == {("ranker", "ndcg@10"), ("popularity", "recall@10"), ("ranker", "recall@20")}


def test_plots_are_inline_pngs(report_text, page):
    # One nDCG chart per protocol; nothing is fetched from elsewhere.
    assert dict(page.inline_pngs) == {"random_75_25": 1, "item_cold_20": 1}
    assert "http://" not in report_text and "https://" not in report_text and "<link" not in report_text


def test_targets_are_marked_met_or_missed(page):
    assert page.texts("Targets")[1:] == [
        ["random_75_25", "ndcg@10 ≥ 0.25", "0.3000", "0.2500", "✓"],
        ["item_cold_20", "recall@20 ≥ 0.30", "0.2000", "0.3000", "✗"],
    ]


def test_strings_from_data_are_escaped(report_text):
    assert "<script>" not in report_text
    # Shown as the text it is: escaped in the page, the same string once a browser unescapes it.
    assert re.findall(r"<li>(.*?)</li>", report_text) == [
        "&lt;script&gt;alert(&#34;boo&#34;)&lt;/script&gt; is only text here"
    ]
    assert [html.unescape(note) for note in re.findall(r"<li>(.*?)</li>", report_text)] == CONTEXT["notes"]
    assert "<td>&lt;script&gt;key&lt;/script&gt;</td>" in report_text


def test_the_modality_ablation_groups_only_all_and_all_minus(tmp_path):
    cold = {
        ("item_cold_20", "ranker-without-image"): {"recall@20": 0.18},
        ("item_cold_20", "ranker-only-image"): {"recall@20": 0.09},
        ("item_cold_20", "ranker-only-text"): {"recall@20": 0.15},
        ("item_cold_20", "ranker"): {"recall@20": 0.20},
        ("item_cold_20", "genre"): {"recall@20": 0.07},
        ("item_cold_20", "random"): {"recall@20": 0.05},
        ("item_cold_20", "ease"): {"recall@20": 0.0},  # not part of the ablation
    }
    metrics = metrics_frame(cold)
    assert ablation_rows(metrics) == [
        ("only", "only text", "ranker-only-text", 0.15),
        ("only", "only image", "ranker-only-image", 0.09),
        ("all", "all", "ranker", 0.20),
        ("all minus", "all minus image", "ranker-without-image", 0.18),
        ("baseline", "random", "random", 0.05),
        ("baseline", "genre", "genre", 0.07),
    ]
    page = ReportPage(write_evaluation_report(tmp_path / "r.html", metrics, CONTEXT).read_text(encoding="utf-8"))
    (ablation,) = [heading for heading in page.headings if heading.startswith("Modality ablation")]
    assert page.inline_pngs[ablation] == 1
    assert page.texts(ablation) == [
        ["group", "model", "recall@20"],
        ["only", "ranker-only-text", "0.1500"],
        ["only", "ranker-only-image", "0.0900"],
        ["all", "ranker", "0.2000"],
        ["all minus", "ranker-without-image", "0.1800"],
        ["baseline", "random", "0.0500"],
        ["baseline", "genre", "0.0700"],
    ]


def test_without_ablation_models_the_report_says_so(report_text):
    assert "No ranker-only-* or ranker-without-* models were evaluated." in report_text


def test_rows_of_other_runs_and_datasets_are_left_out(tmp_path):
    other = METRICS.assign(dataset="other", model="model-of-another-dataset")
    metrics = pd.concat([METRICS, other]).assign(ds="2026-11-25")
    metrics = pd.concat([metrics, METRICS.assign(ds="2026-11-24", model="model-of-yesterday")])
    text = write_evaluation_report(tmp_path / "r.html", metrics, CONTEXT).read_text(encoding="utf-8")
    page = ReportPage(text)
    assert [row[0] for row in page.texts("random_75_25")[1:]] == ["ranker", "popularity", "random"]
    assert "model-of-another-dataset" not in text and "model-of-yesterday" not in text


def test_repeated_rows_are_refused(tmp_path):
    with pytest.raises(ValueError, match="repeat a \\(protocol, model, metric, k\\)"):
        write_evaluation_report(tmp_path / "r.html", pd.concat([METRICS, METRICS]), CONTEXT)


def test_format_metrics_table_is_a_padded_markdown_table():
    metrics = metrics_frame(
        {
            ("p", "a"): {"ndcg@10": 0.1, "recall@20": 0.5, "hit@10": 1.0},
            ("p", "bb"): {"ndcg@10": 0.3, "recall@20": 0.25},
            ("p", "c"): {"recall@20": 0.123456},  # no ndcg@10: last, with a dash
            ("q", "zz"): {"ndcg@10": 0.9},
        }
    )
    # hit@10 is not among the default columns; q's model is another protocol.
    assert format_metrics_table(metrics, "p") == (
        "| model | ndcg@10 | recall@20 |\n"
        "|:------|--------:|----------:|\n"
        "| bb    |  0.3000 |    0.2500 |\n"
        "| a     |  0.1000 |    0.5000 |\n"
        "| c     |       – |    0.1235 |\n"
    )
    assert format_metrics_table(metrics, "p", columns=("recall@20",)).splitlines()[2] == "| bb    |    0.2500 |"


def test_format_metrics_table_of_an_unknown_protocol_is_an_error():
    with pytest.raises(ValueError, match="no metrics for protocol 'nope'"):
        format_metrics_table(METRICS, "nope")
