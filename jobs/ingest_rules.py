"""Ingest's row rules: which item, extra and interaction rows are good, typed as the lake stores them,
and for every other row the fixed-phrase reason it is quarantined with (`jobs.validation` holds the
checks these rules are made of). Spark columns only: nothing here reads or writes a table."""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from jobs import sources
from jobs.catalog_merge import INTERACTION_KEY
from jobs.dataframes import settled
from jobs.schemas import MEDIA_KINDS
from jobs.sources import Extra
from jobs.validation import UNDECODABLE, blank, first_reason, keep_first, parse_id, quarantine_rows, undecodable

# Where each row came from, carried through validation unchanged: the quarantine names it, and the
# input accounts count it.
ROW_ORIGIN = ("source_file", "record", "row_order", "input", "lines", "input_lines")


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
        *ROW_ORIGIN,
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


def apply_extras(
    items: DataFrame, extras: list[Extra]
) -> tuple[DataFrame, list[DataFrame], list[tuple[str, DataFrame]]]:
    """(items with the extras joined on, quarantine rows, (kind, checked rows) per extra for the counts)."""
    # Taken once, before any join: each extra is checked against the items' ids, not against a plan
    # that grows with every extra joined so far.
    item_ids = items.select("item_id")
    rejects, checked_extras = [], []
    for extra in extras:
        # Computed once (see `jobs.dataframes.settled`): the join below, the quarantine and the counts all read it.
        checked = settled(validate_extra(extra, item_ids))
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
        *ROW_ORIGIN,
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
