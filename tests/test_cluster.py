"""The nightly DAG end to end, as a deployment runs it: pointed at a Spark standalone cluster
(infra/cluster.sh) by its connection alone, it lands every table, report and artifact, publishes the
same lists as local mode does, and triggers the consumer DAG, which reads that date.

The cluster is real: a master and two one-core workers on 127.0.0.1, started from the pyspark wheel;
every Spark job of the DAG is an application on it, its Python code running in executors that the
workers launched. Nothing in the DAG or the jobs changes for it but the `modalrank_spark` connection
(and a spark-defaults.conf for the executors' memory, as a real cluster's submit host would have).

This is the suite's one full DAG run (the slowest test: nine cold Spark applications); local mode's
lists come from the same stages run in-process, and `infra/demo.sh` runs the DAG in local mode.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO_ROOT, SMALL_DEMO, run_airflow

from jobs import lake
from jobs.config import load_config
from jobs.consume import read_date
from jobs.schemas import (
    CATALOG,
    INTERACTIONS,
    ITEM_VECTORS,
    METRICS,
    QUARANTINE,
    features_table,
)

pytestmark = [pytest.mark.cluster, pytest.mark.airflow]

NIGHTLY = "modalrank_nightly"
CONSUMER = "modalrank_consumer_example"
# One application per Spark task of the nightly DAG, named by the job's own session (jobs/*.py).
APPLICATIONS = {
    "modalrank-ingest",
    "modalrank-extract-text",
    "modalrank-extract-image",
    "modalrank-extract-audio",
    "modalrank-extract-video",
    "modalrank-fuse",
    "modalrank-train",
    "modalrank-evaluate",
    "modalrank-publish",
}
EXECUTOR_MEMORY_MB = 1536
K = 5


def _cluster(command: str, state: Path) -> str:
    result = subprocess.run(
        ["bash", str(REPO_ROOT / "infra" / "cluster.sh"), command],
        env={**os.environ, "MODALRANK_CLUSTER_DIR": str(state)},
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, f"cluster.sh {command} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout.strip()


@pytest.fixture(scope="module")
def spark_cluster(tmp_path_factory):
    """A running standalone cluster in its own state folder (never a developer's .cache/spark-cluster),
    stopped after the module whatever happened."""
    state = tmp_path_factory.mktemp("spark-cluster")
    try:
        master_url = _cluster("start", state)
        # Started twice: the second call finds it running and only reports the URL.
        assert _cluster("start", state) == master_url
        yield {"master_url": master_url, "webui_url": (state / "webui_url").read_text().strip(), "state": state}
    finally:
        daemons = [int(pid_file.read_text()) for pid_file in state.glob("*.pid")]
        _cluster("stop", state)
        assert not list(state.glob("*.pid")), "cluster.sh stop left pid files behind"
        assert [pid for pid in daemons if _running(pid)] == [], "a daemon outlived cluster.sh stop"


def _running(pid: int) -> bool:
    """Whether the process runs: an exited daemon can linger as a zombie until init reaps it."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in {"Z", "X"}


def _master_view(webui_url: str) -> dict:
    with urllib.request.urlopen(f"{webui_url}/json/", timeout=10) as response:
        return json.load(response)


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO_ROOT / "dags"))


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


def _local_mode_lists(spark, demo: Path, lake: Path) -> pd.DataFrame:
    """The lists local mode publishes for the date: the DAG's stages with its arguments, run in this
    process on the shared local session (as `modalrank backfill` runs them) rather than as a second DAG
    run, which would double the test's time. `evaluate` and the run report are left out: publish reads
    nothing they write."""
    from jobs.backfill import BackfillPlan, run_date
    from jobs.ingest import IngestRequest

    config = load_config(lake=str(lake))
    sources = IngestRequest(
        ds=SMALL_DEMO.end_date, catalog=demo / "catalog.csv", interactions=demo / "interactions.csv"
    )
    plan = BackfillPlan(
        SMALL_DEMO.end_date,
        SMALL_DEMO.end_date,
        sources,
        stages=("ingest", "extract", "fuse", "train", "publish"),
        k=K,
    )
    # The session was started with the tests' shuffle size; the DAG's jobs run with the configured one.
    tests_shuffle = spark.conf.get("spark.sql.shuffle.partitions")
    spark.conf.set("spark.sql.shuffle.partitions", str(config.shuffle_partitions))
    try:
        run_date(spark, config, plan, SMALL_DEMO.end_date)
    finally:
        spark.conf.set("spark.sql.shuffle.partitions", tests_shuffle)
    return read_date(lake / "recommendations", SMALL_DEMO.end_date)


