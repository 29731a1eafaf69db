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
import hashlib
import json
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from features.fusion import METHOD, Fusion, fit_projection
from jobs import artifacts, lake, lease
from jobs.arguments import add_boolean_flag, modality_name
from jobs.artifacts import build_artifact
from jobs.asof import catalog_as_of, training_date
from jobs.config import PipelineConfig, add_run_arguments, load_run_config
from jobs.faults import crash_point
from jobs.progress import stage_progress
from jobs.schemas import ITEM_VECTORS, features_table
from jobs.spark import job_main, spark_session

log = logging.getLogger("modalrank.fuse")

DEFAULT_BLOCK_DIM = 64
DEFAULT_MAX_FIT_ITEMS = 20_000
MODALITY_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
ARTIFACT_FILE = "projections.safetensors"
META_FILE = "fusion.json"
POINTER_FILE = "current.json"

_FUSED_SCHEMA = "item_id long, vector array<float>, mask array<boolean>, modalities array<string>"


@dataclass
class FuseReport:
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


@dataclass(frozen=True)
class ModalityInput:
    """What a modality's `ok` vectors are made by: the part of the lake a fusion artifact depends on."""

    modality: str
    extractor: str | None  # None: the table has no ok vector
    extractor_version: str | None
    dim: int | None
    ok_items: int

    @property
    def fittable(self) -> bool:
        return self.ok_items >= 2

    def key(self) -> dict[str, object]:
        # `fittable` too: a modality skipped for want of vectors is fitted once it has them.
        return {
            "extractor": self.extractor,
            "extractor_version": self.extractor_version,
            "dim": self.dim,
            "fittable": self.fittable,
        }


# ---------------------------------------------------------------------------------------------------
# The lake: which modalities there are, and what they hold


def feature_modalities(spark: SparkSession, config: PipelineConfig) -> list[str]:
    """The modalities with a feature table in the lake, sorted: `features_<name>` folders with a Delta log.

    Listed through Hadoop's FileSystem, so an s3a:// or hdfs:// lake is listed like a local folder.
    """
    jvm = spark._jvm
    root = jvm.org.apache.hadoop.fs.Path(config.lake)
    fs = root.getFileSystem(spark._jsc.hadoopConfiguration())
    if not fs.exists(root):
        return []
    modalities = []
    for status in fs.listStatus(root):
        name = status.getPath().getName()
        if not (status.isDirectory() and name.startswith("features_")):
            continue
        modality = name.removeprefix("features_")
        if not MODALITY_NAME.match(modality):
            log.warning("ignoring %s: not a modality name", name)
        elif fs.exists(jvm.org.apache.hadoop.fs.Path(status.getPath(), "_delta_log")):
            modalities.append(modality)
    return sorted(modalities)


def ok_vectors(spark: SparkSession, config: PipelineConfig, modality: str, catalog: DataFrame) -> DataFrame:
    """The modality's ok vectors of the items in `catalog` (the catalog as of a date), each at the content
    version `catalog` holds: a built-in modality's row whose content hash is the item's, an imported
    modality's one row per item (imported files are not dated)."""
    from jobs.extract import MODALITY_INPUTS

    ok = lake.read_table(spark, config, features_table(modality)).where(
        (F.col("status") == "ok") & F.col("vector").isNotNull()
    )
    if modality in MODALITY_INPUTS:
        as_of = catalog.select("item_id", F.col(MODALITY_INPUTS[modality].hash_column).alias("content_hash"))
        ok = ok.join(as_of, ["item_id", "content_hash"], "left_semi")
    else:
        ok = ok.join(catalog.select("item_id"), "item_id", "left_semi")
    return ok.select("item_id", F.coalesce("content_hash", F.lit("")).alias("content_hash"), "extractor",
                     "extractor_version", "dim", "vector")  # fmt: skip


