"""Fusion: every item of the catalog as of the run date, its modality features into one row of `item_vectors`.

Each modality found in the lake (`features_<name>`, sorted by name; `--modalities` picks some) gets a
projection fitted on its `ok` vectors (all of them, or a deterministic sample of `--max-fit-items`
chosen by hashing item ids): standardise, PCA to at most `--block-dim` dims, L2-normalise
(`features/fusion.py` says why). Every item of the catalog as of `ds` then gets one row: the modalities'
blocks concatenated in layout order, zeros and a false mask bit where it lacks a modality. An item with
no modality at all still gets its row (all zeros, nothing in `modalities`): nothing is dropped.

As of a date (`jobs.asof`): the projections that serve `ds` are fitted as of its training grid date
(`--every-days`, train's cadence: the date whose ranker serves `ds`), on the items the lake knew by then
at the content they had then. So the ranker of that date and every date it serves see vectors of one
fit, and the fit depends on the date alone, never on which later dates already ran on the lake.

The fitted projections are an artifact, `<artifacts>/_models/fusion/<fusion_version>/`
(projections.safetensors + fusion.json, which records the key and the digest of each fit set). A run
reuses a saved artifact whose key (modalities, extractors and versions, block size) and fit sets are
exactly its own, and fits otherwise; `--refit` fits afresh (same data gives the same `fusion_version`).
`_models/fusion/by_ds/<ds>.json` records which fusion fused `ds`; `current.json` names the artifact
fitted as of the newest date so far, for people (stages never read it).

`item_vectors` holds rows per `fused_ds`: a run replaces the rows of its own date in one Delta commit
(and writes those of the grid date too when the lake has none of this fusion for it, for train), so a
rerun leaves the same rows and other dates' rows stay.

    spark-submit jobs/fuse.py --ds 2026-11-25 [--every-days 7] [--block-dim 64] [--modalities text image] [--refit]
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from features.fusion import METHOD, Fusion
from jobs import artifacts, lake, lease
from jobs.arguments import TRAIN_EVERY_DAYS, add_boolean_flag, modality_name
from jobs.asof import catalog_as_of, training_date
from jobs.config import PipelineConfig, add_run_arguments, load_run_config
from jobs.faults import crash_point
from jobs.fusion_artifacts import date_pointer, matching_artifact, models_dir, save_artifact
from jobs.fusion_fit import describe_modality, feature_modalities, fit_fusion, fit_set_of, ok_vectors
from jobs.progress import stage_progress
from jobs.reports import Report, write_report
from jobs.schemas import ITEM_VECTORS
from jobs.spark import job_entry_point, spark_session

log = logging.getLogger("modalrank.fuse")

DEFAULT_BLOCK_DIM = 64
DEFAULT_MAX_FIT_ITEMS = 20_000

_FUSED_SCHEMA = "item_id long, vector array<float>, mask array<boolean>, modalities array<string>"


@dataclass
class FuseReport(Report):
    template = "fuse"

    ds: str
    fusion_version: str = ""
    # "reused" (the current artifact matched), "fitted" (none matched) or "refit" (asked for)
    projections: str = ""
    fitted_ds: str = ""
    layout: list[str] = field(default_factory=list)
    block_dims: list[int] = field(default_factory=list)
    extractors: dict[str, str] = field(default_factory=dict)
    fit_items: dict[str, int] = field(default_factory=dict)
    explained_variance: dict[str, float] = field(default_factory=dict)
    skipped_modalities: dict[str, str] = field(default_factory=dict)
    catalog_items: int = 0
    items: int = 0
    items_by_modality: dict[str, int] = field(default_factory=dict)
    items_by_modality_count: dict[str, int] = field(default_factory=dict)
    artifact: str = ""
    seconds: float = 0.0
    fit_seconds: float = 0.0
    write_seconds: float = 0.0

    @property
    def reused(self) -> bool:
        return self.projections == "reused"


# ---------------------------------------------------------------------------------------------------
# Worker side: runs in Spark's Python workers


def fuse_partition(fusion: Fusion, columns: list[str]):
    """The mapInPandas function: item ids + one raw-vector column per modality in, fused rows out.

    `fusion` reaches workers in the function's closure: a few projection matrices, small enough to ship
    with every task.
    """

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            raw = {
                modality: [None if value is None else np.asarray(value) for value in batch[column]]
                for modality, column in zip(fusion.layout, columns, strict=True)
            }
            vectors, mask = fusion.fuse(raw)
            yield pd.DataFrame(
                {
                    "item_id": batch["item_id"],
                    "vector": list(vectors),
                    "mask": list(mask),
                    "modalities": [[fusion.layout[j] for j in np.flatnonzero(row)] for row in mask],
                }
            )

    return run


# ---------------------------------------------------------------------------------------------------
# Driver side


# The lease of `ds` and of its training date, whose projection and vectors a fuse may write (`jobs.asof`).
@lease.holding(
    "fuse",
    lambda ds, every_days, **_: [lease.date_key(ds), lease.training_key(training_date(ds, every_days))],
)
def run_fuse(
    spark: SparkSession,
    config: PipelineConfig,
    ds: dt.date,
    refit: bool = False,
    block_dim: int = DEFAULT_BLOCK_DIM,
    max_fit_items: int = DEFAULT_MAX_FIT_ITEMS,
    modalities: list[str] | None = None,
    every_days: int = 1,
) -> FuseReport:
    """Fit or reuse the projections and write the date's `item_vectors` (the module docstring says how)."""
    started = time.monotonic()
    report = FuseReport(ds.isoformat())
    folder = models_dir(config)
    available = feature_modalities(spark, config)
    if modalities:
        unknown = sorted(set(modalities) - set(available))
        if unknown:
            raise ValueError(f"no feature table for {', '.join(unknown)} in {config.lake} (found: {available})")
        available = sorted(set(modalities))
    if not available:
        raise ValueError(f"nothing to fuse: no features_* tables in {config.lake}; run extract first")

    # Fitted as of the training grid date, so the ranker of that date and every date it serves see
    # vectors of one fit (`jobs.asof`).
    fit_ds = training_date(ds, every_days)
    fit_catalog = catalog_as_of(spark, config, fit_ds).localCheckpoint(eager=True)
    fit_ok = {m: ok_vectors(spark, config, m, fit_catalog) for m in available}
    inputs = [describe_modality(fit_ok[m], m) for m in available]
    key = {"method": METHOD, "block_dim": block_dim, "inputs": {spec.modality: spec.key() for spec in inputs}}
    fit_sets = {
        spec.modality: fit_set_of(fit_ok[spec.modality], spec.ok_items, max_fit_items)
        for spec in inputs
        if spec.fittable
    }
    log.info(
        "fuse ds=%s (fitted as of %s): modalities %s",
        ds,
        fit_ds,
        ", ".join(f"{s.modality} ({s.ok_items} ok, {s.extractor} {s.extractor_version})" for s in inputs),
    )

    saved = None if refit else matching_artifact(folder, key, fit_sets)
    if saved is not None:
        fusion, meta = saved
        report.projections = "reused"
        log.info("fuse: reusing fusion %s fitted on %s", meta["fusion_version"], meta["fitted_ds"])
    else:
        fit_started = time.monotonic()
        fusion, meta = fit_fusion(inputs, fit_ok, key, fit_ds, block_dim, max_fit_items, fit_sets)
        save_artifact(folder, fusion, meta)
        report.projections = "refit" if refit else "fitted"
        report.fit_seconds = round(time.monotonic() - fit_started, 2)
        log.info("fuse: fitted fusion %s in %.1f s", meta["fusion_version"], report.fit_seconds)

    report.fusion_version = meta["fusion_version"]
    report.fitted_ds = meta["fitted_ds"]
    report.layout, report.block_dims = list(fusion.layout), fusion.block_dims
    report.extractors = {
        m: f"{meta['modalities'][m]['extractor']} {meta['modalities'][m]['extractor_version']}"
        for m in fusion.layout
    }
    report.fit_items = {m: meta["modalities"][m]["fit_items"] for m in fusion.layout}
    report.explained_variance = {m: meta["modalities"][m]["explained_variance"] for m in fusion.layout}
    report.skipped_modalities = meta["skipped"]
    report.artifact = str(folder / meta["fusion_version"])

    write_started = time.monotonic()
    catalog = fit_catalog if fit_ds == ds else catalog_as_of(spark, config, ds).localCheckpoint(eager=True)
    report.catalog_items = catalog.count()
    write_item_vectors(spark, config, fusion, report.fusion_version, ds, catalog, report.catalog_items)
    if fit_ds != ds and not _has_item_vectors(spark, config, fit_ds, report.fusion_version):
        # The ranker of the grid date trains on that date's vectors: a lake that never fused it gets them now.
        log.info("fuse: item_vectors of the grid date %s as well (the ranker for %s trains on them)", fit_ds, ds)
        write_item_vectors(spark, config, fusion, report.fusion_version, fit_ds, fit_catalog, fit_catalog.count())
    artifacts.update_pointer(
        date_pointer(config, ds),
        {"ds": ds.isoformat(), "fusion_version": report.fusion_version, "fitted_ds": report.fitted_ds},
    )
    report.write_seconds = round(time.monotonic() - write_started, 2)
    _count_items(spark, config, report, ds)
    report.seconds = round(time.monotonic() - started, 1)
    write_report(config, report.ds, "fuse", report)
    return report


