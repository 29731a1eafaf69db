"""Lake upkeep: what keeps a lake that gains a date every night from growing without bound. Weekly in the
DAG `modalrank_upkeep`, or by hand:

    modalrank upkeep --ds 2026-11-29 [--time-travel-days 7] [--eval-days 28] [--keep-days 90] [--dry-run]

In order, each step in `_reports/<ds>/upkeep.json` and `.md` with what it freed (a dry run's plan:
`upkeep-dry-run.json` and `.md`):
1. Evaluation retention: `eval_lists` and `eval_truth` rows of run dates more than `--eval-days` before
   `ds` are deleted (the largest growth: every model's top-20 for every user, every night). `metrics` is
   kept whole: a few hundred rows a night, and the history of the models' quality.
2. OPTIMIZE every Delta table: each night's replaceWhere commits leave small files behind.
3. VACUUM every Delta table, keeping `--time-travel-days` of history, never fewer than
   MIN_TIME_TRAVEL_DAYS: a consumer reads the table version its Asset event named, maybe a day later, and
   time travel to any version inside the window keeps working.
4. Reports: `_reports/<date>/` folders of dates more than `--keep-days` before `ds`.
5. Models: ranker pointers (`by_ds/<date>.json`) of those same dates; then every ranker and fusion
   artifact that nothing retained names (no kept pointer, no `current.json`, no kept ranker's card, no
   `item_vectors` row of a kept date); then serving folders that dead publish runs left behind. An
   artifact or folder younger than YOUNGEST_REMOVED_HOURS is never removed: a train or publish running now
   may have built it and not yet pointed at it. (A rerun of a date whose pointer went trains its model
   again, the same version: training depends on the date alone.)

The recommendations table, catalog, interactions and item_vectors are never trimmed: they are the product
and the inputs any retained date's rerun needs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from jobs import artifacts, lake, lease
from jobs.arguments import RETENTION_DAYS
from jobs.config import PipelineConfig, add_run_arguments, load_run_config, local_path
from jobs.reports import Report, write_report
from jobs.schemas import ALL_TABLES, EVAL_LISTS, EVAL_TRUTH, ITEM_VECTORS, TableSpec, features_table
from jobs.spark import job_entry_point, spark_session

log = logging.getLogger("modalrank.upkeep")

MIN_TIME_TRAVEL_DAYS = 1
YOUNGEST_REMOVED_HOURS = 24
# The tables whose old run dates are deleted (step 1).
EVALUATION_TABLES = (EVAL_LISTS, EVAL_TRUTH)


@dataclass
class UpkeepReport(Report):
    """`upkeep.json` (these fields) and `upkeep.md`."""

    template = "upkeep"

    ds: str
    dry_run: bool
    time_travel_days: int
    eval_days: int
    keep_days: int
    tables: list = field(default_factory=list)  # per table: files and bytes before and after, rows deleted
    reports_removed: list = field(default_factory=list)
    pointers_removed: list = field(default_factory=list)
    artifacts_removed: list = field(default_factory=list)
    bytes_freed_files: int = 0  # reports and artifacts removed
    seconds: float = 0.0

    @property
    def table_bytes(self) -> tuple[int, int]:
        """The tables' bytes before and after. After can be more: the files OPTIMIZE replaced, and every
        run's own log entries, stay until they leave the time-travel window (a later upkeep frees them)."""
        return sum(t["bytes_before"] for t in self.tables), sum(t["bytes_after"] for t in self.tables)


def lake_tables(spark: SparkSession, config: PipelineConfig) -> list[TableSpec]:
    """Every Delta table the lake holds: the fixed ones and one per modality's features."""
    from delta.tables import DeltaTable

    from jobs.consume import lake_feature_modalities

    modalities, _ = lake_feature_modalities(config)
    specs = [*ALL_TABLES, *(features_table(modality) for modality in modalities)]
    return [spec for spec in specs if DeltaTable.isDeltaTable(spark, config.table_path(spec.name))]


