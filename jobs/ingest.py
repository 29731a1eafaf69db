"""Ingestion: a catalog and its interactions, in any supported layout, into the `catalog`,
`interactions` and `quarantine` Delta tables for one run date.

Idempotent per run date: items and interactions are MERGEd (a rerun changes nothing), and the run's
quarantine rows replace that date's earlier ones in one commit. The run date is also an as-of cutoff:
events after it, items not yet available on it and their events wait in the `deferred` table, and the
first run whose date reaches them takes them in without the source being sent again. A run sees only
what earlier dates deferred, so a backfill of an old date never sees the future.

Nothing vanishes: for every input file (and for the rows taken from `deferred`) the physical records
are counted before parsing, and every row read ends up ingested, deferred, quarantined or superseded
(a deferred copy the source sends again). The job checks both identities before it writes anything,
fails when one does not hold, and reports the per-input table.

As of a date (`jobs.asof`): each content version goes to `catalog_history` under its run date, so the
catalog as of any date stays recoverable; the `catalog` MERGE only moves an item's content forward (an
older run date never overwrites what a newer one wrote, it only moves `first_seen_ds` back); events are
checked against the items known by the run date, never those only a later date ingested.

Run by the DAG through spark-submit, by `modalrank ingest`, or by hand:
    spark-submit jobs/ingest.py --ds 2026-11-25 --catalog data/demo/catalog.csv \
        --interactions data/demo/interactions.csv
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from jobs import asof, lake, lease, sources
from jobs.arguments import optional_input_path
from jobs.catalog_media import resolve_catalog_media
from jobs.catalog_merge import (
    classify_interactions,
    classify_items,
    merge_catalog,
    merge_interactions,
    record_versions,
    text_hash,
)
from jobs.config import PipelineConfig, add_run_arguments, load_run_config
from jobs.dataframes import settled, union_by_name
from jobs.deferred import (
    EVENT_RECORD,
    ITEM_RECORD,
    carried_rows,
    check_known,
    event_key,
    items_waiting,
    schedule_events,
    to_deferred_rows,
)
from jobs.faults import crash_point
from jobs.ingest_report import STAGE, IngestReport, log_report, sum_accounts
from jobs.ingest_rules import apply_extras, validate_interactions, validate_items
from jobs.input_accounts import CARRIED, SOURCE, account_inputs, check_accounts
from jobs.input_tallies import tally, totals
from jobs.reports import write_report
from jobs.schemas import CATALOG, DEFERRED, INTERACTIONS, QUARANTINE
from jobs.sources import RawSource
from jobs.spark import job_entry_point, spark_session
from jobs.validation import quarantine_rows

log = logging.getLogger("modalrank.ingest")


@dataclass(frozen=True)
class IngestRequest:
    ds: dt.date
    movielens: Path | None = None
    catalog: Path | None = None
    interactions: Path | None = None
    overviews: Path | None = None
    posters: Path | None = None
    audio: Path | None = None
    video: Path | None = None
    media_root: Path | None = None

    def __post_init__(self) -> None:
        if bool(self.movielens) == bool(self.catalog and self.interactions):
            raise sources.SourceError("give either --movielens DIR or both --catalog FILE and --interactions FILE")


# ---------------------------------------------------------------------------------------------------
# The job


def read_request(
    spark: SparkSession, request: IngestRequest, limits: sources.RecordLimits, max_media_bytes: int | None = None
) -> RawSource:
    """The request's sources; media files over `max_media_bytes` are refused by their size, never hashed."""
    if request.movielens:
        raw = sources.read_movielens(spark, request.movielens, limits)
    else:
        raw = sources.read_generic(spark, request.catalog, request.interactions, limits, request.media_root)
    extras = list(raw.extras)
    if request.overviews:
        extras.append(sources.read_overviews(spark, request.overviews, limits))
    for kind, folder, extensions in (
        ("poster", request.posters, sources.IMAGE_EXTENSIONS),
        ("audio", request.audio, sources.AUDIO_EXTENSIONS),
        ("video", request.video, sources.VIDEO_EXTENSIONS),
    ):
        if folder:
            extras.append(sources.read_media_folder(spark, kind, folder, extensions, max_media_bytes))
    return RawSource(raw.name, raw.items, raw.interactions, extras, raw.rating_range, raw.media_root)


