"""As-of reads: what the lake knew by the end of a run date, for every stage that runs that date.

A date's lists must not depend on which later dates already ran on the lake: re-running an older date
on a lake that ran newer ones publishes the same rows as a fresh lake that only ran that date. Each
table has one as-of rule, and every stage reads through it:

- `catalog_history` (written by ingest): one row per (item_id, ingested_ds), added whenever an ingest
  reads content that differs from the version in effect on its date. `catalog_as_of(ds)` is, per item,
  the version of the latest ingest on or before `ds`. An item that no ingest on or before `ds` read is
  in the catalog as of `ds` only when the earliest ingest that read it said it was available by then
  (`available_from` <= `ds`): the source, read later, dates the item itself; an item with no
  `available_from` is known from the first run date that ingested it. So an item a later date first
  ingested is not there, and an older date re-ingested on a newer lake sees its own content.
- `catalog` keeps the newest content only: its MERGE moves an item's content forward, never back
  (an older ds never overwrites what a newer ds wrote), and `first_seen_ds` is the earliest run date
  that read the item. Consumers read it as "the catalog now"; stages never do.
- `interactions`: events with `event_time` before the end of `ds` (ds + 1 day, 00:00 UTC) whose item is
  in the catalog as of `ds` (`interactions_as_of`).
- `features_<modality>`: rows are keyed by (item_id, content_hash) for the built-in modalities, so the
  vector of each content version stays; a date uses the row whose hash is its catalog's (imported
  vectors are not dated: one row per item).
- Fusion and `item_vectors`: see `jobs.fuse` (fitted as of the training grid date, rows per `fused_ds`).
- Rankers: see `jobs.train` (trained on data as of the grid date; `by_ds` pointers, never a later model).

This module only reads (and, once, fills `catalog_history` for items written before it existed).
"""

from __future__ import annotations

import datetime as dt
import logging

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from jobs import lake
from jobs.config import PipelineConfig
from jobs.schemas import CATALOG, CATALOG_HISTORY, INTERACTIONS, column_names

log = logging.getLogger("modalrank.asof")

# The catalog's columns that a history row holds as they are (content, ids, availability, source).
VERSION_COLUMNS = tuple(
    name for name in column_names(CATALOG_HISTORY) if name not in {"ingested_ds", "ingested_at"}
)


def training_date(ds: dt.date, every_days: int) -> dt.date:
    """The grid date whose model (and fusion) serves `ds`: the latest date on or before `ds` whose
    ordinal is a multiple of `every_days` (every date when 1; Sundays when 7)."""
    if every_days < 1:
        raise ValueError(f"--every-days must be at least 1, got {every_days}")
    return dt.date.fromordinal(ds.toordinal() - ds.toordinal() % every_days)


def end_of_day(ds: dt.date) -> dt.datetime:
    """The first instant after run date `ds` (UTC): events before it are known on `ds`."""
    return dt.datetime.combine(ds + dt.timedelta(days=1), dt.time())


def catalog_history(spark: SparkSession, config: PipelineConfig) -> DataFrame:
    """`catalog_history`, first filled with any `catalog` item it lacks (a lake from before the history,
    or a catalog written by hand): such an item gets one version, its current content, from its
    `first_seen_ds` on."""
    history = lake.ensure_table(spark, config, CATALOG_HISTORY).toDF()
    catalog = lake.read_table(spark, config, CATALOG)
    # Computed once: the check, the append and the count below read the same rows (usually none).
    missing = catalog.join(history.select("item_id"), "item_id", "left_anti").localCheckpoint(eager=True)
    filled = missing.count()
    if filled:
        rows = missing.select(
            *VERSION_COLUMNS,
            F.col("first_seen_ds").alias("ingested_ds"),
            F.col("first_seen_at").alias("ingested_at"),
        )
        lake.conform(rows, CATALOG_HISTORY).write.format("delta").mode("append").save(
            config.table_path(CATALOG_HISTORY.name)
        )
        log.info("catalog_history: filled in %d items from catalog", filled)
        history = lake.read_table(spark, config, CATALOG_HISTORY)
    return history


def catalog_as_of(spark: SparkSession, config: PipelineConfig, ds: dt.date) -> DataFrame:
    """The catalog as the lake knew it by the end of `ds`, with `catalog`'s columns (module docstring).

    `first_seen_ds` is the first run date on or before `ds` that read the item (for an item only a later
    ingest read: its `available_from`), `updated_ds` the run date of the version in effect.
    """
    history = catalog_history(spark, config)
    latest_first = Window.partitionBy("item_id").orderBy(F.col("ingested_ds").desc())
    earliest_first = Window.partitionBy("item_id").orderBy(F.col("ingested_ds"))
    read_by_ds = history.where(F.col("ingested_ds") <= F.lit(ds))
    current = (
        read_by_ds.withColumn("n", F.row_number().over(latest_first))
        .where("n = 1")
        .join(
            read_by_ds.groupBy("item_id").agg(
                F.min("ingested_ds").alias("first_seen_ds"), F.min("ingested_at").alias("first_seen_at")
            ),
            "item_id",
        )
        .select(
            *VERSION_COLUMNS,
            "first_seen_ds",
            F.col("ingested_ds").alias("updated_ds"),
            "first_seen_at",
            F.col("ingested_at").alias("updated_at"),
        )
    )
    dated_by_source = (
        history.join(read_by_ds.select("item_id").distinct(), "item_id", "left_anti")
        .withColumn("n", F.row_number().over(earliest_first))
        .where((F.col("n") == 1) & (F.col("available_from") <= F.lit(ds)))
        .select(
            *VERSION_COLUMNS,
            F.col("available_from").alias("first_seen_ds"),
            F.col("available_from").alias("updated_ds"),
            F.col("ingested_at").alias("first_seen_at"),
            F.col("ingested_at").alias("updated_at"),
        )
    )
    return lake.conform(current.unionByName(dated_by_source), CATALOG)


def interactions_as_of(spark: SparkSession, config: PipelineConfig, ds: dt.date, catalog: DataFrame) -> DataFrame:
    """`interactions` rows with an event before the end of `ds` whose item is in `catalog` (as of `ds`)."""
    return (
        lake.read_table(spark, config, INTERACTIONS)
        .where(F.col("event_time") < F.lit(end_of_day(ds)))
        .join(catalog.select("item_id"), "item_id", "left_semi")
    )
