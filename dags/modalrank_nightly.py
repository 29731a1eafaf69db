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
`eval_lists`, and an HTML report under `_reports/<ds>/`) on training dates, or when the `full_evaluation`
param asks; other dates check the model they serve on what happened since it was trained, in seconds. `publish` writes every user's top-K list
for the date to `recommendations` behind a quality gate, in one Delta commit (a failed gate fails the
task at once, its retries unused: the same inputs would fail it again); `announce_publish`
then updates the `modalrank_recommendations` Asset that consumer DAGs schedule on, with the date,
lake, artifacts folder, table version and model in the event's extra. `run_report` (a teardown: it runs
even when a stage failed, and does not change the run's outcome) writes `_reports/<ds>/run.html`.

A failed night sends one alert (`jobs.alerts`: every failed stage and its reason, and the run report's
path) to `MODALRANK_ALERT_TARGET`, and so does a night still running `MODALRANK_NIGHT_DEADLINE_MINUTES`
after it was queued.

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

from airflow.sdk import DAG, Param, cross_downstream, task

from jobs import arguments, stages
from jobs.alerts import NightFailed, night_deadline, record_task_failure
from jobs.config import REPO_ROOT, load_config
from jobs.dag_common import default_args, lake_params, recommendations_asset, run_config, spark_job

config = load_config()
DEMO_DATA = REPO_ROOT / "data" / "demo"
# Updated by `announce_publish` once a date's lists passed the gate and were committed; consumers schedule on it.
RECOMMENDATIONS_ASSET = recommendations_asset(config)


@task(outlets=[RECOMMENDATIONS_ASSET])
def announce_publish(*, outlet_events, ds: str, run_id: str, params: dict) -> dict:
    """The Asset event for the date `publish` just committed, carrying what a consumer needs to read
    exactly that date: its run date, the lake (a run may point at another lake than the configured
    one) and its artifacts folder, the table version and the model. Only this run's own publish result
    is announced: a `publish.json` that another run (or another lake) wrote fails the task."""
    import json

    from jobs.lake_identity import bind

    lake_config = run_config(params)
    card = json.loads((lake_config.reports_dir / ds / "publish.json").read_text())
    lake_id = bind(lake_config)
    if (card.get("run_id"), card.get("lake_id")) != (run_id, lake_id):
        raise ValueError(
            f"{lake_config.reports_dir / ds / 'publish.json'} was written by run {card.get('run_id')!r} for lake "
            f"{card.get('lake_id')!r}, not by this run ({run_id!r}, lake {lake_id!r}): nothing is announced"
        )
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

    report_config = run_config(params)
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
    default_args={
        **default_args(retry_delay=dt.timedelta(minutes=2), execution_timeout=dt.timedelta(hours=2)),
        "on_failure_callback": record_task_failure,
    },
    # One alert per failed night (a failed gate is one) and one for a night past its deadline: jobs.alerts.
    on_failure_callback=NightFailed(),
    deadline=night_deadline(config),
    params={
        **lake_params(config, "_models/ and _reports/"),
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
        "full_evaluation": Param(
            False,
            type="boolean",
            description="the full evaluation with its ablation even on a date that is not a training date "
            "(those run a check of the served model)",
        ),
        "train_every_days": Param(
            7,
            type="integer",
            **arguments.TRAIN_EVERY_DAYS.param_schema(),
            description="train a new ranker every N days (7: Sundays), else reuse",
        ),
        "k": Param(
            50,
            type="integer",
            **arguments.LIST_LENGTH.param_schema(),
            description="published list length per user",
        ),
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
    modalities = [*stages.BUILT_IN_MODALITIES, *sorted(config.imported_vectors)]
    stage_tasks = [
        [
            spark_job(
                config,
                job.task_id(item),
                job.module,
                job.application_args(item),
                lineage=stages.lineage_tables(stage, item, modalities),
            )
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