# The date's run lease: a second run of this date waits, then fails naming the holder.
@lease.holding("ingest", lambda request, **_: [lease.date_key(request.ds)])
def run_ingest(spark: SparkSession, config: PipelineConfig, request: IngestRequest) -> IngestReport:
    started = time.monotonic()
    ds = request.ds
    raw = read_request(spark, request, sources.RecordLimits.of(config), config.max_media_bytes)
    report = IngestReport(ds=ds.isoformat(), source=raw.name, quarantine_table=config.table_path("quarantine"))
    log.info("ingest ds=%s source=%s", ds, raw.name)
    catalog = lake.ensure_table(spark, config, CATALOG)
    interactions_table = lake.ensure_table(spark, config, INTERACTIONS)
    # Rows earlier run dates deferred: those due by now are taken in; the rest keep waiting. Rows that
    # later run dates deferred are never seen, so a rerun of an old date stays as of that date.
    pending = lake.read_table(spark, config, DEFERRED).where(F.col("deferred_ds") < F.lit(ds))
    due_rows = pending.where(F.col("due_ds") <= F.lit(ds))

    # Items: validate, attach media and extras, then split into ingested / deferred / quarantined.
    items = validate_items(raw.items)
    items, media_rejects = resolve_catalog_media(items, raw.media_root, config.max_media_bytes)
    items = settled(items)
    item_rejects = quarantine_rows(items, item_id=F.col("item_id"))
    good_items, extra_rejects, checked_extras = apply_extras(
        items.where(F.col("reason").isNull()).drop("reason"), raw.extras
    )
    good_items = settled(good_items.withColumn("text_hash", text_hash()).withColumn("source", F.lit(raw.name)))
    not_yet = F.coalesce(F.col("available_from") > F.lit(ds), F.lit(False))
    deferred_items = good_items.where(not_yet)
    source_item_keys = items.where(F.col("item_id").isNotNull()).select(F.col("item_id").cast("string"))
    carried_items = settled(carried_rows(due_rows, "items", source_item_keys, ITEM_RECORD))
    staged_items = settled(
        good_items.where(~not_yet)
        .select(
            *(F.col(f.name).cast(f.dataType).alias(f.name) for f in ITEM_RECORD),
            "input",
            F.lit(SOURCE).alias("origin"),
        )
        .unionByName(
            carried_items.where(~F.col("superseded")).select(
                *ITEM_RECORD.fieldNames(), "input", F.lit(CARRIED).alias("origin")
            )
        )
    )

    # Interactions: an event waits for its date and for its item's; its item must be known by then: one
    # staged now, one the lake knew by `ds` (not one only a later date ingested: a fresh lake running `ds`
    # would not know it either), or one waiting in `deferred`.
    known_by_ds = asof.catalog_as_of(spark, config, ds).localCheckpoint(eager=True)
    waiting_items = items_waiting(ds, deferred_items, pending, staged_items)
    known_items = union_by_name(
        staged_items.select("item_id"), known_by_ds.select("item_id"), waiting_items.select("item_id")
    )
    events = validate_interactions(raw.interactions, raw.rating_range, known_items)
    events = settled(schedule_events(events, waiting_items, ds))
    carried_events = carried_rows(due_rows, "interactions", events.select(event_key()), EVENT_RECORD)
    carried_events = settled(schedule_events(check_known(carried_events, known_items), waiting_items, ds))
    due_now = F.col("reason").isNull() & F.col("deferral").isNull()
    staged_events = (
        events.where(due_now)
        .select(*EVENT_RECORD.fieldNames(), "input", F.lit(SOURCE).alias("origin"))
        .unionByName(
            carried_events.where(due_now & ~F.col("superseded")).select(
                *EVENT_RECORD.fieldNames(), "input", F.lit(CARRIED).alias("origin")
            )
        )
    )
    event_rejects = quarantine_rows(events, item_id=F.col("item_id"), user_id=F.col("user_id"))
    carried_rejects = quarantine_rows(carried_events, item_id=F.col("item_id"), user_id=F.col("user_id"))

    # Count every input's rows by outcome, and stop before any write if one does not add up.
    tallies = [
        totals(items, "items", SOURCE),
        tally(items.where(F.col("reason").isNotNull()), "items", SOURCE, "quarantined"),
        tally(deferred_items, "items", SOURCE, "deferred"),
        totals(events, "interactions", SOURCE),
        tally(events.where(F.col("reason").isNotNull()), "interactions", SOURCE, "quarantined"),
        tally(events.where(F.col("deferral").isNotNull()), "interactions", SOURCE, "deferred"),
        tally(staged_events.where(F.col("origin") == SOURCE), "interactions", SOURCE, "ingested"),
        tally(staged_events.where(F.col("origin") == CARRIED), "interactions", CARRIED, "ingested"),
        tally(staged_items.where(F.col("origin") == SOURCE), "items", SOURCE, "ingested"),
        tally(staged_items.where(F.col("origin") == CARRIED), "items", CARRIED, "ingested"),
    ]
    for kind, carried in (("items", carried_items), ("interactions", carried_events)):
        tallies += [
            totals(carried, kind, CARRIED, physical=due_rows.where(F.col("kind") == kind)),
            tally(carried.where(F.col("superseded")), kind, CARRIED, "superseded"),
        ]
    tallies += [
        tally(carried_events.where(F.col("reason").isNotNull()), "interactions", CARRIED, "quarantined"),
        tally(
            carried_events.where(F.col("deferral").isNotNull() & ~F.col("superseded")),
            "interactions",
            CARRIED,
            "deferred",
        ),
    ]
    item_due = good_items.select("item_id", not_yet.alias("not_yet"))
    for kind, checked in checked_extras:
        # A good extra row goes where its item goes: into the catalog, or into `deferred` with it.
        good = checked.where(F.col("reason").isNull()).join(item_due, "item_id")
        tallies += [
            totals(checked, kind, SOURCE),
            tally(checked.where(F.col("reason").isNotNull()), kind, SOURCE, "quarantined"),
            tally(good.where(~F.col("not_yet")), kind, SOURCE, "ingested"),
            tally(good.where(F.col("not_yet")), kind, SOURCE, "deferred"),
        ]
    report.inputs = account_inputs(union_by_name(*tallies).collect())
    check_accounts(report.inputs)
    sum_accounts(report)
    classify_items(report, staged_items, known_by_ds)
    classify_interactions(report, staged_events, interactions_table.toDF())

    # Four commits, each idempotent, so a run killed between any two of them reruns to the same tables
    # (the crash points are where tests/test_crash_rerun.py kills it).
    now = F.current_timestamp()
    record_versions(spark, config, staged_items, ds, now)
    crash_point("ingest.history_recorded")
    merge_catalog(catalog, staged_items, ds, now)
    crash_point("ingest.catalog_merged")
    merge_interactions(interactions_table, staged_events, ds)
    crash_point("ingest.interactions_merged")

    quarantine = union_by_name(
        item_rejects, *media_rejects, *extra_rejects, event_rejects, carried_rejects
    ).select(F.lit(ds).alias("ds"), F.lit(STAGE).alias("stage"), "*", now.alias("quarantined_at"))
    lake.replace_where(spark, config, QUARANTINE, quarantine, lake.rows_of(ds=ds, stage=STAGE))
    crash_point("ingest.quarantined")
    # After the merges: a run that dies before this line leaves the due rows where they were, and its
    # rerun takes them in again (the merges are idempotent).
    deferred = union_by_name(
        to_deferred_rows(deferred_items.withColumn("due_ds", F.col("available_from")), "items", ds, now),
        to_deferred_rows(events.where(F.col("deferral").isNotNull()), "interactions", ds, now),
        to_deferred_rows(
            carried_events.where(F.col("deferral").isNotNull() & ~F.col("superseded")), "interactions", ds, now
        ),
    )
    # One commit: this date's deferrals replace its earlier ones, and the rows it took in (or found
    # superseded) leave the table.
    lake.replace_where(
        spark,
        config,
        DEFERRED,
        deferred,
        (F.col("deferred_ds") == F.lit(ds))
        | ((F.col("deferred_ds") < F.lit(ds)) & (F.col("due_ds") <= F.lit(ds))),
    )
    written = lake.read_table(spark, config, QUARANTINE).where(
        (F.col("ds") == F.lit(ds)) & (F.col("stage") == STAGE)
    )
    report.quarantine_by_reason = {
        row["reason"]: row["count"] for row in written.groupBy("reason").count().orderBy("reason").collect()
    }
    report.catalog_rows = catalog.toDF().count()
    report.interactions_rows = interactions_table.toDF().count()
    report.deferred_rows = lake.read_table(spark, config, DEFERRED).count()
    report.seconds = round(time.monotonic() - started, 1)
    write_report(config, report.ds, "ingest", report)
    return report


