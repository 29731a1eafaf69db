"""Reading files as physical records in Spark: text lines, header-less delimited files, quoted CSVs
with a header (one record parsed at a time) and Parquet, every column a string with META_FIELDS.

No line can cost more than itself (`RecordLimits`): a line longer than `max_record_chars` is cut to a
prefix and marked before any pattern or parser sees it; the quote check never recurses, however many
`""` escapes a line holds; a compressed file is decompressed once, with a bound, before Spark reads it,
and one that expands beyond `max_decompressed_bytes` is a single malformed row for its whole file.
"""

from __future__ import annotations

import bz2
import gzip
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, BinaryIO

import pandas as pd
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import LongType, StringType, StructField, StructType

from jobs.sources.canonical import META_FIELDS, SourceError, require_file
from jobs.sources.csv_records import (
    QUARANTINED_PREFIX_CHARS,
    UNTERMINATED_QUOTE,
    RecordLimits,
    assemble_csv_records,
    record_too_long,
)
from jobs.sources.input_files import InputFiles, csv_header, input_files, parquet_columns

# The suffixes Hadoop's codec factory decompresses when Spark reads a text or CSV file. Python's
# standard library reads gzip, bzip2 and raw deflate, so their size is checked before Spark reads them;
# the others are refused rather than read without a bound.
_STDLIB_CODECS: dict[str, Callable[..., IO[Any]]] = {".gz": gzip.open, ".bz2": bz2.open}
_HADOOP_CODEC_SUFFIXES = {".gz", ".bz2", ".deflate", ".lz4", ".snappy", ".zst"}
_CHUNK_BYTES = 1 << 20


def _inflated(raw: BinaryIO) -> Iterator[bytes]:
    """A raw zlib stream (Hadoop's DefaultCodec, `.deflate`) in bounded chunks."""
    inflater = zlib.decompressobj()
    while chunk := raw.read(_CHUNK_BYTES):
        while chunk:
            yield inflater.decompress(chunk, _CHUNK_BYTES)
            chunk = inflater.unconsumed_tail
    yield inflater.flush()


def _decompressed_size_over(path: Path, max_bytes: int) -> bool:
    """Whether `path` expands beyond `max_bytes`, read in 1 MiB chunks and stopped as soon as it does."""
    size = 0
    if path.suffix.lower() == ".deflate":
        with path.open("rb") as raw:
            for piece in _inflated(raw):
                size += len(piece)
                if size > max_bytes:
                    return True
        return False
    with _STDLIB_CODECS[path.suffix.lower()](path, "rb") as stream:
        while chunk := stream.read(_CHUNK_BYTES):
            size += len(chunk)
            if size > max_bytes:
                return True
    return False


def compressed_input_refusal(path: Path, limits: RecordLimits) -> str | None:
    """Why a compressed input (or a folder holding one) is not read, or None to read it.

    A gzip bomb is a few kilobytes that Spark would decompress into gigabytes of lines, or into one line
    no memory holds; so the expanded size is measured first, here, never holding more than a chunk.
    """
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        suffix = file.suffix.lower()
        if suffix not in _HADOOP_CODEC_SUFFIXES:
            continue
        if suffix not in _STDLIB_CODECS and suffix != ".deflate":
            return f"input refused: {suffix} files cannot be size-checked before reading ({file.name})"
        try:
            over = _decompressed_size_over(file, limits.max_decompressed_bytes)
        except (OSError, EOFError, zlib.error) as error:  # gzip.BadGzipFile is an OSError
            return f"input refused: {file.name} is not a readable {suffix} file ({error})"
        if over:
            return f"input refused: {file.name} is larger than {limits.max_decompressed_bytes} bytes decompressed"
    return None


def _refused_input(spark: SparkSession, path: Path, columns: list[str], reason: str) -> DataFrame:
    """The one row a refused input becomes: every column null, the reason as `malformed`, counted as one
    physical record so the file's account still adds up (1 line, 1 row, 1 quarantined)."""
    schema = StructType(
        [StructField(name, StringType()) for name in [*columns, "source_file", "record", "malformed"]]
        + [StructField(name, LongType()) for name in ("row_order", "lines", "input_lines")]
    )
    source_file = path.resolve().as_uri()
    row = [None] * len(columns) + [source_file, str(path), reason, 0, 1, 1]
    return (
        spark.createDataFrame([row], schema)
        .withColumn("input", F.col("source_file"))
        .select(*columns, *META_FIELDS)
    )