def _size(spark: SparkSession, config: PipelineConfig, spec: TableSpec) -> tuple[int, int]:
    """The current version's data files (DESCRIBE DETAIL), and the bytes the table holds: on disk, every
    version and the log, for a local lake (what VACUUM frees); the current version's for a URI lake."""
    path = config.table_path(spec.name)
    detail = spark.sql(f"DESCRIBE DETAIL {lake.delta_identifier(path)}").first()
    folder = local_path(path)
    return int(detail["numFiles"]), _bytes_on_disk(Path(folder)) if folder else int(detail["sizeInBytes"])


def _bytes_on_disk(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _is_old(path: Path, now: float) -> bool:
    return now - path.stat().st_mtime > YOUNGEST_REMOVED_HOURS * 3600


def tidy_tables(spark: SparkSession, config: PipelineConfig, report: UpkeepReport, eval_cutoff: dt.date) -> None:
    """Steps 1 to 3, table by table."""
    from delta.tables import DeltaTable

    # Delta refuses a VACUUM retention under 7 days unless told; run_upkeep enforces its own floor instead.
    spark.conf.set("spark.databricks.delta.retentionDurationCheck.enabled", "false")
    # VACUUM lists the table's folders in spark.sql.sources.parallelPartitionDiscovery.parallelism tasks,
    # 10,000 by default: 20-35 s for a table of a few files on two cores, 3-8 s with a few tasks per core.
    listing_tasks = 4 * spark.sparkContext.defaultParallelism
    spark.conf.set("spark.sql.sources.parallelPartitionDiscovery.parallelism", str(listing_tasks))
    for spec in lake_tables(spark, config):
        table = DeltaTable.forPath(spark, config.table_path(spec.name))
        files_before, bytes_before = _size(spark, config, spec)
        entry = {"table": spec.name, "files_before": files_before, "bytes_before": bytes_before, "rows_deleted": 0}
        if spec in EVALUATION_TABLES:
            old = F.col("ds") < F.lit(eval_cutoff)
            entry["rows_deleted"] = table.toDF().where(old).count()
            if entry["rows_deleted"] and not report.dry_run:
                table.delete(old)
        if not report.dry_run:
            table.optimize().executeCompaction()
            table.vacuum(report.time_travel_days * 24.0)
        entry["files_after"], entry["bytes_after"] = (
            (files_before, bytes_before) if report.dry_run else _size(spark, config, spec)
        )
        log.info(
            "upkeep %s: %d files, %d bytes -> %d files, %d bytes; %d old evaluation rows",
            spec.name,
            files_before,
            bytes_before,
            entry["files_after"],
            entry["bytes_after"],
            entry["rows_deleted"],
        )
        report.tables.append(entry)


def _remove(config: PipelineConfig, path: Path, report: UpkeepReport, removed: list) -> None:
    """Remove a file or folder of the artifacts folder (unless a dry run), and say so in the report."""
    report.bytes_freed_files += _bytes_on_disk(path)
    removed.append(str(path.relative_to(config.artifacts_dir)))
    if report.dry_run:
        return
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()


def tidy_files(spark: SparkSession, config: PipelineConfig, report: UpkeepReport, cutoff: dt.date) -> None:
    """Steps 4 and 5: old reports, old pointers, then the artifacts nothing retained names."""
    now = time.time()
    if config.reports_dir.is_dir():
        for folder in sorted(config.reports_dir.iterdir()):
            folder_ds = _date_or_none(folder.name)
            if folder.is_dir() and folder_ds is not None and folder_ds < cutoff:
                _remove(config, folder, report, report.reports_removed)

    rankers = config.models_dir / "ranker"
    kept_pointers = []
    for pointer in sorted((rankers / "by_ds").glob("*.json")):
        ds = _date_or_none(pointer.stem)
        if ds is not None and ds < cutoff:
            _remove(config, pointer, report, report.pointers_removed)
        else:
            kept_pointers.append(pointer)
    named = [artifacts.read_json(path) for path in (*kept_pointers, rankers / "current.json")]
    kept_rankers = {pointer["version"] for pointer in named if pointer}

    fusions = config.models_dir / "fusion"
    kept_fusions = {
        row["fusion_version"]
        for row in lake.read_table(spark, config, ITEM_VECTORS)
        .where(F.col("fused_ds") >= F.lit(cutoff))
        .select("fusion_version")
        .distinct()
        .collect()
    }
    for version in kept_rankers:
        card = rankers / version / "ranker.json"
        if card.is_file():
            kept_fusions.add(json.loads(card.read_text()).get("fusion_version"))
    current_fusion = artifacts.read_json(fusions / "current.json")
    if current_fusion:
        kept_fusions.add(current_fusion["fusion_version"])

    for root, kept in ((rankers, kept_rankers), (fusions, kept_fusions)):
        if not root.is_dir():
            continue
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name != "by_ds"):
            if folder.name not in kept and _is_old(folder, now):
                _remove(config, folder, report, report.artifacts_removed)

    serving = config.models_dir / "serving"
    if serving.is_dir():
        for date_folder in sorted(p for p in serving.iterdir() if p.is_dir()):
            for run_folder in sorted(p for p in date_folder.iterdir() if p.is_dir()):
                if _is_old(run_folder, now):  # a publish removes its own folder; an old one is a dead run's
                    _remove(config, run_folder, report, report.artifacts_removed)
            if not report.dry_run and not any(date_folder.iterdir()):
                date_folder.rmdir()