@pytest.mark.spark
def test_nightly_dag_runs_end_to_end_on_a_standalone_cluster_as_local_mode_would(
    dagbag, airflow_db, spark, small_demo, spark_cluster, tmp_path, monkeypatch
):
    master_url = spark_cluster["master_url"]
    webui_url = spark_cluster["webui_url"]
    view = _master_view(webui_url)
    assert view["status"] == "ALIVE" and view["url"] == master_url
    assert sorted(worker["cores"] for worker in view["workers"] if worker["state"] == "ALIVE") == [1, 1]

    local = _local_mode_lists(spark, small_demo, tmp_path / "local" / "lake")
    assert len(local) and (local.groupby("user_id").size() == K).all()

    # Only the connection changes; the hook reads it when each task runs. Settings the DAG does not
    # pass come from spark-defaults.conf in SPARK_CONF_DIR, as on any cluster's submit host.
    host, port = master_url.rsplit(":", 1)
    monkeypatch.setenv(
        "AIRFLOW_CONN_MODALRANK_SPARK", json.dumps({"conn_type": "spark", "host": host, "port": int(port)})
    )
    spark_conf_dir = tmp_path / "spark-conf"
    spark_conf_dir.mkdir()
    (spark_conf_dir / "spark-defaults.conf").write_text(f"spark.executor.memory {EXECUTOR_MEMORY_MB}m\n")
    monkeypatch.setenv("SPARK_CONF_DIR", str(spark_conf_dir))
    # As a scheduler would have them: both DAGs serialized, the consumer unpaused and waiting.
    run_airflow("dags", "reserialize")
    run_airflow("dags", "unpause", CONSUMER)
    config = load_config(lake=str(tmp_path / "cluster" / "lake"))
    run = dagbag.dags[NIGHTLY].test(
        logical_date=dt.datetime.combine(SMALL_DEMO.end_date, dt.time(), tzinfo=dt.UTC),
        run_conf={
            "lake": config.lake,
            "catalog": str(small_demo / "catalog.csv"),
            "interactions": str(small_demo / "interactions.csv"),
            "k": K,
            "full_evaluation": True,  # the end date is not a training date: ask for every protocol
        },
    )
    assert run.state == "success"

    # The master ran every job: one finished application each, with executors on both workers.
    applications = _master_view(webui_url)["completedapps"]
    assert sorted(app["name"] for app in applications) == sorted(APPLICATIONS)
    assert {app["state"] for app in applications} == {"FINISHED"}
    assert {app["memoryperexecutor"] for app in applications} == {EXECUTOR_MEMORY_MB}
    state = spark_cluster["state"]
    workers_used = {path.relative_to(state).parts[0] for path in state.glob("worker-*/work/app-*/*/stderr")}
    assert workers_used == {"worker-1", "worker-2"}

    # The same lists, by the same model, for the same date, as in local mode.
    clustered = read_date(Path(config.lake) / "recommendations", SMALL_DEMO.end_date)
    key = ["ds", "user_id", "rank", "item_id", "model_version", "generated_at"]
    assert clustered[key].equals(local[key])
    assert clustered.modalities.map(list).equals(local.modalities.map(list))
    assert np.array_equal(clustered.score.to_numpy(), local.score.to_numpy())

    # Every stage's tables, reports and artifacts.
    assert lake.read_table(spark, config, CATALOG).count() == SMALL_DEMO.items
    interactions = lake.read_table(spark, config, INTERACTIONS)
    assert interactions.count() == sum(1 for _ in (small_demo / "interactions.csv").open()) - 1 - 4
    assert lake.read_table(spark, config, QUARANTINE).count() == 4
    reports = config.reports_dir / SMALL_DEMO.end_date.isoformat()
    assert (reports / "ingest.md").is_file()
    for modality in ("text", "image", "audio", "video"):
        features = lake.read_table(spark, config, features_table(modality))
        assert features.count() == SMALL_DEMO.items
        assert features.where("status = 'failed'").count() == 0
        assert (reports / f"extract_{modality}.md").is_file()
    # The run date's vectors (fuse also writes those of its training date, the Sunday before, for train).
    vectors = lake.read_table(spark, config, ITEM_VECTORS).where(f"fused_ds = '{SMALL_DEMO.end_date}'")
    assert vectors.count() == SMALL_DEMO.items
    assert vectors.select("layout").first()["layout"] == ["audio", "image", "text", "video"]
    # The ranker's artifact, and an evaluation of it against the baselines on all three protocols.
    pointer = json.loads((config.models_dir / "ranker" / "current.json").read_text())
    artifact = config.models_dir / "ranker" / pointer["version"]
    assert (artifact / "ranker.safetensors").is_file() and (artifact / "ranker.json").is_file()
    metrics = lake.read_table(spark, config, METRICS).where("dataset = 'demo'").toPandas()
    assert set(metrics.protocol) == {"random_75_25", "chrono_80_20", "item_cold_20"}
    assert {"ranker", "ease", "als", "item_knn", "popularity"} <= set(
        metrics[metrics.protocol == "random_75_25"].model
    )
    assert {"ranker", "random", "genre", "ranker-only-text", "ranker-without-text"} <= set(
        metrics[metrics.protocol == "item_cold_20"].model
    )
    assert (reports / "evaluate_demo.html").is_file() and (reports / "train.md").is_file()
    # Published: every eligible user has K items, the run report covers every stage, and the publish
    # put an Asset event in the consumer DAG's queue; the consumer then reads that date.
    assert set(clustered.ds) == {SMALL_DEMO.end_date}
    users = interactions.select("user_id").distinct().count()
    assert clustered.user_id.nunique() == users and (clustered.groupby("user_id").size() == K).all()
    run_card = json.loads((reports / "run.json").read_text())
    assert run_card["complete"], run_card["problems"]
    assert (reports / "run.html").is_file() and (reports / "publish.md").is_file()
    assert _queued_for(CONSUMER), "publishing queued no run of the consumer DAG"
    (extra,) = [e for e in _asset_event_extras("announce_publish") if e.get("lake") == config.lake]
    assert extra["ds"] == SMALL_DEMO.end_date.isoformat()
    assert extra["rows"] == len(clustered) and extra["model_version"] == clustered.model_version.iloc[0]
    # The consumer is not a Spark job: it runs in the Airflow worker, whatever the connection.
    consumer = dagbag.dags[CONSUMER].test(logical_date=dt.datetime.now(dt.UTC), run_conf={"lake": config.lake})
    assert consumer.state == "success"
    digest = pd.read_csv(
        Path(config.lake) / "_exports" / SMALL_DEMO.end_date.isoformat() / "recommendations_digest.csv"
    )
    counts = clustered.groupby("item_id").user_id.nunique()
    assert dict(zip(digest.item_id, digest.users, strict=True)) == counts.to_dict()
