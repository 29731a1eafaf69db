"""Cluster mode: the nightly DAG, pointed at a Spark standalone cluster (infra/cluster.sh) by its
connection alone, publishes the same lists as local mode does.

The cluster is real: a master and two one-core workers on 127.0.0.1, started from the pyspark wheel;
every Spark job of the DAG is an application on it, its Python code running in executors that the
workers launched. Nothing in the DAG or the jobs changes for it but the `modalrank_spark` connection
(and a spark-defaults.conf for the executors' memory, as a real cluster's submit host would have).
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
from conftest import REPO_ROOT, SMALL_DEMO

from jobs.consume import read_date

pytestmark = [pytest.mark.cluster, pytest.mark.airflow]

NIGHTLY = "modalrank_nightly"
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
def nightly():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO_ROOT / "dags")).dags[NIGHTLY]


def _local_mode_lists(spark, demo: Path, lake: Path) -> pd.DataFrame:
    """The lists local mode publishes for the date: the DAG's stages with its arguments, run in this
    process on the shared local session (as `modalrank backfill` runs them) rather than as a second DAG
    run, which would double the test's time. `evaluate` and the run report are left out: publish reads
    nothing they write."""
    from jobs.backfill import BackfillPlan, run_date
    from jobs.config import load_config
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
def test_nightly_dag_on_a_standalone_cluster_publishes_what_local_mode_does(
    nightly, airflow_db, spark, small_demo, spark_cluster, tmp_path, monkeypatch
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
    cluster_lake = tmp_path / "cluster" / "lake"
    run = nightly.test(
        logical_date=dt.datetime.combine(SMALL_DEMO.end_date, dt.time(), tzinfo=dt.UTC),
        run_conf={
            "lake": str(cluster_lake),
            "catalog": str(small_demo / "catalog.csv"),
            "interactions": str(small_demo / "interactions.csv"),
            "k": K,
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
    clustered = read_date(cluster_lake / "recommendations", SMALL_DEMO.end_date)
    key = ["ds", "user_id", "rank", "item_id", "model_version", "generated_at"]
    assert clustered[key].equals(local[key])
    assert clustered.modalities.map(list).equals(local.modalities.map(list))
    assert np.array_equal(clustered.score.to_numpy(), local.score.to_numpy())
