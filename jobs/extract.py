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

Run by the DAG through spark-submit, by `modalrank extract`, or by hand:
    spark-submit jobs/extract.py --modality image --ds 2026-11-25
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs import lake
from jobs.asof import catalog_as_of
from jobs.config import PipelineConfig, add_run_arguments, configure_logging, load_run_config
from jobs.progress import stage_progress
from jobs.schemas import QUARANTINE, features_table
from jobs.spark import job_main, spark_session, threads_per_task

log = logging.getLogger("modalrank.extract")


@dataclass(frozen=True)
class ModalityInput:
    """Where a modality's input lives in the catalog, and how big its model batches are."""

    hash_column: str
    path_column: str | None  # None: the input is the item's text
    batch_size: int


MODALITY_INPUTS = {
    "text": ModalityInput("text_hash", None, 64),
    "image": ModalityInput("poster_hash", "poster_path", 32),
    "audio": ModalityInput("audio_hash", "audio_path", 16),
    "video": ModalityInput("video_hash", "video_path", 8),
}

# The columns mapInPandas hands to workers and gets back.
_WORK_COLUMNS = ["item_id", "content_hash", "path", "title", "overview", "genres", "tags"]
_RESULT_SCHEMA = "item_id long, vector array<float>, dim int, status string, error string, inferences int"


@dataclass
class ExtractReport:
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


# ---------------------------------------------------------------------------------------------------
# Worker side: runs in Spark's Python workers, once per partition


_worker_extractors: dict[str, object] = {}


def _worker_extractor(modality: str, threads: int):
    """The modality's extractor, built once per Python worker process and reused by every task."""
    from features.models import limit_threads
    from features.registry import make_extractor

    limit_threads(threads)
    if modality not in _worker_extractors:
        extractor = make_extractor(modality)
        if hasattr(extractor, "warm_up"):
            with _one_warm_up_at_a_time():
                extractor.warm_up()
        _worker_extractors[modality] = extractor
    return _worker_extractors[modality]


