"""Serving the ranker: which saved model a date serves, the artifact Spark's workers load, and scoring.

Publish's machinery for turning a trained ranker into every user's top K, kept apart from the job
(`jobs.publish`, which reads the lake, gates and writes) and from the gate (`jobs.publish_gate`):
- the ranker a date serves (`ranker_folder`: the one `train` chose for the date, or a named version)
  and the items it may recommend (`eligible_item_mask`);
- the serving artifact: the base models, the item side and the id maps, as safetensors + JSON in one
  verified artifact folder per publish run (`_models/serving/<ds>/<run id>/`), and the removal of
  folders that killed runs left behind (`clean_stale_serving`);
- the worker side: each Python worker loads a run's artifact once (`_worker_serving`, a cache at
  module level: Spark ships `score_partition`'s closure to the executors, which import this module
  and keep its cache for the life of the worker process) and scores fixed blocks of users;
- the driver side: `score_lists`, the lists as a Spark DataFrame.

Never writes a table, never reads one: the job hands in what it read and writes what comes out.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import math
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs import artifacts, lease
from jobs.config import PipelineConfig, configure_logging
from jobs.ranker_inputs import date_pointer

# Publish's logger: these lines belong to the publish run that serves (workers' lines included).
log = logging.getLogger("modalrank.publish")

# Users scored at once: bounds the dense block × items matrices the ranker builds per block (at most
# 512 users), and small enough that a few hundred users still spread over every core.
USERS_PER_BLOCK = 256
# Blocks per Spark task at most: a task's fixed cost is small (models load once per worker), so
# many users simply mean more tasks.
BLOCKS_PER_TASK = 16
# The worker's output: one row per (user, rank).
LIST_SCHEMA = "user_id long, rank int, item_id long, score double"
# Serving folders of other dates whose lease is free are removed once they are this old (see
# `clean_stale_serving`): a dead run's leftovers, or a folder kept with --keep-serving a while ago.
STALE_SERVING_SECONDS = 6 * 3600


@dataclass(frozen=True)
class ServingPlan:
    """What a Python worker needs to score users: small enough to travel in the task's closure."""

    folder: str  # the serving artifact folder (base models, item side, ids)
    ranker_folder: str
    token: str  # new on every run: workers never reuse another run's models, even for the same ds
    k: int
    users_per_block: int
    threads: int


# ---------------------------------------------------------------------------------------------------
# The ranker artifact and the serving artifact


def ranker_folder(config: PipelineConfig, ds: dt.date, model_version: str | None = None) -> Path:
    """The saved ranker to serve on `ds`: `model_version` if given, else the one `train` chose for `ds`
    (`_models/ranker/by_ds/<ds>.json`). Never the newest model instead: it may have seen data after `ds`."""
    root = config.models_dir / "ranker"
    if model_version is None:
        pointer = date_pointer(config, ds)
        named = artifacts.read_json(pointer)
        if named is None:
            raise FileNotFoundError(
                f"no ranker chosen for {ds} in {root} (no by_ds/{ds}.json): run train first, for {ds} (a later "
                "model may have seen data after it)"
            )
        model_version = named["version"]
    folder = root / model_version
    if not folder.is_dir():
        raise FileNotFoundError(
            f"ranker {model_version} is not saved in {root}: run train first, or name a saved --model-version"
        )
    # Never serve a partial or foreign ranker: train for the date again, which rebuilds it.
    return artifacts.require_verified(folder, remedy=f"rerun train for {ds}")


def save_serving_artifact(
    folder: Path, base, items, user_ids: np.ndarray, item_ids: np.ndarray, eligible_items: np.ndarray
) -> int:
    """Base models, item side and the id maps as one artifact folder (`jobs.artifacts`); returns the bytes
    written."""
    from safetensors.numpy import save_file

    from jobs.ranking.serialization import save_base_models, save_item_side

    def write(temporary: Path) -> None:
        save_base_models(base, temporary / "base.safetensors")
        save_item_side(items, temporary / "items.safetensors")
        ids = {
            "user_ids": np.ascontiguousarray(user_ids, dtype=np.int64),
            "item_ids": np.ascontiguousarray(item_ids, dtype=np.int64),
            "eligible_items": np.ascontiguousarray(eligible_items, dtype=bool),
        }
        save_file(ids, str(temporary / "ids.safetensors"))

    artifacts.build_artifact(folder, write, {"kind": "serving"}, crash_prefix="publish.serving")
    return sum(path.stat().st_size for path in folder.iterdir())


def serving_root(config: PipelineConfig) -> Path:
    """`_models/serving/`: one folder per run date, one per publish run inside it."""
    return config.models_dir / "serving"


def new_serving_folder(config: PipelineConfig, ds: dt.date) -> Path:
    """`_models/serving/<ds>/<run id>/`: this run's own, so no other run ever loads or removes it."""
    run_id = f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    return serving_root(config) / ds.isoformat() / run_id


