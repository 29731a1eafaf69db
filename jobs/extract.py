"""Feature extraction: one modality of every catalog item into `features_<modality>`, incrementally.

The items are those of the catalog as of the run date, at the content they had then (`jobs.asof`). An
item is (re)extracted only when it has no row for that content yet (its content hash), or the
extractor's name or version changed (or `--force` asks for a full recompute). A rerun with nothing changed runs
no model at all. Models load once per Python worker and see items in batches; each Spark task gets
its share of the cores for torch and OpenCV threads so parallel tasks do not oversubscribe them.

Every item of the catalog as of the run date ends with exactly one row for its content there: `ok`
with its vector, `failed` with a fixed-phrase reason (also written to `quarantine`), or `missing` when
the item has no such media. Rows are keyed by (item_id, content_hash): an item whose content changed
keeps a row per version, so an older date re-run on a newer lake uses (or makes) its own version's
vector and never overwrites the newer one.

Media files are read and decoded in a sandboxed child process per worker (`jobs.decode_sandbox`: size
cap, wall-clock and memory limits), so a file that hangs, crashes or exhausts its decoder costs one
`failed` row and the rest of the batch goes on; the models stay in the worker.

Progress survives a kill: the work is split into chunks of at most `extract_chunk_items` items, and of
no more than the rate measured so far extracts in `extract_commit_seconds` (`next_chunk_size`), each
extracted and MERGEd on its own, so a task killed at its timeout keeps every finished chunk and the retry starts
where it stopped (what is already `ok` for the current content and extractor is not stale). Failures
whose reason is transient (`TRANSIENT_REASONS`: unreadable or vanished file, decode timed out, decoder
killed from outside) are retried on the next run; permanent ones (not an image, too large, the decoder
crashes on these bytes) wait for new content or a new extractor version. A timeout is transient only
`max_decode_attempts` times for the same content and extractor version: the row's reason counts the
attempts ("decode timed out", "decode timed out (attempt 2)", ..., "decode timed out, given up at
attempt 3"), so a clip that never decodes in time stops costing every night its timeout.

Run by the DAG through spark-submit, by `modalrank extract`, or by hand:
    spark-submit jobs/extract.py --modality image --ds 2026-11-25
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs import decode_sandbox, lake, lease, media_files
from jobs.arguments import add_boolean_flag
from jobs.asof import catalog_as_of
from jobs.config import PipelineConfig, add_run_arguments, load_run_config
from jobs.decode_sandbox import DecodeLimits
from jobs.extract_worker import extract_partition
from jobs.faults import crash_point
from jobs.modality_inputs import MODALITY_INPUTS
from jobs.progress import stage_progress
from jobs.reports import Report, write_report
from jobs.schemas import QUARANTINE, features_table
from jobs.spark import job_entry_point, spark_session, threads_per_task

log = logging.getLogger("modalrank.extract")


# Failure reasons retried on the next run even when nothing changed: the file, the machine or the clock
# was the problem, not the bytes. "decoder crashed (signal 9)" is a SIGKILL from outside (the kernel's
# OOM killer, an operator): the child's own memory limit makes a decoding bomb fail as "decoder out of
# memory" instead. Every other reason is permanent for the same content and extractor version.
TRANSIENT_REASONS = (
    media_files.FILE_NOT_FOUND,
    media_files.PERMISSION_DENIED,
    media_files.UNREADABLE,
    # A file swapped after ingest: the next ingest records its new content, which is extracted then;
    # until that, this content version is retried (the file may be put back).
    media_files.PATH_CHANGED,
    media_files.CONTENT_CHANGED,
    decode_sandbox.DECODE_TIMED_OUT,
    decode_sandbox.decoder_crashed(-9),
)

# A timeout's reason after its first attempt, while it is still retried; and once it is not.
_TIMED_OUT_AGAIN = r"^decode timed out \(attempt (\d+)\)$"
_TIMED_OUT_FOR_GOOD = "decode timed out, given up at attempt "


def timeout_attempts(error: Column) -> Column:
    """How many times in a row an item's decode timed out, read from its row's reason (0 for any other)."""
    return (
        F.when(error == decode_sandbox.DECODE_TIMED_OUT, F.lit(1))
        .when(error.rlike(_TIMED_OUT_AGAIN), F.regexp_extract(error, _TIMED_OUT_AGAIN, 1).cast("int"))
        .when(error.startswith(_TIMED_OUT_FOR_GOOD), F.regexp_extract(error, r"(\d+)$", 1).cast("int"))
        .otherwise(F.lit(0))
    )


def counting_timeouts(error: Column, earlier_timeouts: Column, max_attempts: int) -> Column:
    """`error`, with a timeout's reason saying which attempt it was and, at `max_attempts`, that it is final."""
    attempt = earlier_timeouts + 1
    return (
        F.when(error != decode_sandbox.DECODE_TIMED_OUT, error)
        .when(attempt >= max_attempts, F.concat(F.lit(_TIMED_OUT_FOR_GOOD), attempt.cast("string")))
        .when(attempt == 1, error)
        .otherwise(F.concat(F.lit("decode timed out (attempt "), attempt.cast("string"), F.lit(")")))
    )


