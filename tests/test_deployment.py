"""The production-shaped Airflow of infra/airflow.sh, as a data team runs it: a real PostgreSQL server, and
the scheduler, DAG processor, triggerer and API server as separate processes with the LocalExecutor.

One test puts all of it through its paces at once: the nightly is triggered through the REST API, an
`airflow backfill create` of the two dates before it starts beside it, and the scheduler is killed with
SIGKILL while a Spark task runs, then started again by `infra/airflow.sh start`. Every run must still
succeed, with the rows an in-process backfill of the same dates publishes (conftest's `backfilled_lake`;
the release tier shows that `dag.test()` publishes those rows too), and the database must never have
answered with an error. The next date's night is then stopped by its quality gate, and the alerts
(jobs.alerts) reach a local receiver: one for that failed night, and one per night past a one-minute
deadline. The OpenLineage events the tasks left draw the night's graph of tables.
"""

from __future__ import annotations

import datetime as dt
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from conftest import BACKFILL_DATES, BACKFILL_K, REPO_ROOT, SHORT_LIVED_JVM, AlertReceiver

from infra.tools.airflow_api import NIGHTLY, AirflowApi
from jobs import lake
from jobs.schemas import RECOMMENDATIONS

pytestmark = [pytest.mark.deployment, pytest.mark.spark]

# Three nights through two Spark slots on two cores.
RUNS_TIMEOUT_S = 45 * 60
# What the metadata database must never answer (SQLite's "database is locked" was the reason to move).
DATABASE_ERRORS = ("database is locked", "OperationalError", "deadlock detected", "could not serialize access")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Deployment:
    folder: Path
    env: dict[str, str]
    api: AirflowApi

    def script(self, *arguments: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", str(REPO_ROOT / "infra" / "airflow.sh"), *arguments],
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
        )

    def must(self, *arguments: str) -> str:
        result = self.script(*arguments)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return result.stdout

    def pid(self, component: str) -> int:
        return int((self.folder / "run" / f"{component}.pid").read_text())


@pytest.fixture(scope="module")
def receiver():
    receiver = AlertReceiver()
    yield receiver
    receiver.close()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, receiver):
    if not glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        pytest.skip("no PostgreSQL server programs: infra/setup.sh installs Debian's postgresql when run as root")
    folder = tmp_path_factory.mktemp("deployment")
    # PostgreSQL runs as the `postgres` user, which pytest's private temporary root keeps out.
    postgres_data = Path(tempfile.mkdtemp(prefix="modalrank-postgres-"))
    api_port = _free_port()
    env = {
        **os.environ,
        **SHORT_LIVED_JVM,  # every Spark job is a JVM of a minute or less
        "MODALRANK_ALERT_TARGET": receiver.url,
        "MODALRANK_NIGHT_DEADLINE_MINUTES": "1",
        "MODALRANK_AIRFLOW_DEPLOYMENT": str(folder),
        "MODALRANK_AIRFLOW_PORT": str(api_port),
        "MODALRANK_POSTGRES_PORT": str(_free_port()),
        "MODALRANK_POSTGRES_DATA": str(postgres_data),
        # Only the runs the test starts: no scheduled run of today's date on the demo data.
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
        # Two Spark jobs at a time: the three nights overlap as they would on a larger machine.
        "MODALRANK_SPARK_POOL_SLOTS": "2",
    }
    deployment = Deployment(folder, env, AirflowApi("", "", ""))
    try:
        deployment.must("start")
        deployment.api = AirflowApi.from_deployment(folder, f"http://127.0.0.1:{api_port}")
        yield deployment
    finally:
        stopped = deployment.script("stop")
        print(stopped.stdout, stopped.stderr)
        shutil.rmtree(postgres_data, ignore_errors=True)


