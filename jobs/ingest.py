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
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from delta.tables import DeltaTable
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType

from jobs import artifacts, asof, lake, lease, media_files, sources
from jobs.arguments import optional_input_path
from jobs.config import PipelineConfig, add_run_arguments, load_run_config
from jobs.faults import crash_point
from jobs.input_accounts import INPUT_COLUMNS, InputAccount, input_row
from jobs.schemas import CATALOG, CATALOG_HISTORY, DEFERRED, INTERACTIONS, MEDIA_KINDS, QUARANTINE, column_names
from jobs.sources import Extra, RawSource
from jobs.spark import job_main, spark_session
from jobs.validation import (
    UNDECODABLE,
    blank,
    first_reason,
    keep_first,
    parse_id,
    quarantine_rows,
    undecodable,
)

log = logging.getLogger("modalrank.ingest")

STAGE = "ingest"
# Catalog columns whose change makes an item "changed" (and so due for re-extraction downstream).
CONTENT_COLUMNS = tuple(
    name
    for name in column_names(CATALOG)
    if name not in {"item_id", "first_seen_ds", "updated_ds", "first_seen_at", "updated_at"}
)
INTERACTION_KEY = ("user_id", "item_id", "event_time", "source")
# A deferred row is kept as it will be merged: its catalog or interactions columns, typed.
ITEM_RECORD = StructType([f for f in CATALOG.schema.fields if f.name == "item_id" or f.name in CONTENT_COLUMNS])
EVENT_RECORD = StructType([f for f in INTERACTIONS.schema.fields if f.name != "ingested_ds"])
# Where an input's rows came from: the file read this run, or the deferred table.
SOURCE, CARRIED = "source", "deferred"
# Why a good row waits in `deferred` (fixed phrases, as quarantine reasons are).
DEFERRED_ITEM = "available_from after the run date"
DEFERRED_EVENT = "event after the run date"
DEFERRED_FOR_ITEM = "item not yet available"


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


class IngestAccountingError(RuntimeError):
    """Some input's rows do not add up: a reader or a join lost or duplicated rows. Nothing was written."""


@dataclass
class IngestReport:
    ds: str
    source: str
    # Per kind, summed over `inputs`: read = ingested (new + changed + unchanged) + deferred + quarantined
    # + superseded. "read" counts rows from the source files and rows taken from `deferred`.
    items_read: int = 0
    items_new: int = 0
    items_changed: int = 0
    items_unchanged: int = 0
    items_deferred: int = 0
    items_quarantined: int = 0
    items_superseded: int = 0
    interactions_read: int = 0
    interactions_new: int = 0
    interactions_changed: int = 0
    interactions_unchanged: int = 0
    interactions_deferred: int = 0
    interactions_quarantined: int = 0
    interactions_superseded: int = 0
    extras_read: dict[str, int] = field(default_factory=dict)
    quarantine_by_reason: dict[str, int] = field(default_factory=dict)
    catalog_rows: int = 0
    interactions_rows: int = 0
    deferred_rows: int = 0  # rows waiting in `deferred` after the run, all dates
    inputs: list[InputAccount] = field(default_factory=list)  # one per input file (and per origin)
    seconds: float = 0.0

    @property
    def items_ingested(self) -> int:
        return self.items_new + self.items_changed + self.items_unchanged

    @property
    def interactions_ingested(self) -> int:
        return self.interactions_new + self.interactions_changed + self.interactions_unchanged


# ---------------------------------------------------------------------------------------------------
# Pure helpers


def resolve_media_path(media_root: str, path: str | None) -> tuple[str | None, str | None]:
    """(absolute path, None) for a media path inside `media_root`, or (None, reason) when it is not.

    Catalog files come from outside; a path must never point the pipeline at files beyond the
    folder the data engineer configured (`../../etc/passwd`, `/home/x/secret.jpg`, a symlink out of
    it), nor crash it (a NUL byte). Only the path is checked here; `media_files.sha256_of_media_file`
    then refuses anything but a readable regular file.
    """
    if path is None or path.strip() == "":
        return None, None
    return media_files.resolve_under(media_root, path.strip())


def _split_list(column: str) -> Column:
    parts = F.split(F.coalesce(F.col(column), F.lit("")), r"\|")
    return F.filter(F.transform(parts, lambda part: F.trim(part)), lambda part: part != "")


def _event_time(column: str) -> Column:
    raw = F.trim(F.col(column))
    # MovieLens stores epoch seconds; other sources ISO-8601 strings.
    return F.when(raw.rlike(r"^[0-9]{1,12}$"), F.timestamp_seconds(raw.cast("bigint"))).otherwise(
        F.try_to_timestamp(raw)
    )


# ---------------------------------------------------------------------------------------------------
# Items


