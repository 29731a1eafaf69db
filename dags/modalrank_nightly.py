"""modalrank nightly: ingest, extract features per modality, fuse, train, evaluate, publish top-K lists.

Each task is one Spark job from `jobs/`, submitted through the `modalrank_spark` connection (local
mode unless the connection names a cluster master). Every job takes the run date (`ds`) and is
idempotent for it: rerunning a day, or backfilling a range, gives the same tables.

After `ingest`, one task per modality extracts features in parallel (`extract_text`,
`extract_image`, `extract_audio`, `extract_video`), plus one `import_<name>` task for each
precomputed vector file configured in `MODALRANK_IMPORTED_VECTORS`. Extraction is incremental: items
whose content and extractor version are unchanged are skipped.

When every extractor is done, `fuse` writes one vector per item (`item_vectors`), `train_ranker`
fits the hybrid ranker on interactions up to the run date and saves a versioned artifact — on a
cadence (`train_every_days`, weekly by default): other dates reuse the model of the latest training
date, chosen by the date alone, so backfills are deterministic and never see the future — and
`evaluate` scores the ranker against the baselines on three protocols (`metrics`, `eval_truth`,
`eval_lists`, and an HTML report under `_reports/<ds>/`). `publish` writes every user's top-K list
for the date to `recommendations` behind a quality gate, in one Delta commit (a failed gate fails the
task at once, its retries unused: the same inputs would fail it again); `announce_publish`
then updates the `modalrank_recommendations` Asset that consumer DAGs schedule on, with the date,
lake, artifacts folder, table version and model in the event's extra. `run_report` (a teardown: it runs
even when a stage failed, and does not change the run's outcome) writes `_reports/<ds>/run.html`.

Every Spark task takes a slot of the `modalrank_spark` pool (created by infra/setup.sh), which caps
how many Spark jobs run at once whatever the executor's parallelism.

Params pick the input: the built-in demo data by default, or a MovieLens folder
(`movielens`) with optional `overviews` / `posters` / `audio` / `video`, or a generic
`catalog` + `interactions` pair. Empty params are simply not passed on. Every param is validated when
a run is triggered, by the same rules as the jobs' flags (`jobs.arguments`).
"""

from __future__ import annotations

import datetime as dt
import itertools

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import DAG, Param, cross_downstream, task
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from jobs import arguments, stages
from jobs.config import REPO_ROOT, load_config
from jobs.dag_common import default_args, recommendations_asset
from jobs.spark import EXIT_FAIL_WITHOUT_RETRY, FAIL_WITHOUT_RETRY_MARKER, delta_jars, spark_settings

config = load_config()
DEMO_DATA = REPO_ROOT / "data" / "demo"
SPARK_CONNECTION = "modalrank_spark"
SPARK_POOL = "modalrank_spark"  # infra/setup.sh creates it; its slots cap concurrent Spark jobs
# Updated by `announce_publish` once a date's lists passed the gate and were committed; consumers schedule on it.
RECOMMENDATIONS_ASSET = recommendations_asset(config)


class ModalrankSparkJob(SparkSubmitOperator):
    """spark-submit of one modalrank job; a job that exits with EXIT_FAIL_WITHOUT_RETRY (a failed quality
    gate) fails the task at once, with the job's reason, instead of being retried: rerunning the job on
    the same inputs would reach the same verdict after the same work. Any other failure (a lost
    executor, a full disk, a killed driver) is retried as before."""

    def execute(self, context):
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


def spark_job(task_id: str, module: str, job_arguments: list[str], **operator_args) -> SparkSubmitOperator:
    """One `jobs/<module>.py` Spark job, submitted with the settings every modalrank session uses."""
    return ModalrankSparkJob(
        task_id=task_id,
        conn_id=SPARK_CONNECTION,
        pool=SPARK_POOL,
        application=str(REPO_ROOT / "jobs" / f"{module}.py"),
        application_args=job_arguments,
        name=f"modalrank-{task_id}",
        conf=spark_settings(config),
        jars=",".join(delta_jars(config)),
        driver_memory=config.driver_memory,
        **operator_args,
    )