def clean_stale_serving(config: PipelineConfig, ds: dt.date, own: Path) -> int:
    """Remove serving folders of publish runs that died (killed runs never reach their `finally`).

    A publish holds its date's lease for its whole life, so under that lease every other folder of `ds`
    belongs to a dead run (or was kept with `--keep-serving`, until this next publish of the date). Other
    dates' folders go only when that date's lease is free at the moment and they are older than
    `STALE_SERVING_SECONDS`. Returns the number of folders removed."""
    root, removed = serving_root(config), 0
    if not root.is_dir():
        return 0
    for date_folder in sorted(p for p in root.iterdir() if p.is_dir()):
        try:
            folder_ds = dt.date.fromisoformat(date_folder.name)
        except ValueError:
            continue  # not a run date: nothing this job made
        if folder_ds == ds:
            stale = [p for p in date_folder.iterdir() if p != own]
        elif lease.is_free(config, lease.date_key(folder_ds)):
            cutoff = time.time() - STALE_SERVING_SECONDS
            stale = [p for p in date_folder.iterdir() if p.lstat().st_mtime < cutoff]
        else:
            continue
        for path in stale:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed += 1
        if folder_ds != ds:
            with contextlib.suppress(OSError):
                date_folder.rmdir()  # only when empty
    if removed:
        log.info("publish: removed %d serving folders left by runs that died", removed)
    return removed


def eligible_item_mask(catalog: DataFrame, ds: dt.date, item_ids: np.ndarray) -> np.ndarray:
    """Which of `item_ids` (the ranker's item index) may be recommended on `ds`: in `catalog`, the
    catalog as of `ds` (so first seen by then), and available by then."""
    available = (
        catalog.select(
            "item_id", (F.col("available_from").isNull() | (F.col("available_from") <= F.lit(ds))).alias("ok")
        )
        .toArrow()
        .to_pandas()
    )
    mask = np.zeros(len(item_ids), dtype=bool)
    ids = available.loc[available["ok"], "item_id"].to_numpy(dtype=np.int64)
    position = np.searchsorted(item_ids, ids)
    found = (position < len(item_ids)) & (item_ids[np.minimum(position, len(item_ids) - 1)] == ids)
    mask[position[found]] = True
    return mask


# ---------------------------------------------------------------------------------------------------
# Worker side: runs in Spark's Python workers


@dataclass
class Served:
    """A worker's loaded models: the ranker (with its base models and item side) and the id maps."""

    ranker: object
    user_ids: np.ndarray
    item_ids: np.ndarray
    eligible_items: np.ndarray


_worker_served: dict[str, Served] = {}


def _worker_serving(plan: ServingPlan) -> Served:
    """The run's models, loaded once per Python worker process and reused by every task of the run."""
    import torch
    from safetensors.numpy import load_file

    from jobs.ranking.serialization import load_base_models, load_item_side, load_ranker

    if torch.get_num_threads() != plan.threads:
        torch.set_num_threads(plan.threads)
    if plan.token not in _worker_served:
        _worker_served.clear()  # an earlier run's models: free them before loading this run's
        started = time.monotonic()
        folder = artifacts.require_verified(Path(plan.folder))  # this run's own artifact, whole
        items = load_item_side(folder / "items.safetensors")
        base = load_base_models(folder / "base.safetensors")
        ids = load_file(str(folder / "ids.safetensors"))
        ranker = load_ranker(Path(plan.ranker_folder), items, base)
        _worker_served[plan.token] = Served(ranker, ids["user_ids"], ids["item_ids"], ids["eligible_items"])
        log.info("publish worker: loaded the ranker and base models in %.1f s", time.monotonic() - started)
    return _worker_served[plan.token]


def score_partition(plan: ServingPlan):
    """The mapInPandas function: user indices in, each user's top-K rows out."""

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        configure_logging()  # workers are separate processes: their logs reach stderr only if asked
        served = _worker_serving(plan)
        users = [batch["user_index"].to_numpy(dtype=np.int64) for batch in batches]
        users = np.sort(np.concatenate(users)) if users else np.empty(0, dtype=np.int64)
        # Blocks are fixed ranges of user indices (see score_lists), whichever task gets them.
        blocks = np.split(users, np.flatnonzero(np.diff(users // plan.users_per_block)) + 1)
        started, done = time.monotonic(), 0
        for block in (block for block in blocks if len(block)):
            lists = served.ranker.top_k(block, served.eligible_items, plan.k)
            done += len(block)
            log.info(
                "publish worker: %d/%d users of this task scored (%.1f users/s)",
                done,
                len(users),
                done / (time.monotonic() - started),
            )
            yield pd.DataFrame(
                {
                    "user_id": served.user_ids[block[lists.rows]],
                    "rank": lists.ranks,
                    "item_id": served.item_ids[lists.items],
                    "score": lists.scores.astype(float),
                }
            )

    return run


# ---------------------------------------------------------------------------------------------------
# Driver side


def score_lists(spark: SparkSession, plan: ServingPlan, n_users: int) -> DataFrame:
    """Every user's top-K as (user_id, rank, item_id, score), scored in Spark's Python workers.

    The user indices are cut into fixed blocks (block b: indices b·B … b·B + B − 1) and whole blocks
    go to tasks. Which users the network scores together therefore never depends on the number of
    tasks or cores, so a rerun on another cluster size gives the same floats, not merely close ones.
    """
    users = user_blocks(spark, n_users, plan.users_per_block)
    return users.mapInPandas(score_partition(plan), LIST_SCHEMA)


def user_blocks(spark: SparkSession, n_users: int, size: int) -> DataFrame:
    """(user_index) 0 … n_users − 1, partitioned so that every block of `size` sits in one partition."""
    n_blocks = math.ceil(n_users / size)
    tasks = max(spark.sparkContext.defaultParallelism, math.ceil(n_blocks / BLOCKS_PER_TASK))
    blocks = spark.range(0, n_blocks, numPartitions=max(1, min(n_blocks, tasks)))
    last = F.least((F.col("id") + 1) * size, F.lit(n_users)) - 1
    return blocks.select(F.explode(F.sequence(F.col("id") * size, last)).alias("user_index"))
