"""The `deferred` table at ingest: rows not due by the run date (events after it, items not yet
available and their events) kept as they will be merged, taken back in on the first run date they are
due, and found superseded when the source sends them again or a later date deferred them again."""

from __future__ import annotations

import datetime as dt

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from jobs.catalog_merge import CONTENT_COLUMNS, INTERACTION_KEY
from jobs.schemas import CATALOG, INTERACTIONS

# A deferred row is kept as it will be merged: its catalog or interactions columns, typed.
ITEM_RECORD = StructType([f for f in CATALOG.schema.fields if f.name == "item_id" or f.name in CONTENT_COLUMNS])
EVENT_RECORD = StructType([f for f in INTERACTIONS.schema.fields if f.name != "ingested_ds"])
# Why a good row waits in `deferred` (fixed phrases, as quarantine reasons are).
DEFERRED_ITEM = "available_from after the run date"
DEFERRED_EVENT = "event after the run date"
DEFERRED_FOR_ITEM = "item not yet available"


def event_key() -> Column:
    """An interaction's identity as text, the same for a source row and for its deferred copy."""
    return F.to_json(F.struct(*(F.col(k) for k in INTERACTION_KEY))).alias("row_key")


def _row_record(kind: str) -> Column:
    schema = ITEM_RECORD if kind == "items" else EVENT_RECORD
    return F.to_json(F.struct(*(F.col(f.name).cast(f.dataType).alias(f.name) for f in schema.fields)))


def to_deferred_rows(rows: DataFrame, kind: str, ds: dt.date, now: Column) -> DataFrame:
    """`deferred` table rows from validated rows that carry `due_ds` (and `deferral`, for events)."""
    is_items = kind == "items"
    return rows.select(
        F.lit(ds).alias("deferred_ds"),
        F.lit(kind).alias("kind"),
        "item_id",
        (F.lit(None) if is_items else F.col("user_id")).cast("bigint").alias("user_id"),
        (F.col("item_id").cast("string") if is_items else event_key()).alias("row_key"),
        "due_ds",
        (F.lit(DEFERRED_ITEM) if is_items else F.col("deferral")).alias("reason"),
        "input",
        _row_record(kind).alias("record"),
        now.alias("deferred_at"),
    )


def carried_rows(due_rows: DataFrame, kind: str, source_keys: DataFrame, schema: StructType) -> DataFrame:
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


def items_waiting(ds: dt.date, deferred_items: DataFrame, pending: DataFrame, staged: DataFrame) -> DataFrame:
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


def check_known(events: DataFrame, known_items: DataFrame) -> DataFrame:
    """Deferred events taken in: `reason` "unknown item id" where their item is no longer known."""
    known = known_items.distinct().withColumn("known", F.lit(True))
    unknown = F.col("known").isNull() & ~F.col("superseded")
    return (
        events.join(known, "item_id", "left")
        .withColumn("reason", F.when(unknown, F.lit("unknown item id")))
        .withColumn("source_file", F.col("input"))
        .drop("known")
    )


def schedule_events(events: DataFrame, waiting_items: DataFrame, ds: dt.date) -> DataFrame:
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
