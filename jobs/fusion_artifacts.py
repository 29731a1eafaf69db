"""Fuse's saved projections: what identifies one (the digest of its fit sets, its `fusion_version`),
where it lives (`<artifacts>/_models/fusion/<fusion_version>/`, the `current.json` pointer and the
per-date `by_ds/<ds>.json`), how it is saved whole, and how a run finds a saved one it may reuse.
Plain files through `jobs.artifacts`, no Spark."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

import numpy as np

from features.fusion import Fusion
from jobs import artifacts
from jobs.artifacts import build_artifact
from jobs.config import PipelineConfig
from jobs.faults import crash_point

ARTIFACT_FILE = "projections.safetensors"
META_FILE = "fusion.json"
POINTER_FILE = "current.json"


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
