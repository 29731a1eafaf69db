"""Readers that map each supported input layout onto one canonical, all-string shape.

Readers only know file layouts (separators, encodings, column orders). They never judge a value:
every field stays a string, and a row whose layout is broken keeps its raw text and a
`malformed` reason. Validation, typing and quarantine happen once, in `jobs.ingest`, for all formats.

Canonical frames (every column a string unless noted):
- items:        ITEM_FIELDS + source_file, record, malformed, row_order (long)
- interactions: INTERACTION_FIELDS + source_file, record, malformed, row_order (long)
- extras:       item_id + the extra's value columns + source_file, record, malformed, row_order
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.media_files import media_folder_entry, sha256_of_media_file

log = logging.getLogger("modalrank.sources")

ITEM_FIELDS = (
    "item_id", "title", "year", "overview", "genres", "tags", "imdb_id", "tmdb_id",
    "poster_path", "audio_path", "video_path", "available_from",
)  # fmt: skip
INTERACTION_FIELDS = ("user_id", "item_id", "rating", "weight", "event_time", "source")
META_FIELDS = ("source_file", "record", "malformed", "row_order")

# ml-100k's u.item carries 19 genre flags in this order (its u.genre file).
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western",
)  # fmt: skip

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
AUDIO_EXTENSIONS = ("wav", "flac", "ogg", "mp3", "m4a")
VIDEO_EXTENSIONS = ("mp4", "m4v", "mkv", "webm", "mov", "avi")


class SourceError(ValueError):
    """The input cannot be read at all (missing file, unknown layout, missing required column)."""


@dataclass(frozen=True)
class Extra:
    """Per-item data from a separate file, joined onto items by item id (overviews, tags, links, media)."""

    kind: str  # overview | tags | links | poster | audio | video
    rows: DataFrame


@dataclass(frozen=True)
class RawSource:
    name: str
    items: DataFrame
    interactions: DataFrame
    extras: list[Extra] = field(default_factory=list)
    rating_range: tuple[float, float] = (0.5, 5.0)
    # Media paths inside a generic catalog are relative to this folder and may not leave it.
    media_root: str | None = None


# ---------------------------------------------------------------------------------------------------
# Low-level file reading


def _with_meta(df: DataFrame, record: Column, malformed: Column) -> DataFrame:
    return (
        df.withColumn("source_file", F.col("_metadata.file_path"))
        .withColumn("record", record)
        .withColumn("malformed", malformed)
        .withColumn("row_order", F.monotonically_increasing_id())
    )


def read_delimited(
    spark: SparkSession, path: Path, separator_regex: str, columns: tuple[str, ...], encoding: str
) -> DataFrame:
    """A header-less, unquoted delimited file (ml-100k, ml-1m): one string column per field.

    The line is read whole (in its encoding) and split here, so a row with the wrong number of
    fields keeps its raw text for quarantine instead of being padded or cut by the CSV reader.
    """
    _require_file(path)
    lines = (
        spark.read.option("sep", "\u0001")  # a byte none of these files contains: one field per line
        .option("quote", "")
        .option("encoding", encoding)
        .option("header", False)
        .schema("line STRING")
        .csv(str(path))
        .where(F.trim("line") != "")
    )
    fields = F.split("line", separator_regex, -1)
    df = lines.select("*", *(F.get(fields, i).alias(name) for i, name in enumerate(columns)), "_metadata")
    malformed = F.when(
        F.size(fields) != len(columns),
        F.format_string(f"malformed row: expected {len(columns)} fields, found %d", F.size(fields)),
    )
    return _with_meta(df, F.col("line"), malformed).drop("line", "_metadata")


def read_csv_with_header(spark: SparkSession, path: Path, encoding: str = "UTF-8") -> DataFrame:
    """A quoted CSV with a header: every column a string, named as in the header.

    One trailing column beyond the header catches rows with extra fields, which Spark's CSV reader
    would otherwise drop without a word.
    """
    _require_file(path)
    header = spark.read.option("header", True).option("encoding", encoding).csv(str(path)).columns
    schema = ", ".join(f"`{name}` STRING" for name in header) + ", `_extra_field` STRING"
    df = (
        spark.read.option("header", True)
        .option("enforceSchema", True)
        .option("multiLine", True)  # overviews hold quoted newlines
        .option("escape", '"')
        .option("encoding", encoding)
        .schema(schema)
        .csv(str(path))
        .select("*", "_metadata")
    )
    record = F.to_json(F.struct(*(F.col(f"`{name}`") for name in header)))
    malformed = F.when(F.col("_extra_field").isNotNull(), F.lit("malformed row: more fields than the header"))
    return _with_meta(df, record, malformed).drop("_extra_field", "_metadata")


def read_table_file(spark: SparkSession, path: Path) -> DataFrame:
    """A CSV (with header) or Parquet file, every column as a string."""
    if path.suffix.lower() in {".parquet", ".pq"} or path.is_dir():
        _require_file(path)
        df = spark.read.parquet(str(path)).select("*", "_metadata")
        columns = [name for name in df.columns if name != "_metadata"]
        as_strings = [F.col(f"`{name}`").cast("string").alias(name) for name in columns]
        df = df.select(*as_strings, "_metadata")
        record = F.to_json(F.struct(*(F.col(f"`{name}`") for name in columns)))
        return _with_meta(df, record, F.lit(None).cast("string")).drop("_metadata")
    return read_csv_with_header(spark, path)


def _require_file(path: Path) -> None:
    if not path.exists():
        raise SourceError(f"input not found: {path}")


def _canonical(df: DataFrame, fields: tuple[str, ...], renames: dict[str, str] | None = None) -> DataFrame:
    """`df` with exactly `fields` + META_FIELDS: renamed, and absent optional fields as nulls."""
    renames = renames or {}
    for source_name, canonical_name in renames.items():
        if source_name in df.columns:
            df = df.withColumnRenamed(source_name, canonical_name)
    columns = [F.col(name) if name in df.columns else F.lit(None).cast("string").alias(name) for name in fields]
    return df.select(*columns, *META_FIELDS)


# ---------------------------------------------------------------------------------------------------
# MovieLens layouts


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


def read_movielens(spark: SparkSession, directory: Path) -> RawSource:
    layout = detect_movielens_layout(directory)
    log.info("reading %s from %s", layout, directory)
    return {
        "movielens-csv": _read_movielens_csv,
        "movielens-100k": _read_movielens_100k,
        "movielens-1m": _read_movielens_1m,
    }[layout](spark, directory)


def _genres_from_pipes(column: str) -> Column:
    # MovieLens writes "(no genres listed)" for an empty list.
    return F.when(F.col(column) == "(no genres listed)", F.lit("")).otherwise(F.col(column))


def _ratings_interactions(df: DataFrame) -> DataFrame:
    return _canonical(
        df.withColumn("weight", F.lit(None).cast("string")).withColumn("source", F.lit("rating")),
        INTERACTION_FIELDS,
        {"userId": "user_id", "movieId": "item_id", "timestamp": "event_time"},
    )


def _read_movielens_csv(spark: SparkSession, directory: Path) -> RawSource:
    movies = read_csv_with_header(spark, directory / "movies.csv")
    items = _canonical(
        movies.withColumn("genres", _genres_from_pipes("genres")), ITEM_FIELDS, {"movieId": "item_id"}
    )
    interactions = _ratings_interactions(read_csv_with_header(spark, directory / "ratings.csv"))
    extras = []
    if (directory / "tags.csv").exists():
        tags = read_csv_with_header(spark, directory / "tags.csv").withColumnRenamed("movieId", "item_id")
        extras.append(Extra("tags", tags.select("item_id", "tag", *META_FIELDS)))
    if (directory / "links.csv").exists():
        links = read_csv_with_header(spark, directory / "links.csv")
        links = links.select(
            F.col("movieId").alias("item_id"),
            F.col("imdbId").alias("imdb_id"),
            F.col("tmdbId").alias("tmdb_id"),
            *META_FIELDS,
        )
        extras.append(Extra("links", links))
    return RawSource("movielens-csv", items, interactions, extras, rating_range=(0.5, 5.0))


def _read_movielens_100k(spark: SparkSession, directory: Path) -> RawSource:
    item_columns = ("item_id", "title", "release_date", "video_release_date", "imdb_url") + tuple(
        f"genre_{i}" for i in range(len(ML100K_GENRES))
    )
    raw_items = read_delimited(spark, directory / "u.item", r"\|", item_columns, "ISO-8859-1")
    flagged = F.array(*(F.when(F.col(f"genre_{i}") == "1", F.lit(name)) for i, name in enumerate(ML100K_GENRES)))
    raw_items = raw_items.withColumn("genres", F.array_join(F.filter(flagged, lambda g: g.isNotNull()), "|"))
    items = _canonical(raw_items, ITEM_FIELDS)
    ratings = read_delimited(
        spark, directory / "u.data", r"\t", ("user_id", "item_id", "rating", "event_time"), "UTF-8"
    )
    interactions = _canonical(ratings.withColumn("source", F.lit("rating")), INTERACTION_FIELDS)
    return RawSource("movielens-100k", items, interactions, rating_range=(1.0, 5.0))


def _read_movielens_1m(spark: SparkSession, directory: Path) -> RawSource:
    movies = read_delimited(spark, directory / "movies.dat", "::", ("item_id", "title", "genres"), "ISO-8859-1")
    items = _canonical(movies, ITEM_FIELDS)
    ratings = read_delimited(
        spark, directory / "ratings.dat", "::", ("user_id", "item_id", "rating", "event_time"), "ISO-8859-1"
    )
    interactions = _canonical(ratings.withColumn("source", F.lit("rating")), INTERACTION_FIELDS)
    return RawSource("movielens-1m", items, interactions, rating_range=(1.0, 5.0))


# ---------------------------------------------------------------------------------------------------
# Generic catalog + interactions (the demo generator writes this layout)


def read_generic(
    spark: SparkSession,
    catalog: Path,
    interactions: Path,
    media_root: Path | None = None,
    rating_range: tuple[float, float] = (0.0, 5.0),
) -> RawSource:
    items = read_table_file(spark, catalog)
    _require_columns(items, ("item_id", "title"), catalog)
    events = read_table_file(spark, interactions)
    _require_columns(events, ("user_id", "item_id"), interactions)
    events = events.withColumn(
        "source", F.coalesce(F.col("source"), F.lit("event")) if "source" in events.columns else F.lit("event")
    )
    return RawSource(
        "generic",
        _canonical(items, ITEM_FIELDS),
        _canonical(events, INTERACTION_FIELDS, {"timestamp": "event_time"}),
        rating_range=rating_range,
        media_root=str((media_root or catalog.parent).resolve()),
    )


def _require_columns(df: DataFrame, required: tuple[str, ...], path: Path) -> None:
    missing = [name for name in required if name not in df.columns]
    if missing:
        raise SourceError(f"{path} lacks required column(s) {', '.join(missing)}; it has {', '.join(df.columns)}")


# ---------------------------------------------------------------------------------------------------
# Optional extras joined by item id


def read_overviews(spark: SparkSession, path: Path) -> Extra:
    """A CSV with an item id column (`item_id` or MovieLens' `movieId`) and an `overview` column."""
    df = read_csv_with_header(spark, path)
    if "item_id" not in df.columns and "movieId" in df.columns:
        df = df.withColumnRenamed("movieId", "item_id")
    _require_columns(df, ("item_id", "overview"), path)
    return Extra("overview", df.select("item_id", "overview", *META_FIELDS))


def read_media_folder(spark: SparkSession, kind: str, directory: Path, extensions: tuple[str, ...]) -> Extra:
    """Files named `<item_id>.<ext>` in one folder, with the sha256 of their bytes.

    Every entry with a media extension is listed, empty files too: an empty poster is the extractor's
    to reject with a reason, not the lister's to skip. The item id is the entry's own name, also for a
    symlink; a symlink must stay inside the folder, and only regular files are read (a FIFO, a folder or
    an unreadable entry is listed as malformed, with its reason: `jobs.media_files.media_folder_entry`).
    """
    if not directory.is_dir():
        raise SourceError(f"{kind} folder not found: {directory}")
    wanted = {f".{extension}" for extension in extensions}
    entries = [
        media_folder_entry(str(directory), name)
        for name in sorted(os.listdir(directory))
        if Path(name).suffix.lower() in wanted
    ]
    listed = [
        (
            entry.name,
            os.path.join(str(directory), entry.name),
            entry.path,
            f"{kind} {entry.reason}" if entry.reason else None,
        )
        for entry in entries
    ]
    files = spark.createDataFrame(listed, "name string, entry string, path string, malformed string")
    stem = F.regexp_extract("name", r"^(.+)\.[^.]+$", 1)
    rows = files.select(
        stem.alias("item_id"),
        "path",
        file_sha256("path").alias("content_hash"),
        F.col("entry").alias("source_file"),
        F.col("entry").alias("record"),
        "malformed",
        F.monotonically_increasing_id().alias("row_order"),
    )
    return Extra(kind, rows)


def sha256_of_file(path: str | None) -> str | None:
    """Hex sha256 of a file's bytes, read in chunks; None when there is no such file."""
    if path is None:
        return None
    # Only regular files are opened (a FIFO would block the task), and no OSError escapes.
    return sha256_of_media_file(path)[0]


def file_sha256(path_column: str) -> Column:
    """The sha256 of the file each row names, computed where the row is (streaming, no size limit)."""

    # Built per call: PySpark 4 wants an active session before a pandas UDF exists.
    @F.pandas_udf("string")
    def sha256_of_files(paths: pd.Series) -> pd.Series:
        return paths.map(sha256_of_file)

    return sha256_of_files(F.col(path_column))
