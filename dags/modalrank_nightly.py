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
for the date to `recommendations` behind a quality gate, in one Delta commit; `announce_publish`
then updates the `modalrank_recommendations` Asset that consumer DAGs schedule on, with the date,
lake, artifacts folder, table version and model in the event's extra. `run_report` (a teardown: it runs
even when a stage failed, and does not change the run's outcome) writes `_reports/<ds>/run.html`.

Every Spark task takes a slot of the `modalrank_spark` pool (created by infra/setup.sh), which caps
how many Spark jobs run at once whatever the executor's parallelism.

Params pick the input: the built-in demo data by default, or a MovieLens folder
(`movielens`) with optional `overviews` / `posters` / `audio` / `video`, or a generic
`catalog` + `interactions` pair. Empty params are simply not passed on.
"""

from __future__ import annotations

import datetime as dt

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import DAG, Asset, Param, task

from jobs.config import REPO_ROOT, load_config
from jobs.spark import delta_jars, spark_settings

config = load_config()
DEMO_DATA = REPO_ROOT / "data" / "demo"
SPARK_CONNECTION = "modalrank_spark"
SPARK_POOL = "modalrank_spark"  # infra/setup.sh creates it; its slots cap concurrent Spark jobs
# Updated by `announce_publish` once a date's lists passed the gate and were committed; consumers schedule on it
# (dags/modalrank_consumer_example.py declares the same name and URI).
RECOMMENDATIONS_ASSET = Asset(
    name="modalrank_recommendations", uri=config.table_uri("recommendations"), group="modalrank"
)


def spark_job(task_id: str, module: str, arguments: list[str], **operator_args) -> SparkSubmitOperator:
    """One `jobs/<module>.py` Spark job, submitted with the settings every modalrank session uses."""
    return SparkSubmitOperator(
        task_id=task_id,
        conn_id=SPARK_CONNECTION,
        pool=SPARK_POOL,
        application=str(REPO_ROOT / "jobs" / f"{module}.py"),
        application_args=arguments,
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


with DAG(
    dag_id="modalrank_nightly",
    description="Nightly multimodal recommendations: ingest, extract, fuse, train, evaluate, publish",
    doc_md=__doc__,
    schedule="@daily",
    start_date=dt.datetime(2026, 11, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    tags=["modalrank", "nightly"],
    default_args={
        "owner": "modalrank",
        "retries": 2,
        "retry_delay": dt.timedelta(minutes=2),
        "retry_exponential_backoff": True,
        "execution_timeout": dt.timedelta(hours=2),
    },
    params={
        "lake": Param(config.lake, type="string", description="lake base path or URI (s3a://, hdfs://)"),
        "artifacts": Param(
            config.artifacts,
            type="string",
            description="local or mounted folder for _models/ and _reports/ (empty: the lake's own; "
            "required for an s3a:// or hdfs:// lake)",
        ),
        "catalog": Param(str(DEMO_DATA / "catalog.csv"), type="string", description="generic catalog file"),
        "interactions": Param(
            str(DEMO_DATA / "interactions.csv"), type="string", description="generic interactions file"
        ),
        "movielens": Param("", type="string", description="MovieLens folder (instead of catalog + interactions)"),
        "overviews": Param("", type="string", description="CSV of item id + overview"),
        "posters": Param("", type="string", description="folder of <item_id>.jpg|png"),
        "audio": Param("", type="string", description="folder of <item_id>.wav|…"),
        "video": Param("", type="string", description="folder of <item_id>.mp4|…"),
        "force_extract": Param(False, type="boolean", description="recompute every item's features"),
        "dataset": Param(
            "demo", type="string", description="label of the evaluation's rows, e.g. ml-latest-small"
        ),
        "train_every_days": Param(
            7, type="integer", minimum=1, description="train a new ranker every N days (7: Sundays), else reuse"
        ),
        "k": Param(50, type="integer", minimum=1, description="published list length per user"),
        "max_changed_share": Param(
            1.0, type="number", description="gate: most users whose list may change since the previous date"
        ),
        "min_coverage": Param(0.0, type="number", description="gate: least share of available items listed"),
    },
) as dag:
    ingest = spark_job(
        "ingest",
        "ingest",
        [
            "--ds",
            "{{ ds }}",
            "--lake",
            "{{ params.lake }}",
            "--artifacts",
            "{{ params.artifacts }}",
            # A MovieLens folder replaces the generic pair; the job rejects a request with both.
            "--catalog",
            "{{ '' if params.movielens else params.catalog }}",
            "--interactions",
            "{{ '' if params.movielens else params.interactions }}",
            "--movielens",
            "{{ params.movielens }}",
            "--overviews",
            "{{ params.overviews }}",
            "--posters",
            "{{ params.posters }}",
            "--audio",
            "{{ params.audio }}",
            "--video",
            "{{ params.video }}",
        ],  # fmt: skip
    )

    run_date = ["--ds", "{{ ds }}", "--lake", "{{ params.lake }}", "--artifacts", "{{ params.artifacts }}"]
    extractors = [
        spark_job(
            f"extract_{modality}",
            "extract",
            [*run_date, "--modality", modality, "--force", "{{ params.force_extract }}"],
        )
        for modality in ("text", "image", "audio", "video")
    ]
    extractors += [
        spark_job(f"import_{name}", "import_vectors", [*run_date, "--name", name, "--vectors", vectors])
        for name, vectors in sorted(config.imported_vectors.items())
    ]
    fuse = spark_job("fuse", "fuse", [*run_date, "--every-days", "{{ params.train_every_days }}"])
    train_ranker = spark_job("train_ranker", "train", [*run_date, "--every-days", "{{ params.train_every_days }}"])
    evaluate = spark_job("evaluate", "evaluate", [*run_date, "--dataset", "{{ params.dataset }}"])
    publish = spark_job(
        "publish",
        "publish",
        [
            *run_date,
            "--k", "{{ params.k }}",
            "--max-changed-share", "{{ params.max_changed_share }}",
            "--min-coverage", "{{ params.min_coverage }}",
        ],
    )  # fmt: skip
    announce = announce_publish()
    ingest >> extractors >> fuse >> train_ranker >> evaluate >> publish >> announce >> run_report().as_teardown()
