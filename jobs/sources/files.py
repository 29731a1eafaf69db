"""Reading files as physical records in Spark: text lines, header-less delimited files, quoted CSVs
with a header (one record parsed at a time) and Parquet, every column a string with META_FIELDS."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import LongType, StringType, StructField, StructType

from jobs.sources.canonical import require_file
from jobs.sources.csv_records import UNTERMINATED_QUOTE, assemble_csv_records


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
    require_file(path)
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
    require_file(path)
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
        # well-formed quoted field ("..." with "" escapes, between separators) is taken out. Written
        # as runs of non-quotes between escapes: Java's regex engine recurses once per repetition of
        # a group, so `(?:[^"]|"")*` took one stack frame per character and a 2 kB quoted vector
        # overflowed the stack (a StackOverflowError kills a local-mode driver). A run of one
        # character class is a loop, not a recursion; only the "" escapes still nest.
        unquoted = F.regexp_replace("line", r'(^|,)"[^"]*(?:""[^"]*)*"(?=,|$)', "$1")
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
        require_file(path)
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
