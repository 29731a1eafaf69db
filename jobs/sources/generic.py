"""The generic layout (the demo generator writes it): a catalog file and an interactions file, CSV
or Parquet, and an optional CSV of overviews joined by item id."""

from __future__ import annotations

from pathlib import Path

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from jobs.sources.canonical import (
    INTERACTION_FIELDS,
    ITEM_FIELDS,
    META_FIELDS,
    Extra,
    RawSource,
    canonical,
    require_columns,
)
from jobs.sources.csv_records import RecordLimits
from jobs.sources.files import read_csv_with_header, read_table_file


def read_generic(
    spark: SparkSession,
    catalog: Path,
    interactions: Path,
    limits: RecordLimits,
    media_root: Path | None = None,
    rating_range: tuple[float, float] = (0.0, 5.0),
) -> RawSource:
    items = read_table_file(spark, catalog, limits, multiline=True)  # overviews may hold quoted line breaks
    require_columns(items, ("item_id", "title"), catalog)
    events = read_table_file(spark, interactions, limits)
    require_columns(events, ("user_id", "item_id"), interactions)
    events = events.withColumn(
        "source", F.coalesce(F.col("source"), F.lit("event")) if "source" in events.columns else F.lit("event")
    )
    return RawSource(
        "generic",
        canonical(items, ITEM_FIELDS),
        canonical(events, INTERACTION_FIELDS, {"timestamp": "event_time"}),
        rating_range=rating_range,
        media_root=str((media_root or catalog.parent).resolve()),
    )


def read_overviews(spark: SparkSession, path: Path, limits: RecordLimits) -> Extra:
    """A CSV with an item id column (`item_id` or MovieLens' `movieId`) and an `overview` column."""
    df = read_csv_with_header(spark, path, limits, multiline=True)
    if "item_id" not in df.columns and "movieId" in df.columns:
        df = df.withColumnRenamed("movieId", "item_id")
    require_columns(df, ("item_id", "overview"), path)
    return Extra("overview", df.select("item_id", "overview", *META_FIELDS))