# ---------------------------------------------------------------------------------------------------
# Command line (spark-submit and `modalrank ingest` share these arguments)


def optional_path(text: str) -> Path | None:
    """A path argument where "" means "not given": Airflow passes every flag, some empty."""
    return optional_input_path(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser)
    add_source_arguments(parser)


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the catalog, interactions and media come from (ingest's arguments besides the run date)."""
    parser.add_argument(
        "--movielens", type=optional_path, help="a MovieLens folder (ml-latest(-small), ml-25m, ml-100k, ml-1m)"
    )
    parser.add_argument("--catalog", type=optional_path, help="a generic catalog file (CSV or Parquet)")
    parser.add_argument("--interactions", type=optional_path, help="a generic interactions file (CSV or Parquet)")
    parser.add_argument("--overviews", type=optional_path, help="CSV of item id + overview text")
    parser.add_argument("--posters", type=optional_path, help="folder of <item_id>.jpg|png posters")
    parser.add_argument("--audio", type=optional_path, help="folder of <item_id>.wav|mp3|… trailer audio")
    parser.add_argument("--video", type=optional_path, help="folder of <item_id>.mp4|… trailer videos")
    parser.add_argument(
        "--media-root", type=optional_path, help="folder that a generic catalog's media paths are relative to"
    )


def request_from_args(args: argparse.Namespace, ds: dt.date | None = None) -> IngestRequest:
    """The sources named on a command line, as of `ds` (default: the command's own --ds)."""
    return IngestRequest(
        ds=args.ds if ds is None else ds,
        movielens=args.movielens,
        catalog=args.catalog,
        interactions=args.interactions,
        overviews=args.overviews,
        posters=args.posters,
        audio=args.audio,
        video=args.video,
        media_root=args.media_root,
    )


def run_from_args(args: argparse.Namespace) -> IngestReport:
    """The job as the command line and spark-submit run it: its own session, then the log summary."""
    config = load_run_config(args)
    request = request_from_args(args)
    with spark_session("modalrank-ingest", config) as spark:
        report = run_ingest(spark, config, request)
    log_report(report)
    return report


main = job_entry_point(__doc__, add_arguments, run_from_args)


if __name__ == "__main__":
    raise SystemExit(main())