# The columns mapInPandas hands to workers and gets back (`timeouts`: earlier timed-out attempts of the
# same content and extractor version).
_WORK_COLUMNS = ["item_id", "content_hash", "path", "title", "overview", "genres", "tags", "timeouts"]
_RESULT_SCHEMA = "item_id long, vector array<float>, dim int, status string, error string, inferences int"


@dataclass
class ExtractReport(Report):
    template = "extract"

    ds: str
    modality: str
    extractor: str
    extractor_version: str
    catalog_items: int = 0
    up_to_date: int = 0
    extracted: int = 0
    ok: int = 0
    failed: int = 0
    missing: int = 0
    inferences: int = 0
    failed_by_reason: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    extract_seconds: float = 0.0

    @property
    def items_per_second(self) -> float:
        return self.inferences / self.extract_seconds if self.extract_seconds else 0.0

    def to_json(self) -> dict[str, Any]:
        return super().to_json() | {"items_per_second": round(self.items_per_second, 2)}


# ---------------------------------------------------------------------------------------------------
# Driver side


def stale_items(catalog: DataFrame, existing: DataFrame, modality: str, name: str, version: str, force: bool):
    """Catalog items whose `features_<modality>` row is absent, out of date, or failed for a transient
    reason, with their inputs."""
    spec = MODALITY_INPUTS[modality]
    work = catalog.select(
        "item_id",
        F.col(spec.hash_column).alias("content_hash"),
        (F.col(spec.path_column) if spec.path_column else F.lit(None).cast("string")).alias("path"),
        "title",
        "overview",
        "genres",
        "tags",
    )
    if force:
        return work.withColumn("timeouts", F.lit(0))
    current = existing.select(
        F.col("item_id").alias("done_id"),
        F.col("content_hash").alias("done_hash"),
        F.col("extractor").alias("done_extractor"),
        F.col("extractor_version").alias("done_version"),
        F.col("status").alias("done_status"),
        F.col("error").alias("done_error"),
    )
    # Keyed by content version: an item whose content changed keeps the vector of each version, so an
    # older date re-run on a newer lake finds (or makes) its own version's vector and leaves the newer one.
    joined = work.join(
        current,
        (work["item_id"] == current["done_id"]) & work["content_hash"].eqNullSafe(current["done_hash"]),
        "left",
    )
    same_extractor = (F.col("done_extractor") == name) & (F.col("done_version") == version)
    transient = F.col("done_error").isin(*TRANSIENT_REASONS) | F.col("done_error").rlike(_TIMED_OUT_AGAIN)
    stale = F.col("done_extractor").isNull() | ~same_extractor | ((F.col("done_status") == "failed") & transient)
    earlier = F.when(same_extractor, timeout_attempts(F.col("done_error"))).otherwise(F.lit(0))
    return joined.where(stale).withColumn("timeouts", F.coalesce(earlier, F.lit(0))).select(*_WORK_COLUMNS)


