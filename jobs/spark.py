"""The one way to start Spark: every job, the CLI, the DAG's spark-submit and the test fixture use it.

`spark_settings(config)` is the single list of Spark settings (Delta, time zone, shuffle size, Python).
`start_spark()` applies them to a SparkSession; the DAG passes the same settings to spark-submit, so a
job behaves the same whether Airflow, `spark-submit` or `modalrank` started it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from jobs.config import PipelineConfig

log = logging.getLogger("modalrank.spark")

DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"
OPENLINEAGE_LISTENER = "io.openlineage.spark.agent.OpenLineageSparkListener"


class MissingJarsError(RuntimeError):
    """The Delta jars are not in the local cache: set-up has not run."""


# The exit status of a job stopped by a `FailWithoutRetry`: the DAG's operator fails such a task at once
# (AirflowFailException) instead of running the whole job again to get the same answer.
EXIT_FAIL_WITHOUT_RETRY = 3
# Starts the job's last log line before it exits with EXIT_FAIL_WITHOUT_RETRY; the operator quotes the
# rest of that line as the task's failure reason.
FAIL_WITHOUT_RETRY_MARKER = "modalrank: failed, not worth a retry: "


class FailWithoutRetry(Exception):
    """A job's outcome that its inputs decide (a failed quality gate): rerunning it cannot change it."""


def spark_jars(config: PipelineConfig) -> list[str]:
    """The local jars every session loads (Delta Lake, OpenLineage's Spark listener). Runs never download:
    infra/setup.sh fetches them once."""
    jars = sorted(str(path) for path in Path(config.jars_dir).glob("*.jar"))
    if not any(Path(jar).name.startswith("delta-spark_") for jar in jars):
        raise MissingJarsError(
            f"no Delta Lake jars in {config.jars_dir}; run `bash infra/setup.sh` first "
            "(or point MODALRANK_JARS_DIR at a folder holding delta-spark and delta-storage)"
        )
    return jars


def spark_settings(config: PipelineConfig) -> dict[str, str]:
    """Spark settings every modalrank session needs, whoever launches it."""
    settings = {
        "spark.sql.extensions": DELTA_EXTENSION,
        "spark.sql.catalog.spark_catalog": DELTA_CATALOG,
        # Event times and run dates are UTC everywhere; never the machine's zone.
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.shuffle.partitions": str(config.shuffle_partitions),
        "spark.ui.enabled": str(config.spark_ui).lower(),
        "spark.ui.showConsoleProgress": "false",  # progress bars garble task logs
        # Python workers must run the interpreter that has the project installed.
        "spark.pyspark.python": os.environ.get("PYSPARK_PYTHON", sys.executable),
        "spark.pyspark.driver.python": os.environ.get("PYSPARK_DRIVER_PYTHON", sys.executable),
        # Small tables: fewer snapshot partitions make every Delta read and commit cheaper locally.
        "spark.databricks.delta.snapshotPartitions": str(max(2, config.shuffle_partitions)),
        "spark.sql.sources.partitionOverwriteMode": "dynamic",
    }
    settings.update(config.spark_conf)
    return settings


def spark_lineage_settings(events_file: Path) -> dict[str, str]:
    """Settings that start OpenLineage's Spark listener (its jar is among `spark_jars`) and have it append
    one JSON event a line to `events_file` for every read and write the session makes. One file per
    session: the file transport appends without a lock, so two jobs must never share one."""
    return {
        "spark.extraListeners": OPENLINEAGE_LISTENER,
        "spark.openlineage.transport.type": "file",
        "spark.openlineage.transport.location": str(events_file),
    }


def threads_per_task(spark) -> int:
    """Torch threads for one Spark task: its share of the machine's cores in local mode (tasks run side
    by side in one machine), or `spark.task.cpus` on a cluster."""
    context = spark.sparkContext
    if context.master.startswith("local"):
        return max(1, (os.cpu_count() or 1) // max(1, context.defaultParallelism))
    return int(context.getConf().get("spark.task.cpus", "1"))


def _running_under_spark_submit() -> bool:
    # spark-submit starts the Python driver with a gateway to its own JVM; master, jars and memory were
    # fixed on its command line and must not be overridden here.
    return "PYSPARK_GATEWAY_PORT" in os.environ


def start_spark(app_name: str, config: PipelineConfig):
    """A SparkSession with Delta enabled: local by default, or whatever spark-submit set up."""
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(app_name)
    if not _running_under_spark_submit():
        _workers_run_this_python(spark_settings(config)["spark.pyspark.python"])
        builder = (
            builder.master(config.spark_master)
            .config("spark.jars", ",".join(spark_jars(config)))
            .config("spark.driver.memory", config.driver_memory)
        )
    for key, value in spark_settings(config).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    _quiet_csv_header_warnings(spark)
    log.info("spark %s started: master=%s app=%s", spark.version, spark.sparkContext.master, app_name)
    return spark


def _workers_run_this_python(python: str) -> None:
    """Make the Python workers of a session started here run `python` and import this checkout's code.

    PySpark starts its workers with $PYSPARK_PYTHON, else with whatever `python3` is first on PATH (a
    system Python without pandas, when `.venv/bin/modalrank` runs without infra/env.sh): the
    `spark.pyspark.python` setting is read by spark-submit, not by a session started from Python.
    The JVM (and through it every worker) inherits this process's environment when it starts, so
    setting it here, before the session exists, is enough for local mode; the package root goes first
    on the workers' PYTHONPATH so they unpickle the driver's `jobs` and `features`, not another
    checkout's. On a cluster, spark.pyspark.python and spark.executorEnv.* in `spark_conf` decide.
    """
    os.environ["PYSPARK_PYTHON"] = python
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    code_root = str(Path(__file__).resolve().parents[1])
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if code_root not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([code_root, *filter(None, paths)])


@contextmanager
def spark_session(app_name: str, config: PipelineConfig) -> Iterator:
    """`start_spark`, stopped when the block ends, whatever happened inside it."""
    spark = start_spark(app_name, config)
    try:
        yield spark
    finally:
        spark.stop()


def _quiet_csv_header_warnings(spark) -> None:
    # jobs.sources reads CSVs with one column more than the header on purpose (to catch rows with
    # extra fields); Spark warns about that mismatch for every file.
    jvm = spark.sparkContext._jvm
    jvm.org.apache.logging.log4j.core.config.Configurator.setLevel(
        "org.apache.spark.sql.catalyst.csv.CSVHeaderChecker", jvm.org.apache.logging.log4j.Level.ERROR
    )


def job_entry_point(
    doc: str | None,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    run_from_args: Callable[[argparse.Namespace], object],
) -> Callable[[list[str] | None], int]:
    """A job module's `main(argv=None)`, the function `python -m jobs.<stage>` and spark-submit run."""

    def main(argv: list[str] | None = None) -> int:
        return job_main(doc, add_arguments, run_from_args, argv)

    return main


def job_main(
    doc: str | None,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    run_from_args: Callable[[argparse.Namespace], object],
    argv: list[str] | None,
) -> int:
    """The spark-submit entry point every job shares: its arguments, the log format, one run."""
    from jobs.config import configure_logging

    configure_logging()
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        run_from_args(args)
    except FailWithoutRetry as error:
        # One line, flushed before the exit: the task log ends with the reason, not with a traceback.
        print(f"{FAIL_WITHOUT_RETRY_MARKER}{error}", file=sys.stderr, flush=True)
        return EXIT_FAIL_WITHOUT_RETRY
    return 0
