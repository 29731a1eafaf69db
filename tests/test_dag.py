"""The DAGs: they import cleanly and carry what operations needs. The nightly DAG's end-to-end run (and the
consumer DAG it triggers) is in tests/test_cluster.py, on a standalone cluster: one full DAG run per suite."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REPO_ROOT

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


def test_every_param_the_stages_pass_is_a_param_of_the_nightly_dag(dagbag):
    from jobs import stages

    params = set(dagbag.dags[NIGHTLY].params)
    for stage in stages.STAGES:
        for job in stage.jobs:
            for item in job.items({"mmtf_avf": "/data/avf.csv"}):
                for argument in job.arguments:
                    if argument.flag and argument.template is None and argument.value not in item:
                        assert argument.value in params, (
                            f"{job.task_id(item)} passes {argument.flag} from no Param"
                        )
