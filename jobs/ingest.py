"""Ingestion: a catalog and its interactions, in any supported layout, into the `catalog`,
`interactions` and `quarantine` Delta tables for one run date.

Idempotent per run date: items and interactions are MERGEd (a rerun changes nothing), and the run's
quarantine rows replace that date's earlier ones in one commit. The run date is also an as-of cutoff:
events after it and items not yet available on it wait for a later run, so a backfill of an old date
never sees the future. Every row read ends up ingested, deferred or quarantined, and the report says
how many of each (new and changed relative to the catalog as of the run date).

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
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from delta.tables import DeltaTable
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType

from jobs import asof, lake, sources
from jobs.config import PipelineConfig, add_run_arguments, load_run_config
from jobs.schemas import CATALOG, CATALOG_HISTORY, INTERACTIONS, MEDIA_KINDS, QUARANTINE, column_names
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


@dataclass
class IngestReport:
    ds: str
    source: str
    items_read: int = 0
    items_new: int = 0
    items_changed: int = 0
    items_unchanged: int = 0
    items_deferred: int = 0
    items_quarantined: int = 0
    interactions_read: int = 0
    interactions_new: int = 0
    interactions_changed: int = 0
    interactions_unchanged: int = 0
    interactions_deferred: int = 0
    interactions_quarantined: int = 0
    extras_read: dict[str, int] = field(default_factory=dict)
    quarantine_by_reason: dict[str, int] = field(default_factory=dict)
    catalog_rows: int = 0
    interactions_rows: int = 0
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
    folder the data engineer configured (`../../etc/passwd`, `/home/x/secret.jpg`).
    """
    if path is None or path.strip() == "":
        return None, None
    root = os.path.realpath(media_root)
    candidate = os.path.realpath(os.path.join(root, path.strip()))
    if os.path.commonpath([root, candidate]) != root:
        return None, "media path escapes media root"
    return candidate, None


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
        checks.alias("reason"),
    )
    return keep_first(typed, ["item_id"], "duplicate item id")


def validate_extra(extra: Extra, known_item_ids: DataFrame) -> tuple[DataFrame, DataFrame]:
    """(good rows keyed by a long item_id, quarantine rows) of one extra input."""
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
    known = known_item_ids.select("item_id").withColumn("known", F.lit(True))
    checked = checked.join(known, "item_id", "left").withColumn(
        "reason",
        F.when(F.col("reason").isNull() & F.col("known").isNull(), F.lit("unknown item id")).otherwise(
            F.col("reason")
        ),
    )
    rejects = quarantine_rows(checked, item_id=F.col("item_id"))
    return checked.where(F.col("reason").isNull()).select("item_id", *value_columns), rejects


def _apply_extras(items: DataFrame, extras: list[Extra]) -> tuple[DataFrame, list[DataFrame]]:
    # Taken once, before any join: each extra is checked against the items' ids, not against a plan
    # that grows with every extra joined so far.
    item_ids = items.select("item_id")
    rejects = []
    for extra in extras:
        good, bad = validate_extra(extra, item_ids)
        rejects.append(bad)
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
    return items, rejects


_RESOLVED = StructType([StructField("path", StringType()), StructField("reason", StringType())])


