"""What a fusion is fitted on, and the fit: the modalities with a feature table in the lake, their
`ok` vectors as of a date, the one extractor behind each (`ModalityVectors`), the deterministic fit
sample and its digest, and the projections fitted on the driver (`features.fusion` does the maths)."""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
from dataclasses import dataclass

import numpy as np
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from features.fusion import METHOD, Fusion, fit_projection
from jobs import lake
from jobs.config import PipelineConfig
from jobs.fusion_artifacts import fit_set_digest, fusion_version
from jobs.modality_inputs import MODALITY_INPUTS
from jobs.schemas import features_table

log = logging.getLogger("modalrank.fuse")

MODALITY_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class ModalityVectors:
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
    ok = lake.read_table(spark, config, features_table(modality)).where(
        (F.col("status") == "ok") & F.col("vector").isNotNull()
    )
    if modality in MODALITY_INPUTS:
        as_of = catalog.select("item_id", F.col(MODALITY_INPUTS[modality].hash_column).alias("content_hash"))
        ok = ok.join(as_of, ["item_id", "content_hash"], "left_semi")
    else:
        ok = ok.join(catalog.select("item_id"), "item_id", "left_semi")
    return ok.select(
        "item_id",
        F.coalesce("content_hash", F.lit("")).alias("content_hash"),
        "extractor",
        "extractor_version",
        "dim",
        "vector",
    )


def describe_modality(ok: DataFrame, modality: str) -> ModalityVectors:
    """The one extractor (name, version, dim) behind the modality's ok vectors, and how many there are.

    Vectors of two extractor versions in one table are not comparable (a re-extraction did not finish
    or a table was edited by hand): fusing them would be silently wrong, so it is an error.
    """
    groups = ok.groupBy("extractor", "extractor_version", "dim").count().collect()
    if not groups:
        return ModalityVectors(modality, None, None, None, 0)
    if len(groups) > 1:
        found = ", ".join(
            f"{g['extractor']} {g['extractor_version']} dim {g['dim']}: {g['count']}" for g in groups
        )
        raise ValueError(
            f"features_{modality} holds ok vectors of more than one extractor version or dim ({found}); "
            f"rerun extract for {modality} first"
        )
    group = groups[0]
    return ModalityVectors(modality, group["extractor"], group["extractor_version"], group["dim"], group["count"])


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


def fit_fusion(
    inputs: list[ModalityVectors],
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
            spec.modality,
            len(ids),
            spec.ok_items,
            spec.dim,
            projection.k,
            100 * projection.explained_variance,
            collected - started,
            time.monotonic() - collected,
        )
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