def validate_items(raw: DataFrame) -> DataFrame:
    """Typed item columns plus `reason` (null for a good row)."""
    available_from = F.try_to_date(F.trim("available_from"))
    checks = first_reason(
        (F.col("malformed").isNotNull(), F.col("malformed")),
        (undecodable("title", "overview", "genres", "tags"), UNDECODABLE),
        (blank("item_id"), "missing item id"),
        (parse_id("item_id").isNull(), "unparseable item id"),
        (blank("title"), "missing title"),
        (~blank("available_from") & available_from.isNull(), "unparseable available_from"),
    )
    title_year = F.regexp_extract("title", r"\((\d{4})\)\s*$", 1)
    typed = raw.select(
        parse_id("item_id").alias("item_id"),
        F.trim("title").alias("title"),
        F.coalesce(F.trim("year").try_cast("int"), F.nullif(title_year, F.lit("")).try_cast("int")).alias("year"),
        F.nullif(F.trim("overview"), F.lit("")).alias("overview"),
        _split_list("genres").alias("genres"),
        F.array_sort(F.array_distinct(F.transform(_split_list("tags"), F.lower))).alias("tags"),
        F.nullif(F.trim("imdb_id"), F.lit("")).alias("imdb_id"),
        F.trim("tmdb_id").try_cast("double").try_cast("bigint").alias("tmdb_id"),
        *(F.col(f"{kind}_path").alias(f"{kind}_path") for kind in MEDIA_KINDS),
        available_from.alias("available_from"),
        "source_file",
        "record",
        "row_order",
        "input",
        "lines",
        "input_lines",
        checks.alias("reason"),
    )
    return keep_first(typed, ["item_id"], "duplicate item id")


def validate_extra(extra: Extra, known_item_ids: DataFrame) -> DataFrame:
    """Every row of one extra input with a long `item_id`, its value columns, META_FIELDS and `reason`
    (null for a good row)."""
    value_columns = [c for c in extra.rows.columns if c not in ("item_id", *sources.META_FIELDS)]
    text_columns = [c for c in value_columns if c in ("overview", "tag")]
    is_media = extra.kind in MEDIA_KINDS
    checks = first_reason(
        (F.col("malformed").isNotNull(), F.col("malformed")),
        (undecodable(*text_columns) if text_columns else F.lit(False), UNDECODABLE),
        (blank("item_id"), "missing item id"),
        (parse_id("item_id").isNull(), "file name is not an item id" if is_media else "unparseable item id"),
        (blank("tag") if extra.kind == "tags" else F.lit(False), "missing tag"),
    )
    checked = extra.rows.withColumn("reason", checks).withColumn("item_id", parse_id("item_id"))
    if extra.kind != "tags":  # tags are many per item; everything else is one per item
        duplicate = "duplicate media file for item" if is_media else "duplicate item id"
        checked = keep_first(checked, ["item_id"], duplicate)
    return _flag_unknown_items(checked, known_item_ids)


def _apply_extras(
    items: DataFrame, extras: list[Extra]
) -> tuple[DataFrame, list[DataFrame], list[tuple[str, DataFrame]]]:
    """(items with the extras joined on, quarantine rows, (kind, checked rows) per extra for the counts)."""
    # Taken once, before any join: each extra is checked against the items' ids, not against a plan
    # that grows with every extra joined so far.
    item_ids = items.select("item_id")
    rejects, checked_extras = [], []
    for extra in extras:
        # Computed once (see `_settled`): the join below, the quarantine and the counts all read it.
        checked = _settled(validate_extra(extra, item_ids))
        checked_extras.append((extra.kind, checked))
        rejects.append(quarantine_rows(checked, item_id=F.col("item_id")))
        value_columns = [c for c in extra.rows.columns if c not in ("item_id", *sources.META_FIELDS)]
        good = checked.where(F.col("reason").isNull()).select("item_id", *value_columns)
        if extra.kind == "overview":
            good = good.select("item_id", F.nullif(F.trim("overview"), F.lit("")).alias("x_overview"))
            items = items.join(good, "item_id", "left").withColumn(
                "overview", F.coalesce("x_overview", "overview")
            )
        elif extra.kind == "tags":
            tags = good.groupBy("item_id").agg(F.collect_set(F.lower(F.trim("tag"))).alias("x_tags"))
            items = items.join(tags, "item_id", "left").withColumn(
                "tags", F.array_sort(F.array_distinct(F.concat("tags", F.coalesce("x_tags", F.array()))))
            )
        elif extra.kind == "links":
            links = good.select(
                "item_id",
                F.nullif(F.trim("imdb_id"), F.lit("")).alias("x_imdb_id"),
                F.trim("tmdb_id").try_cast("double").try_cast("bigint").alias("x_tmdb_id"),
            )
            items = (
                items.join(links, "item_id", "left")
                .withColumn("imdb_id", F.coalesce("x_imdb_id", "imdb_id"))
                .withColumn("tmdb_id", F.coalesce("x_tmdb_id", "tmdb_id"))
            )
        else:  # a media folder: its files win over paths a catalog gave
            media = good.select("item_id", F.col("path").alias("x_path"), F.col("content_hash").alias("x_hash"))
            items = (
                items.join(media, "item_id", "left")
                .withColumn(f"{extra.kind}_path", F.coalesce("x_path", f"{extra.kind}_path"))
                .withColumn(f"{extra.kind}_hash", F.coalesce("x_hash", f"{extra.kind}_hash"))
            )
        items = items.drop(*(c for c in items.columns if c.startswith("x_")))
    return items, rejects, checked_extras


