"""Readers that map each supported input layout onto one canonical, all-string shape.

Readers only know file layouts (separators, encodings, column orders). They never judge a value:
every field stays a string, and a row whose layout is broken keeps its raw text and a
`malformed` reason. Validation, typing and quarantine happen once, in `jobs.ingest`, for all formats.

Canonical frames (every column a string unless noted):
- items:        ITEM_FIELDS + META_FIELDS
- interactions: INTERACTION_FIELDS + META_FIELDS
- extras:       item_id + the extra's value columns + META_FIELDS

META_FIELDS say where each row came from, so ingest can account for every physical record it read:
`input` is the file (or media folder) the row is counted against, `lines` how many physical records
the row spans (non-blank lines of a CSV, 1 for a Parquet row or a media file) and `input_lines` how
many physical records the whole input holds, counted before any record is parsed. For every input,
`input_lines` = the sum of `lines` over its rows: a reader never swallows a line into another row
without saying so.

A malformed CSV line costs that line only. Quoted fields may span lines only where a layout needs it
(catalogs and overviews, `multiline=True`); there a record is re-joined from physical lines only while a
quote is open, for at most `MAX_RECORD_LINES` lines, and only when the result has the header's number of
fields. Otherwise the opening line alone is quarantined ("unterminated quote") and the next line starts
a record of its own.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import LongType, StringType, StructField, StructType

from jobs.media_files import media_folder_entry, sha256_of_media_file

log = logging.getLogger("modalrank.sources")

ITEM_FIELDS = (
    "item_id", "title", "year", "overview", "genres", "tags", "imdb_id", "tmdb_id",
    "poster_path", "audio_path", "video_path", "available_from",
)  # fmt: skip
INTERACTION_FIELDS = ("user_id", "item_id", "rating", "weight", "event_time", "source")
META_FIELDS = ("source_file", "record", "malformed", "row_order", "input", "lines", "input_lines")

UNTERMINATED_QUOTE = "malformed row: unterminated quote"
# The most physical lines one quoted CSV record may span (an overview with paragraphs): the bound on
# what an unterminated quote can ever be mistaken to swallow.
MAX_RECORD_LINES = 200

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
    """Adds META_FIELDS to a frame with `source_file`, `input`, `lines` and `input_lines` already set."""
    return (
        df.withColumn("record", record)
        .withColumn("malformed", malformed)
        .withColumn("row_order", F.monotonically_increasing_id())
    )


def _count_per_file(lines: DataFrame, header: bool) -> DataFrame:
    """(source_file, first_order, input_lines): a small frame, one row per file, joined back by file.

    `input_lines` counts the file's non-blank lines, less its header: the physical records it holds.
    """
    return lines.groupBy("source_file").agg(
        F.min("row_order").alias("first_order"),
        (F.count(F.when(F.trim("line") != "", True)) - F.lit(1 if header else 0)).alias("input_lines"),
    )


def read_text_lines(spark: SparkSession, path: Path) -> DataFrame:
    """(line, source_file, row_order): every physical line of a UTF-8 text file or folder, in file order.

    Spark's text source splits lines on \n, \r\n or \r and never looks at quotes. Invalid UTF-8 becomes
    U+FFFD here, as the CSV reader decodes it, so later checks see it and Delta stores valid text.
    """
    _require_file(path)
    return spark.read.text(str(path)).select(
        F.decode(F.encode("value", "UTF-8"), "UTF-8").alias("line"),
        F.col("_metadata.file_path").alias("source_file"),
        F.monotonically_increasing_id().alias("row_order"),
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
        .select("line", F.col("_metadata.file_path").alias("source_file"))
        .where(F.trim("line") != "")
        .withColumn("row_order", F.monotonically_increasing_id())
    )
    per_file = _count_per_file(lines, header=False).drop("first_order")
    lines = lines.drop("row_order").join(F.broadcast(per_file), "source_file")
    fields = F.split("line", separator_regex, -1)
    df = lines.select(
        "*",
        *(F.get(fields, i).alias(name) for i, name in enumerate(columns)),
        F.col("source_file").alias("input"),
        F.lit(1).alias("lines"),
    )
    malformed = F.when(
        F.size(fields) != len(columns),
        F.format_string(f"malformed row: expected {len(columns)} fields, found %d", F.size(fields)),
    )
    return _with_meta(df, F.col("line"), malformed).drop("line")


# ---------------------------------------------------------------------------------------------------
# Quoted CSV records: pure Python, so the rule for what one record is can be tested without Spark


@dataclass
class CsvScan:
    """Where a CSV scanner stands after some text: inside a quoted field or not, and fields seen."""

    fields: int = 1
    in_quotes: bool = False
    quote_pending: bool = False  # a quote inside a quoted field: it closes the field unless another follows
    at_field_start: bool = True

    @property
    def open(self) -> bool:
        return self.in_quotes and not self.quote_pending

    def feed(self, text: str, separator: str = ",") -> CsvScan:
        """Scans `text` as RFC 4180 CSV with `"` quotes and `""` escapes, as Spark's parser reads it."""
        for char in text:
            if self.in_quotes:
                if self.quote_pending:
                    self.quote_pending = False
                    if char == '"':  # "" is a quote inside the field
                        continue
                    self.in_quotes = False  # the quote closed the field; this char is outside it
                elif char == '"':
                    self.quote_pending = True
                    continue
                else:
                    continue
            if char == separator:
                self.fields += 1
                self.at_field_start = True
            elif char == '"' and self.at_field_start:
                self.in_quotes, self.at_field_start = True, False
            else:
                # A quote inside an unquoted field is a literal character, as Spark reads it.
                self.at_field_start = False
        return self


