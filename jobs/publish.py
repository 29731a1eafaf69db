"""Publish: every user's top-K items for the run date into `recommendations`, behind a quality gate.

What analysts and services read is what this job writes, so nothing reaches the table unchecked:
1. Load the data as of the end of `ds` (`jobs.ranker_inputs.load_ranking_data`) and the ranker artifact that
   `train` chose for `ds` (`<artifacts>/_models/ranker/by_ds/<ds>.json`, or `--model-version`), then refit the serving base
   models once on the driver, as the README's ranker section says (they are a function of the lake
   as of the date, so they are refit where the ranker is used rather than stored with it).
2. Score in Spark: the base models and the item side go to `<artifacts>/_models/serving/<ds>/<run id>/`
   as safetensors + JSON (no pickle; one verified artifact folder of `jobs.artifacts`, this run's own); user indices are spread over partitions in fixed blocks of 256,
   and each Python worker loads the artifacts once, scores its blocks and emits their top K. No
   process ever holds a users × items score matrix for all users: a block is 256 rows. The run removes
   its own folder when it ends (`--keep-serving` keeps it for debugging); folders of killed runs are
   removed by a later publish (`jobs.serving.clean_stale_serving`).
3. Gate: `jobs.publish_gate.check_lists` checks the materialised lists (row counts, duplicates, seen, unknown and
   unavailable items, finite scores, ranks and order, drift against the previous published date,
   catalog coverage). Any failed check writes nothing, records the checks in the report and raises
   `PublishGateError`.
4. Write: one Delta commit replaces exactly the `ds` partition, so a rerun of a date leaves the same rows.

Eligibility: users with at least one interaction up to the end of `ds`; items in the catalog as of
`ds` (`jobs.asof`: known by then, never an item only a later date ingested) whose `available_from` is
null or on or before `ds`, minus the user's own items. The item side is `item_vectors` of `fused_ds` =
`ds`, and the ranker is the one `train` chose for `ds`, never a newer one unless `--model-version` names it. Items nobody has interacted
with yet are eligible too: the ranker ranks them from content (its cold regime). A user with fewer
than K eligible items gets all of them. Items outside the ranker's candidate set score about −1e6
(after every candidate, in popularity order), which only matters for such short catalogs.

`generated_at` is the end of the run date (`ds` + 1 day, 00:00 UTC), not the wall clock, so a rerun of
a date writes identical rows; when the job actually ran is in the report (`started_at`) and the Delta
history.

This module is the job: it reads the lake, calls the serving code (`jobs.serving`: the ranker a date
serves, the serving artifact, scoring in Spark's workers) and the gate (`jobs.publish_gate`: one table
of checks), and writes the table and the report.

Run by the DAG through spark-submit, by `modalrank publish`, or by hand:
    spark-submit jobs/publish.py --ds 2026-11-25 [--k 50] [--model-version ranker-…]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import json
import logging
import shutil
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs import artifacts, lake, lake_identity, lease
from jobs.arguments import LIST_LENGTH, optional_model_version, share
from jobs.asof import end_of_day
from jobs.config import PipelineConfig, add_run_arguments, load_run_config
from jobs.faults import crash_point
from jobs.progress import stage_progress
from jobs.publish_gate import (
    DEFAULT_MAX_CHANGED_SHARE,
    DEFAULT_MIN_COVERAGE,
    DRIFT_CHECKS,
    Check,
    PublishGateError,
    check_lists,
)
from jobs.ranker_inputs import RankingData, load_ranking_data
from jobs.reports import Report, write_report
from jobs.schemas import INTERACTIONS, ITEM_VECTORS, RECOMMENDATIONS
from jobs.serving import (
    USERS_PER_BLOCK,
    ServingPlan,
    clean_stale_serving,
    eligible_item_mask,
    new_serving_folder,
    ranker_folder,
    save_serving_artifact,
    score_lists,
)
from jobs.spark import job_entry_point, spark_session, threads_per_task

log = logging.getLogger("modalrank.publish")

DEFAULT_K = 50


@dataclass
class PublishReport(Report):
    template = "publish"

    ds: str
    k: int
    started_at: str = ""  # wall clock, UTC: the rows carry the run date's end instead (module docstring)
    model_version: str = ""
    ranker_artifact: str = ""
    trained_ds: str = ""
    users: int = 0
    rows: int = 0
    eligible_items: int = 0
    items_listed: int = 0
    cold_items_listed: int = 0  # items with no interaction up to ds that are in some list
    short_lists: int = 0  # users with fewer than K eligible items, who get all of them
    previous_ds: str | None = None
    checks: list = field(default_factory=list)
    drift: dict = field(default_factory=dict)
    passed: bool = False
    published: bool = False
    table_version: int | None = None
    notes: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    seconds: float = 0.0
    # Who wrote this report: the lake it published to and the Airflow run (or MODALRANK_RUN_ID), so
    # `announce_publish` announces only what its own run's publish committed.
    lake_id: str = ""
    run_id: str = ""


# ---------------------------------------------------------------------------------------------------
# What the job reads


def seen_pairs(spark: SparkSession, config: PipelineConfig, ds: dt.date) -> DataFrame:
    """(user_id, item_id) of every interaction up to the end of `ds`, read from the lake afresh, so the
    gate checks the lists against the table rather than against the models that made them."""
    return (
        lake.read_table(spark, config, INTERACTIONS)
        .where(F.col("event_time") < F.lit(end_of_day(ds)))
        .select("user_id", "item_id")
        .distinct()
    )


def previous_partition(
    spark: SparkSession, config: PipelineConfig, ds: dt.date
) -> tuple[dt.date | None, DataFrame | None]:
    """The latest published date before `ds` and its rows; (None, None) when there is none.

    Never creates the table: a gate failure on a new lake must leave no commit behind.
    """
    from delta.tables import DeltaTable

    path = config.table_path(RECOMMENDATIONS.name)
    if not DeltaTable.isDeltaTable(spark, path):
        return None, None
    table = spark.read.format("delta").load(path)
    latest = table.where(F.col("ds") < F.lit(ds)).agg(F.max("ds")).first()[0]
    if latest is None:
        return None, None
    return latest, table.where(F.col("ds") == F.lit(latest)).select("user_id", "rank", "item_id")


def table_version(spark: SparkSession, config: PipelineConfig) -> int | None:
    from delta.tables import DeltaTable

    path = config.table_path(RECOMMENDATIONS.name)
    if not DeltaTable.isDeltaTable(spark, path):
        return None
    return int(DeltaTable.forPath(spark, path).history(1).select("version").first()[0])


# ---------------------------------------------------------------------------------------------------
# The job


@contextmanager
def _phase(report: PublishReport, name: str):
    started = time.monotonic()
    try:
        yield
    finally:
        report.timings[name] = round(time.monotonic() - started, 1)


@lease.holding("publish", lambda ds, **_: [lease.date_key(ds)])
def run_publish(
    spark: SparkSession,
    config: PipelineConfig,
    ds: dt.date,
    k: int = DEFAULT_K,
    model_version: str | None = None,
    max_changed_share: float = DEFAULT_MAX_CHANGED_SHARE,
    min_coverage: float = DEFAULT_MIN_COVERAGE,
    keep_serving: bool = False,
) -> PublishReport:
    """Score, gate and write the run date's lists (the module docstring has the steps).

    The report is written whether the gate passes or not; a failed gate raises `PublishGateError`
    after writing it, and the table is left exactly as it was.
    """
    from jobs.ranking.candidates import fit_base_models
    from jobs.ranking.serialization import load_ranker

    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    started = time.monotonic()
    report = PublishReport(ds.isoformat(), k, dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    report.lake_id, report.run_id = lake_identity.bind(config), artifacts.run_id()
    folder = ranker_folder(config, ds, model_version)  # fails before any work when there is no ranker
    card = json.loads((folder / "ranker.json").read_text())  # verified by ranker_folder
    report.model_version = card.get("version", folder.name)
    report.ranker_artifact, report.trained_ds = str(folder), card.get("trained_ds", "")

    with _phase(report, "load data"):
        loaded = load_ranking_data(spark, config, ds)
        # No base models yet: loading first checks the ranker's modalities before the costly fit.
        ranker = load_ranker(folder, loaded.items, base=None)
        data = loaded.data
        # The catalog as of ds, never the newest (`jobs.asof`): eligibility and the gate both use it.
        catalog = loaded.catalog.select("item_id", "available_from")
        eligible_items = eligible_item_mask(catalog, ds, data.item_ids)
    report.notes += _model_notes(report, card, loaded)
    for note in report.notes:
        log.warning("publish: %s", note)

    with _phase(report, "fit base models"):
        base = fit_base_models(data.interactions, loaded.items, ranker.settings, loaded.items.modalities)
    n_users = data.interactions.n_users
    report.users, report.eligible_items = int(n_users), int(eligible_items.sum())
    seen_eligible = np.asarray(base.seen @ eligible_items.astype(np.float32)).ravel()
    expected_rows = np.minimum(k, report.eligible_items - seen_eligible).astype(np.int64)
    report.short_lists = int((expected_rows < k).sum())
    cold_items = set(data.item_ids[base.item_counts == 0].tolist())
    log.info(
        "publish ds=%s: ranker %s, %d users, %d of %d items available, K=%d (%d users have fewer eligible items)",
        ds,
        report.model_version,
        n_users,
        report.eligible_items,
        len(data.item_ids),
        k,
        report.short_lists,
    )

    serving = new_serving_folder(config, ds)
    clean_stale_serving(config, ds, serving)
    try:
        with _phase(report, "save serving artifact"):
            size = save_serving_artifact(serving, base, loaded.items, data.user_ids, data.item_ids, eligible_items)
            log.info("publish: serving artifact %s (%.1f MB)", serving, size / 1e6)
        del base, ranker  # the workers load their own copies; the driver needs the memory less than they do
        gc.collect()

        plan = ServingPlan(
            str(serving), str(folder), uuid.uuid4().hex, k, USERS_PER_BLOCK, threads_per_task(spark)
        )
        with _phase(report, "score"), stage_progress(spark, "publish", n_users):
            # Scored once: the gate and the write see the same rows.
            rows = _scored_rows(spark, config, ds, plan, n_users, report.model_version).localCheckpoint(eager=True)
        crash_point("publish.scored")
        with _phase(report, "gate"):
            report.rows = rows.count()
            listed = {r.item_id for r in rows.select("item_id").distinct().collect()}
            report.items_listed, report.cold_items_listed = len(listed), len(listed & cold_items)
            expected = spark.createDataFrame(pa.table({"user_id": data.user_ids, "rows": expected_rows}))
            previous_ds, previous = previous_partition(spark, config, ds)
            report.previous_ds = previous_ds.isoformat() if previous_ds else None
            checks = check_lists(
                rows,
                expected,
                seen_pairs(spark, config, ds),
                catalog,
                ds,
                previous,
                max_changed_share,
                min_coverage,
            )
        _record_gate(config, report, checks, started)  # raises PublishGateError when a check failed

        crash_point("publish.gated")
        with _phase(report, "write"):
            lake.replace_where(spark, config, RECOMMENDATIONS, rows, lake.rows_of(ds=ds))
        crash_point("publish.committed")
        report.published = True
        report.table_version = table_version(spark, config)
        log.info(
            "publish: wrote %d rows for %d users to %s (version %s)",
            report.rows,
            n_users,
            RECOMMENDATIONS.name,
            report.table_version,
        )
    finally:
        if not keep_serving:  # only this run's folder: another run of any date may be scoring from its own
            shutil.rmtree(serving, ignore_errors=True)
            with contextlib.suppress(OSError):
                serving.parent.rmdir()  # the date's folder, when no other run of it left one
    report.seconds = round(time.monotonic() - started, 1)
    write_report(config, report.ds, "publish", report)
    return report


def _model_notes(report: PublishReport, card: dict, loaded: RankingData) -> list[str]:
    """What a reader of the lists should know about the ranker served: trained after the run date, or on
    another fusion than the item vectors it scores."""
    notes = []
    if report.trained_ds and report.trained_ds > report.ds:
        notes.append(
            f"the ranker was trained on data up to {report.trained_ds}, after this run date: a backfill "
            "served with a later model (its network saw later interactions)"
        )
    if card.get("fusion_version") and card["fusion_version"] != loaded.fusion_version:
        notes.append(
            f"the ranker was trained on fusion {card['fusion_version']}, item_vectors hold {loaded.fusion_version}: "
            "retrain for content features comparable with training"
        )
    return notes


def _scored_rows(
    spark: SparkSession, config: PipelineConfig, ds: dt.date, plan: ServingPlan, n_users: int, model_version: str
) -> DataFrame:
    """The rows of `recommendations` for `ds`: every user's scored top K with its items' modalities."""
    modalities = (
        lake.read_table(spark, config, ITEM_VECTORS)
        .where(F.col("fused_ds") == F.lit(ds))
        .select("item_id", "modalities")
    )
    return (
        score_lists(spark, plan, n_users)
        .join(F.broadcast(modalities), "item_id", "left")
        .select(
            F.lit(ds).alias("ds"),
            "user_id",
            "rank",
            "item_id",
            "score",
            F.lit(model_version).alias("model_version"),
            # The end of the run date: a rerun writes identical rows (see the module docstring).
            F.lit(ds + dt.timedelta(days=1)).cast("timestamp").alias("generated_at"),
            F.coalesce("modalities", F.array().cast("array<string>")).alias("modalities"),
        )
    )


def _record_gate(config: PipelineConfig, report: PublishReport, checks: list[Check], started: float) -> None:
    """The checks into the report and the log; on a failed check, the report written and `PublishGateError`."""
    report.checks = [asdict(check) for check in checks]
    report.drift = {c.name: c.numbers for c in checks if c.name in DRIFT_CHECKS}
    report.passed = all(check.passed for check in checks)
    for check in checks:
        (log.info if check.passed else log.error)(
            "gate %s: %s: %s", check.name, "ok" if check.passed else "FAILED", check.detail
        )
    if not report.passed:
        report.seconds = round(time.monotonic() - started, 1)
        path = write_report(config, report.ds, "publish", report)
        failed = "; ".join(f"{c.name}: {c.detail}" for c in checks if not c.passed)
        raise PublishGateError(
            f"publish {report.ds} stopped by the quality gate, nothing written to {RECOMMENDATIONS.name}: {failed} "
            f"(report: {path})"
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser)
    parser.add_argument(
        "--k", type=LIST_LENGTH, default=DEFAULT_K, help="list length per user (default: %(default)s)"
    )
    # An empty value (Airflow passes every flag) means the current model.
    parser.add_argument(
        "--model-version",
        type=optional_model_version,
        help="ranker version to serve (default: the one train chose for --ds)",
    )
    parser.add_argument(
        "--max-changed-share",
        type=share,
        default=DEFAULT_MAX_CHANGED_SHARE,
        help="fail the gate when more than this share of users' lists changed since the previous date (default: never)",
    )
    parser.add_argument(
        "--min-coverage",
        type=share,
        default=DEFAULT_MIN_COVERAGE,
        help="fail the gate when fewer than this share of available items is in any list (default: never)",
    )
    parser.add_argument(
        "--keep-serving",
        action="store_true",
        help="keep this run's _models/serving/<ds>/<run id>/ after the run (until the next publish of <ds>)",
    )


def run_from_args(args: argparse.Namespace) -> PublishReport:
    config = load_run_config(args)
    with spark_session("modalrank-publish", config) as spark:
        report = run_publish(
            spark,
            config,
            args.ds,
            k=args.k,
            model_version=args.model_version,
            max_changed_share=args.max_changed_share,
            min_coverage=args.min_coverage,
            keep_serving=args.keep_serving,
        )
    log.info(
        "published %d rows for %d users (K=%d, %s) in %.1f s: %s",
        report.rows,
        report.users,
        report.k,
        report.model_version,
        report.seconds,
        config.reports_dir / report.ds / "publish.md",
    )
    return report


main = job_entry_point(__doc__, add_arguments, run_from_args)


if __name__ == "__main__":
    raise SystemExit(main())