def _resolve_catalog_media(items: DataFrame, media_root: str | None) -> tuple[DataFrame, list[DataFrame]]:
    """Media paths a catalog gives: resolved inside the media root and hashed; problems quarantined."""
    for kind in MEDIA_KINDS:
        items = items.withColumn(f"{kind}_hash", F.lit(None).cast("string"))
    if media_root is None:
        return items, []
    resolve = F.udf(lambda path: resolve_media_path(media_root, path), _RESOLVED)
    escapes = F.lit(False)
    for kind in MEDIA_KINDS:
        items = items.withColumn(f"{kind}_resolved", resolve(f"{kind}_path"))
        escapes = escapes | F.col(f"{kind}_resolved.reason").isNotNull()
    items = items.withColumn(
        "reason",
        F.when(F.col("reason").isNull() & escapes, F.lit("media path escapes media root")).otherwise(
            F.col("reason")
        ),
    )
    missing_rejects = []
    for kind in MEDIA_KINDS:
        items = items.withColumn("m_path", F.col(f"{kind}_resolved.path"))
        items = items.withColumn("m_hash", sources.file_sha256("m_path"))
        missing = F.col("m_path").isNotNull() & F.col("m_hash").isNull()
        missing_rejects.append(
            items.where(F.col("reason").isNull() & missing).select(
                "source_file",
                F.col("item_id").cast("bigint"),
                F.lit(None).cast("bigint").alias("user_id"),
                F.col(f"{kind}_path").alias("record"),
                F.lit(f"{kind} file not found").alias("reason"),
            )
        )
        # A missing file costs the item that modality, not the item: it is ingested without it.
        items = (
            items.withColumn(f"{kind}_path", F.when(F.col("m_hash").isNotNull(), F.col("m_path")))
            .withColumn(f"{kind}_hash", F.col("m_hash"))
            .drop("m_path", "m_hash", f"{kind}_resolved")
        )
    return items, missing_rejects


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
        checks.alias("reason"),
    )
    typed = keep_first(typed, list(INTERACTION_KEY), "duplicate interaction")
    known = known_item_ids.select("item_id").distinct().withColumn("known", F.lit(True))
    return (
        typed.join(known, "item_id", "left")
        .withColumn(
            "reason",
            F.when(F.col("reason").isNull() & F.col("known").isNull(), F.lit("unknown item id")).otherwise(
                F.col("reason")
            ),
        )
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


def run_ingest(spark: SparkSession, config: PipelineConfig, request: IngestRequest) -> IngestReport:
    started = time.monotonic()
    ds = request.ds
    raw = read_request(spark, request)
    report = IngestReport(ds=ds.isoformat(), source=raw.name)
    log.info("ingest ds=%s source=%s", ds, raw.name)
    catalog = lake.ensure_table(spark, config, CATALOG)
    interactions_table = lake.ensure_table(spark, config, INTERACTIONS)

    # Items: validate, attach media and extras, then split into ingested / deferred / quarantined.
    items = validate_items(raw.items)
    items, media_rejects = _resolve_catalog_media(items, raw.media_root)
    items = items.cache()
    item_rejects = quarantine_rows(items, item_id=F.col("item_id"))
    good_items, extra_rejects = _apply_extras(items.where(F.col("reason").isNull()).drop("reason"), raw.extras)
    good_items = good_items.withColumn("text_hash", _text_hash()).withColumn("source", F.lit(raw.name)).cache()
    not_yet = F.coalesce(F.col("available_from") > F.lit(ds), F.lit(False))
    staged_items = good_items.where(~not_yet)

    # Interactions: items known after this run are the staged ones plus those the lake knew by `ds`
    # (not items only a later date ingested: a fresh lake running `ds` would not know them either).
    known_by_ds = asof.catalog_as_of(spark, config, ds).localCheckpoint(eager=True)
    known_items = staged_items.select("item_id").unionByName(known_by_ds.select("item_id"))
    events = validate_interactions(raw.interactions, raw.rating_range, known_items).cache()
    future = F.col("event_time") >= F.lit(ds + dt.timedelta(days=1)).cast("timestamp")
    staged_events = events.where(F.col("reason").isNull() & ~future)
    event_rejects = quarantine_rows(events, item_id=F.col("item_id"), user_id=F.col("user_id"))

    counts = items.agg(
        F.count("*").alias("read"),
        F.count("reason").alias("quarantined"),
    ).first()
    report.items_read, report.items_quarantined = counts["read"], counts["quarantined"]
    report.items_deferred = good_items.where(not_yet).count()
    _classify_items(report, staged_items, known_by_ds)
    event_counts = events.agg(
        F.count("*").alias("read"),
        F.count("reason").alias("quarantined"),
        F.count(F.when(F.col("reason").isNull() & future, True)).alias("deferred"),
    ).first()
    report.interactions_read = event_counts["read"]
    report.interactions_quarantined = event_counts["quarantined"]
    report.interactions_deferred = event_counts["deferred"]
    _classify_interactions(report, staged_events, interactions_table.toDF())
    for extra in raw.extras:
        report.extras_read[extra.kind] = extra.rows.count()

    now = F.current_timestamp()
    _record_versions(spark, config, staged_items, ds, now)
    _merge_catalog(catalog, staged_items, ds, now)
    _merge_interactions(interactions_table, staged_events, ds)

    quarantine = _union(item_rejects, *media_rejects, *extra_rejects, event_rejects).select(
        F.lit(ds).alias("ds"), F.lit(STAGE).alias("stage"), "*", now.alias("quarantined_at")
    )
    lake.replace_where(spark, config, QUARANTINE, quarantine, f"ds = '{ds.isoformat()}' AND stage = '{STAGE}'")
    written = lake.read_table(spark, config, QUARANTINE).where(
        (F.col("ds") == F.lit(ds)) & (F.col("stage") == STAGE)
    )
    report.quarantine_by_reason = {
        row["reason"]: row["count"] for row in written.groupBy("reason").count().orderBy("reason").collect()
    }
    report.catalog_rows = catalog.toDF().count()
    report.interactions_rows = interactions_table.toDF().count()
    report.seconds = round(time.monotonic() - started, 1)
    for frame in (items, good_items, events):
        frame.unpersist()
    write_report(config, report)
    return report


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
    folder.mkdir(parents=True, exist_ok=True)
    payload = asdict(report) | {
        "items_ingested": report.items_ingested,
        "interactions_ingested": report.interactions_ingested,
    }
    (folder / "ingest.json").write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    lines = [
        f"# Ingest report — run date {report.ds}",
        "",
        f"Source: `{report.source}`. Took {report.seconds} s.",
        "",
        "| | read | new | changed | unchanged | deferred (after run date) | quarantined |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| items | {report.items_read} | {report.items_new} | {report.items_changed} | "
        f"{report.items_unchanged} | {report.items_deferred} | {report.items_quarantined} |",
        f"| interactions | {report.interactions_read} | {report.interactions_new} | "
        f"{report.interactions_changed} | {report.interactions_unchanged} | "
        f"{report.interactions_deferred} | {report.interactions_quarantined} |",
        "",
        f"Tables after the run: catalog {report.catalog_rows} rows, interactions {report.interactions_rows} rows.",
        "",
        "Extra inputs read (rows): "
        + (", ".join(f"{k} {v}" for k, v in sorted(report.extras_read.items())) or "none"),
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
    (folder / "ingest.md").write_text("\n".join(lines) + "\n")
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
    for reason, n in sorted(report.quarantine_by_reason.items()):
        log.info("quarantined %d: %s", n, reason)
    log.info("ingest done in %.1f s", report.seconds)


# ---------------------------------------------------------------------------------------------------
# Command line (spark-submit and `modalrank ingest` share these arguments)


def optional_path(text: str) -> Path | None:
    """A path argument where "" means "not given": Airflow passes every flag, some empty."""
    return Path(text) if text.strip() else None


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
