"""Counting ingest's rows per input in Spark: (kind, origin, input, measure, n) tallies, which
`jobs.input_accounts.account_inputs` turns into one account per input."""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from jobs.dataframes import union_by_name

MEASURES = ("lines", "lines_in_rows", "rows", "ingested", "deferred", "quarantined", "superseded")


def tally(rows: DataFrame, kind: str, origin: str, measure: str) -> DataFrame:
    """(kind, origin, input, measure, n): `rows` counted per input."""
    return (
        rows.groupBy("input")
        .count()
        .select(
            F.lit(kind).alias("kind"),
            F.lit(origin).alias("origin"),
            "input",
            F.lit(measure).alias("measure"),
            F.col("count").alias("n"),
        )
    )


def totals(rows: DataFrame, kind: str, origin: str, physical: DataFrame | None = None) -> DataFrame:
    """Rows, the lines they span, and the input's physical records (from `input_lines`, or `physical`
    counted per input) as tallies."""
    measures = {"rows": F.count("*"), "lines_in_rows": F.sum("lines")}
    if physical is None:
        measures["lines"] = F.max("input_lines")  # the same on every row of an input
    spans = rows.groupBy("input").agg(*(value.alias(name) for name, value in measures.items()))
    tallies = [
        spans.select(F.lit(kind), F.lit(origin), "input", F.lit(m), F.col(m).cast("long")).toDF(
            "kind", "origin", "input", "measure", "n"
        )
        for m in measures
    ]
    if physical is not None:
        tallies.append(tally(physical, kind, origin, "lines"))
    return union_by_name(*tallies)
