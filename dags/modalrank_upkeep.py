"""modalrank upkeep, weekly: Delta OPTIMIZE and VACUUM of every table, retention of evaluation lists and
reports, removal of model artifacts and serving folders that no retained date points to (jobs/upkeep.py).

One Spark task, in the `modalrank_spark` pool like the nightly's, so it never adds a Spark job beyond the
pool's slots. It runs Sunday after midnight UTC; a nightly running meanwhile is safe (Delta's optimistic
commits, the upkeep lease, and artifacts younger than a day are never removed) but both go slower, so a
team with a fixed nightly time sets the cron to miss it. Its report is `_reports/<ds>/upkeep.md`; a failed
upkeep sends an alert like a failed night (jobs.alerts).
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, Param

from jobs import arguments
from jobs.alerts import NightFailed, record_task_failure
from jobs.config import load_config
from jobs.dag_common import default_args, lake_params, spark_job

config = load_config()

with DAG(
    dag_id="modalrank_upkeep",
    description="Weekly lake upkeep: OPTIMIZE, VACUUM, retention of evaluation lists, reports and models",
    doc_md=__doc__,
    schedule="@weekly",
    start_date=dt.datetime(2026, 11, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    tags=["modalrank", "upkeep"],
    default_args={
        **default_args(retry_delay=dt.timedelta(minutes=10), execution_timeout=dt.timedelta(hours=4)),
        "on_failure_callback": record_task_failure,
    },
    on_failure_callback=NightFailed(),
    params={
        **lake_params(config, "_models/ and _reports/"),
        "time_travel_days": Param(
            7,
            type="integer",
            **arguments.RETENTION_DAYS.param_schema(),
            description="days of table history VACUUM keeps",
        ),
        "eval_days": Param(
            28,
            type="integer",
            **arguments.RETENTION_DAYS.param_schema(),
            description="days of eval_lists and eval_truth kept",
        ),
        "keep_days": Param(
            90,
            type="integer",
            **arguments.RETENTION_DAYS.param_schema(),
            description="days of reports and by-date model pointers kept",
        ),
    },
) as dag:
    spark_job(
        config,
        "upkeep",
        "upkeep",
        [
            "--ds",
            "{{ ds }}",
            "--lake",
            "{{ params.lake }}",
            "--artifacts",
            "{{ params.artifacts }}",
            "--time-travel-days",
            "{{ params.time_travel_days }}",
            "--eval-days",
            "{{ params.eval_days }}",
            "--keep-days",
            "{{ params.keep_days }}",
        ],
    )