def describe_modality(ok: DataFrame, modality: str) -> ModalityInput:
    """The one extractor (name, version, dim) behind the modality's ok vectors, and how many there are.

    Vectors of two extractor versions in one table are not comparable (a re-extraction did not finish
    or a table was edited by hand): fusing them would be silently wrong, so it is an error.
    """
    groups = ok.groupBy("extractor", "extractor_version", "dim").count().collect()
    if not groups:
        return ModalityInput(modality, None, None, None, 0)
    if len(groups) > 1:
        found = ", ".join(
            f"{g['extractor']} {g['extractor_version']} dim {g['dim']}: {g['count']}" for g in groups
        )
        raise ValueError(
            f"features_{modality} holds ok vectors of more than one extractor version or dim ({found}); "
            f"rerun extract for {modality} first"
        )
    group = groups[0]
    return ModalityInput(modality, group["extractor"], group["extractor_version"], group["dim"], group["count"])


def fit_sample(ok: DataFrame, ok_items: int, max_items: int) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(item ids, content hashes, n × dim vectors) of at most `max_items` ok rows, sorted by item id.

    Above `max_items`, the sample is the items with the smallest hash of their id: the same lake gives
    the same sample, and a growing catalog changes it only at the margin.
    """
    table = fit_rows(ok, ok_items, max_items).select("item_id", "content_hash", "vector").toArrow()
    ids = table.column("item_id").to_numpy()
    order = np.argsort(ids, kind="stable")
    vectors = table.column("vector").combine_chunks()
    dim = len(vectors[0]) if len(vectors) else 0
    matrix = vectors.flatten().to_numpy(zero_copy_only=False).reshape(len(ids), dim)
    hashes = table.column("content_hash").to_pylist()
    return ids[order], [hashes[i] for i in order], matrix[order]


def fit_rows(ok: DataFrame, ok_items: int, max_items: int) -> DataFrame:
    """The ok rows a projection is fitted on (see `fit_sample`)."""
    if ok_items > max_items:
        return ok.orderBy(F.xxhash64("item_id"), "item_id").limit(max_items)
    return ok


def fit_set_of(ok: DataFrame, ok_items: int, max_items: int) -> str:
    """The digest of the fit set `fit_sample` would collect, from ids and hashes alone (no vectors)."""
    table = fit_rows(ok, ok_items, max_items).select("item_id", "content_hash").toArrow()
    ids = table.column("item_id").to_numpy()
    order = np.argsort(ids, kind="stable")
    hashes = table.column("content_hash").to_pylist()
    return fit_set_digest(ids[order], [hashes[i] for i in order])


def fit_set_digest(item_ids: np.ndarray, content_hashes: list[str]) -> str:
    """sha256 of the fit set: which items, at which content. Same set, same projection."""
    digest = hashlib.sha256()
    for item_id, content_hash in zip(item_ids.tolist(), content_hashes, strict=True):
        digest.update(f"{item_id}:{content_hash}\n".encode())
    return digest.hexdigest()


def fusion_version(key: dict, layout: list[str], block_dims: list[int], fit_sets: dict[str, str]) -> str:
    """Short sha256 of everything that decides how the same features fuse."""
    payload = {"key": key, "layout": layout, "block_dims": block_dims, "fit_sets": fit_sets}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------------------------------
# The artifact: <artifacts>/_models/fusion/<fusion_version>/ and the current.json pointer


def models_dir(config: PipelineConfig) -> Path:
    """Where fusion artifacts live: in the artifacts folder, a local or mounted one even when the lake is an
    s3a:// or hdfs:// URI, because they are written with plain file operations (an atomic rename makes the
    pointer move at once, which an object store does not offer)."""
    return config.models_dir / "fusion"


def save_artifact(folder: Path, fusion: Fusion, meta: dict) -> None:
    """The projections and their description as one artifact folder (`jobs.artifacts`: built aside,
    manifest last, renamed whole), then the pointer: a crash before the pointer leaves the old one.

    `current.json` names the artifact fitted as of the newest date so far (for people; stages choose by
    what an artifact was fitted on, see `matching_artifact`): an older date fitted later does not move it
    back. The comparison and the write happen under the pointer's lock.
    """
    target = folder / meta["fusion_version"]

    def write(temporary: Path) -> None:
        fusion.save(temporary / ARTIFACT_FILE)
        (temporary / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")

    build_artifact(
        target, write, {"kind": "fusion", "version": meta["fusion_version"]}, crash_prefix="fuse.projections"
    )
    crash_point("fuse.artifact_saved")

    def is_not_newer(current: dict | None) -> bool:
        fitted = _fitted_ds(folder, current)
        return fitted is None or fitted <= meta["fitted_ds"]

    artifacts.update_pointer(
        folder / POINTER_FILE, {"fusion_version": meta["fusion_version"]}, replaces=is_not_newer
    )


def _fitted_ds(folder: Path, pointer: dict | None) -> str | None:
    """The date the artifact a pointer names was fitted as of, or None (no pointer, or it does not verify)."""
    if pointer is None or not artifacts.is_verified(folder / pointer["fusion_version"], "comparison"):
        return None
    return json.loads((folder / pointer["fusion_version"] / META_FILE).read_text()).get("fitted_ds")


def matching_artifact(folder: Path, key: dict, fit_sets: dict[str, str]) -> tuple[Fusion, dict] | None:
    """A saved, verified artifact fitted with `key` on exactly `fit_sets` (modality → fit-set digest), or None.

    Chosen by what it was fitted on, never by which date ran last: the same fit set as of a date gives
    the same artifact whatever else the lake has seen since. A folder that does not verify against its
    manifest (a crash, a foreign file) is never used: the fit runs again and replaces it.
    """
    if not folder.is_dir():
        return None
    for target in sorted(path for path in folder.iterdir() if (path / META_FILE).is_file()):
        meta = json.loads((target / META_FILE).read_text())
        if meta.get("key") != key or meta.get("fit_sets_sha256") != fit_sets:
            continue
        if not artifacts.is_verified(target, "reuse"):  # logs what is wrong with it
            continue
        return Fusion.load(meta["layout"], target / ARTIFACT_FILE), meta
    return None


def date_pointer(config: PipelineConfig, ds: dt.date) -> Path:
    """`_models/fusion/by_ds/<ds>.json`: the fusion that fused run date `ds`, and the date it was fitted as of."""
    return models_dir(config) / "by_ds" / f"{ds.isoformat()}.json"


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


def fit_fusion(
    inputs: list[ModalityInput],
    fit_ok: dict[str, DataFrame],
    key: dict,
    ds: dt.date,
    block_dim: int,
    max_fit_items: int,
    fit_sets_sha256: dict[str, str],
) -> tuple[Fusion, dict]:
    """Fit every usable modality's projection on the driver from its ok vectors (`fit_ok`, as of `ds`)
    and the fit sets they were chosen by (`fit_set_of`); the artifact's description beside it."""
    projections, modalities, fit_sets, skipped = {}, {}, {}, {}
    for spec in inputs:
        if not spec.fittable:
            skipped[spec.modality] = f"{spec.ok_items} ok vectors (a fit needs 2)"
            log.warning("fuse: skipping %s: %s", spec.modality, skipped[spec.modality])
            continue
        started = time.monotonic()
        ids, _, matrix = fit_sample(fit_ok[spec.modality], spec.ok_items, max_fit_items)
        collected = time.monotonic()
        projection = fit_projection(matrix, block_dim)
        if projection.k == 0:
            skipped[spec.modality] = f"its {len(ids)} fit vectors do not vary"
            log.warning("fuse: skipping %s: %s", spec.modality, skipped[spec.modality])
            continue
        projections[spec.modality] = projection
        fit_sets[spec.modality] = fit_sets_sha256[spec.modality]
        modalities[spec.modality] = spec.key() | {
            "block_dim": projection.k,
            "fit_items": len(ids),
            "ok_items": spec.ok_items,
            "explained_variance": round(projection.explained_variance, 4),
            "fit_set_sha256": fit_sets[spec.modality],
        }
        log.info(
            "fuse: fitted %s on %d of %d ok vectors: %d -> %d dims, %.0f%% of the variance kept "
            "(%.1f s collecting, %.1f s fitting)",
            spec.modality, len(ids), spec.ok_items, spec.dim, projection.k, 100 * projection.explained_variance,
            collected - started, time.monotonic() - collected,
        )  # fmt: skip
    if not projections:
        raise ValueError(f"nothing to fuse: no modality has vectors to fit ({skipped or 'no features_* tables'})")
    layout = sorted(projections)
    fusion = Fusion(tuple(layout), projections)
    version = fusion_version(key, layout, fusion.block_dims, fit_sets)
    meta = {
        "fusion_version": version,
        "method": METHOD,
        "key": key,
        "layout": layout,
        "block_dims": fusion.block_dims,
        "modalities": modalities,
        "skipped": skipped,
        "max_fit_items": max_fit_items,
        "fit_sets_sha256": fit_sets_sha256,
        "fitted_ds": ds.isoformat(),
        "fitted_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    return fusion, meta


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
        ds, fit_ds, ", ".join(f"{s.modality} ({s.ok_items} ok, {s.extractor} {s.extractor_version})" for s in inputs),
    )  # fmt: skip

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
    report.extractors = {m: f"{meta['modalities'][m]['extractor']} {meta['modalities'][m]['extractor_version']}"
                         for m in fusion.layout}  # fmt: skip
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
    write_report(config, report)
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