_RESOLVED = StructType([StructField("path", StringType()), StructField("reason", StringType())])
# Path problems that reject the whole item (its catalog row is wrong), unlike a file problem, which
# costs the item only that modality.
_PATH_REASONS = (media_files.ESCAPES_ROOT, media_files.NUL_IN_PATH)


def _resolve_catalog_media(items: DataFrame, media_root: str | None) -> tuple[DataFrame, list[DataFrame]]:
    """Media paths a catalog gives: resolved inside the media root and hashed; problems quarantined.

    A path that leaves the root or holds a NUL byte quarantines the item; a file that is missing, not a
    regular file (a FIFO, a folder) or unreadable costs the item that modality, with a quarantine row
    `<kind> <reason>` (e.g. "poster file not found", "video not a regular file").
    """
    for kind in MEDIA_KINDS:
        items = items.withColumn(f"{kind}_hash", F.lit(None).cast("string"))
    if media_root is None:
        return items, []
    resolve = F.udf(lambda path: resolve_media_path(media_root, path), _RESOLVED)
    path_problem = F.lit(None).cast("string")
    for kind in MEDIA_KINDS:
        items = items.withColumn(f"{kind}_resolved", resolve(f"{kind}_path"))
        path_problem = F.coalesce(path_problem, F.col(f"{kind}_resolved.reason"))
    items = items.withColumn(
        "reason",
        F.when(F.col("reason").isNull() & path_problem.isin(*_PATH_REASONS), path_problem).otherwise(
            F.col("reason")
        ),
    )
    file_rejects = []
    for kind in MEDIA_KINDS:
        items = items.withColumn("m_path", F.col(f"{kind}_resolved.path"))
        items = items.withColumn("m_hashed", sources.file_hashes("m_path"))
        unusable = F.col("m_path").isNotNull() & F.col("m_hashed.hash").isNull()
        file_rejects.append(
            items.where(F.col("reason").isNull() & unusable).select(
                "source_file",
                F.col("item_id").cast("bigint"),
                F.lit(None).cast("bigint").alias("user_id"),
                F.col(f"{kind}_path").alias("record"),
                F.concat(F.lit(f"{kind} "), F.col("m_hashed.reason")).alias("reason"),
            )
        )
        # A missing or unusable file costs the item that modality, not the item: it is ingested without it.
        items = (
            items.withColumn(f"{kind}_path", F.when(F.col("m_hashed.hash").isNotNull(), F.col("m_path")))
            .withColumn(f"{kind}_hash", F.col("m_hashed.hash"))
            .drop("m_path", "m_hashed", f"{kind}_resolved")
        )
    return items, file_rejects


# ---------------------------------------------------------------------------------------------------
# Interactions


def validate_interactions(
    raw: DataFrame, rating_range: tuple[float, float], known_item_ids: DataFrame
) -> DataFrame:
    """Typed interaction columns plus `reason` (null for a good row)."""
    low, high = rating_range
    rating = F.trim("rating").try_cast("float")
    weight = F.trim("weight").try_cast("float")
    event_time = _event_time("event_time")
    checks = first_reason(
        (F.col("malformed").isNotNull(), F.col("malformed")),
        (undecodable("user_id", "item_id", "rating", "weight", "event_time", "source"), UNDECODABLE),
        (blank("user_id"), "missing user id"),
        (parse_id("user_id").isNull(), "unparseable user id"),
        (blank("item_id"), "missing item id"),
        (parse_id("item_id").isNull(), "unparseable item id"),
        (~blank("rating") & rating.isNull(), "unparseable rating"),
        (rating.isNotNull() & ~rating.between(low, high), f"rating out of range [{low:g}, {high:g}]"),
        (~blank("weight") & (weight.isNull() | (weight < 0)), "unparseable or negative weight"),
        (blank("event_time"), "missing event time"),
        (event_time.isNull(), "unparseable event time"),
    )
    typed = raw.select(
        parse_id("user_id").alias("user_id"),
        parse_id("item_id").alias("item_id"),
        rating.alias("rating"),
        F.coalesce(weight, F.lit(1.0)).cast("float").alias("weight"),
        event_time.alias("event_time"),
        F.coalesce(F.nullif(F.trim("source"), F.lit("")), F.lit("event")).alias("source"),
        "source_file",
        "record",
        "row_order",
        "input",
        "lines",
        "input_lines",
        checks.alias("reason"),
    )
    typed = keep_first(typed, list(INTERACTION_KEY), "duplicate interaction")
    return _flag_unknown_items(typed, known_item_ids)


def _flag_unknown_items(rows: DataFrame, known_item_ids: DataFrame) -> DataFrame:
    """`rows` with the reason "unknown item id" on every row that has no reason yet and whose item is not
    among `known_item_ids` (a left join: every row stays)."""
    known = known_item_ids.select("item_id").distinct().withColumn("known", F.lit(True))
    unknown = F.col("reason").isNull() & F.col("known").isNull()
    return (
        rows.join(known, "item_id", "left")
        .withColumn("reason", F.when(unknown, F.lit("unknown item id")).otherwise(F.col("reason")))
        .drop("known")
    )