def _bounded_header(path: Path, limits: RecordLimits) -> list[str]:
    """The column names of a refused compressed CSV, read without reading more than its first line (and
    at most `max_record_chars` of it), so its one row still has the columns its layout asks for. A
    header that cannot be read that way gives no columns: the reader then names the missing ones."""
    first = min(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else path
    if first.suffix.lower() not in _STDLIB_CODECS:  # .deflate, .zst, ...: no bounded way to read a line
        return []
    try:
        return csv_header(first, limits.max_record_chars)
    except (OSError, EOFError, ValueError):
        return []


def _bounded(line: str, limits: RecordLimits) -> tuple[Column, Column]:
    """(record, too_long): the line itself, or for a line over `max_record_chars` its quarantined prefix;
    every later check and parser reads `record`, so none of them ever sees the whole of a long line."""
    too_long = F.length(line) > limits.max_record_chars
    prefix = F.concat(F.substring(line, 1, QUARANTINED_PREFIX_CHARS), F.lit("…"))
    return F.when(too_long, prefix).otherwise(F.col(line)), too_long


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


def read_text_lines(spark: SparkSession, path: Path, files: list[Path] | None = None) -> DataFrame:
    """(line, source_file, row_order): every physical line of a UTF-8 text file or folder (or of `files`,
    the folder's files to read), in file order.

    Spark's text source splits lines on \n, \r\n or \r and never looks at quotes. Invalid UTF-8 becomes
    U+FFFD here, as the CSV reader decodes it, so later checks see it and Delta stores valid text.
    """
    require_file(path)
    return spark.read.text([str(file) for file in files] if files else str(path)).select(
        F.decode(F.encode("value", "UTF-8"), "UTF-8").alias("line"),
        F.col("_metadata.file_path").alias("source_file"),
        F.monotonically_increasing_id().alias("row_order"),
    )


def read_delimited(
    spark: SparkSession,
    path: Path,
    separator_regex: str,
    columns: tuple[str, ...],
    encoding: str,
    limits: RecordLimits,
) -> DataFrame:
    """A header-less, unquoted delimited file (ml-100k, ml-1m): one string column per field.

    The line is read whole (in its encoding) and split here, so a row with the wrong number of
    fields keeps its raw text for quarantine instead of being padded or cut by the CSV reader.
    """
    require_file(path)
    refusal = compressed_input_refusal(path, limits)
    if refusal:
        return _refused_input(spark, path, list(columns), refusal)
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
    record, too_long = _bounded("line", limits)
    lines = lines.select("*", record.alias("bounded"), too_long.alias("too_long")).drop("line")
    fields = F.split("bounded", separator_regex, -1)
    df = lines.select(
        "*",
        *(F.get(fields, i).alias(name) for i, name in enumerate(columns)),
        F.col("source_file").alias("input"),
        F.lit(1).alias("lines"),
    )
    malformed = F.when(F.col("too_long"), F.lit(record_too_long(limits.max_record_chars))).when(
        F.size(fields) != len(columns),
        F.format_string(f"malformed row: expected {len(columns)} fields, found %d", F.size(fields)),
    )
    return _with_meta(df, F.col("bounded"), malformed).drop("bounded", "too_long")


_RECORDS = StructType(
    [
        StructField("source_file", StringType()),
        StructField("row_order", LongType()),
        StructField("record", StringType()),
        StructField("lines", LongType()),
        StructField("malformed", StringType()),
    ]
)


def _records_of_file(expected_fields: int, max_record_chars: int):
    def records(lines: pd.DataFrame) -> pd.DataFrame:
        lines = lines.sort_values("row_order")
        texts, orders = lines["line"].tolist()[1:], lines["row_order"].tolist()[1:]  # [0] is the header
        rows = [
            (record.text, orders[record.first_line], record.lines, record.malformed)
            for record in assemble_csv_records(texts, expected_fields, max_record_chars)
        ]
        frame = pd.DataFrame(rows, columns=["record", "row_order", "lines", "malformed"])
        frame.insert(0, "source_file", lines["source_file"].iloc[0])
        return frame[list(_RECORDS.fieldNames())]

    return records


def leaves_quote_open(record: Column) -> Column:
    """Whether a one-line CSV record ends inside a quoted field: `CsvScan(...).open` as Spark columns.

    Java's regex engine recurses once per repetition of a group, so any pattern for "a quoted field
    with "" escapes" overflows the stack on a field with enough escapes (20,000 `""` killed the job on
    every retry) and none is used. First every "" goes, left to right (a plain replace, no pattern): a run
    of n quotes keeps n mod 2, which is exactly what the scanner makes of it (an escape, or an open or a
    close), so each quote left stands alone. Then each quoted field that closes is taken out: from a field
    start to the next quote is one run of a single character class, a loop in Java, never a recursion.
    A quote still at a field start opened a field that never closed. (The same verdict as `CsvScan` on
    every line: `test_ingest.py::test_the_spark_quote_check_agrees_with_the_scanner`.)
    """
    singles = F.replace(record, F.lit('""'), F.lit(""))
    return F.regexp_replace(singles, r'(^|,)"[^"]*"', "$1").rlike(r'(^|,)"')


def read_csv_with_header(
    spark: SparkSession, path: Path, limits: RecordLimits, multiline: bool = False
) -> DataFrame:
    """A quoted UTF-8 CSV with a header: every column a string, named as in the header.

    The file is read as physical lines first and each record parsed on its own (`from_csv`), so a
    broken line keeps its raw text for quarantine and cannot take other lines with it. With
    `multiline`, quoted fields may span lines (see `assemble_csv_records`); without it every non-blank
    line is one record and a line that leaves a quote open is an unterminated quote. One trailing
    column beyond the header catches rows with extra fields, which a CSV parser would drop silently.
    A line over `limits.max_record_chars` is malformed (quarantine keeps its prefix), and a compressed
    file that expands beyond `limits.max_decompressed_bytes` is one malformed row.
    """
    refusal = compressed_input_refusal(path, limits)
    if refusal:
        return _refused_input(spark, path, _bounded_header(path, limits), refusal)
    files = input_files(path, lambda file: csv_header(file, limits.max_record_chars))
    _require_some(path, files)
    header = spark.read.option("header", True).csv(str(files.read[0])).columns
    lines = read_text_lines(spark, path, files.read)
    per_file = _count_per_file(lines, header=True)
    if multiline:
        # One task per file: re-joining records needs its lines in order. Only small files (catalogs,
        # overviews) take this path; interactions are read line by line. A long line goes to Python cut
        # to one character over the bound: enough for the scanner to call it too long.
        too_long = F.length("line") > limits.max_record_chars
        cut = F.when(too_long, F.substring("line", 1, limits.max_record_chars + 1)).otherwise(F.col("line"))
        records = (
            lines.withColumn("line", cut)
            .groupBy("source_file")
            .applyInPandas(_records_of_file(len(header), limits.max_record_chars), _RECORDS)
            .join(F.broadcast(per_file.drop("first_order")), "source_file")
        )
    else:
        record, too_long = _bounded("line", limits)
        records = (
            lines.join(F.broadcast(per_file), "source_file")
            .where((F.col("row_order") != F.col("first_order")) & (F.trim("line") != ""))
            .select(
                "source_file",
                "row_order",
                record.alias("record"),
                F.lit(1).cast("long").alias("lines"),
                # CASE WHEN evaluates its branches in order: the quote check never reads a long line.
                F.when(too_long, F.lit(record_too_long(limits.max_record_chars)))
                .when(leaves_quote_open(F.col("line")), F.lit(UNTERMINATED_QUOTE))
                .alias("malformed"),
                "input_lines",
            )
        )
    schema = ", ".join(f"`{name}` STRING" for name in header) + ", `_extra_field` STRING"
    parsed = F.from_csv(F.col("record"), schema, {"escape": '"'})
    extra_field = F.when(parsed["_extra_field"].isNotNull(), F.lit("malformed row: more fields than the header"))
    rows = records.select(
        *(parsed[name].alias(name) for name in header),
        "source_file",
        "record",
        F.coalesce("malformed", extra_field).alias("malformed"),
        "row_order",
        F.col("source_file").alias("input"),
        "lines",
        "input_lines",
    )
    return _with_refused_files(spark, rows, header, files)


def _require_some(path: Path, files: InputFiles) -> None:
    """A folder with no file to read is the caller's missing input, named with every file's reason."""
    if not files.read:
        reasons = "; ".join(f"{file.name}: {reason}" for file, reason in files.refused) or "it is empty"
        raise SourceError(f"input {path} has no file to read ({reasons})")


def _with_refused_files(spark: SparkSession, rows: DataFrame, columns: list[str], files: InputFiles) -> DataFrame:
    """`rows` and one malformed row for each file of the input folder that was not read."""
    for file, reason in files.refused:
        rows = rows.unionByName(_refused_input(spark, file, columns, reason))
    return rows


def read_table_file(spark: SparkSession, path: Path, limits: RecordLimits, multiline: bool = False) -> DataFrame:
    """A CSV (with header) or Parquet file, every column as a string; `limits` and `multiline` as for a CSV."""
    if path.suffix.lower() in {".parquet", ".pq"} or path.is_dir():
        require_file(path)
        files = input_files(path, parquet_columns, compare_as_set=True)
        _require_some(path, files)
        # basePath: a folder's partition columns (`key=value/` subfolders) stay columns when files are named.
        reader = spark.read.option("basePath", str(path)) if path.is_dir() else spark.read
        df = reader.parquet(*(str(file) for file in files.read))
        df = df.select("*", F.col("_metadata.file_path").alias("source_file"))
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
        return _with_refused_files(spark, df, columns, files)
    return read_csv_with_header(spark, path, limits, multiline)