def _running_spark_task(deployment: Deployment, run_ids: list[str], timeout: float) -> str:
    """The id of a task that is running a spark-submit, once one is (polling the API and the processes)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for run_id in run_ids:
            for task in deployment.api.task_instances(NIGHTLY, run_id):
                if task["state"] == "running" and task["operator"] == "ModalrankSparkJob":
                    submits = subprocess.run(["pgrep", "-f", "SparkSubmit"], capture_output=True, text=True)
                    if submits.stdout.strip():
                        return f"{run_id}/{task['task_id']}"
        time.sleep(2)
    raise AssertionError(f"no Spark task ran within {timeout} s")


def _partition(spark, config, ds: dt.date) -> pd.DataFrame:
    rows = lake.read_table(spark, config, RECOMMENDATIONS).where(f"ds = '{ds.isoformat()}'").toPandas()
    rows["modalities"] = rows["modalities"].map(list)
    return rows.sort_values(["user_id", "rank"], ignore_index=True)


def test_a_nightly_and_a_backfill_beside_it_survive_a_killed_scheduler_and_failures_alert(
    deployment, receiver, small_demo, spark, tmp_path, request
):
    from jobs.config import load_config

    nightly_ds, backfill_from, backfill_to = BACKFILL_DATES[-1], BACKFILL_DATES[0], BACKFILL_DATES[-2]
    next_ds = nightly_ds + dt.timedelta(days=1)
    config = load_config(lake=str(tmp_path / "lake"), shuffle_partitions=2)
    conf = {
        "lake": config.lake,
        "catalog": str(small_demo / "catalog.csv"),
        "interactions": str(small_demo / "interactions.csv"),
        "k": BACKFILL_K,
        "train_every_days": 7,
    }
    health = deployment.api.health()
    assert {health[part]["status"] for part in ("metadatabase", "scheduler", "triggerer", "dag_processor")} == {
        "healthy"
    }
    assert "postgresql" in deployment.must("cli", "config", "get-value", "database", "sql_alchemy_conn")
    assert deployment.must("cli", "config", "get-value", "core", "executor").strip() == "LocalExecutor"

    # The nightly through the REST API; a param that breaks its rules is refused before any run exists.
    with pytest.raises(Exception, match="HTTP 400"):
        deployment.api.trigger(NIGHTLY, nightly_ds, {**conf, "k": 0})
    nightly = deployment.api.trigger(NIGHTLY, nightly_ds, conf)["dag_run_id"]
    # The next night, whose gate asks for every item listed and no list changed: it must fail, and alert.
    gated = deployment.api.trigger(NIGHTLY, next_ds, {**conf, "min_coverage": 1.0, "max_changed_share": 0.0})
    # The two dates before it, as a data engineer backfills them while the nightly is active.
    deployment.must(
        "cli",
        "backfill",
        "create",
        "--dag-id",
        NIGHTLY,
        "--from-date",
        backfill_from.isoformat(),
        "--to-date",
        backfill_to.isoformat(),
        "--dag-run-conf",
        json.dumps(conf),
    )
    backfills = [f"backfill__{ds.isoformat()}T00:00:00+00:00" for ds in BACKFILL_DATES[:-1]]
    assert deployment.api.run(NIGHTLY, nightly)["state"] in ("queued", "running")

    # SIGKILL the scheduler while a Spark task runs; `start` brings back only what is down.
    running = _running_spark_task(deployment, [nightly, *backfills], timeout=600)
    killed = deployment.pid("scheduler")
    os.kill(killed, signal.SIGKILL)
    time.sleep(5)
    status = deployment.script("status")
    assert status.returncode != 0 and "scheduler: not running" in status.stdout, status.stdout
    restarted = deployment.must("start")
    assert "api-server: already running" in restarted and f"pid {killed} had died" in restarted
    assert deployment.pid("scheduler") != killed

    run_ids = [nightly, *backfills, gated["dag_run_id"]]
    finished = {
        run_id: deployment.api.wait(NIGHTLY, run_id, timeout=RUNS_TIMEOUT_S, poll=10, echo=lambda _: None)
        for run_id in run_ids
    }
    states = {run_id: run["state"] for run_id, run in finished.items()}
    assert states == {**dict.fromkeys(run_ids[:-1], "success"), run_ids[-1]: "failed"}, running
    assert [run["logical_date"][:10] for run in finished.values()] == [
        ds.isoformat() for ds in (nightly_ds, backfill_from, backfill_to, next_ds)
    ]

    # Every date published what the in-process backfill of the same dates publishes, bit for bit, although
    # the scheduler ran the newest date first, the older two beside it, and lost its scheduler meanwhile.
    reference = request.getfixturevalue("backfilled_lake")
    for ds in BACKFILL_DATES:
        mine, theirs = _partition(spark, config, ds), _partition(spark, reference.config, ds)
        assert len(mine) > 0
        pd.testing.assert_frame_equal(mine, theirs, check_exact=True)
    assert len(_partition(spark, config, next_ds)) == 0  # the gate let nothing through

    # One alert for the failed night, naming the gate's stage and reason and the run report, sent by the
    # DAG processor; one per night past its one-minute deadline, sent by the triggerer.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any(a["kind"] == "failed" for a in receiver.received):
        time.sleep(2)
    (failed,) = [alert for alert in receiver.received if alert["kind"] == "failed"]
    assert failed["ds"] == next_ds.isoformat() and failed["run_id"] == gated["dag_run_id"]
    assert failed["stages"] == ["publish"] and "quality gate" in failed["reasons"][0]
    assert failed["report"] == str(config.reports_dir / next_ds.isoformat() / "run.html")
    assert (config.reports_dir / next_ds.isoformat() / "run.html").is_file()
    late = [alert["run_id"] for alert in receiver.received if alert["kind"] == "past_deadline"]
    assert nightly in late and len(late) == len(set(late)), late

    # Lineage: every Spark task's OpenLineage events name the tables it read and wrote, and together they
    # draw the night: catalog and interactions -> features_* -> item_vectors -> recommendations.
    edges = set()
    for path in (deployment.folder / "lineage").glob("event-*.json"):
        event = json.loads(path.read_text())
        if event.get("eventType") == "COMPLETE" and event["job"]["name"].startswith(f"{NIGHTLY}."):
            for source in event.get("inputs", []):
                for target in event.get("outputs", []):
                    edges.add((source["name"], target["name"]))
    table = config.table_path
    for edge in [
        ("catalog", "features_text"),
        ("catalog", "features_video"),
        ("features_text", "item_vectors"),
        ("features_audio", "item_vectors"),
        ("item_vectors", "recommendations"),
        ("interactions", "recommendations"),
    ]:
        assert (table(edge[0]), table(edge[1])) in edges, edge
    assert any(target == table("interactions") for _, target in edges)  # written by ingest

    # Inside the jobs, OpenLineage's Spark listener reported what Spark itself wrote, a file per task try,
    # each job's run a child of its Airflow task's.
    spark_events = [
        json.loads(line)
        for path in (deployment.folder / "lineage" / "spark" / NIGHTLY).rglob("*.jsonl")
        for line in path.read_text().splitlines()
    ]
    parent_jobs = [event["run"]["facets"].get("parent", {}).get("job", {}) for event in spark_events]
    parents = {job["name"] for job in parent_jobs if job.get("namespace") == "modalrank"}
    assert {
        f"{NIGHTLY}.{task}" for task in ("ingest", "extract_text", "fuse", "train_ranker", "publish")
    } <= parents
    written = {output["name"] for event in spark_events for output in event.get("outputs", [])}
    for name in ("catalog", "interactions", "features_text", "features_audio", "item_vectors", "recommendations"):
        assert table(name) in written, name

    # PostgreSQL took the scheduler, its restart and the backfill side by side without an error.
    logs = "\n".join(
        path.read_text(errors="replace") for path in (deployment.folder / "logs").rglob("*.log") if path.is_file()
    )
    for error in DATABASE_ERRORS:
        assert error not in logs, error
