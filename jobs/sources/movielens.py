"""MovieLens folders in their three layouts: CSV (ml-latest(-small), ml-20m/25m/32m), ml-100k's
`u.data` + `u.item` and ml-1m's (and ml-10m's) `*.dat` files."""

from __future__ import annotations

import logging
from pathlib import Path

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.sources.canonical import (
    INTERACTION_FIELDS,
    ITEM_FIELDS,
    META_FIELDS,
    Extra,
    RawSource,
    SourceError,
    canonical,
)
from jobs.sources.csv_records import RecordLimits
from jobs.sources.files import read_csv_with_header, read_delimited

log = logging.getLogger("modalrank.sources")


# ml-100k's u.item carries 19 genre flags in this order (its u.genre file).
ML100K_GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)


def detect_movielens_layout(directory: Path) -> str:
    if (directory / "ratings.csv").exists() and (directory / "movies.csv").exists():
        return "movielens-csv"  # ml-latest-small, ml-latest, ml-20m, ml-25m, ml-32m
    if (directory / "u.data").exists() and (directory / "u.item").exists():
        return "movielens-100k"
    if (directory / "ratings.dat").exists() and (directory / "movies.dat").exists():
        return "movielens-1m"  # also ml-10m's layout
    raise SourceError(
        f"{directory} is not a MovieLens folder: expected ratings.csv + movies.csv (ml-latest/25m), "
        "u.data + u.item (ml-100k) or ratings.dat + movies.dat (ml-1m)"
    )


def read_movielens(spark: SparkSession, directory: Path, limits: RecordLimits) -> RawSource:
    layout = detect_movielens_layout(directory)
    log.info("reading %s from %s", layout, directory)
    return {
        "movielens-csv": _read_movielens_csv,
        "movielens-100k": _read_movielens_100k,
        "movielens-1m": _read_movielens_1m,
    }[layout](spark, directory, limits)


def _genres_from_pipes(column: str) -> Column:
    # MovieLens writes "(no genres listed)" for an empty list.
    return F.when(F.col(column) == "(no genres listed)", F.lit("")).otherwise(F.col(column))


def _ratings_interactions(df: DataFrame) -> DataFrame:
    return canonical(
        df.withColumn("weight", F.lit(None).cast("string")).withColumn("source", F.lit("rating")),
        INTERACTION_FIELDS,
        {"userId": "user_id", "movieId": "item_id", "timestamp": "event_time"},
    )


def _read_movielens_csv(spark: SparkSession, directory: Path, limits: RecordLimits) -> RawSource:
    movies = read_csv_with_header(spark, directory / "movies.csv", limits)
    items = canonical(
        movies.withColumn("genres", _genres_from_pipes("genres")), ITEM_FIELDS, {"movieId": "item_id"}
    )
    interactions = _ratings_interactions(read_csv_with_header(spark, directory / "ratings.csv", limits))
    extras = []
    if (directory / "tags.csv").exists():
        tags = read_csv_with_header(spark, directory / "tags.csv", limits).withColumnRenamed("movieId", "item_id")
        extras.append(Extra("tags", tags.select("item_id", "tag", *META_FIELDS)))
    if (directory / "links.csv").exists():
        links = read_csv_with_header(spark, directory / "links.csv", limits)
        links = links.select(
            F.col("movieId").alias("item_id"),
            F.col("imdbId").alias("imdb_id"),
            F.col("tmdbId").alias("tmdb_id"),
            *META_FIELDS,
        )
        extras.append(Extra("links", links))
    return RawSource("movielens-csv", items, interactions, extras, rating_range=(0.5, 5.0))


def _read_movielens_100k(spark: SparkSession, directory: Path, limits: RecordLimits) -> RawSource:
    item_columns = ("item_id", "title", "release_date", "video_release_date", "imdb_url") + tuple(
        f"genre_{i}" for i in range(len(ML100K_GENRES))
    )
    raw_items = read_delimited(spark, directory / "u.item", r"\|", item_columns, "ISO-8859-1", limits)
    flagged = F.array(*(F.when(F.col(f"genre_{i}") == "1", F.lit(name)) for i, name in enumerate(ML100K_GENRES)))
    raw_items = raw_items.withColumn("genres", F.array_join(F.filter(flagged, lambda g: g.isNotNull()), "|"))
    items = canonical(raw_items, ITEM_FIELDS)
    ratings = read_delimited(
        spark, directory / "u.data", r"\t", ("user_id", "item_id", "rating", "event_time"), "UTF-8", limits
    )
    interactions = canonical(ratings.withColumn("source", F.lit("rating")), INTERACTION_FIELDS)
    return RawSource("movielens-100k", items, interactions, rating_range=(1.0, 5.0))


def _read_movielens_1m(spark: SparkSession, directory: Path, limits: RecordLimits) -> RawSource:
    movies = read_delimited(
        spark, directory / "movies.dat", "::", ("item_id", "title", "genres"), "ISO-8859-1", limits
    )
    items = canonical(movies, ITEM_FIELDS)
    ratings = read_delimited(
        spark,
        directory / "ratings.dat",
        "::",
        ("user_id", "item_id", "rating", "event_time"),
        "ISO-8859-1",
        limits,
    )
    interactions = canonical(ratings.withColumn("source", F.lit("rating")), INTERACTION_FIELDS)
    return RawSource("movielens-1m", items, interactions, rating_range=(1.0, 5.0))