@dataclass(frozen=True)
class CsvRecord:
    first_line: int  # index of its first physical line among the lines given
    lines: int  # non-blank physical lines it spans
    text: str
    malformed: str | None = None


def assemble_csv_records(
    lines: list[str], expected_fields: int, max_record_lines: int = MAX_RECORD_LINES
) -> Iterator[CsvRecord]:
    """Physical lines (after the header) into CSV records, where a quoted field may hold line breaks.

    A line that leaves a quote open is joined with the lines after it until the quote closes, but only
    within `max_record_lines` and only when the joined record has `expected_fields` fields. Anything else
    is an unterminated quote: that one line is a malformed record and the next line starts afresh, so a
    stray quote costs its own line, never the good lines after it. Blank lines between records are not
    records (Spark's CSV reader skips them too); inside a quoted field they are part of the text.
    """
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.strip() == "":
            index += 1
            continue
        scan = CsvScan().feed(line)
        end = index
        while scan.open and end + 1 < len(lines) and end - index + 1 < max_record_lines:
            end += 1
            scan.feed("\n" + lines[end])
        span = lines[index : end + 1]
        if not scan.open and (end == index or scan.fields == expected_fields):
            yield CsvRecord(index, sum(1 for part in span if part.strip()), "\n".join(span))
            index = end + 1
        else:
            yield CsvRecord(index, 1, line, UNTERMINATED_QUOTE)
            index += 1


_RECORDS = StructType(
    [
        StructField("source_file", StringType()),
        StructField("row_order", LongType()),
        StructField("record", StringType()),
        StructField("lines", LongType()),
        StructField("malformed", StringType()),
    ]
)


def _records_of_file(expected_fields: int):
    def records(lines: pd.DataFrame) -> pd.DataFrame:
        lines = lines.sort_values("row_order")
        texts, orders = lines["line"].tolist()[1:], lines["row_order"].tolist()[1:]  # [0] is the header
        rows = [
            (record.text, orders[record.first_line], record.lines, record.malformed)
            for record in assemble_csv_records(texts, expected_fields)
        ]
        frame = pd.DataFrame(rows, columns=["record", "row_order", "lines", "malformed"])
        frame.insert(0, "source_file", lines["source_file"].iloc[0])
        return frame[list(_RECORDS.fieldNames())]

    return records


