"""The DAGs: they import cleanly, carry what operations needs, and really run end to end."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from conftest import REPO_ROOT, SMALL_DEMO

from jobs import lake
from jobs.schemas import (
    CATALOG,
    INTERACTIONS,
    ITEM_VECTORS,
    METRICS,
    QUARANTINE,
    RECOMMENDATIONS,
    features_table,
)

pytestmark = pytest.mark.airflow

NIGHTLY = "modalrank_nightly"
CONSUMER = "modalrank_consumer_example"


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    # Examples are off through AIRFLOW__CORE__LOAD_EXAMPLES (tests/conftest.py).
    return DagBag(dag_folder=str(REPO_ROOT / "dags"))


def test_every_dag_imports(dagbag):
    assert dagbag.import_errors == {}
    assert {NIGHTLY, CONSUMER} <= set(dagbag.dag_ids)


def test_every_dag_is_documented_owned_tagged_and_retried(dagbag):
    for dag_id, dag in dagbag.dags.items():
        assert dag.tags, f"{dag_id} has no tags"
        assert dag.doc_md and dag.description, f"{dag_id} is undocumented"
        for task in dag.tasks:
            assert task.owner == "modalrank", f"{dag_id}.{task.task_id} has owner {task.owner}"
            assert task.retries >= 1, f"{dag_id}.{task.task_id} never retries"
            assert task.execution_timeout is not None, f"{dag_id}.{task.task_id} has no timeout"


def test_nightly_schedule_and_stages(dagbag):
    dag = dagbag.dags[NIGHTLY]
    assert dag.catchup is False
    assert dag.max_active_runs == 1
    assert dag.schedule == "@daily"
    extractors = {f"extract_{m}" for m in ("text", "image", "audio", "video")}
    stages = {"ingest", "fuse", "train_ranker", "evaluate", "publish", "announce_publish", "run_report"}
    assert {task.task_id for task in dag.tasks} == stages | extractors
    # The extractors run in parallel, each right after ingestion; fusion waits for all of them.
    assert dag.get_task("ingest").downstream_task_ids == extractors
    for task_id in extractors:
        assert dag.get_task(task_id).upstream_task_ids == {"ingest"}
    assert dag.get_task("fuse").upstream_task_ids == extractors
    assert dag.get_task("train_ranker").upstream_task_ids == {"fuse"}
    assert dag.get_task("evaluate").upstream_task_ids == {"train_ranker"}
    assert dag.get_task("publish").upstream_task_ids == {"evaluate"}
    assert dag.get_task("announce_publish").upstream_task_ids == {"publish"}
    # The run report runs whatever happened upstream, and never turns a failed night into a success.
    report = dag.get_task("run_report")
    assert report.upstream_task_ids == {"announce_publish"} and report.is_teardown
    assert report.trigger_rule == "all_done_setup_success"


def test_publish_updates_the_asset_the_consumer_dag_is_scheduled_on(dagbag):
    outlets = dagbag.dags[NIGHTLY].get_task("announce_publish").outlets
    assert [asset.name for asset in outlets] == ["modalrank_recommendations"]
    assert outlets[0].uri.endswith("/recommendations")
    # Same name and URI on both sides: the consumer runs when publish updates the table.
    assert dagbag.dags[CONSUMER].timetable.asset_condition.objects == tuple(outlets)


def test_imported_vectors_add_one_task_each(monkeypatch):
    import importlib.util

    monkeypatch.setenv("MODALRANK_IMPORTED_VECTORS", '{"mmtf_avf": "/data/avf.csv"}')
    spec = importlib.util.spec_from_file_location(
        "nightly_with_imports", REPO_ROOT / "dags" / "modalrank_nightly.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    task = module.dag.get_task("import_mmtf_avf")
    assert task.upstream_task_ids == {"ingest"}
    assert "import_mmtf_avf" in module.dag.get_task("fuse").upstream_task_ids
    assert task.application.endswith("jobs/import_vectors.py")
    assert task.application_args[-4:] == ["--name", "mmtf_avf", "--vectors", "/data/avf.csv"]


def test_spark_tasks_submit_real_job_files_on_the_project_connection(dagbag):
    from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

    spark_tasks = [
        task for task in dagbag.dags[NIGHTLY].tasks if task.task_id not in {"announce_publish", "run_report"}
    ]
    assert len(spark_tasks) == 9
    for task in spark_tasks:
        assert isinstance(task, SparkSubmitOperator)
        assert task._conn_id == "modalrank_spark"
        assert task.pool == "modalrank_spark"  # capped concurrency, whatever the executor allows
        assert Path(task.application).is_file()
        assert "--ds" in task.application_args
        assert task.conf["spark.sql.extensions"] == "io.delta.sql.DeltaSparkSessionExtension"
        assert "delta-spark_" in task.jars


def _airflow(*arguments: str) -> None:
    import subprocess
    import sys

    airflow = Path(sys.executable).parent / "airflow"
    result = subprocess.run([str(airflow), *arguments], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def _queued_for(dag_id: str) -> list:
    """Asset events waiting to trigger `dag_id`: what the scheduler turns into an asset-triggered run."""
    from airflow.models.asset import AssetDagRunQueue
    from airflow.utils.session import create_session

    with create_session() as session:
        return [row.asset_id for row in session.query(AssetDagRunQueue).filter_by(target_dag_id=dag_id)]


def _asset_event_extras(source_task_id: str) -> list[dict]:
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session

    with create_session() as session:
        return [event.extra for event in session.query(AssetEvent).filter_by(source_task_id=source_task_id)]


@pytest.mark.spark
def test_nightly_dag_runs_end_to_end_on_demo_data(dagbag, airflow_db, spark, lake_config, small_demo):
    import pandas as pd

    # As a scheduler would have them: both DAGs serialized, the consumer unpaused and waiting.
    _airflow("dags", "reserialize")
    _airflow("dags", "unpause", CONSUMER)
    run = dagbag.dags[NIGHTLY].test(
        logical_date=dt.datetime.combine(SMALL_DEMO.end_date, dt.time(), tzinfo=dt.UTC),
        run_conf={
            "lake": lake_config.lake,
            "catalog": str(small_demo / "catalog.csv"),
            "interactions": str(small_demo / "interactions.csv"),
            "k": 5,
        },
    )
    assert run.state == "success"
    assert lake.read_table(spark, lake_config, CATALOG).count() == SMALL_DEMO.items
    interactions = lake.read_table(spark, lake_config, INTERACTIONS)
    assert interactions.count() == sum(1 for _ in (small_demo / "interactions.csv").open()) - 1 - 4
    assert lake.read_table(spark, lake_config, QUARANTINE).count() == 4
    reports = lake_config.reports_dir / SMALL_DEMO.end_date.isoformat()
    assert (reports / "ingest.md").is_file()
    for modality in ("text", "image", "audio", "video"):
        features = lake.read_table(spark, lake_config, features_table(modality))
        assert features.count() == SMALL_DEMO.items
        assert features.where("status = 'failed'").count() == 0
        assert (reports / f"extract_{modality}.md").is_file()
    # The run date's vectors (fuse also writes those of its training date, the Sunday before, for train).
    vectors = lake.read_table(spark, lake_config, ITEM_VECTORS).where(f"fused_ds = '{SMALL_DEMO.end_date}'")
    assert vectors.count() == SMALL_DEMO.items
    assert vectors.select("layout").first()["layout"] == ["audio", "image", "text", "video"]
    # The ranker's artifact, and an evaluation of it against the baselines on all three protocols.
    pointer = json.loads((Path(lake_config.lake) / "_models" / "ranker" / "current.json").read_text())
    artifact = Path(lake_config.lake) / "_models" / "ranker" / pointer["version"]
    assert (artifact / "ranker.safetensors").is_file() and (artifact / "ranker.json").is_file()
    metrics = lake.read_table(spark, lake_config, METRICS).where("dataset = 'demo'").toPandas()
    assert set(metrics.protocol) == {"random_75_25", "chrono_80_20", "item_cold_20"}
    assert {"ranker", "ease", "als", "item_knn", "popularity"} <= set(
        metrics[metrics.protocol == "random_75_25"].model
    )
    assert {"ranker", "random", "genre", "ranker-only-text", "ranker-without-text"} <= set(
        metrics[metrics.protocol == "item_cold_20"].model
    )
    assert (reports / "evaluate_demo.html").is_file() and (reports / "train.md").is_file()
    # Published: every eligible user has K = 5 items, the run report covers every stage, and the
    # publish put an Asset event in the consumer DAG's queue; the consumer then reads that date.
    lists = lake.read_table(spark, lake_config, RECOMMENDATIONS).toPandas()
    assert set(lists.ds) == {SMALL_DEMO.end_date}
    users = lake.read_table(spark, lake_config, INTERACTIONS).select("user_id").distinct().count()
    assert lists.user_id.nunique() == users and (lists.groupby("user_id").size() == 5).all()
    run_card = json.loads((reports / "run.json").read_text())
    assert run_card["complete"], run_card["problems"]
    assert (reports / "run.html").is_file() and (reports / "publish.md").is_file()
    assert _queued_for(CONSUMER), "publishing queued no run of the consumer DAG"
    # This run's event: the Airflow database is shared with the other DAG tests (the cluster test
    # publishes too), so pick the one naming this test's lake.
    (extra,) = [e for e in _asset_event_extras("announce_publish") if e.get("lake") == lake_config.lake]
    assert extra["ds"] == SMALL_DEMO.end_date.isoformat() and extra["lake"] == lake_config.lake
    assert extra["rows"] == len(lists) and extra["model_version"] == lists.model_version.iloc[0]
    consumer = dagbag.dags[CONSUMER].test(
        logical_date=dt.datetime.now(dt.UTC), run_conf={"lake": lake_config.lake}
    )
    assert consumer.state == "success"
    digest = pd.read_csv(
        Path(lake_config.lake) / "_exports" / SMALL_DEMO.end_date.isoformat() / "recommendations_digest.csv"
    )
    counts = lists.groupby("item_id").user_id.nunique()
    assert dict(zip(digest.item_id, digest.users, strict=True)) == counts.to_dict()
