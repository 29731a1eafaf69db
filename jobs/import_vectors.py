"""Imported vectors: a precomputed per-item vector file registered as its own modality.

Reads a CSV (item id + a vector as comma-separated floats in one field, as in MMTF-14K's
`fused_llm_mmtf_*.csv`) or a Parquet file (item id + array column) and MERGEs it into
`features_<name>`, with the same schema and the same one-row-per-catalog-item rule as the extracted
modalities: `ok` with the vector, or `missing` for catalog items the file has no vector for. Rows that
cannot be used go to `quarantine` with the reason. Incremental: a row changes only when its vector
(hashed) or the source file name changes.

    spark-submit jobs/import_vectors.py --ds 2026-11-25 --name mmtf_avf \
        --vectors ../shared/data/mmtf14k/fused_llm_mmtf_avf_avg.csv
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import time
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from features.registry import BUILT_IN
from jobs import lake, lease, sources
from jobs.arguments import MODALITY_NAME, input_path, modality_name
from jobs.config import PipelineConfig, add_run_arguments, load_run_config
from jobs.extract import ExtractReport, log_report
from jobs.reports import write_report
from jobs.schemas import CATALOG, QUARANTINE, features_table
from jobs.spark import job_entry_point, spark_session
from jobs.validation import blank, first_reason, keep_first, parse_id, quarantine_rows

log = logging.getLogger("modalrank.import_vectors")

ID_COLUMNS = ("item_id", "itemId", "movieId")
VECTOR_COLUMNS = ("vector", "embedding")
EXTRACTOR_VERSION = "1"


def _pick(columns: list[str], candidates: tuple[str, ...], what: str, path: Path) -> str:
    for name in candidates:
        if name in columns:
            return name
    raise sources.SourceError(
        f"{path} has no {what} column (one of {', '.join(candidates)}); it has {', '.join(columns)}"
    )


def parse_vectors(raw: DataFrame, id_column: str, vector_column: str) -> DataFrame:
    """item_id, vector (array<float>), content_hash, reason (null for a usable row) + file metadata."""
    # "[1.0, 2.0]" (an array cast to text) and "1.0,2.0" (MMTF's CSV) both become ["1.0", "2.0"].
    parts = F.split(F.regexp_replace(F.col(vector_column), r"[\[\]\s]", ""), ",")
    vector = F.transform(parts, lambda part: part.try_cast("float"))
    typed = raw.select(
        parse_id(id_column).alias("item_id"),
        vector.alias("vector"),
        F.size(vector).alias("dim"),
        F.sha2(F.regexp_replace(F.col(vector_column), r"\s", ""), 256).alias("content_hash"),
        F.col(id_column).alias("raw_id"),
        F.col(vector_column).alias("raw_vector"),
        *sources.META_FIELDS,
    )
    # The file's dimension is its most common one: a row of another length is the odd one out.
    expected_dim = typed.where(F.col("dim") > 0).groupBy("dim").count().orderBy(F.desc("count"), "dim").first()
    expected = expected_dim["dim"] if expected_dim else 0
    checks = first_reason(
        (F.col("malformed").isNotNull(), F.col("malformed")),
        (blank("raw_id"), "missing item id"),
        (F.col("item_id").isNull(), "unparseable item id"),
        (blank("raw_vector"), "missing vector"),
        (F.exists("vector", lambda x: x.isNull()), "unparseable vector"),
        (F.exists("vector", lambda x: F.isnan(x) | (F.abs(x) == float("inf"))), "non-finite vector"),
        (F.col("dim") != expected, f"vector length differs from the file's ({expected})"),
    )
    return keep_first(typed.withColumn("reason", checks), ["item_id"], "duplicate item id")


# The lease of this date's feature table, as an extractor's (`lease.date_key` refuses a name that could
# not be a table's, before any file is made).
@lease.holding("import", lambda name, ds, **_: [lease.date_key(ds, f"features_{name}")])
def run_import(
    spark: SparkSession, config: PipelineConfig, name: str, vectors_path: Path, ds: dt.date
) -> ExtractReport:
    MODALITY_NAME.check(name)  # the rule `--name` and the DAG use
    if name in BUILT_IN:
        raise ValueError(
            f"modality name {name!r} is taken: imported vectors need a name that is not a built-in one"
        )
    started = time.monotonic()
    extractor = f"imported:{vectors_path.name}"
    report = ExtractReport(ds.isoformat(), name, extractor, EXTRACTOR_VERSION)
    table = features_table(name)
    features = lake.ensure_table(spark, config, table)
    catalog = lake.read_table(spark, config, CATALOG).select("item_id")

    raw = sources.read_table_file(spark, vectors_path, sources.RecordLimits.of(config))
    parsed = parse_vectors(
        raw,
        _pick(raw.columns, ID_COLUMNS, "item id", vectors_path),
        _pick(raw.columns, VECTOR_COLUMNS, "vector", vectors_path),
    )
    known = catalog.withColumn("known", F.lit(True))
    parsed = (
        parsed.join(known, "item_id", "left")
        .withColumn(
            "reason",
            F.when(F.col("reason").isNull() & F.col("known").isNull(), F.lit("unknown item id")).otherwise(
                F.col("reason")
            ),
        )
        .localCheckpoint(eager=True)
    )
    good = parsed.where(F.col("reason").isNull()).select("item_id", "vector", "dim", "content_hash")
    rows = catalog.join(good, "item_id", "left").select(
        "item_id",
        "content_hash",
        F.lit(extractor).alias("extractor"),
        F.lit(EXTRACTOR_VERSION).alias("extractor_version"),
        "dim",
        "vector",
        F.when(F.col("vector").isNotNull(), F.lit("ok")).otherwise(F.lit("missing")).alias("status"),
        F.lit(None).cast("string").alias("error"),
        F.lit(ds).alias("extracted_ds"),
        F.current_timestamp().alias("extracted_at"),
    )
    changed = (
        "NOT (t.content_hash <=> s.content_hash) OR t.extractor <> s.extractor "
        "OR t.extractor_version <> s.extractor_version"
    )
    existing = features.toDF().select("item_id", "content_hash", "extractor", "extractor_version")
    stale = (
        rows.alias("s")
        .join(existing.alias("t"), "item_id", "left")
        .where(F.col("t.extractor").isNull() | F.expr(changed))
    )
    report.catalog_items = catalog.count()
    counts = {r["status"]: r["count"] for r in stale.groupBy("s.status").count().collect()}
    report.ok, report.missing = counts.get("ok", 0), counts.get("missing", 0)
    report.extracted = report.ok
    report.up_to_date = report.catalog_items - report.ok - report.missing
    (
        features.alias("t")
        .merge(lake.conform(rows, table).alias("s"), "t.item_id = s.item_id")
        .whenMatchedUpdateAll(condition=changed)
        .whenNotMatchedInsertAll()
        .execute()
    )

    stage = f"import_{name}"
    rejects = quarantine_rows(parsed, item_id=F.col("item_id")).select(
        F.lit(ds).alias("ds"), F.lit(stage).alias("stage"), "*", F.current_timestamp().alias("quarantined_at")
    )
    lake.replace_where(spark, config, QUARANTINE, rejects, lake.rows_of(ds=ds, stage=stage))
    report.failed_by_reason = {
        r["reason"]: r["count"]
        for r in parsed.where("reason IS NOT NULL").groupBy("reason").count().orderBy("reason").collect()
    }
    report.failed = sum(report.failed_by_reason.values())
    report.seconds = report.extract_seconds = round(time.monotonic() - started, 1)
    write_report(config, report.ds, f"extract_{report.modality}", report)
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser)
    parser.add_argument(
        "--name", required=True, type=modality_name, help="the modality's name: the table is features_<name>"
    )
    parser.add_argument("--vectors", required=True, type=input_path, help="CSV or Parquet of item id + vector")


def run_from_args(args: argparse.Namespace) -> ExtractReport:
    """The job as the command line and spark-submit run it: its own session, then the log summary."""
    config = load_run_config(args)
    with spark_session(f"modalrank-import-{args.name}", config) as spark:
        report = run_import(spark, config, args.name, args.vectors, args.ds)
    log_report(report)
    return report


main = job_entry_point(__doc__, add_arguments, run_from_args)


if __name__ == "__main__":
    raise SystemExit(main())
