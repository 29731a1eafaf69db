"""modalrank nightly: ingest, extract features per modality, fuse them, train the ranker, evaluate it.

Each task is one Spark job from `jobs/`, submitted through the `modalrank_spark` connection (local
mode unless the connection names a cluster master). Every job takes the run date (`ds`) and is
idempotent for it: rerunning a day, or backfilling a range, gives the same tables.

After `ingest`, one task per modality extracts features in parallel (`extract_text`,
`extract_image`, `extract_audio`, `extract_video`), plus one `import_<name>` task for each
precomputed vector file configured in `MODALRANK_IMPORTED_VECTORS`. Extraction is incremental: items
whose content and extractor version are unchanged are skipped.

When every extractor is done, `fuse` writes one vector per item (`item_vectors`), `train_ranker`
fits the hybrid ranker on interactions up to the run date and saves a versioned artifact, and
`evaluate` scores it against the baselines on three protocols (`metrics`, `eval_truth`,
`eval_lists`, and an HTML report under `_reports/<ds>/`).

Params pick the input: the built-in demo data by default, or a MovieLens folder
(`movielens`) with optional `overviews` / `posters` / `audio` / `video`, or a generic
`catalog` + `interactions` pair. Empty params are simply not passed on.
"""

from __future__ import annotations

import datetime as dt

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import DAG, Param

from jobs.config import REPO_ROOT, load_config
from jobs.spark import delta_jars, spark_settings

config = load_config()
DEMO_DATA = REPO_ROOT / "data" / "demo"
SPARK_CONNECTION = "modalrank_spark"


def spark_job(task_id: str, module: str, arguments: list[str]) -> SparkSubmitOperator:
    """One `jobs/<module>.py` Spark job, submitted with the settings every modalrank session uses."""
    return SparkSubmitOperator(
        task_id=task_id,
        conn_id=SPARK_CONNECTION,
        application=str(REPO_ROOT / "jobs" / f"{module}.py"),
        application_args=arguments,
        name=f"modalrank-{task_id}",
        conf=spark_settings(config),
        jars=",".join(delta_jars(config)),
        driver_memory=config.driver_memory,
    )


with DAG(
    dag_id="modalrank_nightly",
    description="Nightly multimodal recommendations: ingest, extract, fuse, train, evaluate",
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
        "lake": Param(config.lake, type="string", description="lake base path"),
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

    run_date = ["--ds", "{{ ds }}", "--lake", "{{ params.lake }}"]
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
    fuse = spark_job("fuse", "fuse", run_date)
    train_ranker = spark_job("train_ranker", "train", run_date)
    evaluate = spark_job("evaluate", "evaluate", [*run_date, "--dataset", "{{ params.dataset }}"])
    ingest >> extractors >> fuse >> train_ranker >> evaluate