def read_csv_with_header(spark: SparkSession, path: Path, multiline: bool = False) -> DataFrame:
    """A quoted UTF-8 CSV with a header: every column a string, named as in the header.

    The file is read as physical lines first and each record parsed on its own (`from_csv`), so a
    broken line keeps its raw text for quarantine and cannot take other lines with it. With
    `multiline`, quoted fields may span lines (see `assemble_csv_records`); without it every non-blank
    line is one record and a line with an odd number of quotes is an unterminated quote. One trailing
    column beyond the header catches rows with extra fields, which a CSV parser would drop silently.
    """
    header = spark.read.option("header", True).csv(str(path)).columns
    lines = read_text_lines(spark, path)
    per_file = _count_per_file(lines, header=True)
    if multiline:
        # One task per file: re-joining records needs its lines in order. Only small files (catalogs,
        # overviews) take this path; interactions are read line by line.
        records = (
            lines.groupBy("source_file")
            .applyInPandas(_records_of_file(len(header)), _RECORDS)
            .join(F.broadcast(per_file.drop("first_order")), "source_file")
        )
    else:
        # A field that opens a quote and never closes it on this line: what is left once every
        # well-formed quoted field ("..." with "" escapes, between separators) is taken out.
        unquoted = F.regexp_replace("line", r'(^|,)"(?:[^"]|"")*"(?=,|$)', "$1")
        records = (
            lines.join(F.broadcast(per_file), "source_file")
            .where((F.col("row_order") != F.col("first_order")) & (F.trim("line") != ""))
            .select(
                "source_file",
                "row_order",
                F.col("line").alias("record"),
                F.lit(1).cast("long").alias("lines"),
                F.when(unquoted.rlike(r'(^|,)"'), F.lit(UNTERMINATED_QUOTE)).alias("malformed"),
                "input_lines",
            )
        )
    schema = ", ".join(f"`{name}` STRING" for name in header) + ", `_extra_field` STRING"
    parsed = F.from_csv(F.col("record"), schema, {"escape": '"'})
    extra_field = F.when(parsed["_extra_field"].isNotNull(), F.lit("malformed row: more fields than the header"))
    return records.select(
        *(parsed[name].alias(name) for name in header),
        "source_file",
        "record",
        F.coalesce("malformed", extra_field).alias("malformed"),
        "row_order",
        F.col("source_file").alias("input"),
        "lines",
        "input_lines",
    )


def read_table_file(spark: SparkSession, path: Path, multiline: bool = False) -> DataFrame:
    """A CSV (with header) or Parquet file, every column as a string; `multiline` as for a CSV."""
    if path.suffix.lower() in {".parquet", ".pq"} or path.is_dir():
        _require_file(path)
        df = spark.read.parquet(str(path)).select("*", F.col("_metadata.file_path").alias("source_file"))
        columns = [name for name in df.columns if name != "source_file"]
        # A Parquet file's rows are its physical records: counted per file, before any row is parsed.
        per_file = df.groupBy("source_file").count()
        df = df.select(
            *(F.col(f"`{name}`").cast("string").alias(name) for name in columns),
            F.to_json(F.struct(*(F.col(f"`{name}`") for name in columns))).alias("record"),
            "source_file",
        )
        df = df.join(F.broadcast(per_file.withColumnRenamed("count", "input_lines")), "source_file").select(
            *columns,
            "source_file",
            "record",
            F.lit(None).cast("string").alias("malformed"),
            F.monotonically_increasing_id().alias("row_order"),
            F.col("source_file").alias("input"),
            F.lit(1).cast("long").alias("lines"),
            "input_lines",
        )
        return df
    return read_csv_with_header(spark, path, multiline)


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
    items = read_table_file(spark, catalog, multiline=True)  # overviews may hold quoted line breaks
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
    df = read_csv_with_header(spark, path, multiline=True)
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
        file_hashes("path")["hash"].alias("content_hash"),
        F.col("entry").alias("source_file"),
        F.col("entry").alias("record"),
        "malformed",
        F.monotonically_increasing_id().alias("row_order"),
        # The folder is the input: each file is one of its records.
        F.lit(str(directory)).alias("input"),
        F.lit(1).cast("long").alias("lines"),
        F.lit(len(listed)).cast("long").alias("input_lines"),
    )
    return Extra(kind, rows)


_HASHED = StructType([StructField("hash", StringType()), StructField("reason", StringType())])


def file_hashes(path_column: str) -> Column:
    """(hash, reason) of the file each row names, computed where the row is: the sha256 of a regular
    file's bytes (streamed, no size limit), or why it could not be read (`jobs.media_files`: a FIFO or a
    folder is never opened, no OSError escapes). Both null for a null path."""

    # Built per call: PySpark 4 wants an active session before a pandas UDF exists.
    @F.pandas_udf(_HASHED)
    def hash_files(paths: pd.Series) -> pd.DataFrame:
        return pd.DataFrame(
            [sha256_of_media_file(path) for path in paths], columns=["hash", "reason"], dtype=object
        )

    return hash_files(F.col(path_column))