# ---------------------------------------------------------------------------------------------------
# The job


def read_request(spark: SparkSession, request: IngestRequest) -> RawSource:
    if request.movielens:
        raw = sources.read_movielens(spark, request.movielens)
    else:
        raw = sources.read_generic(spark, request.catalog, request.interactions, request.media_root)
    extras = list(raw.extras)
    if request.overviews:
        extras.append(sources.read_overviews(spark, request.overviews))
    for kind, folder, extensions in (
        ("poster", request.posters, sources.IMAGE_EXTENSIONS),
        ("audio", request.audio, sources.AUDIO_EXTENSIONS),
        ("video", request.video, sources.VIDEO_EXTENSIONS),
    ):
        if folder:
            extras.append(sources.read_media_folder(spark, kind, folder, extensions))
    return RawSource(raw.name, raw.items, raw.interactions, extras, raw.rating_range, raw.media_root)


def _text_hash() -> Column:
    return F.sha2(
        F.concat_ws(
            "\u001f",
            F.col("title"),
            F.coalesce("overview", F.lit("")),
            F.array_join("genres", "|"),
            F.array_join("tags", "|"),
        ),
        256,
    )


# The date's run lease: a second run of this date waits, then fails naming the holder.
@lease.holding("ingest", lambda request, **_: [lease.date_key(request.ds)])
def run_ingest(spark: SparkSession, config: PipelineConfig, request: IngestRequest) -> IngestReport:
    started = time.monotonic()
    ds = request.ds
    raw = read_request(spark, request)
    report = IngestReport(ds=ds.isoformat(), source=raw.name)
    log.info("ingest ds=%s source=%s", ds, raw.name)
    catalog = lake.ensure_table(spark, config, CATALOG)
    interactions_table = lake.ensure_table(spark, config, INTERACTIONS)
    # Rows earlier run dates deferred: those due by now are taken in; the rest keep waiting. Rows that
    # later run dates deferred are never seen, so a rerun of an old date stays as of that date.
    pending = lake.read_table(spark, config, DEFERRED).where(F.col("deferred_ds") < F.lit(ds))
    due_rows = pending.where(F.col("due_ds") <= F.lit(ds))

    # Items: validate, attach media and extras, then split into ingested / deferred / quarantined.
    items = validate_items(raw.items)
    items, media_rejects = _resolve_catalog_media(items, raw.media_root)
    items = _settled(items)
    item_rejects = quarantine_rows(items, item_id=F.col("item_id"))
    good_items, extra_rejects, checked_extras = _apply_extras(
        items.where(F.col("reason").isNull()).drop("reason"), raw.extras
    )
    good_items = _settled(good_items.withColumn("text_hash", _text_hash()).withColumn("source", F.lit(raw.name)))
    not_yet = F.coalesce(F.col("available_from") > F.lit(ds), F.lit(False))
    deferred_items = good_items.where(not_yet)
    source_item_keys = items.where(F.col("item_id").isNotNull()).select(F.col("item_id").cast("string"))
    carried_items = _settled(_carried(due_rows, "items", source_item_keys, ITEM_RECORD))
    staged_items = _settled(
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
    waiting_items = _waiting_items(ds, deferred_items, pending, staged_items)
    known_items = _union(
        staged_items.select("item_id"), known_by_ds.select("item_id"), waiting_items.select("item_id")
    )
    events = validate_interactions(raw.interactions, raw.rating_range, known_items)
    events = _settled(_schedule_events(events, waiting_items, ds))
    carried_events = _carried(due_rows, "interactions", events.select(_event_key()), EVENT_RECORD)
    carried_events = _settled(_schedule_events(_check_known(carried_events, known_items), waiting_items, ds))
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
        _totals(items, "items", SOURCE),
        _tally(items.where(F.col("reason").isNotNull()), "items", SOURCE, "quarantined"),
        _tally(deferred_items, "items", SOURCE, "deferred"),
        _totals(events, "interactions", SOURCE),
        _tally(events.where(F.col("reason").isNotNull()), "interactions", SOURCE, "quarantined"),
        _tally(events.where(F.col("deferral").isNotNull()), "interactions", SOURCE, "deferred"),
        _tally(staged_events.where(F.col("origin") == SOURCE), "interactions", SOURCE, "ingested"),
        _tally(staged_events.where(F.col("origin") == CARRIED), "interactions", CARRIED, "ingested"),
        _tally(staged_items.where(F.col("origin") == SOURCE), "items", SOURCE, "ingested"),
        _tally(staged_items.where(F.col("origin") == CARRIED), "items", CARRIED, "ingested"),
    ]
    for kind, carried in (("items", carried_items), ("interactions", carried_events)):
        tallies += [
            _totals(carried, kind, CARRIED, physical=due_rows.where(F.col("kind") == kind)),
            _tally(carried.where(F.col("superseded")), kind, CARRIED, "superseded"),
        ]
    tallies += [
        _tally(carried_events.where(F.col("reason").isNotNull()), "interactions", CARRIED, "quarantined"),
        _tally(
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
            _totals(checked, kind, SOURCE),
            _tally(checked.where(F.col("reason").isNotNull()), kind, SOURCE, "quarantined"),
            _tally(good.where(~F.col("not_yet")), kind, SOURCE, "ingested"),
            _tally(good.where(F.col("not_yet")), kind, SOURCE, "deferred"),
        ]
    report.inputs = account_inputs(_union(*tallies).collect())
    check_accounts(report.inputs)
    _sum_accounts(report)
    _classify_items(report, staged_items, known_by_ds)
    _classify_interactions(report, staged_events, interactions_table.toDF())

    # Four commits, each idempotent, so a run killed between any two of them reruns to the same tables
    # (the crash points are where tests/test_crash_rerun.py kills it).
    now = F.current_timestamp()
    _record_versions(spark, config, staged_items, ds, now)
    crash_point("ingest.history_recorded")
    _merge_catalog(catalog, staged_items, ds, now)
    crash_point("ingest.catalog_merged")
    _merge_interactions(interactions_table, staged_events, ds)
    crash_point("ingest.interactions_merged")

    quarantine = _union(item_rejects, *media_rejects, *extra_rejects, event_rejects, carried_rejects).select(
        F.lit(ds).alias("ds"), F.lit(STAGE).alias("stage"), "*", now.alias("quarantined_at")
    )
    lake.replace_where(spark, config, QUARANTINE, quarantine, lake.rows_of(ds=ds, stage=STAGE))
    crash_point("ingest.quarantined")
    # After the merges: a run that dies before this line leaves the due rows where they were, and its
    # rerun takes them in again (the merges are idempotent).
    deferred = _union(
        _deferred_rows(deferred_items.withColumn("due_ds", F.col("available_from")), "items", ds, now),
        _deferred_rows(events.where(F.col("deferral").isNotNull()), "interactions", ds, now),
        _deferred_rows(
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
    write_report(config, report)
    return report


# ---------------------------------------------------------------------------------------------------
# Deferred rows


def _event_key() -> Column:
    """An interaction's identity as text, the same for a source row and for its deferred copy."""
    return F.to_json(F.struct(*(F.col(k) for k in INTERACTION_KEY))).alias("row_key")


def _row_record(kind: str) -> Column:
    schema = ITEM_RECORD if kind == "items" else EVENT_RECORD
    return F.to_json(F.struct(*(F.col(f.name).cast(f.dataType).alias(f.name) for f in schema.fields)))


def _deferred_rows(rows: DataFrame, kind: str, ds: dt.date, now: Column) -> DataFrame:
    """`deferred` table rows from validated rows that carry `due_ds` (and `deferral`, for events)."""
    is_items = kind == "items"
    return rows.select(
        F.lit(ds).alias("deferred_ds"),
        F.lit(kind).alias("kind"),
        "item_id",
        (F.lit(None) if is_items else F.col("user_id")).cast("bigint").alias("user_id"),
        (F.col("item_id").cast("string") if is_items else _event_key()).alias("row_key"),
        "due_ds",
        (F.lit(DEFERRED_ITEM) if is_items else F.col("deferral")).alias("reason"),
        "input",
        _row_record(kind).alias("record"),
        now.alias("deferred_at"),
    )


def _carried(due_rows: DataFrame, kind: str, source_keys: DataFrame, schema: StructType) -> DataFrame:
    """The due deferred rows of one kind, parsed back, with `superseded`: an older copy of a row
    deferred again later, or a row this run's source holds itself (the source's word is newer)."""
    rows = due_rows.where(F.col("kind") == kind)
    newest = F.row_number().over(
        Window.partitionBy("row_key").orderBy(F.desc("deferred_ds"), F.desc("deferred_at"))
    )
    in_source = source_keys.toDF("row_key").distinct().withColumn("in_source", F.lit(True))
    parsed = F.from_json("record", schema)
    return (
        rows.withColumn("newest", newest == 1)
        .join(in_source, "row_key", "left")
        .select(
            *(parsed[name].alias(name) for name in schema.fieldNames()),
            "input",
            "record",
            (~F.col("newest") | F.col("in_source").isNotNull()).alias("superseded"),
            F.lit(1).cast("long").alias("lines"),
        )
    )


def _waiting_items(ds: dt.date, deferred_items: DataFrame, pending: DataFrame, staged: DataFrame) -> DataFrame:
    """(item_id, due_ds) of every item not available on `ds` that is waiting in `deferred`: this run's
    deferrals win over earlier ones (the source's word is newer), and an item ingested now waits no more."""
    this_run = deferred_items.select("item_id", F.col("available_from").alias("due_ds"), F.lit(0).alias("rank"))
    earlier = pending.where((F.col("kind") == "items") & (F.col("due_ds") > F.lit(ds))).select(
        "item_id", "due_ds", F.datediff(F.lit(ds), "deferred_ds").alias("rank")
    )
    first = F.row_number().over(Window.partitionBy("item_id").orderBy("rank"))
    return (
        this_run.unionByName(earlier)
        .withColumn("first", first)
        .where(F.col("first") == 1)
        .join(staged.select("item_id"), "item_id", "left_anti")
        .select("item_id", "due_ds")
    )


def _check_known(events: DataFrame, known_items: DataFrame) -> DataFrame:
    """Deferred events taken in: `reason` "unknown item id" where their item is no longer known."""
    known = known_items.distinct().withColumn("known", F.lit(True))
    unknown = F.col("known").isNull() & ~F.col("superseded")
    return (
        events.join(known, "item_id", "left")
        .withColumn("reason", F.when(unknown, F.lit("unknown item id")))
        .withColumn("source_file", F.col("input"))
        .drop("known")
    )


def _schedule_events(events: DataFrame, waiting_items: DataFrame, ds: dt.date) -> DataFrame:
    """Adds `due_ds` (the later of the event's date and its item's availability) and `deferral` (why a
    good event waits; null when it is due by `ds`)."""
    waiting = waiting_items.select("item_id", F.col("due_ds").alias("item_due"))
    event_day = F.to_date("event_time")
    why = F.when(F.col("item_due") > event_day, F.lit(DEFERRED_FOR_ITEM)).otherwise(F.lit(DEFERRED_EVENT))
    return (
        events.join(waiting, "item_id", "left")
        .withColumn("due_ds", F.greatest(event_day, F.col("item_due")))
        .withColumn("deferral", F.when(F.col("reason").isNull() & (F.col("due_ds") > F.lit(ds)), why))
        .drop("item_due")
    )


# ---------------------------------------------------------------------------------------------------
# Counting every input's rows


MEASURES = ("lines", "lines_in_rows", "rows", "ingested", "deferred", "quarantined", "superseded")


def _tally(rows: DataFrame, kind: str, origin: str, measure: str) -> DataFrame:
    """(kind, origin, input, measure, n): `rows` counted per input."""
    return rows.groupBy("input").count().select(
        F.lit(kind).alias("kind"), F.lit(origin).alias("origin"), "input", F.lit(measure).alias("measure"),
        F.col("count").alias("n"),
    )  # fmt: skip


def _totals(rows: DataFrame, kind: str, origin: str, physical: DataFrame | None = None) -> DataFrame:
    """Rows, the lines they span, and the input's physical records (from `input_lines`, or `physical`
    counted per input) as tallies."""
    measures = {"rows": F.count("*"), "lines_in_rows": F.sum("lines")}
    if physical is None:
        measures["lines"] = F.max("input_lines")  # the same on every row of an input
    spans = rows.groupBy("input").agg(*(value.alias(name) for name, value in measures.items()))
    tallies = [
        spans.select(F.lit(kind), F.lit(origin), "input", F.lit(m), F.col(m).cast("long")).toDF(
            "kind", "origin", "input", "measure", "n"
        )
        for m in measures
    ]
    if physical is not None:
        tallies.append(_tally(physical, kind, origin, "lines"))
    return _union(*tallies)


def account_inputs(tallies: list) -> list[InputAccount]:
    """InputAccounts from (kind, origin, input, measure, n) rows, sources first, then by kind and input."""
    accounts: dict[tuple[str, str, str], InputAccount] = {}
    for row in tallies:
        key = (row["origin"], row["kind"], row["input"])
        account = accounts.setdefault(key, InputAccount(row["input"], row["kind"], row["origin"]))
        setattr(account, row["measure"], getattr(account, row["measure"]) + int(row["n"] or 0))
    order = {SOURCE: 0, CARRIED: 1}
    return sorted(accounts.values(), key=lambda a: (order.get(a.origin, 2), a.kind, a.input))


def check_accounts(accounts: list[InputAccount]) -> None:
    """Raises IngestAccountingError naming every input whose rows do not add up."""
    problems = [f"{a.kind} {a.input} ({a.origin}): {p}" for a in accounts for p in a.problems()]
    if problems:
        raise IngestAccountingError(
            "ingest would lose or invent rows, so it wrote nothing: " + "; ".join(problems)
        )


def _sum_accounts(report: IngestReport) -> None:
    """The report's per-kind totals, summed over its inputs (the source's and the deferred table's)."""
    for kind in ("items", "interactions"):
        chosen = [a for a in report.inputs if a.kind == kind]
        for measure in ("rows", "deferred", "quarantined", "superseded"):
            name = f"{kind}_{'read' if measure == 'rows' else measure}"
            setattr(report, name, sum(getattr(a, measure) for a in chosen))
    report.extras_read = {}
    for account in report.inputs:
        if account.kind not in ("items", "interactions"):
            report.extras_read[account.kind] = report.extras_read.get(account.kind, 0) + account.rows


def _settled(frame: DataFrame) -> DataFrame:
    """`frame` computed now and kept, its plan cut to a scan of the result.

    Every later step (the counts, the merges, the quarantine and deferred writes) reads these frames;
    with the whole validation plan under each, Spark spends minutes planning the count of every input.
    Computed before any write, they also stay as they were read while the run changes the tables.
    """
    return frame.localCheckpoint(eager=True)


def _union(*frames: DataFrame) -> DataFrame:
    result = frames[0]
    for frame in frames[1:]:
        result = result.unionByName(frame)
    return result


def _content_changed(target: str = "t", staged: str = "s") -> str:
    return " OR ".join(f"NOT ({target}.`{c}` <=> {staged}.`{c}`)" for c in CONTENT_COLUMNS)


def _classify_items(report: IngestReport, staged: DataFrame, current: DataFrame) -> None:
    joined = staged.alias("s").join(current.alias("t"), F.col("s.item_id") == F.col("t.item_id"), "left")
    row = joined.agg(
        F.count(F.when(F.col("t.item_id").isNull(), True)).alias("new"),
        F.count(F.when(F.col("t.item_id").isNotNull() & F.expr(_content_changed()), True)).alias("changed"),
        F.count("*").alias("total"),
    ).first()
    report.items_new, report.items_changed = row["new"], row["changed"]
    report.items_unchanged = row["total"] - row["new"] - row["changed"]


def _classify_interactions(report: IngestReport, staged: DataFrame, current: DataFrame) -> None:
    key = [F.col(f"s.{k}") == F.col(f"t.{k}") for k in INTERACTION_KEY]
    joined = staged.alias("s").join(current.alias("t"), key, "left")
    differs = ~F.expr("s.rating <=> t.rating") | ~F.expr("s.weight <=> t.weight")
    row = joined.agg(
        F.count(F.when(F.col("t.user_id").isNull(), True)).alias("new"),
        F.count(F.when(F.col("t.user_id").isNotNull() & differs, True)).alias("changed"),
        F.count("*").alias("total"),
    ).first()
    report.interactions_new, report.interactions_changed = row["new"], row["changed"]
    report.interactions_unchanged = row["total"] - row["new"] - row["changed"]


def _record_versions(
    spark: SparkSession, config: PipelineConfig, staged: DataFrame, ds: dt.date, now: Column
) -> None:
    """`catalog_history` rows for `ds`: each staged item that no earlier ingest read, or whose content
    differs from the version an earlier ingest recorded last.

    MERGEd by (item_id, ingested_ds): a rerun of `ds` with the same input changes nothing, one with other
    content replaces that date's version. Versions of other dates are never touched, so an older date
    re-ingested on a newer lake adds its own versions beside the newer ones (`jobs.asof`).
    """
    history = lake.ensure_table(spark, config, CATALOG_HISTORY)
    newest_first = Window.partitionBy("item_id").orderBy(F.col("ingested_ds").desc())
    before = (
        asof.catalog_history(spark, config)
        .where(F.col("ingested_ds") < F.lit(ds))
        .withColumn("n", F.row_number().over(newest_first))
        .where("n = 1")
    )
    versions = (
        staged.alias("s")
        .join(before.alias("t"), F.col("s.item_id") == F.col("t.item_id"), "left")
        .where(F.col("t.item_id").isNull() | F.expr(_content_changed()))
        .select(F.col("s.item_id").alias("item_id"), *(F.col(f"s.`{c}`").alias(c) for c in CONTENT_COLUMNS))
        .select(*asof.VERSION_COLUMNS, F.lit(ds).alias("ingested_ds"), now.alias("ingested_at"))
    )
    (
        history.alias("t")
        .merge(
            lake.conform(versions, CATALOG_HISTORY).alias("s"),
            "t.item_id = s.item_id AND t.ingested_ds = s.ingested_ds",
        )
        .whenMatchedUpdate(condition=_content_changed(), set={c: f"s.`{c}`" for c in CONTENT_COLUMNS})
        .whenNotMatchedInsertAll()
        .execute()
    )


def _merge_catalog(catalog: DeltaTable, staged: DataFrame, ds: dt.date, now: Column) -> None:
    """The newest content per item: an older `ds` never overwrites content a newer one wrote, but it
    moves `first_seen_ds` back when it read the item first (see `jobs.asof`)."""
    rows = staged.select(
        *CONTENT_COLUMNS,
        "item_id",
        F.lit(ds).alias("first_seen_ds"),
        F.lit(ds).alias("updated_ds"),
        now.alias("first_seen_at"),
        now.alias("updated_at"),
    )
    rows = lake.conform(rows, CATALOG)
    update = {c: f"s.`{c}`" for c in CONTENT_COLUMNS} | {
        "updated_ds": "s.updated_ds",
        "updated_at": "s.updated_at",
    }
    (
        catalog.alias("t")
        .merge(rows.alias("s"), "t.item_id = s.item_id")
        .whenMatchedUpdate(condition=f"s.updated_ds >= t.updated_ds AND ({_content_changed()})", set=update)
        .whenMatchedUpdate(
            condition="s.first_seen_ds < t.first_seen_ds",
            set={"first_seen_ds": "s.first_seen_ds", "first_seen_at": "s.first_seen_at"},
        )
        .whenNotMatchedInsertAll()
        .execute()
    )


def _merge_interactions(table: DeltaTable, staged: DataFrame, ds: dt.date) -> None:
    rows = lake.conform(staged.withColumn("ingested_ds", F.lit(ds)), INTERACTIONS)
    key = " AND ".join(f"t.{k} = s.{k}" for k in INTERACTION_KEY)
    (
        table.alias("t")
        .merge(rows.alias("s"), key)
        .whenMatchedUpdate(
            condition="NOT (t.rating <=> s.rating) OR NOT (t.weight <=> s.weight)",
            set={"rating": "s.rating", "weight": "s.weight"},
        )
        .whenNotMatchedInsertAll()
        .execute()
    )


# ---------------------------------------------------------------------------------------------------
# Report


def write_report(config: PipelineConfig, report: IngestReport) -> Path:
    """`<artifacts>/_reports/<ds>/ingest.json` and a Markdown twin a person can read."""
    folder = config.reports_dir / report.ds
    payload = asdict(report) | {
        "items_ingested": report.items_ingested,
        "interactions_ingested": report.interactions_ingested,
    }
    artifacts.write_text(folder / "ingest.json", json.dumps(payload, indent=2, sort_keys=True) + "\n")
    lines = [
        f"# Ingest report — run date {report.ds}",
        "",
        f"Source: `{report.source}`. Took {report.seconds} s.",
        "",
        "| | read | new | changed | unchanged | deferred (not due by run date) | quarantined | superseded |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        f"| items | {report.items_read} | {report.items_new} | {report.items_changed} | "
        f"{report.items_unchanged} | {report.items_deferred} | {report.items_quarantined} | "
        f"{report.items_superseded} |",
        f"| interactions | {report.interactions_read} | {report.interactions_new} | "
        f"{report.interactions_changed} | {report.interactions_unchanged} | "
        f"{report.interactions_deferred} | {report.interactions_quarantined} | {report.interactions_superseded} |",
        "",
        f"Tables after the run: catalog {report.catalog_rows} rows, interactions {report.interactions_rows} rows, "
        f"deferred {report.deferred_rows} rows.",
        "",
        "Extra inputs read (rows): "
        + (", ".join(f"{k} {v}" for k, v in sorted(report.extras_read.items())) or "none"),
        "",
        "## Every input: rows read = ingested + deferred + quarantined + superseded",
        "",
        "Lines are the input's physical records, counted before parsing (non-blank lines after a CSV's "
        "header, Parquet rows, media files, rows due in `deferred`); every one of them is in some row.",
        "",
        "| " + " | ".join(INPUT_COLUMNS) + " |",
        "|---|---|---|" + "---:|" * (len(INPUT_COLUMNS) - 3),
        *("| " + " | ".join(str(cell) for cell in input_row(account)) + " |" for account in report.inputs),
        "",
        "## Quarantined rows by reason",
        "",
    ]
    if report.quarantine_by_reason:
        lines += ["| reason | rows |", "|---|---:|"]
        lines += [f"| {reason} | {n} |" for reason, n in sorted(report.quarantine_by_reason.items())]
        lines += [
            "",
            f"Query them: ``SELECT * FROM delta.`{config.table_path('quarantine')}` "
            f"WHERE ds = '{report.ds}' AND stage = '{STAGE}'``",
        ]
    else:
        lines.append("None.")
    artifacts.write_text(folder / "ingest.md", "\n".join(lines) + "\n")
    return folder / "ingest.md"


def log_report(report: IngestReport) -> None:
    log.info(
        "items: read %d, ingested %d (new %d, changed %d, unchanged %d), deferred %d, quarantined %d",
        report.items_read, report.items_ingested, report.items_new, report.items_changed,
        report.items_unchanged, report.items_deferred, report.items_quarantined,
    )  # fmt: skip
    log.info(
        "interactions: read %d, ingested %d (new %d, changed %d, unchanged %d), deferred %d, quarantined %d",
        report.interactions_read, report.interactions_ingested, report.interactions_new,
        report.interactions_changed, report.interactions_unchanged, report.interactions_deferred,
        report.interactions_quarantined,
    )  # fmt: skip
    for a in report.inputs:
        log.info(
            "%s %s (%s): %d lines, %d rows = ingested %d + deferred %d + quarantined %d + superseded %d",
            a.kind, a.input, a.origin, a.lines, a.rows, a.ingested, a.deferred, a.quarantined, a.superseded,
        )  # fmt: skip
    for reason, n in sorted(report.quarantine_by_reason.items()):
        log.info("quarantined %d: %s", n, reason)
    log.info("ingest done in %.1f s", report.seconds)


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


def request_from_args(args: argparse.Namespace) -> IngestRequest:
    return IngestRequest(
        ds=args.ds, movielens=args.movielens, catalog=args.catalog, interactions=args.interactions,
        overviews=args.overviews, posters=args.posters, audio=args.audio, video=args.video,
        media_root=args.media_root,
    )  # fmt: skip


def run_from_args(args: argparse.Namespace) -> IngestReport:
    """The job as the command line and spark-submit run it: its own session, then the log summary."""
    config = load_run_config(args)
    request = request_from_args(args)
    with spark_session("modalrank-ingest", config) as spark:
        report = run_ingest(spark, config, request)
    log_report(report)
    return report


def main(argv: list[str] | None = None) -> int:
    return job_main(__doc__, add_arguments, run_from_args, argv)


if __name__ == "__main__":
    raise SystemExit(main())