def _date_or_none(text: str) -> dt.date | None:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        return None


# Upkeep rewrites files every table's readers and writers use: it holds the lake's upkeep lease, so two
# upkeeps never overlap (a nightly's jobs go on; Delta's optimistic commits keep both sides correct).
@lease.holding("upkeep", lambda ds, **_: ["upkeep"])
def run_upkeep(
    spark: SparkSession,
    config: PipelineConfig,
    ds: dt.date,
    time_travel_days: int = 7,
    eval_days: int = 28,
    keep_days: int = 90,
    dry_run: bool = False,
) -> UpkeepReport:
    if time_travel_days < MIN_TIME_TRAVEL_DAYS:
        raise ValueError(
            f"--time-travel-days must be at least {MIN_TIME_TRAVEL_DAYS}: consumers read the table version "
            f"their Asset event named, and time travel must reach it; got {time_travel_days}"
        )
    started = time.monotonic()
    report = UpkeepReport(ds.isoformat(), dry_run, time_travel_days, eval_days, keep_days)
    tidy_tables(spark, config, report, ds - dt.timedelta(days=eval_days))
    tidy_files(spark, config, report, ds - dt.timedelta(days=keep_days))
    report.seconds = round(time.monotonic() - started, 1)
    # A dry run's plan goes beside the last real run's report, never over it.
    write_report(config, report.ds, "upkeep-dry-run" if dry_run else "upkeep", report)
    log.info(
        "upkeep ds=%s: tables %d -> %d bytes, %d bytes freed in reports and models (%d removed)%s",
        ds,
        *report.table_bytes,
        report.bytes_freed_files,
        len(report.reports_removed) + len(report.pointers_removed) + len(report.artifacts_removed),
        " (dry run: nothing changed)" if dry_run else "",
    )
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser)
    parser.add_argument(
        "--time-travel-days",
        type=RETENTION_DAYS,
        default=7,
        help=f"days of table history VACUUM keeps (at least {MIN_TIME_TRAVEL_DAYS}; default: %(default)s)",
    )
    parser.add_argument(
        "--eval-days",
        type=RETENTION_DAYS,
        default=28,
        help="days of eval_lists/eval_truth kept (default: %(default)s)",
    )
    parser.add_argument(
        "--keep-days",
        type=RETENTION_DAYS,
        default=90,
        help="days of reports and by-date model pointers kept (default: %(default)s)",
    )
    parser.add_argument("--dry-run", action="store_true", help="report what would go; change nothing")


def run_from_args(args: argparse.Namespace) -> UpkeepReport:
    config = load_run_config(args)
    with spark_session("modalrank-upkeep", config) as spark:
        report = run_upkeep(
            spark, config, args.ds, args.time_travel_days, args.eval_days, args.keep_days, args.dry_run
        )
    name = "upkeep-dry-run" if report.dry_run else "upkeep"
    print(f"upkeep {report.ds}: report {config.reports_dir / report.ds / f'{name}.md'}")
    return report


main = job_entry_point(__doc__, add_arguments, run_from_args)


if __name__ == "__main__":
    raise SystemExit(main())
