"""Row validation shared by the stages that read outside data: each check yields a fixed-phrase
reason (null for a good row), so rejected rows group by reason in `quarantine`."""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

UNDECODABLE = "undecodable text (not valid UTF-8)"


def blank(column: str | Column) -> Column:
    column = F.col(column) if isinstance(column, str) else column
    return column.isNull() | (F.trim(column) == "")


def first_reason(*checks: tuple[Column, str | Column]) -> Column:
    """The reason of the first failing check, or null when every check passes."""
    reason = F.lit(None).cast("string")
    for failed, text in reversed(checks):
        reason = F.when(failed, text if isinstance(text, Column) else F.lit(text)).otherwise(reason)
    return reason


def undecodable(*columns: str) -> Column:
    # Spark decodes invalid UTF-8 as U+FFFD; the source never meant that character.
    return F.greatest(*(F.coalesce(F.col(c).contains("\ufffd"), F.lit(False)) for c in columns), F.lit(False))


def parse_id(column: str) -> Column:
    return F.trim(F.col(column)).try_cast("bigint")


def keep_first(df: DataFrame, key: list[str], reason: str) -> DataFrame:
    """Sets `reason` on every row but the first (in file order) of each key that has no reason yet."""
    order = Window.partitionBy(*key).orderBy("row_order")
    duplicate = F.col("reason").isNull() & (F.row_number().over(order) > 1)
    return df.withColumn("reason", F.when(duplicate, F.lit(reason)).otherwise(F.col("reason")))


def quarantine_rows(df: DataFrame, item_id: Column | None = None, user_id: Column | None = None) -> DataFrame:
    return df.where(F.col("reason").isNotNull()).select(
        "source_file",
        (item_id if item_id is not None else F.lit(None)).cast("bigint").alias("item_id"),
        (user_id if user_id is not None else F.lit(None)).cast("bigint").alias("user_id"),
        F.coalesce("record", F.lit("")).alias("record"),
        "reason",
    )