def write_report(config: PipelineConfig, report: FuseReport) -> Path:
    folder = config.reports_dir / report.ds
    artifacts.write_json(folder / "fuse.json", asdict(report))
    how = {
        "reused": f"reused: fitted on {report.fitted_ds}",
        "fitted": "fitted on this run: no current fusion matched these modalities, extractors and block size",
        "refit": "refit on request",
    }[report.projections]
    lines = [
        f"# Fuse — run date {report.ds}",
        "",
        f"Fusion `{report.fusion_version}`, {how}. {report.items} items of {report.catalog_items} in the "
        f"catalog, vectors of {sum(report.block_dims)} floats. Took {report.seconds} s "
        f"({report.fit_seconds} s fitting, {report.write_seconds} s projecting and writing).",
        "",
        "| modality | extractor | block dims | fit items | variance kept | items with it |",
        "|---|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {m} | {report.extractors[m]} | {k} | {report.fit_items[m]} | "
        f"{100 * report.explained_variance[m]:.0f}% | {report.items_by_modality.get(m, 0)} |"
        for m, k in zip(report.layout, report.block_dims, strict=True)
    ]
    lines += ["", "## Items by number of modalities", "", "| modalities | items |", "|---:|---:|"]
    lines += [f"| {n} | {count} |" for n, count in report.items_by_modality_count.items()]
    lines += ["", "## Skipped modalities", ""]
    if report.skipped_modalities:
        lines += ["| modality | why |", "|---|---|"]
        lines += [f"| {m} | {why} |" for m, why in report.skipped_modalities.items()]
    else:
        lines.append("None.")
    artifacts.write_text(folder / "fuse.md", "\n".join(lines) + "\n")
    return folder / "fuse.md"


def log_report(report: FuseReport) -> None:
    log.info(
        "fuse: fusion %s (%s), layout %s, block dims %s: %d items (of %d in the catalog) in %.1f s",
        report.fusion_version, report.projections, report.layout, report.block_dims, report.items,
        report.catalog_items, report.seconds,
    )  # fmt: skip
    log.info("fuse: items per modality %s; items per number of modalities %s",
             report.items_by_modality, report.items_by_modality_count)  # fmt: skip
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
        type=int,
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
            spark, config, args.ds, refit=args.refit, block_dim=args.block_dim,
            max_fit_items=args.max_fit_items, modalities=modalities, every_days=args.every_days,
        )  # fmt: skip
    log_report(report)
    return report


def main(argv: list[str] | None = None) -> int:
    return job_main(__doc__, add_arguments, run_from_args, argv)


if __name__ == "__main__":
    raise SystemExit(main())