def _has_item_vectors(spark: SparkSession, config: PipelineConfig, ds: dt.date, version: str) -> bool:
    """Whether `item_vectors` holds rows of `ds`, all of fusion `version`."""
    rows = lake.read_table(spark, config, ITEM_VECTORS).where(F.col("fused_ds") == F.lit(ds))
    versions = {row[0] for row in rows.select("fusion_version").distinct().collect()}
    return versions == {version}


def write_item_vectors(
    spark: SparkSession,
    config: PipelineConfig,
    fusion: Fusion,
    version: str,
    ds: dt.date,
    catalog: DataFrame,
    n_items: int,
) -> None:
    """One row per item of `catalog` (the catalog as of `ds`) into `item_vectors`, replacing the rows of
    `fused_ds` = `ds` in one commit: readers see that date's old rows or its new ones, never a mix, and
    other dates' rows stay as they were."""
    items, columns = catalog.select("item_id"), []
    for i, modality in enumerate(fusion.layout):
        columns.append(f"_raw{i}")
        vectors = ok_vectors(spark, config, modality, catalog).select(
            "item_id", F.col("vector").alias(columns[-1])
        )
        items = items.join(vectors, "item_id", "left")
    # Small batches: each row holds every modality's raw vector (thousands of floats for video).
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "1024")
    fused = items.mapInPandas(fuse_partition(fusion, columns), _FUSED_SCHEMA).select(
        "item_id",
        "vector",
        F.array(*[F.lit(m) for m in fusion.layout]).alias("layout"),
        F.array(*[F.lit(k) for k in fusion.block_dims]).alias("block_dims"),
        "mask",
        "modalities",
        F.lit(version).alias("fusion_version"),
        F.lit(ds).alias("fused_ds"),
        F.current_timestamp().alias("fused_at"),
    )
    with stage_progress(spark, "fuse", n_items):
        lake.replace_where(spark, config, ITEM_VECTORS, fused, lake.rows_of(fused_ds=ds))
    crash_point("fuse.table_written")