@task(outlets=[RECOMMENDATIONS_ASSET])
def announce_publish(*, outlet_events, ds: str, params: dict) -> dict:
    """The Asset event for the date `publish` just committed, carrying what a consumer needs to read
    exactly that date: its run date, the lake (a run may point at another lake than the configured
    one) and its artifacts folder, the table version and the model."""
    import json

    lake_config = load_config(lake=params["lake"] or None, artifacts=params["artifacts"] or None)
    card = json.loads((lake_config.reports_dir / ds / "publish.json").read_text())
    extra = {
        "ds": ds,
        "lake": lake_config.lake,
        "artifacts": str(lake_config.artifacts_dir),
        "table": lake_config.table_path("recommendations"),
        "table_version": card["table_version"],
        "rows": card["rows"],
        "users": card["users"],
        "model_version": card["model_version"],
    }
    outlet_events[RECOMMENDATIONS_ASSET].extra = extra
    return extra


@task
def run_report(ds: str | None = None, params: dict | None = None) -> str:
    """`_reports/<ds>/run.html|json|md`: every stage's counts, times, quarantine, evaluation and gate."""
    import datetime

    from jobs.run_report import write_run_report

    report_config = load_config(lake=params["lake"] or None, artifacts=params["artifacts"] or None)
    run = write_run_report(report_config, datetime.date.fromisoformat(ds))
    return str(report_config.reports_dir / run.ds / "run.html")


# Every Param is checked when a run is triggered, before any task starts, by the rules the jobs' flags
# use (jobs.arguments); an empty path means "not given".
input_path_schema = arguments.INPUT_PATH.optional_param_schema()

with DAG(
    dag_id="modalrank_nightly",
    description="Nightly multimodal recommendations: ingest, extract, fuse, train, evaluate, publish",
    doc_md=__doc__,
    schedule="@daily",
    start_date=dt.datetime(2026, 11, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    tags=["modalrank", "nightly"],
    default_args=default_args(retry_delay=dt.timedelta(minutes=2), execution_timeout=dt.timedelta(hours=2)),
    params={
        "lake": Param(
            config.lake,
            type="string",
            description="lake base path or URI (s3a://, hdfs://)",
            **arguments.LAKE.optional_param_schema(),
        ),
        "artifacts": Param(
            config.artifacts,
            type="string",
            **arguments.ARTIFACTS.optional_param_schema(),
            description="local or mounted folder for _models/ and _reports/ (empty: the lake's own; "
            "required for an s3a:// or hdfs:// lake)",
        ),
        "catalog": Param(
            str(DEMO_DATA / "catalog.csv"), type="string", description="generic catalog file", **input_path_schema
        ),
        "interactions": Param(
            str(DEMO_DATA / "interactions.csv"),
            type="string",
            description="generic interactions file",
            **input_path_schema,
        ),
        "movielens": Param(
            "",
            type="string",
            description="MovieLens folder (instead of catalog + interactions)",
            **input_path_schema,
        ),
        "overviews": Param("", type="string", description="CSV of item id + overview", **input_path_schema),
        "posters": Param("", type="string", description="folder of <item_id>.jpg|png", **input_path_schema),
        "audio": Param("", type="string", description="folder of <item_id>.wav|…", **input_path_schema),
        "video": Param("", type="string", description="folder of <item_id>.mp4|…", **input_path_schema),
        "force_extract": Param(False, type="boolean", description="recompute every item's features"),
        "dataset": Param(
            "demo",
            type="string",
            description="label of the evaluation's rows, e.g. ml-latest-small",
            **arguments.DATASET.param_schema(),
        ),
        "train_every_days": Param(
            7, type="integer", minimum=1, description="train a new ranker every N days (7: Sundays), else reuse"
        ),
        "k": Param(50, type="integer", minimum=1, description="published list length per user"),
        "max_changed_share": Param(
            1.0,
            type="number",
            minimum=0,
            maximum=1,
            description="gate: most users whose list may change since the previous date",
        ),
        "min_coverage": Param(
            0.0, type="number", minimum=0, maximum=1, description="gate: least share of available items listed"
        ),
    },
) as dag:
    # One task per job of each stage, one per item where a job fans out (extract_text, ..., import_<name>);
    # every task of a stage waits for every task of the stage before (jobs.stages declares both).
    stage_tasks = [
        [
            spark_job(job.task_id(item), job.module, job.application_args(item))
            for job in stage.jobs
            for item in job.items(config.imported_vectors)
        ]
        for stage in stages.STAGES
        if not stage.teardown
    ]
    for upstream, downstream in itertools.pairwise(stage_tasks):
        cross_downstream(upstream, downstream)
    announce = announce_publish()
    stage_tasks[-1] >> announce >> run_report().as_teardown()
