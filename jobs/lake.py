"""Reading and writing the lake's Delta tables by name, with the schemas from `jobs.schemas`."""

from __future__ import annotations

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession

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
    spark: SparkSession, config: PipelineConfig, spec: TableSpec, df: DataFrame, predicate: str
) -> None:
    """Replace the rows matching `predicate` with `df` in one Delta commit.

    Readers see the old rows or the new ones, never a mix, and a rerun writes the same rows again.
    """
    ensure_table(spark, config, spec)
    (
        conform(df, spec)
        .write.format("delta")
        .mode("overwrite")
        .option("replaceWhere", predicate)
        .save(config.table_path(spec.name))
    )