@contextmanager
def _one_warm_up_at_a_time() -> Iterator[None]:
    """An exclusive lock shared by every worker process on this machine.

    librosa's first call JIT-compiles with numba and writes numba's on-disk cache; two workers
    compiling the same function at once can leave an index that points at the other's machine code,
    after which every process that loads it crashes (seen here: a segfault in `localmax`). Warming
    up one process at a time means the first compiles and writes, the others then only read.
    """
    import fcntl
    import tempfile

    with open(Path(tempfile.gettempdir()) / "modalrank-warm-up.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_media(path: str) -> bytes | str:
    """The file's bytes, or a failure phrase."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        return "file not found"
    except OSError:
        return "unreadable file"


def extractor_inputs(modality: str, items: pd.DataFrame) -> list[bytes | str]:
    """What the extractor sees for each row: the composed text, or the media file's bytes (or why not).

    `items` has the catalog's title, overview, genres and tags, and the modality's file as `path`.
    """
    if MODALITY_INPUTS[modality].path_column is None:
        from features.text import compose_item_text

        return [
            compose_item_text(row.title, row.overview, list(row.genres), list(row.tags))
            for row in items.itertuples()
        ]
    return [read_media(path) for path in items["path"]]


def extract_partition(modality: str, threads: int):
    """The mapInPandas function: work rows in, one result row per item out."""

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        # Workers are separate processes: their log lines reach the executor's stderr only if asked.
        configure_logging()
        extractor = _worker_extractor(modality, threads)
        started, done = time.monotonic(), 0
        for batch in batches:
            inputs = extractor_inputs(modality, batch)
            readable = [i for i, value in enumerate(inputs) if isinstance(value, bytes) or modality == "text"]
            results = dict(zip(readable, extractor.extract_batch([inputs[i] for i in readable]), strict=True))
            rows = []
            for i, item_id in enumerate(batch["item_id"]):
                result = results.get(i)
                if result is None:  # the file could not be read: no model call
                    rows.append((item_id, None, None, "failed", inputs[i], 0))
                elif result.ok:
                    rows.append((item_id, result.vector, len(result.vector), "ok", None, 1))
                else:  # rejected by the extractor's checks (decoding, limits) before its model ran
                    rows.append((item_id, None, None, "failed", result.error, 0))
            done += len(rows)
            log.info("%s worker: %d items (%.1f items/s)", modality, done, done / (time.monotonic() - started))
            yield pd.DataFrame(rows, columns=["item_id", "vector", "dim", "status", "error", "inferences"])

    return run


# ---------------------------------------------------------------------------------------------------
# Driver side


def stale_items(catalog: DataFrame, existing: DataFrame, modality: str, name: str, version: str, force: bool):
    """Catalog items whose `features_<modality>` row is absent or out of date, with their inputs."""
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
        return work
    current = existing.select(
        F.col("item_id").alias("done_id"),
        F.col("content_hash").alias("done_hash"),
        F.col("extractor").alias("done_extractor"),
        F.col("extractor_version").alias("done_version"),
    )
    # Keyed by content version: an item whose content changed keeps the vector of each version, so an
    # older date re-run on a newer lake finds (or makes) its own version's vector and leaves the newer one.
    joined = work.join(
        current,
        (work["item_id"] == current["done_id"]) & work["content_hash"].eqNullSafe(current["done_hash"]),
        "left",
    )
    stale = (
        F.col("done_extractor").isNull() | (F.col("done_extractor") != name) | (F.col("done_version") != version)
    )
    return joined.where(stale).select(*_WORK_COLUMNS)


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
        modality, ds, report.catalog_items, report.up_to_date, n_extract, n_stale - n_extract, modality,
    )  # fmt: skip
    if n_stale == 0:  # nothing changed: no model, no commit, and the date's quarantine rows stay
        report.seconds = round(time.monotonic() - started, 1)
        write_report(config, report)
        return report

    extract_started = time.monotonic()
    results = work.where(~has_input).select(
        "item_id",
        F.lit(None).cast("array<float>").alias("vector"),
        F.lit(None).cast("int").alias("dim"),
        F.lit("missing").alias("status"),
        F.lit(None).cast("string").alias("error"),
        F.lit(0).alias("inferences"),
    )
    if n_extract:
        partitions = min(max(spark.sparkContext.defaultParallelism, n_extract // (spec.batch_size * 2)), 64)
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(spec.batch_size))
        extracted = (
            work.where(has_input)
            .repartition(partitions)
            .mapInPandas(extract_partition(modality, threads_per_task(spark)), _RESULT_SCHEMA)
        )
        results = results.unionByName(extracted)
    with stage_progress(spark, f"extract_{modality}", n_extract):
        # Checkpointed so the models run exactly once, whatever the MERGE and the counts read.
        results = results.join(work.select("item_id", "content_hash"), "item_id").localCheckpoint(eager=True)
    report.extract_seconds = round(time.monotonic() - extract_started, 2)

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
    _quarantine_failures(spark, config, modality, ds, features.toDF(), catalog)

    for row in (
        results.groupBy("status", "error").agg(F.count("*").alias("n"), F.sum("inferences").alias("i")).collect()
    ):
        setattr(report, row["status"], getattr(report, row["status"]) + row["n"])
        report.inferences += row["i"]
        if row["status"] == "failed":
            report.failed_by_reason[row["error"]] = row["n"]
    report.extracted = report.ok + report.failed
    report.seconds = round(time.monotonic() - started, 1)
    write_report(config, report)
    return report


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
    lake.replace_where(spark, config, QUARANTINE, failures, f"ds = '{ds.isoformat()}' AND stage = '{stage}'")


def write_report(config: PipelineConfig, report: ExtractReport) -> Path:
    folder = config.reports_dir / report.ds
    folder.mkdir(parents=True, exist_ok=True)
    name = f"extract_{report.modality}"
    payload = asdict(report) | {"items_per_second": round(report.items_per_second, 2)}
    (folder / f"{name}.json").write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    lines = [
        f"# Extract {report.modality} — run date {report.ds}",
        "",
        f"Extractor `{report.extractor}` version {report.extractor_version}. Took {report.seconds} s "
        f"({report.extract_seconds} s extracting, {report.items_per_second:.1f} items/s).",
        "",
        "| catalog items | up to date (skipped) | extracted | ok | failed | no such media | model inferences |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| {report.catalog_items} | {report.up_to_date} | {report.extracted} | {report.ok} | "
        f"{report.failed} | {report.missing} | {report.inferences} |",
        "",
        "## Failures by reason",
        "",
    ]
    if report.failed_by_reason:
        lines += ["| reason | items |", "|---|---:|"]
        lines += [f"| {reason} | {n} |" for reason, n in report.failed_by_reason.items()]
    else:
        lines.append("None.")
    (folder / f"{name}.md").write_text("\n".join(lines) + "\n")
    return folder / f"{name}.md"


def log_report(report: ExtractReport) -> None:
    log.info(
        "extract %s: %d catalog items, %d up to date, %d extracted (%d ok, %d failed), %d without media, "
        "%d inferences in %.1f s (%.1f items/s)",
        report.modality, report.catalog_items, report.up_to_date, report.extracted, report.ok, report.failed,
        report.missing, report.inferences, report.extract_seconds, report.items_per_second,
    )  # fmt: skip
    for reason, n in report.failed_by_reason.items():
        log.info("failed %d: %s", n, reason)


# ---------------------------------------------------------------------------------------------------
# Command line (spark-submit and `modalrank extract` share these arguments)


def add_force_argument(parser: argparse.ArgumentParser) -> None:
    # `--force` alone, or `--force true|false`: a scheduler passes a flag value on every run.
    parser.add_argument(
        "--force",
        nargs="?",
        const=True,
        default=False,
        type=lambda text: text.strip().lower() in {"1", "true", "yes"},
        help="recompute every item (e.g. after a model change)",
    )


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


def main(argv: list[str] | None = None) -> int:
    return job_main(__doc__, add_arguments, run_from_args, argv)


if __name__ == "__main__":
    raise SystemExit(main())
