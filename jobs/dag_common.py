"""What the DAG files share: the operator that submits a modalrank Spark job, the Asset the nightly DAG
announces and its consumers schedule on, and the task defaults every modalrank DAG starts from. Only DAG
files import this module (it imports Airflow); the Spark jobs never do.

Why here and not in dags/: Airflow's own advice for code shared by DAG files is a module in the DAG folder
listed in `.airflowignore`, imported from the folder as the root of `sys.path`. Airflow 3.3 puts the DAG
folder on `sys.path` only where it parses through a DAG bundle (the DAG processor, the task runner,
`airflow dags test`); a plain `DagBag(dag_folder=...)` (the tests, `airflow dags list` without
`--bundle-name`, a DAG looked up by its file) does not, and there the import fails. `jobs` is importable
wherever a DAG file is (infra/env.sh's PYTHONPATH, or the installed package), as the DAG files' other
imports from `jobs` already require.
"""

from __future__ import annotations

import datetime as dt
import re
import urllib.parse
from pathlib import Path

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import Asset, Param
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from jobs import arguments
from jobs.config import REPO_ROOT, PipelineConfig, load_config, local_path
from jobs.spark import (
    EXIT_FAIL_WITHOUT_RETRY,
    FAIL_WITHOUT_RETRY_MARKER,
    spark_jars,
    spark_lineage_settings,
    spark_settings,
)

SPARK_CONNECTION = "modalrank_spark"
SPARK_POOL = "modalrank_spark"  # infra/setup.sh creates it; its slots cap concurrent Spark jobs


class ModalrankSparkJob(SparkSubmitOperator):
    """spark-submit of one modalrank job; a job that exits with EXIT_FAIL_WITHOUT_RETRY (a failed quality
    gate) fails the task at once, with the job's reason, instead of being retried: rerunning the job on
    the same inputs would reach the same verdict after the same work. Any other failure (a lost
    executor, a full disk, a killed driver) is retried as before."""

    # The Delta tables the job reads and writes (inputs, outputs), reported to OpenLineage.
    lineage_tables: tuple[list[str], list[str]] = ([], [])

    def execute(self, context):
        self._report_spark_lineage(context)
        # The run id the job records (leases, publish.json): a driver in cluster deploy mode does not
        # inherit this worker's AIRFLOW_CTX_* variables, so it is passed by name.
        if context.get("run_id"):
            self.env_vars = {**(self.env_vars or {}), "MODALRANK_RUN_ID": context["run_id"]}
        try:
            return super().execute(context)
        except AirflowException as error:
            process = getattr(self._hook, "_submit_sp", None)
            if process is None or process.returncode != EXIT_FAIL_WITHOUT_RETRY:
                raise
            lines = list(getattr(self._hook, "_last_submit_log_lines", ()))
            reasons = [
                line.split(FAIL_WITHOUT_RETRY_MARKER, 1)[1] for line in lines if FAIL_WITHOUT_RETRY_MARKER in line
            ]
            reason = reasons[-1].strip() if reasons else f"the job exited with {EXIT_FAIL_WITHOUT_RETRY}"
            raise AirflowFailException(f"{self.task_id} failed, not retried: {reason}") from error

    def _job_config(self) -> PipelineConfig:
        """The config the job itself will run with: this worker's environment and the run's `--lake`."""
        arguments = list(self.application_args or [])
        lake = arguments[arguments.index("--lake") + 1] if "--lake" in arguments else ""
        return load_config(lake=lake or None)

    def _report_spark_lineage(self, context) -> None:
        """With `spark_lineage_dir` set, the job runs OpenLineage's Spark listener, which reports each read and
        write Spark makes (what the job did, where the task-level facets below say what its stage declares)
        to a file of this task try's own, as a child of this task's OpenLineage run."""
        config = self._job_config()
        if not config.spark_lineage_dir:
            return
        from airflow.providers.common.compat.openlineage.utils.spark import (
            inject_parent_job_information_into_spark_properties,
        )

        events_file = spark_lineage_file(
            Path(config.spark_lineage_dir), self.dag_id, context["run_id"], self.task_id, context["ti"].try_number
        )
        events_file.parent.mkdir(parents=True, exist_ok=True)
        conf = {**(self.conf or {}), **spark_lineage_settings(events_file)}
        self.conf = inject_parent_job_information_into_spark_properties(conf, context)

    def get_openlineage_facets_on_complete(self, task_instance):
        """What the job read and wrote, for Airflow's OpenLineage listener: the Delta tables its stage
        declares (`jobs.stages.lineage_tables`), in the lake the run's `--lake` named."""
        from airflow.providers.common.compat.openlineage.facet import Dataset
        from airflow.providers.openlineage.extractors import OperatorLineage

        config = self._job_config()

        def datasets(tables: list[str]) -> list[Dataset]:
            return [Dataset(*lineage_dataset(config.table_path(table))) for table in tables]

        inputs, outputs = self.lineage_tables
        return OperatorLineage(inputs=datasets(inputs), outputs=datasets(outputs))