# The lease of this date's feature table: a second run of it waits, then fails naming the holder; the
# other extractors of the date run beside it.
@lease.holding("extract", lambda modality, ds, **_: [lease.date_key(ds, f"features_{modality}")])
def run_extract(
    spark: SparkSession, config: PipelineConfig, modality: str, ds: dt.date, force: bool = False
) -> ExtractReport:
    from features.registry import extractor_class

    started = time.monotonic()
    extractor = extractor_class(modality)
    spec = MODALITY_INPUTS[modality]
    table = features_table(modality)
    report = ExtractReport(ds.isoformat(), modality, extractor.name, extractor.version)
    features = lake.ensure_table(spark, config, table)
    # The items and content the lake knew by the end of `ds`, never those of a later date (`jobs.asof`).
    catalog = catalog_as_of(spark, config, ds).localCheckpoint(eager=True)
    report.catalog_items = catalog.count()

    work = stale_items(catalog, features.toDF(), modality, extractor.name, extractor.version, force)
    work = work.localCheckpoint(eager=True)  # the decision is taken once, before anything is written
    has_input = F.col("content_hash").isNotNull() & (F.lit(spec.path_column is None) | F.col("path").isNotNull())
    sizes = work.agg(F.count("*").alias("stale"), F.count(F.when(has_input, True)).alias("extract")).first()
    n_stale, n_extract = sizes["stale"], sizes["extract"]
    report.up_to_date = report.catalog_items - n_stale
    log.info(
        "extract %s ds=%s: %d catalog items, %d up to date, %d to extract, %d without %s",
        modality,
        ds,
        report.catalog_items,
        report.up_to_date,
        n_extract,
        n_stale - n_extract,
        modality,
    )
    if n_stale == 0:  # nothing changed: no model, no commit, and the date's quarantine rows stay
        report.seconds = round(time.monotonic() - started, 1)
        write_report(config, report.ds, f"extract_{report.modality}", report)
        return report

    extract_started = time.monotonic()
    if n_stale > n_extract:  # items without this media: one commit, before any model runs
        missing = work.where(~has_input).select(
            "item_id",
            "content_hash",
            F.lit(None).cast("array<float>").alias("vector"),
            F.lit(None).cast("int").alias("dim"),
            F.lit("missing").alias("status"),
            F.lit(None).cast("string").alias("error"),
            F.lit(0).alias("inferences"),
        )
        _commit(features, table, extractor, ds, missing, report)
    if n_extract:
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(spec.batch_size))
        worker = extract_partition(modality, threads_per_task(spark), _decode_limits(config, spark))
        ids = [row["item_id"] for row in work.where(has_input).select("item_id").orderBy("item_id").collect()]
        # The first chunk is one model batch per task slot: its rate sizes the next ones (`next_chunk_size`).
        first_chunk_items = spec.batch_size * spark.sparkContext.defaultParallelism
        done, number = 0, 0
        with stage_progress(spark, f"extract_{modality}", n_extract):
            while done < len(ids):
                elapsed = time.monotonic() - extract_started
                size = next_chunk_size(
                    config.extract_chunk_items, config.extract_commit_seconds, first_chunk_items, done, elapsed
                )
                # Ranges of ids rather than random splits: each chunk is a plain filter on the checkpointed
                # work, and a rerun after a kill sees the same order.
                first, last = ids[done], ids[min(done + size, len(ids)) - 1]
                size, number = min(size, len(ids) - done), number + 1
                chunk = work.where(has_input & F.col("item_id").between(first, last))
                partitions = min(max(spark.sparkContext.defaultParallelism, size // (spec.batch_size * 2)), 64)
                # By item id, in item-id order: the same items make the same model batches whatever order
                # the table's files were listed in, so a rerun rounds exactly as the first run did.
                ordered = chunk.repartition(partitions, "item_id").sortWithinPartitions("item_id")
                extracted = ordered.mapInPandas(worker, _RESULT_SCHEMA)
                # Checkpointed so the models run exactly once, whatever the MERGE and the counts read.
                results = extracted.join(chunk.select("item_id", "content_hash", "timeouts"), "item_id")
                results = results.withColumn(
                    "error", counting_timeouts(F.col("error"), F.col("timeouts"), config.max_decode_attempts)
                )
                _commit(features, table, extractor, ds, results.localCheckpoint(eager=True), report)
                done += size
                elapsed = time.monotonic() - extract_started
                log.info(
                    "extract %s: chunk %d committed, %d/%d items (%.1f items/s)",
                    modality,
                    number,
                    done,
                    n_extract,
                    done / elapsed if elapsed else 0.0,
                )
                crash_point("extract.chunk_committed")
    report.extract_seconds = round(time.monotonic() - extract_started, 2)
    _quarantine_failures(spark, config, modality, ds, features.toDF(), catalog)
    report.extracted = report.ok + report.failed
    report.seconds = round(time.monotonic() - started, 1)
    write_report(config, report.ds, f"extract_{report.modality}", report)
    return report


def _decode_limits(config: PipelineConfig, spark: SparkSession) -> DecodeLimits:
    return decode_sandbox.limits_from_config(config, threads=threads_per_task(spark))


def next_chunk_size(
    chunk_items: int, commit_seconds: float, first_chunk_items: int, done: int, elapsed: float
) -> int:
    """How many items the next chunk holds: at most `chunk_items`, and no more than the rate measured so
    far (`done` items in `elapsed` seconds) gets through in `commit_seconds`, so slow items are committed
    by time as well as by count. Before any rate is known, `first_chunk_items` (one model batch per task
    slot). Always at least one item."""
    if done == 0 or elapsed <= 0:
        return max(1, min(chunk_items, first_chunk_items))
    return max(1, min(chunk_items, int(done / elapsed * commit_seconds)))


def _commit(features, table: str, extractor, ds: dt.date, results: DataFrame, report: ExtractReport) -> None:
    """MERGE one chunk's result rows (item_id, content_hash, vector, dim, status, error, inferences) into
    the feature table, in one Delta commit, and count them into the report."""
    rows = results.select(
        "item_id",
        "content_hash",
        F.lit(extractor.name).alias("extractor"),
        F.lit(extractor.version).alias("extractor_version"),
        "dim",
        "vector",
        "status",
        "error",
        F.lit(ds).alias("extracted_ds"),
        F.current_timestamp().alias("extracted_at"),
    )
    (
        features.alias("t")
        .merge(lake.conform(rows, table).alias("s"), "t.item_id = s.item_id AND t.content_hash <=> s.content_hash")
        .whenMatchedUpdateAll()
        .whenNotMatchedInsertAll()
        .execute()
    )
    for row in (
        results.groupBy("status", "error").agg(F.count("*").alias("n"), F.sum("inferences").alias("i")).collect()
    ):
        setattr(report, row["status"], getattr(report, row["status"]) + row["n"])
        report.inferences += row["i"]
        if row["status"] == "failed":
            report.failed_by_reason[row["error"]] = report.failed_by_reason.get(row["error"], 0) + row["n"]


def _quarantine_failures(
    spark: SparkSession,
    config: PipelineConfig,
    modality: str,
    ds: dt.date,
    features: DataFrame,
    catalog: DataFrame,
) -> None:
    """The date's quarantine rows for this modality: every item whose extraction on `ds` failed.

    Read back from the feature table, so a partial rerun of the date keeps the failures of items it
    did not touch.
    """
    stage = f"extract_{modality}"
    spec = MODALITY_INPUTS[modality]
    path = F.col(spec.path_column) if spec.path_column else F.lit(None).cast("string")
    failures = (
        features.where((F.col("status") == "failed") & (F.col("extracted_ds") == F.lit(ds)))
        .join(catalog.select("item_id", path.alias("path")), "item_id", "left")
        .select(
            F.lit(ds).alias("ds"),
            F.lit(stage).alias("stage"),
            F.col("path").alias("source_file"),
            "item_id",
            F.lit(None).cast("bigint").alias("user_id"),
            F.coalesce("path", F.concat(F.lit("text of item "), F.col("item_id").cast("string"))).alias("record"),
            F.col("error").alias("reason"),
            F.current_timestamp().alias("quarantined_at"),
        )
    )
    lake.replace_where(spark, config, QUARANTINE, failures, lake.rows_of(ds=ds, stage=stage))


def log_report(report: ExtractReport) -> None:
    log.info(
        "extract %s: %d catalog items, %d up to date, %d extracted (%d ok, %d failed), %d without media, "
        "%d inferences in %.1f s (%.1f items/s)",
        report.modality,
        report.catalog_items,
        report.up_to_date,
        report.extracted,
        report.ok,
        report.failed,
        report.missing,
        report.inferences,
        report.extract_seconds,
        report.items_per_second,
    )
    for reason, n in report.failed_by_reason.items():
        log.info("failed %d: %s", n, reason)


# ---------------------------------------------------------------------------------------------------
# Command line (spark-submit and `modalrank extract` share these arguments)


def add_force_argument(parser: argparse.ArgumentParser) -> None:
    add_boolean_flag(parser, "--force", help="recompute every item (e.g. after a model change)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser)
    parser.add_argument("--modality", required=True, choices=sorted(MODALITY_INPUTS), help="which modality")
    add_force_argument(parser)


def run_from_args(args: argparse.Namespace) -> ExtractReport:
    """The job as the command line and spark-submit run it: its own session, then the log summary."""
    config = load_run_config(args)
    with spark_session(f"modalrank-extract-{args.modality}", config) as spark:
        report = run_extract(spark, config, args.modality, args.ds, force=args.force)
    log_report(report)
    return report


main = job_entry_point(__doc__, add_arguments, run_from_args)


if __name__ == "__main__":
    raise SystemExit(main())
