"""Faults an operator meets: a failed gate retried as if it were flaky, a consumer reading a newer table
version than its event named, and `modalrank` starting Spark workers with the wrong Python.

Each test runs the real thing: spark-submit through the DAG's own operator, delta-rs on a real Delta
table with two versions, a real `modalrank`-style process in an environment without infra/env.sh.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest
from conftest import REPO_ROOT

from jobs.dag_common import SPARK_CONNECTION, ModalrankSparkJob

DS = dt.date(2026, 11, 29)

# A stand-in for jobs/publish.py under spark-submit: the real job_main, stopped either by a real
# PublishGateError or by an ordinary crash.
GATE_JOB = """
import sys
from jobs.publish_gate import PublishGateError
from jobs.spark import job_main


def run(args):
    if args.outcome == "gate":
        raise PublishGateError("publish 2026-11-29 stopped by the quality gate, nothing written: min_coverage")
    raise RuntimeError("an executor was lost")


def add_arguments(parser):
    parser.add_argument("--outcome", required=True)


raise SystemExit(job_main(None, add_arguments, run, sys.argv[1:]))
"""


def _load_dag(file_name: str):
    spec = importlib.util.spec_from_file_location(f"faults_{file_name}", REPO_ROOT / "dags" / f"{file_name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.airflow
@pytest.mark.parametrize("outcome", ["gate", "crash"])
def test_a_failed_gate_fails_the_task_without_retries_and_a_crash_is_retried(tmp_path, outcome):
    from airflow.sdk.exceptions import AirflowException, AirflowFailException

    nightly = _load_dag("modalrank_nightly")
    publish = nightly.dag.get_task("publish")
    assert type(publish) is ModalrankSparkJob and publish.retries == 2  # retried, unless the gate says no
    job = tmp_path / "gate_job.py"
    job.write_text(GATE_JOB)
    operator = ModalrankSparkJob(
        task_id="publish",
        conn_id=SPARK_CONNECTION,
        application=str(job),
        application_args=["--outcome", outcome],
        conf={"spark.pyspark.python": sys.executable},
        env_vars={"PYTHONPATH": str(REPO_ROOT)},  # the workers and driver import this checkout's jobs/
    )
    with pytest.raises(AirflowException) as failed:
        operator.execute({})
    if outcome == "gate":
        # AirflowFailException: the task fails now, its retries unused; the gate's reason is the message.
        assert type(failed.value) is AirflowFailException
        assert str(failed.value) == (
            "publish failed, not retried: publish 2026-11-29 stopped by the quality gate, nothing written: min_coverage"
        )
    else:
        assert not isinstance(failed.value, AirflowFailException)
        assert "Error code is: 1" in str(failed.value)


def _publish_twice(table: str) -> None:
    """`recommendations` with DS published twice (versions 0 and 1), as a rerun of the date leaves it."""
    import pyarrow as pa
    from deltalake import write_deltalake

    def lists(items: list[int], model: str) -> pa.Table:
        return pa.table(
            {
                "ds": [DS] * len(items),
                "user_id": [1] * len(items),
                "rank": list(range(1, len(items) + 1)),
                "item_id": items,
                "score": [1.0 / rank for rank in range(1, len(items) + 1)],
                "model_version": [model] * len(items),
            }
        )

    write_deltalake(table, lists([10, 11, 12], "ranker-aaaaaaaaaaaa"), partition_by=["ds"])
    write_deltalake(
        table, lists([20, 21], "ranker-bbbbbbbbbbbb"), mode="overwrite", predicate=f"ds = '{DS.isoformat()}'"
    )


def test_the_consumer_reads_exactly_the_version_its_event_names(tmp_path):
    import pandas as pd

    lake = tmp_path / "lake"
    _publish_twice(str(lake / "recommendations"))
    consumer = _load_dag("modalrank_consumer_example")
    # The extra as announce_publish writes it, for the first publish of the date (version 0).
    extra = {"ds": DS.isoformat(), "lake": str(lake), "artifacts": str(lake), "table_version": 0}
    [digest] = consumer.digest_events([extra])
    assert sorted(pd.read_csv(digest).item_id) == [10, 11, 12]  # not the newer version's [20, 21]
    [digest] = consumer.digest_events([{**extra, "table_version": 1}])
    assert sorted(pd.read_csv(digest).item_id) == [20, 21]
    # An event from before table_version was announced still reads (the newest version).
    [digest] = consumer.digest_events([{key: value for key, value in extra.items() if key != "table_version"}])
    assert sorted(pd.read_csv(digest).item_id) == [20, 21]


@pytest.mark.airflow
def test_announce_refuses_a_publish_result_it_did_not_write(tmp_path):
    """`publish.json` of the date, written by another run (a backfill of the same date that published
    after this run's publish) or for another lake, is never announced as this run's lists."""
    import collections
    import json
    import types

    from jobs.config import load_config
    from jobs.lake_identity import bind

    nightly = _load_dag("modalrank_nightly")
    config = load_config(lake=str(tmp_path / "lake"))
    card = {"table_version": 4, "rows": 30, "users": 3, "model_version": "ranker-aaaaaaaaaaaa"}
    card |= {"lake_id": bind(config), "run_id": "scheduled__2026-11-29T00:00:00+00:00"}
    (config.reports_dir / DS.isoformat()).mkdir(parents=True)
    (config.reports_dir / DS.isoformat() / "publish.json").write_text(json.dumps(card))
    announce = nightly.dag.get_task("announce_publish").python_callable
    params = {"lake": config.lake, "artifacts": ""}

    def run(run_id: str) -> dict:
        events = collections.defaultdict(types.SimpleNamespace)
        return announce(outlet_events=events, ds=DS.isoformat(), run_id=run_id, params=params)

    with pytest.raises(ValueError, match="written by run 'scheduled__2026-11-29.*not by this run \\('backfill__"):
        run("backfill__2026-11-29T00:00:00+00:00")
    assert run(card["run_id"])["table_version"] == 4
    (config.reports_dir / DS.isoformat() / "publish.json").write_text(json.dumps({**card, "lake_id": "0" * 32}))
    with pytest.raises(ValueError, match="nothing is announced"):
        run(card["run_id"])


# A tiny job whose Python workers need pandas and pyarrow (mapInPandas), started the way `modalrank`
# starts every session: jobs.spark.spark_session.
WORKER_JOB = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[1])  # this checkout's code, without PYTHONPATH
    from jobs.config import load_config
    from jobs.spark import spark_session

    with spark_session("modalrank-worker-python", load_config(shuffle_partitions=1)) as spark:
        rows = spark.range(3).mapInPandas(lambda frames: (frame * 2 for frame in frames), "id long").collect()
    print("doubled", sorted(row.id for row in rows))
    """
)


