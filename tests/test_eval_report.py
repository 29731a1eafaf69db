"""The evaluation report: a self-contained HTML file from a hand-made METRICS frame, and the plain-text
table printed to the terminal."""

from __future__ import annotations

import html
import re

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


def section(text: str, protocol: str) -> str:
    start = text.index(f'<h2 id="protocol-{protocol}">')
    return text[start : text.index("<h2", start + 1)]


def test_header_names_the_dataset_the_date_the_facts_and_the_timings(report_text):
    assert f"modalrank evaluation: {DATASET}" in report_text
    assert "2026-11-25" in report_text
    assert '<td>interactions</td><td class="number">200</td>' in report_text
    # 1.25 + 0.5 seconds, with two decimals.
    assert '<td>fit</td><td class="number">1.25</td>' in report_text
    assert '<td><b>total</b></td><td class="number"><b>1.75</b></td>' in report_text


def test_protocols_appear_in_their_reading_order_with_every_model(report_text):
    random_at = report_text.index('<h2 id="protocol-random_75_25">random_75_25</h2>')
    cold_at = report_text.index('<h2 id="protocol-item_cold_20">item_cold_20</h2>')
    assert random_at < cold_at
    for model in ("ranker", "popularity", "random"):
        assert f"<td>{model}</td>" in section(report_text, "random_75_25")


def test_models_are_sorted_by_ndcg_at_10_and_the_best_of_each_column_is_bold(report_text):
    table = section(report_text, "random_75_25")
    assert table.index("<td>ranker</td>") < table.index("<td>popularity</td>") < table.index("<td>random</td>")
    assert re.findall(r"<th>([^<]+)</th>", table) == ["model", "ndcg@10", "recall@10", "recall@20"]
    # ndcg@10 and recall@20: ranker is best; recall@10: popularity is.
    assert set(re.findall(r"<strong>([\d.]+)</strong>", table)) == {"0.3000", "0.2800", "0.4000"}


def test_plots_are_inline_pngs(report_text):
    # One nDCG chart per protocol; nothing is fetched from elsewhere.
    assert report_text.count('<img src="data:image/png;base64,') == 2
    assert "http://" not in report_text and "https://" not in report_text and "<link" not in report_text


def test_targets_are_marked_met_or_missed(report_text):
    assert "<td>random_75_25</td>\n" not in report_text  # cells of one row stay on one line
    assert (
        '<td>random_75_25</td><td>ndcg@10 ≥ 0.25</td><td class="number">0.3000</td>'
        '<td class="number">0.2500</td><td class="met">✓</td>'
    ) in report_text
    assert '<td class="number">0.3000</td><td class="missed">✗</td>' in report_text


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
    text = write_evaluation_report(tmp_path / "r.html", metrics, CONTEXT).read_text(encoding="utf-8")
    ablation = text[text.index("<h2>Modality ablation") :]
    assert ablation.count('<img src="data:image/png;base64,') == 1
    assert '<td>all minus</td><td>ranker-without-image</td><td class="number">0.1800</td>' in ablation
    assert "ease" not in ablation


def test_without_ablation_models_the_report_says_so(report_text):
    assert "No ranker-only-* or ranker-without-* models were evaluated." in report_text


def test_rows_of_other_runs_and_datasets_are_left_out(tmp_path):
    other = METRICS.assign(dataset="other", model="model-of-another-dataset")
    metrics = pd.concat([METRICS, other]).assign(ds="2026-11-25")
    metrics = pd.concat([metrics, METRICS.assign(ds="2026-11-24", model="model-of-yesterday")])
    text = write_evaluation_report(tmp_path / "r.html", metrics, CONTEXT).read_text(encoding="utf-8")
    assert "<td>ranker</td>" in text
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
