"""The DAGs: they import cleanly, carry what operations needs, and really run end to end."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from conftest import REPO_ROOT, SMALL_DEMO

from jobs import lake
from jobs.schemas import CATALOG, INTERACTIONS, ITEM_VECTORS, METRICS, QUARANTINE, features_table

pytestmark = pytest.mark.airflow

NIGHTLY = "modalrank_nightly"


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    # Examples are off through AIRFLOW__CORE__LOAD_EXAMPLES (tests/conftest.py).
    return DagBag(dag_folder=str(REPO_ROOT / "dags"))


def test_every_dag_imports(dagbag):
    assert dagbag.import_errors == {}
    assert NIGHTLY in dagbag.dag_ids


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
    assert {task.task_id for task in dag.tasks} == {"ingest", "fuse", "train_ranker", "evaluate"} | extractors
    # The extractors run in parallel, each right after ingestion; fusion waits for all of them.
    assert dag.get_task("ingest").downstream_task_ids == extractors
    for task_id in extractors:
        assert dag.get_task(task_id).upstream_task_ids == {"ingest"}
    assert dag.get_task("fuse").upstream_task_ids == extractors
    assert dag.get_task("train_ranker").upstream_task_ids == {"fuse"}
    assert dag.get_task("evaluate").upstream_task_ids == {"train_ranker"}


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

    for task in dagbag.dags[NIGHTLY].tasks:
        assert isinstance(task, SparkSubmitOperator)
        assert task._conn_id == "modalrank_spark"
        assert Path(task.application).is_file()
        assert "--ds" in task.application_args
        assert task.conf["spark.sql.extensions"] == "io.delta.sql.DeltaSparkSessionExtension"
        assert "delta-spark_" in task.jars


@pytest.mark.spark
def test_nightly_dag_runs_end_to_end_on_demo_data(dagbag, airflow_db, spark, lake_config, small_demo):
    run = dagbag.dags[NIGHTLY].test(
        logical_date=dt.datetime.combine(SMALL_DEMO.end_date, dt.time(), tzinfo=dt.UTC),
        run_conf={
            "lake": lake_config.lake,
            "catalog": str(small_demo / "catalog.csv"),
            "interactions": str(small_demo / "interactions.csv"),
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
    vectors = lake.read_table(spark, lake_config, ITEM_VECTORS)
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