def _count_items(spark: SparkSession, config: PipelineConfig, report: FuseReport, ds: dt.date) -> None:
    """The counts as written: read back from `item_vectors`, not from what the job meant to write."""
    written = lake.read_table(spark, config, ITEM_VECTORS).where(F.col("fused_ds") == F.lit(ds))
    by_count = written.groupBy(F.size("modalities").alias("n")).count().orderBy("n").collect()
    report.items_by_modality_count = {str(row["n"]): row["count"] for row in by_count}
    report.items = sum(report.items_by_modality_count.values())
    by_modality = written.select(F.explode("modalities").alias("m")).groupBy("m").count().collect()
    counts = {row["m"]: row["count"] for row in by_modality}
    report.items_by_modality = {m: counts.get(m, 0) for m in report.layout}


def log_report(report: FuseReport) -> None:
    log.info(
        "fuse: fusion %s (%s), layout %s, block dims %s: %d items (of %d in the catalog) in %.1f s",
        report.fusion_version,
        report.projections,
        report.layout,
        report.block_dims,
        report.items,
        report.catalog_items,
        report.seconds,
    )
    log.info(
        "fuse: items per modality %s; items per number of modalities %s",
        report.items_by_modality,
        report.items_by_modality_count,
    )
    for modality, why in report.skipped_modalities.items():
        log.warning("fuse: skipped %s: %s", modality, why)


# ---------------------------------------------------------------------------------------------------
# Command line (spark-submit and `modalrank fuse` share these arguments)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser)
    add_boolean_flag(parser, "--refit", help="fit new projections, even if current match")
    parser.add_argument("--block-dim", type=int, default=DEFAULT_BLOCK_DIM, help="most dims per modality block")
    parser.add_argument(
        "--max-fit-items", type=int, default=DEFAULT_MAX_FIT_ITEMS, help="most ok vectors a modality is fitted on"
    )
    parser.add_argument(
        "--modalities",
        nargs="*",
        default=None,
        type=modality_name,
        help="fuse only these (default: every features_* table)",
    )
    parser.add_argument(
        "--every-days",
        type=TRAIN_EVERY_DAYS,
        default=1,
        help="train's cadence: projections are fitted as of the latest date on or before --ds whose ordinal is "
        "a multiple of this, the date whose ranker serves --ds (default: %(default)s)",
    )


def run_from_args(args: argparse.Namespace) -> FuseReport:
    """The job as the command line and spark-submit run it: its own session, then the log summary."""
    config = load_run_config(args)
    # "text image", "text,image" or nothing (a scheduler passes an empty value for "all").
    modalities = [m for text in args.modalities or [] for m in text.replace(",", " ").split()] or None
    with spark_session("modalrank-fuse", config) as spark:
        report = run_fuse(
            spark,
            config,
            args.ds,
            refit=args.refit,
            block_dim=args.block_dim,
            max_fit_items=args.max_fit_items,
            modalities=modalities,
            every_days=args.every_days,
        )
    log_report(report)
    return report


main = job_entry_point(__doc__, add_arguments, run_from_args)


if __name__ == "__main__":
    raise SystemExit(main())