def spark_lineage_file(folder: Path, dag_id: str, run_id: str, task_id: str, try_number: int) -> Path:
    """Where one task try's Spark lineage goes: a folder per DAG run (run ids hold ':' and '+'), a file per
    task try, so no two Spark jobs ever append to the same file."""
    run_folder = re.sub(r"[^A-Za-z0-9._-]", "_", run_id)
    return folder / dag_id / run_folder / f"{task_id}.{try_number}.jsonl"


def lineage_dataset(table_path: str) -> tuple[str, str]:
    """A table's OpenLineage (namespace, name), after the naming spec: `file` and the absolute path for a
    local table, `s3://bucket` (s3a:// included) or `hdfs://host:port` and the path for the others."""
    parts = urllib.parse.urlsplit(table_path)
    if parts.scheme in ("", "file"):
        return "file", local_path(table_path) or parts.path
    scheme = "s3" if parts.scheme in ("s3a", "s3n") else parts.scheme
    return f"{scheme}://{parts.netloc}", parts.path


def spark_job(
    config: PipelineConfig,
    task_id: str,
    module: str,
    job_arguments: list[str],
    lineage: tuple[list[str], list[str]] = ([], []),
    **operator_args,
) -> SparkSubmitOperator:
    """One `jobs/<module>.py` Spark job through the `modalrank_spark` connection and pool, submitted with
    the settings every modalrank session uses; `lineage` names the tables it reads and writes."""
    job = ModalrankSparkJob(
        task_id=task_id,
        conn_id=SPARK_CONNECTION,
        pool=SPARK_POOL,
        application=str(REPO_ROOT / "jobs" / f"{module}.py"),
        application_args=job_arguments,
        name=f"modalrank-{task_id}",
        conf=spark_settings(config),
        jars=",".join(spark_jars(config)),
        driver_memory=config.driver_memory,
        **operator_args,
    )
    job.lineage_tables = lineage
    return job


def recommendations_asset(config: PipelineConfig) -> Asset:
    """The `recommendations` table as an Asset: `announce_publish` updates it once a date's lists passed the
    gate and were committed, and consumer DAGs schedule on it. Both sides build it from their own config,
    so a DAG file parsed with another lake names that lake's table."""
    return Asset(name="modalrank_recommendations", uri=config.table_uri("recommendations"), group="modalrank")


def lake_params(config: PipelineConfig, artifacts_holds: str) -> dict[str, Param]:
    """The `lake` and `artifacts` Params every modalrank DAG takes, checked by the jobs' own rules when a run
    is triggered; `artifacts_holds` says what the DAG keeps in the artifacts folder."""
    return {
        "lake": Param(
            config.lake,
            type="string",
            description="lake base path or URI (s3a://, hdfs://)",
            **arguments.LAKE.optional_param_schema(),
        ),
        "artifacts": Param(
            config.artifacts,
            type="string",
            description=f"local or mounted folder for {artifacts_holds} (empty: the lake's own; required for an "
            "s3a:// or hdfs:// lake)",
            **arguments.ARTIFACTS.optional_param_schema(),
        ),
    }


def run_config(params: dict | None) -> PipelineConfig:
    """The config of the lake and artifacts folder a run's `lake_params` named (empty: the configured ones)."""
    params = params or {}
    return load_config(lake=params.get("lake") or None, artifacts=params.get("artifacts") or None)


def default_args(*, retry_delay: dt.timedelta, execution_timeout: dt.timedelta) -> dict:
    """Every modalrank task is owned, retried twice with a growing delay, and timed out; each DAG sets how long
    its tasks may take and how long to wait before a retry."""
    return {
        "owner": "modalrank",
        "retries": 2,
        "retry_delay": retry_delay,
        "retry_exponential_backoff": True,
        "execution_timeout": execution_timeout,
    }
