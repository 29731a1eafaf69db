"""How ingest's staged rows enter the lake: what makes an item changed (its content columns, its text
hash), the MERGEs into `catalog`, `catalog_history` and `interactions`, and the new / changed /
unchanged counts of the report. Each MERGE is idempotent: a rerun of a date changes nothing."""

from __future__ import annotations

import datetime as dt

from delta.tables import DeltaTable
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from jobs import asof, lake
from jobs.config import PipelineConfig
from jobs.ingest_report import IngestReport
from jobs.schemas import CATALOG, CATALOG_HISTORY, INTERACTIONS, column_names

# Catalog columns whose change makes an item "changed" (and so due for re-extraction downstream).
CONTENT_COLUMNS = tuple(
    name
    for name in column_names(CATALOG)
    if name not in {"item_id", "first_seen_ds", "updated_ds", "first_seen_at", "updated_at"}
)
INTERACTION_KEY = ("user_id", "item_id", "event_time", "source")


def text_hash() -> Column:
    """The sha256 of an item's text (title, overview, genres, tags): the text modality's content hash."""
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


def _content_changed(target: str = "t", staged: str = "s") -> str:
    return " OR ".join(f"NOT ({target}.`{c}` <=> {staged}.`{c}`)" for c in CONTENT_COLUMNS)


def classify_items(report: IngestReport, staged: DataFrame, current: DataFrame) -> None:
    joined = staged.alias("s").join(current.alias("t"), F.col("s.item_id") == F.col("t.item_id"), "left")
    row = joined.agg(
        F.count(F.when(F.col("t.item_id").isNull(), True)).alias("new"),
        F.count(F.when(F.col("t.item_id").isNotNull() & F.expr(_content_changed()), True)).alias("changed"),
        F.count("*").alias("total"),
    ).first()
    report.items_new, report.items_changed = row["new"], row["changed"]
    report.items_unchanged = row["total"] - row["new"] - row["changed"]


def classify_interactions(report: IngestReport, staged: DataFrame, current: DataFrame) -> None:
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


def record_versions(
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


def merge_catalog(catalog: DeltaTable, staged: DataFrame, ds: dt.date, now: Column) -> None:
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


def merge_interactions(table: DeltaTable, staged: DataFrame, ds: dt.date) -> None:
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
