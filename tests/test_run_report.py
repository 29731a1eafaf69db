"""The run report: one page per run date from the stages' own reports and the quarantine table.

The stage reports are written by the jobs' own `write_report` functions from their report dataclasses,
so a change in any job's report format shows up here. The quarantine table is a small Delta table
written with delta-rs. No Spark: the expected numbers are the inputs, or counted by hand.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
from dataclasses import asdict

import pandas as pd
import pytest
from deltalake import write_deltalake

from jobs import evaluate, extract, fuse, ingest, input_accounts, publish, publish_gate, train
from jobs.config import load_config
from jobs.reports import write_report
from jobs.run_report import NO_REPORT, build_run_report, main, write_run_report

DS = dt.date(2026, 11, 25)
DAY = DS.isoformat()
MODALITIES = ("text", "image", "audio", "video")

INGEST = ingest.IngestReport(
    DAY,
    "generic",
    items_read=42,
    items_new=38,
    items_changed=1,
    items_unchanged=1,
    items_deferred=2,
    interactions_read=180,
    interactions_new=168,
    interactions_deferred=8,
    interactions_quarantined=4,
    quarantine_by_reason={"duplicate interaction": 1, "unknown item id": 2, "missing user id": 1},
    catalog_rows=40,
    interactions_rows=168,
    seconds=50.9,
    inputs=[
        input_accounts.InputAccount("/in/catalog.csv", "items", "source", 42, 42, 42, ingested=40, deferred=2),
        input_accounts.InputAccount(
            "/in/interactions.csv",
            "interactions",
            "source",
            181,
            181,
            180,
            ingested=168,
            deferred=8,
            quarantined=4,
        ),
    ],
)
# (ok, failed, missing, up_to_date, seconds, extract_seconds) per modality
EXTRACTS = {
    "text": (40, 0, 0, 0, 36.3, 7.2),
    "image": (36, 2, 2, 0, 31.1, 5.0),
    "audio": (0, 0, 0, 40, 6.5, 0.0),  # a no-change rerun: everything up to date
    "video": (38, 0, 2, 0, 33.6, 9.7),
}
IMPORTED = extract.ExtractReport(
    DAY, "mmtf_avf", "imported", "1", catalog_items=40, extracted=40, ok=39, missing=1, seconds=4.0
)
TRAIN = train.TrainReport(
    DAY,
    trained_ds=DAY,
    version="ranker-0123456789ab",
    artifact="/lake/_models/ranker/ranker-0123456789ab",
    training_pairs=168,
    training_users=20,
    training_items=40,
    facts={"users": 20, "items": 40, "interactions (unique user-item pairs)": 168, "modalities": "text, image"},
    best_epoch=2,
    epochs=[{"epoch": e, "loss": 0.5, "val_ndcg@10": 0.3, "val_cold_ndcg@20": 0.1} for e in (1, 2, 3)],
    training_seconds=12.5,
    seconds=20.25,
)
CHECKS = [
    publish_gate.Check(
        "rows_per_user", True, "0 of 20 eligible users do not have min(K, their eligible items) rows"
    ),
    publish_gate.Check("no_seen_items", True, "0 rows list an item the user already interacted with"),
    publish_gate.Check(
        "changed_share",
        True,
        "3 of 18 users listed on both dates have a different list",
        {
            "changed_share": 0.1667,
            "users_compared": 18,
            "users_changed": 3,
            "mean_items_kept": 0.95,
            "new_users": 2,
        },
    ),
    publish_gate.Check("coverage", True, "31 of 38 available items are in some list", {"coverage": 0.8158}),
]
FAILED_COVERAGE = publish_gate.Check(
    "coverage", False, "3 of 38 available items are in some list (7.9%, minimum 50%)"
)
# {dataset: {(protocol, model): ndcg@10}}
NDCG = {
    "demo": {
        ("random_75_25", "ranker"): 0.4276,
        ("random_75_25", "popularity"): 0.2105,
        ("item_cold_20", "ranker"): 0.12,
    },
    "tiny": {("chrono_80_20", "ranker"): 0.1737, ("chrono_80_20", "ease"): 0.13},
}
# (ds, stage, reason): rows. Another date's rows must not be counted.
QUARANTINED = {
    (DS, "ingest", "unknown item id"): 2,
    (DS, "ingest", "duplicate interaction"): 1,
    (DS, "ingest", "missing user id"): 1,
    (DS, "extract_image", "undecodable image"): 2,
    (DS, "import_mmtf_avf", "unknown item id"): 1,
    (DS - dt.timedelta(days=1), "ingest", "unknown item id"): 5,
}
STAGES = [
    "ingest",
    "extract_text",
    "extract_image",
    "extract_audio",
    "extract_video",
    "extract_mmtf_avf",
    "fuse",
    "train",
    "evaluate_demo",
    "evaluate_tiny",
    "publish",
]


def write_stage_reports(config, checks=CHECKS, skip=()) -> None:
    """Every stage's report for DS, written by the stage's own writer, except the stages in `skip`."""
    writers = {
        "ingest": lambda: write_report(config, DAY, "ingest", INGEST),
        "extract_mmtf_avf": lambda: write_report(config, DAY, "extract_mmtf_avf", IMPORTED),
        "train": lambda: write_report(config, DAY, "train", TRAIN),
        "fuse": lambda: write_report(config, DAY, "fuse", fuse_report()),
        "publish": lambda: write_report(config, DAY, "publish", publish_report(checks)),
    }
    for modality, (ok, failed, missing, up_to_date, seconds, extract_seconds) in EXTRACTS.items():
        report = extract.ExtractReport(
            DAY,
            modality,
            f"{modality}-extractor",
            "1",
            catalog_items=40,
            up_to_date=up_to_date,
            extracted=ok + failed,
            ok=ok,
            failed=failed,
            missing=missing,
            inferences=ok + failed,
            seconds=seconds,
            extract_seconds=extract_seconds,
        )
        writers[f"extract_{modality}"] = lambda report=report: write_report(
            config, DAY, f"extract_{report.modality}", report
        )
    for dataset in NDCG:
        writers[f"evaluate_{dataset}"] = lambda dataset=dataset: write_evaluation(config, dataset)
    for stage, write in writers.items():
        if stage not in skip:
            write()


def write_evaluation(config, dataset: str) -> None:
    target = {"protocol": "random_75_25", "description": "ranker / EASE ≥ 1.05", "value": 1.1, "target": 1.05}
    report = evaluate.EvaluateReport(
        DAY,
        dataset,
        facts={"users": 20, "items": 40},
        timings={"load data": 2.0, "total": 80.0},
        targets=[target | {"met": True}],
        metrics=metrics_frame(dataset).to_dict(orient="records"),
        users=20,
        items=40,
        seconds=80.0,
    )
    write_report(config, DAY, f"evaluate_{dataset}", report)


def fuse_report() -> fuse.FuseReport:
    layout = ["image", "text"]
    return fuse.FuseReport(
        DAY,
        fusion_version="f00d",
        projections="fitted",
        fitted_ds=DAY,
        layout=layout,
        block_dims=[64, 64],
        extractors={m: f"{m}-extractor" for m in layout},
        fit_items={"image": 36, "text": 40},
        explained_variance={"image": 0.8, "text": 0.9},
        catalog_items=40,
        items=40,
        items_by_modality={"image": 36, "text": 40},
        items_by_modality_count={"1": 4, "2": 36},
        seconds=15.0,
        fit_seconds=3.5,
    )


def publish_report(checks) -> publish.PublishReport:
    passed = all(check.passed for check in checks)
    return publish.PublishReport(
        DAY,
        k=10,
        model_version=TRAIN.version,
        trained_ds=DAY,
        users=20,
        rows=200,
        eligible_items=38,
        items_listed=31,
        cold_items_listed=4,
        previous_ds="2026-11-24",
        checks=[asdict(check) for check in checks],
        drift={c.name: c.numbers for c in checks if c.name in ("changed_share", "coverage")},
        passed=passed,
        published=passed,
        table_version=3 if passed else None,
        seconds=42.0,
    )


def metrics_frame(dataset: str) -> pd.DataFrame:
    rows = [
        (DAY, dataset, protocol, model, metric, k, value if metric == "ndcg" else value / 2, 20)
        for (protocol, model), value in NDCG[dataset].items()
        for metric, k in (("ndcg", 10), ("recall", 20))
    ]
    return pd.DataFrame(rows, columns=["ds", "dataset", "protocol", "model", "metric", "k", "value", "users"])


def write_quarantine(config) -> None:
    rows = [
        {
            "ds": ds,
            "stage": stage,
            "source_file": "in.csv",
            "item_id": None,
            "user_id": None,
            "record": "x",
            "reason": reason,
            "quarantined_at": pd.Timestamp("2026-11-26T01:00:00"),
        }
        for (ds, stage, reason), n in QUARANTINED.items()
        for _ in range(n)
    ]
    write_deltalake(config.table_path("quarantine"), pd.DataFrame(rows), partition_by=["ds"])


@pytest.fixture
def config(tmp_path):
    return load_config(lake=str(tmp_path / "lake"), imported_vectors={"mmtf_avf": "unused.csv"})


def stages_by_name(run_json: dict) -> dict[str, dict]:
    return {stage["stage"]: stage for stage in run_json["stages"]}


def test_a_complete_night_is_counted_as_the_stages_reported_it(config):
    write_stage_reports(config)
    write_quarantine(config)
    run = write_run_report(config, DS)
    written = json.loads((config.reports_dir / DAY / "run.json").read_text())
    assert written == json.loads(json.dumps(asdict(run), default=str))
    stages = stages_by_name(written)

    assert list(stages) == STAGES
    assert written["complete"] is True and written["problems"] == []
    assert {stage["status"] for stage in stages.values()} == {"reported"}
    assert stages["ingest"]["counts"] == {
        "items_read": 42,
        "items_ingested": 40,
        "items_deferred": 2,
        "items_quarantined": 0,
        "items_superseded": 0,
        "interactions_read": 180,
        "interactions_ingested": 168,
        "interactions_deferred": 8,
        "interactions_quarantined": 4,
        "interactions_superseded": 0,
    }
    # The ingest report's per-input table, on both pages.
    assert [(row["input"], row["rows"]) for row in written["ingest_inputs"]] == [
        ("/in/catalog.csv", 42),
        ("/in/interactions.csv", 180),
    ]
    page = (config.reports_dir / DAY / "run.md").read_text()
    assert "| /in/interactions.csv | interactions | source | 181 | 180 | 168 | 8 | 4 | 0 |" in page
    assert "<td>/in/catalog.csv</td>" in (config.reports_dir / DAY / "run.html").read_text()
    for modality, (ok, failed, missing, up_to_date, seconds, extract_seconds) in EXTRACTS.items():
        stage = stages[f"extract_{modality}"]
        assert (stage["seconds"], stage["work_seconds"]) == (seconds, extract_seconds)
        assert stage["counts"] == {
            "catalog_items": 40,
            "extracted": ok + failed,
            "skipped_up_to_date": up_to_date,
            "ok": ok,
            "failed": failed,
            "no_media": missing,
        }
    assert stages["fuse"]["counts"] == {
        "catalog_items": 40,
        "fused_items": 40,
        "items_with_image": 36,
        "items_with_text": 40,
    }
    assert stages["train"]["counts"] == {
        "training_pairs": 168,
        "training_users": 20,
        "training_items": 40,
        "epochs": 3,
    }
    assert (stages["train"]["seconds"], stages["train"]["work_seconds"]) == (20.25, 12.5)
    assert stages["evaluate_tiny"]["seconds"] == 80.0
    assert stages["evaluate_demo"]["detail"] == "protocols item_cold_20, random_75_25; 1 of 1 targets met"
    assert stages["publish"]["counts"]["published_rows"] == 200 and stages["publish"]["counts"]["users"] == 20
    assert stages["ingest"]["links"] == ["ingest.md", "ingest.json"]
    assert stages["evaluate_demo"]["links"] == ["evaluate_demo.html", "evaluate_demo.md", "evaluate_demo.json"]

    # By stage, most rows first, ties by reason; the day before is not counted.
    assert written["quarantine"] == [
        {"stage": "extract_image", "reason": "undecodable image", "rows": 2},
        {"stage": "import_mmtf_avf", "reason": "unknown item id", "rows": 1},
        {"stage": "ingest", "reason": "unknown item id", "rows": 2},
        {"stage": "ingest", "reason": "duplicate interaction", "rows": 1},
        {"stage": "ingest", "reason": "missing user id", "rows": 1},
    ]
    # The ingest report's own count agrees with the table's.
    ingest_rows = {q["reason"]: q["rows"] for q in written["quarantine"] if q["stage"] == "ingest"}
    assert ingest_rows == INGEST.quarantine_by_reason

    evaluation = {e["dataset"]: e["tables"] for e in written["evaluation"]}
    assert set(evaluation) == set(NDCG)
    for dataset, values in NDCG.items():
        for (protocol, model), ndcg in values.items():
            row = next(r for r in evaluation[dataset][protocol] if r["model"] == model)
            assert row["ndcg@10"] == pytest.approx(ndcg) and row["recall@20"] == pytest.approx(ndcg / 2)
    assert [r["model"] for r in evaluation["demo"]["random_75_25"]] == ["ranker", "popularity"]  # best first

    assert written["gate"]["passed"] is True and written["gate"]["previous_ds"] == "2026-11-24"
    assert written["gate"]["drift"]["changed_share"]["users_changed"] == 3


def test_the_html_page_is_self_contained_with_checks_tables_plots_and_links(config):
    write_stage_reports(config)
    write_quarantine(config)
    write_run_report(config, DS)
    page = (config.reports_dir / DAY / "run.html").read_text()

    for check in CHECKS:
        assert check.name in page
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 2  # seconds per stage, quarantined rows by reason
    assert all(base64.b64decode(image).startswith(b"\x89PNG\r\n\x1a\n") for image in images)
    assert not re.search(r'(src|href)="(https?:|/)', page)  # nothing loads from elsewhere
    assert '<a href="evaluate_tiny.html">' in page and '<a href="publish.md">' in page
    assert "0.4276" in page and "undecodable image" in page
    assert "Every stage reported." in page

    text = (config.reports_dir / DAY / "run.md").read_text()
    assert "| ranker | 0.4276 | 0.2138 |" in text
    assert "| coverage | pass | 31 of 38 available items are in some list |" in text


def test_stages_without_reports_are_shown_as_missing_and_the_page_is_still_written(config, capsys, monkeypatch):
    # `main` configures itself as the DAG's task would: imported modalities come from the environment.
    monkeypatch.setenv("MODALRANK_IMPORTED_VECTORS", json.dumps(config.imported_vectors))
    write_stage_reports(config, skip=[s for s in STAGES if s not in ("ingest", "extract_text")])
    (config.reports_dir / DAY / "fuse.json").write_text('{"ds": "2026-11-25", "ite')  # killed mid-write

    assert main(["--ds", DAY, "--lake", config.lake]) == 0
    assert capsys.readouterr().out.strip() == str(config.reports_dir / DAY / "run.html")
    written = json.loads((config.reports_dir / DAY / "run.json").read_text())
    stages = stages_by_name(written)

    # The configured import is expected even without its report; without any evaluate_<dataset>.json
    # one evaluate row stands for them.
    assert list(stages) == [*STAGES[:8], "evaluate", "publish"]
    missing = [name for name, stage in stages.items() if stage["status"] == "missing"]
    assert missing == [
        "extract_image",
        "extract_audio",
        "extract_video",
        "extract_mmtf_avf",
        "train",
        "evaluate",
        "publish",
    ]
    assert all(stages[name]["detail"] == NO_REPORT and stages[name]["links"] == [] for name in missing)
    assert stages["fuse"]["status"] == "unreadable" and "JSONDecodeError" in stages["fuse"]["detail"]
    assert stages["ingest"]["counts"]["interactions_ingested"] == 168
    assert written["complete"] is False and len(written["problems"]) == len(missing) + 1
    assert written["quarantine"] == [] and written["quarantine_note"] == "the lake has no quarantine table yet"
    assert written["gate"] is None and written["evaluation"] == []

    page = (config.reports_dir / DAY / "run.html").read_text()
    assert page.count(f"MISSING: {NO_REPORT}") == len(missing)
    assert "data:image/png;base64," in page  # the two stages that ran are still plotted
    # The DAG can ask for a failed task after the report is written.
    assert main(["--ds", DAY, "--lake", config.lake, "--fail-if-incomplete"]) == 1


def test_a_failed_gate_is_shown_as_failed_with_nothing_published(config):
    write_stage_reports(config, checks=[*CHECKS[:-1], FAILED_COVERAGE])
    run = write_run_report(config, DS)

    assert run.complete is False
    assert run.gate["passed"] is False and run.gate["published"] is False
    assert run.problems == ["publish: quality gate FAILED (coverage): nothing published"]
    publish_stage = next(stage for stage in run.stages if stage.stage == "publish")
    assert publish_stage.status == "reported" and publish_stage.counts["published_rows"] == 0
    page = (config.reports_dir / DAY / "run.html").read_text()
    assert re.search(r"<td>coverage</td><td class=\"missed\">FAIL</td>", page)
    assert page.count('class="missed">FAIL</td>') == 1
    assert "Gate FAILED: nothing published." in page


def test_an_ingest_input_that_does_not_add_up_is_a_problem():
    payload = json.loads(json.dumps(asdict(INGEST)))
    payload["inputs"][1]["quarantined"] = 3  # one row unaccounted for
    run = build_run_report(DAY, "now", {"ingest": payload}, "no table", [], set())
    assert "ingest: /in/interactions.csv: 180 rows read, 179 accounted for" in run.problems
    assert not run.complete