@pytest.mark.spark
def test_workers_run_the_interpreter_that_runs_modalrank_without_env_sh(tmp_path):
    # What a new user's shell has: no infra/env.sh, so no PYSPARK_PYTHON, PYTHONPATH or VIRTUAL_ENV, and
    # a PATH whose `python3` is the system's (without pandas), not the venv's.
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": os.environ.get("HOME", str(tmp_path)),
        "SPARK_LOCAL_IP": "127.0.0.1",
        "MODALRANK_JARS_DIR": os.environ["MODALRANK_JARS_DIR"],
        "MODALRANK_LAKE": str(tmp_path / "lake"),
    }
    result = subprocess.run(
        [sys.executable, "-c", WORKER_JOB, str(REPO_ROOT)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        check=False,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "doubled [0, 2, 4]" in result.stdout


def test_delta_rs_reads_go_through_arrows_own_filesystem(tmp_path):
    # The abort at exit of `modalrank latest` came from delta-rs's default filesystem, written in Python:
    # Arrow's IO threads call into the interpreter and may do so while it shuts down. Reads now name
    # Arrow's native filesystem, and return the same rows.
    from deltalake import DeltaTable
    from pyarrow import fs

    from jobs.consume import arrow_filesystem, open_table, read_frame

    table_path = tmp_path / "lake" / "recommendations"
    _publish_twice(str(table_path))
    table = open_table(table_path)
    filesystem = arrow_filesystem(table)
    assert isinstance(filesystem, fs.SubTreeFileSystem) and isinstance(filesystem.base_fs, fs.LocalFileSystem)
    native = read_frame(table, partitions=[("ds", "=", DS.isoformat())])
    default = DeltaTable(str(table_path)).to_pandas(partitions=[("ds", "=", DS.isoformat())])
    assert sorted(native.item_id) == sorted(default.item_id) == [20, 21]
