"""Reading and writing the lake's Delta tables by name, with the schemas from `jobs.schemas`."""

from __future__ import annotations

from delta.tables import DeltaTable
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.config import PipelineConfig
from jobs.schemas import TableSpec


def ensure_table(spark: SparkSession, config: PipelineConfig, spec: TableSpec) -> DeltaTable:
    """The table at its lake path, created empty with its schema the first time."""
    path = config.table_path(spec.name)
    (
        DeltaTable.createIfNotExists(spark)
        # As Hadoop prints the path: Delta compares the LOCATION given with the one it resolves, and
        # refuses an existing table at file:///x because it resolves that as file:/x.
        .location(spark._jvm.org.apache.hadoop.fs.Path(path).toString())
        .addColumns(spec.schema)
        .partitionedBy(*spec.partition_by)
        .comment(spec.description)
        .execute()
    )
    return DeltaTable.forPath(spark, path)


def read_table(spark: SparkSession, config: PipelineConfig, spec: TableSpec) -> DataFrame:
    return ensure_table(spark, config, spec).toDF()


def conform(df: DataFrame, spec: TableSpec) -> DataFrame:
    """`df` with exactly the table's columns, in order and cast to the table's types."""
    return df.select(*(df[field.name].cast(field.dataType).alias(field.name) for field in spec.schema))


def replace_where(
    spark: SparkSession, config: PipelineConfig, spec: TableSpec, df: DataFrame, condition: Column
) -> None:
    """Replace the rows matching `condition` with `df` in one Delta commit.

    Readers see the old rows or the new ones, never a mix, and a rerun writes the same rows again. The
    condition is a Column (e.g. `rows_of(ds=ds, stage="ingest")`), never SQL text: values are literals
    inside the expression, so a label with a quote is a label, not a predicate. Delta checks that every
    row written matches the condition, and records it as the commit's `predicate`.
    """
    ensure_table(spark, config, spec)
    # DataFrameWriterV2.overwrite(condition) is the Column form of the `replaceWhere` option: one
    # OverwriteByExpression, which Delta runs as the same single-commit replaceWhere write.
    conform(df, spec).writeTo(delta_identifier(config.table_path(spec.name))).overwrite(condition)


def rows_of(**values: object) -> Column:
    """`col1 = value1 AND col2 = value2 ...` as a Column, each value a literal."""
    if not values:
        raise ValueError("rows_of needs at least one column: an empty condition would replace the whole table")
    condition = None
    for column, value in values.items():
        term = F.col(column) == F.lit(value)
        condition = term if condition is None else condition & term
    return condition


def delta_identifier(path: str) -> str:
    """The path-based table name Spark's catalog reads as a Delta table: delta.`<path>`.

    A backtick inside a quoted identifier is written twice; `jobs.arguments.LAKE` refuses backticks in
    a lake path anyway.
    """
    return "delta.`" + path.replace("`", "``") + "`"
