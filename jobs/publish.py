"""Publish: every user's top-K items for the run date into `recommendations`, behind a quality gate.

What analysts and services read is what this job writes, so nothing reaches the table unchecked:
1. Load the data as of the end of `ds` (`jobs.train.load_ranking_data`) and the ranker artifact that
   `train` chose for `ds` (`<artifacts>/_models/ranker/by_ds/<ds>.json`, or `--model-version`), then refit the serving base
   models once on the driver, as the README's ranker section says (they are a function of the lake
   as of the date, so they are refit where the ranker is used rather than stored with it).
2. Score in Spark: the base models and the item side go to `<artifacts>/_models/serving/<ds>/<run id>/`
   as safetensors + JSON (no pickle; one verified artifact folder of `jobs.artifacts`, this run's own); user indices are spread over partitions in fixed blocks of 256,
   and each Python worker loads the artifacts once, scores its blocks and emits their top K. No
   process ever holds a users × items score matrix for all users: a block is 256 rows. The run removes
   its own folder when it ends (`--keep-serving` keeps it for debugging); folders of killed runs are
   removed by a later publish (`clean_stale_serving`).
3. Gate: `check_lists` checks the materialised lists (row counts, duplicates, seen, unknown and
   unavailable items, finite scores, ranks and order, drift against the previous published date,
   catalog coverage). Any failed check writes nothing, records the checks in the report and raises
   `PublishGateError`.
4. Write: one Delta commit replaces exactly the `ds` partition, so a rerun of a date leaves the same rows.

Eligibility: users with at least one interaction up to the end of `ds`; items in the catalog as of
`ds` (`jobs.asof`: known by then, never an item only a later date ingested) whose `available_from` is
null or on or before `ds`, minus the user's own items. The item side is `item_vectors` of `fused_ds` =
`ds`, and the ranker is the one `train` chose for `ds`, never a newer one unless `--model-version` names it. Items nobody has interacted
with yet are eligible too: the ranker ranks them from content (its cold regime). A user with fewer
than K eligible items gets all of them. Items outside the ranker's candidate set score about −1e6
(after every candidate, in popularity order), which only matters for such short catalogs.

`generated_at` is the end of the run date (`ds` + 1 day, 00:00 UTC), not the wall clock, so a rerun of
a date writes identical rows; when the job actually ran is in the report (`started_at`) and the Delta
history.

Run by the DAG through spark-submit, by `modalrank publish`, or by hand:
    spark-submit jobs/publish.py --ds 2026-11-25 [--k 50] [--model-version ranker-…]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import json
import logging
import math
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from jobs import artifacts, lake, lease
from jobs.arguments import optional_model_version, positive_int, share
from jobs.asof import end_of_day
from jobs.config import PipelineConfig, add_run_arguments, configure_logging, load_run_config
from jobs.faults import crash_point
from jobs.progress import stage_progress
from jobs.schemas import INTERACTIONS, ITEM_VECTORS, RECOMMENDATIONS
from jobs.spark import FailWithoutRetry, job_main, spark_session, threads_per_task
from jobs.train import load_ranking_data

log = logging.getLogger("modalrank.publish")

DEFAULT_K = 50
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


class PublishGateError(FailWithoutRetry, ValueError):
    """The lists failed the quality gate; nothing was written. A finding about the data, not a crash:
    `modalrank` prints it as one line, and the job exits with EXIT_FAIL_WITHOUT_RETRY so the DAG fails
    the task without rescoring the same lists on each retry."""


@dataclass(frozen=True)
class Check:
    """One gate check: its name, whether it passed, a sentence a person can act on, and its numbers."""

    name: str
    passed: bool
    detail: str
    numbers: dict = field(default_factory=dict)


@dataclass
class PublishReport:
    ds: str
    k: int
    started_at: str = ""  # wall clock, UTC: the rows carry the run date's end instead (module docstring)
    model_version: str = ""
    ranker_artifact: str = ""
    trained_ds: str = ""
    users: int = 0
    rows: int = 0
    eligible_items: int = 0
    items_listed: int = 0
    cold_items_listed: int = 0  # items with no interaction up to ds that are in some list
    short_lists: int = 0  # users with fewer than K eligible items, who get all of them
    previous_ds: str | None = None
    checks: list = field(default_factory=list)
    drift: dict = field(default_factory=dict)
    passed: bool = False
    published: bool = False
    table_version: int | None = None
    notes: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    seconds: float = 0.0


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
    from jobs.train import date_pointer

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
                done, len(users), done / (time.monotonic() - started),
            )  # fmt: skip
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


def seen_pairs(spark: SparkSession, config: PipelineConfig, ds: dt.date) -> DataFrame:
    """(user_id, item_id) of every interaction up to the end of `ds`, read from the lake afresh, so the
    gate checks the lists against the table rather than against the models that made them."""
    return (
        lake.read_table(spark, config, INTERACTIONS)
        .where(F.col("event_time") < F.lit(end_of_day(ds)))
        .select("user_id", "item_id")
        .distinct()
    )


def previous_partition(
    spark: SparkSession, config: PipelineConfig, ds: dt.date
) -> tuple[dt.date | None, DataFrame | None]:
    """The latest published date before `ds` and its rows; (None, None) when there is none.

    Never creates the table: a gate failure on a new lake must leave no commit behind.
    """
    from delta.tables import DeltaTable

    path = config.table_path(RECOMMENDATIONS.name)
    if not DeltaTable.isDeltaTable(spark, path):
        return None, None
    table = spark.read.format("delta").load(path)
    latest = table.where(F.col("ds") < F.lit(ds)).agg(F.max("ds")).first()[0]
    if latest is None:
        return None, None
    return latest, table.where(F.col("ds") == F.lit(latest)).select("user_id", "rank", "item_id")


def table_version(spark: SparkSession, config: PipelineConfig) -> int | None:
    from delta.tables import DeltaTable

    path = config.table_path(RECOMMENDATIONS.name)
    if not DeltaTable.isDeltaTable(spark, path):
        return None
    return int(DeltaTable.forPath(spark, path).history(1).select("version").first()[0])


# ---------------------------------------------------------------------------------------------------
# The gate


def _examples(offending: DataFrame, count: int, describe, *order: str) -> str:
    """Up to three offending rows, as "; e.g. …"; queried only when there are any."""
    if not count:
        return ""
    return "; e.g. " + ", ".join(describe(row) for row in offending.orderBy(*order).limit(3).collect())


def _ordered_items(lists: DataFrame) -> DataFrame:
    """(user_id, items): each user's items in rank order."""
    ranked = F.sort_array(F.collect_list(F.struct("rank", "item_id")))
    return (
        lists.groupBy("user_id")
        .agg(ranked.alias("ranked"))
        .select("user_id", F.col("ranked.item_id").alias("items"))
    )


def _count(condition) -> F.Column:
    return F.count(F.when(condition, True))


def check_lists(
    lists: DataFrame,
    expected: DataFrame,
    seen: DataFrame,
    catalog: DataFrame,
    ds: dt.date,
    previous: DataFrame | None = None,
    max_changed_share: float = 1.0,
    min_coverage: float = 0.0,
) -> list[Check]:
    """The quality gate, as a few Spark aggregations over the lists; writes nothing.

    `lists`: (user_id, rank, item_id, score). `expected`: (user_id, rows) for every eligible user, rows
    = min(K, the user's eligible items). `seen`: (user_id, item_id) interactions up to `ds`. `catalog`:
    (item_id, available_from). `previous`: (user_id, rank, item_id) of the previous published date, or
    None. Drift fails only beyond `max_changed_share` (share of users listed on both dates whose list
    changed; 1.0: never) and below `min_coverage` (distinct listed items / items available on `ds`;
    0: never). Counts come from one pass per question; examples are queried only for a failed check.
    """
    lists = lists.select("user_id", "rank", "item_id", "score")
    seen = seen.select("user_id", "item_id").distinct().withColumn("seen", F.lit(True))
    items = catalog.select(
        "item_id", F.lit(True).alias("known"), (F.col("available_from") > F.lit(ds)).alias("early")
    )
    score_before = F.lag("score").over(Window.partitionBy("user_id").orderBy("rank", "item_id"))
    infinite = F.col("score").isin(float("inf"), float("-inf"))
    flagged = (
        lists.join(seen, ["user_id", "item_id"], "left")
        .join(items, "item_id", "left")
        .withColumn("rising", F.col("score") > score_before)
        .withColumn("not_finite", F.col("score").isNull() | F.isnan("score") | infinite)
    )
    rows = flagged.agg(
        _count(F.col("seen")).alias("seen"),
        _count(F.col("known").isNull()).alias("unknown"),
        _count(F.col("early")).alias("early"),
        _count(F.col("not_finite")).alias("not_finite"),
        F.countDistinct(F.when(F.col("rising"), F.col("user_id"))).alias("rising_users"),
        F.countDistinct("item_id").alias("items_listed"),
    ).first()

    per_user = lists.groupBy("user_id").agg(
        F.count("*").alias("listed"),
        F.min("rank").alias("first"),
        F.max("rank").alias("last"),
        F.countDistinct("rank").alias("ranks"),
        F.countDistinct("item_id").alias("distinct_items"),
    )
    users = per_user.join(expected.select("user_id", F.col("rows").alias("expected")), "user_id", "full_outer")
    wrong_count = F.coalesce("listed", F.lit(0)) != F.coalesce("expected", F.lit(0))
    gaps = (F.col("first") != 1) | (F.col("last") != F.col("listed")) | (F.col("ranks") != F.col("listed"))
    totals = users.agg(
        F.count("expected").alias("eligible_users"),
        _count(wrong_count).alias("wrong_count"),
        _count(gaps).alias("gaps"),
        F.coalesce(F.sum(F.col("listed") - F.col("distinct_items")), F.lit(0)).alias("repeats"),
    ).first()

    checks = [
        Check(
            "rows_per_user",
            totals["wrong_count"] == 0,
            f"{totals['wrong_count']} of {totals['eligible_users']} eligible users do not have min(K, their "
            "eligible items) rows"
            + _examples(
                users.where(wrong_count), totals["wrong_count"],
                lambda r: f"user {r.user_id}: {r.listed or 0} rows, expected {r.expected or 0}", "user_id",
            ),
            {"users_wrong": totals["wrong_count"], "eligible_users": totals["eligible_users"]},
        ),
        Check(
            "no_duplicates",
            totals["repeats"] == 0,
            f"{totals['repeats']} rows repeat a (user, item) pair listed before"
            + _examples(
                lists.groupBy("user_id", "item_id").count().where(F.col("count") > 1), totals["repeats"],
                lambda r: f"user {r.user_id} item {r.item_id} ×{r['count']}", "user_id", "item_id",
            ),
            {"repeated_rows": totals["repeats"]},
        ),
        Check(
            "no_seen_items",
            rows["seen"] == 0,
            f"{rows['seen']} rows list an item the user already interacted with"
            + _examples(
                flagged.where(F.col("seen")), rows["seen"], lambda r: f"user {r.user_id} item {r.item_id}",
                "user_id", "item_id",
            ),
            {"seen_rows": rows["seen"]},
        ),
        Check(
            "known_items",
            rows["unknown"] == 0,
            f"{rows['unknown']} rows list items that are not in the catalog"
            + _examples(
                flagged.where(F.col("known").isNull()).select("item_id").distinct(), rows["unknown"],
                lambda r: f"item {r.item_id}", "item_id",
            ),
            {"unknown_rows": rows["unknown"]},
        ),
        Check(
            "available_items",
            rows["early"] == 0,
            f"{rows['early']} rows list items whose available_from is after {ds}"
            + _examples(
                flagged.where(F.col("early")).select("item_id").distinct(), rows["early"],
                lambda r: f"item {r.item_id}", "item_id",
            ),
            {"unavailable_rows": rows["early"]},
        ),
        Check(
            "finite_scores",
            rows["not_finite"] == 0,
            f"{rows['not_finite']} rows have a null, NaN or infinite score",
            {"non_finite_rows": rows["not_finite"]},
        ),
        Check(
            "ranks_and_order",
            totals["gaps"] == 0 and rows["rising_users"] == 0,
            f"{totals['gaps']} users whose ranks are not exactly 1..n, {rows['rising_users']} whose scores rise "
            "with rank"
            + _examples(
                users.where(gaps), totals["gaps"],
                lambda r: f"user {r.user_id}: ranks {r.first}..{r['last']} for {r.listed} rows", "user_id",
            ),
            {"users_bad_ranks": totals["gaps"], "users_rising_scores": rows["rising_users"]},
        ),
    ]  # fmt: skip

    if previous is None:
        checks.append(Check("changed_share", True, "no earlier published date to compare with", {}))
    else:
        today, before = _ordered_items(lists).alias("t"), _ordered_items(previous).alias("p")
        both = F.col("p.items").isNotNull()
        kept = F.size(F.array_intersect("t.items", "p.items")) / F.greatest(F.size("t.items"), F.lit(1))
        drift = (
            today.join(before, "user_id", "left")
            .agg(
                _count(both).alias("compared"),
                _count(both & (F.col("t.items") != F.col("p.items"))).alias("changed"),
                F.avg(F.when(both, kept)).alias("kept"),
                _count(~both).alias("new_users"),
            )
            .first()
        )
        share = drift["changed"] / drift["compared"] if drift["compared"] else 0.0
        mean_kept = float(drift["kept"]) if drift["kept"] is not None else 0.0
        checks.append(
            Check(
                "changed_share",
                share <= max_changed_share,
                f"{drift['changed']} of {drift['compared']} users listed on both dates have a different list "
                f"({share:.1%}, limit {max_changed_share:.0%}); on average {mean_kept:.1%} of a list's items "
                f"stayed; {drift['new_users']} users are new",
                {
                    "changed_share": round(share, 4),
                    "users_compared": drift["compared"],
                    "users_changed": drift["changed"],
                    "mean_items_kept": round(mean_kept, 4),
                    "new_users": drift["new_users"],
                },
            )  # fmt: skip
        )

    available = catalog.agg(
        _count(F.col("available_from").isNull() | (F.col("available_from") <= F.lit(ds)))
    ).first()[0]
    coverage = rows["items_listed"] / available if available else 0.0
    checks.append(
        Check(
            "coverage",
            coverage >= min_coverage,
            f"{rows['items_listed']} of {available} available items are in some list ({coverage:.1%}, "
            f"minimum {min_coverage:.0%})",
            {"coverage": round(coverage, 4), "items_listed": rows["items_listed"], "items_available": available},
        )
    )
    return checks


# ---------------------------------------------------------------------------------------------------
# The job


@contextmanager
def _phase(report: PublishReport, name: str):
    started = time.monotonic()
    try:
        yield
    finally:
        report.timings[name] = round(time.monotonic() - started, 1)


@lease.holding("publish", lambda ds, **_: [lease.date_key(ds)])
def run_publish(
    spark: SparkSession,
    config: PipelineConfig,
    ds: dt.date,
    k: int = DEFAULT_K,
    model_version: str | None = None,
    max_changed_share: float = 1.0,
    min_coverage: float = 0.0,
    keep_serving: bool = False,
) -> PublishReport:
    """Score, gate and write the run date's lists (the module docstring has the steps).

    The report is written whether the gate passes or not; a failed gate raises `PublishGateError`
    after writing it, and the table is left exactly as it was.
    """
    from jobs.ranking.candidates import fit_base_models
    from jobs.ranking.serialization import load_ranker

    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    started = time.monotonic()
    report = PublishReport(ds.isoformat(), k, dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    folder = ranker_folder(config, ds, model_version)  # fails before any work when there is no ranker
    card = json.loads((folder / "ranker.json").read_text())  # verified by ranker_folder
    report.model_version = card.get("version", folder.name)
    report.ranker_artifact, report.trained_ds = str(folder), card.get("trained_ds", "")

    with _phase(report, "load data"):
        loaded = load_ranking_data(spark, config, ds)
        # No base models yet: loading first checks the ranker's modalities before the costly fit.
        ranker = load_ranker(folder, loaded.items, base=None)
        data = loaded.data
        # The catalog as of ds, never the newest (`jobs.asof`): eligibility and the gate both use it.
        catalog = loaded.catalog.select("item_id", "available_from")
        eligible_items = eligible_item_mask(catalog, ds, data.item_ids)
    if report.trained_ds and report.trained_ds > report.ds:
        report.notes.append(
            f"the ranker was trained on data up to {report.trained_ds}, after this run date: a backfill "
            "served with a later model (its network saw later interactions)"
        )
    if card.get("fusion_version") and card["fusion_version"] != loaded.fusion_version:
        report.notes.append(
            f"the ranker was trained on fusion {card['fusion_version']}, item_vectors hold {loaded.fusion_version}: "
            "retrain for content features comparable with training"
        )
    for note in report.notes:
        log.warning("publish: %s", note)

    with _phase(report, "fit base models"):
        base = fit_base_models(data.interactions, loaded.items, ranker.settings, loaded.items.modalities)
    n_users = data.interactions.n_users
    report.users, report.eligible_items = int(n_users), int(eligible_items.sum())
    seen_eligible = np.asarray(base.seen @ eligible_items.astype(np.float32)).ravel()
    expected_rows = np.minimum(k, report.eligible_items - seen_eligible).astype(np.int64)
    report.short_lists = int((expected_rows < k).sum())
    cold_items = set(data.item_ids[base.item_counts == 0].tolist())
    log.info(
        "publish ds=%s: ranker %s, %d users, %d of %d items available, K=%d (%d users have fewer eligible items)",
        ds, report.model_version, n_users, report.eligible_items, len(data.item_ids), k, report.short_lists,
    )  # fmt: skip

    serving = new_serving_folder(config, ds)
    clean_stale_serving(config, ds, serving)
    try:
        with _phase(report, "save serving artifact"):
            size = save_serving_artifact(serving, base, loaded.items, data.user_ids, data.item_ids, eligible_items)
            log.info("publish: serving artifact %s (%.1f MB)", serving, size / 1e6)
        del base, ranker  # the workers load their own copies; the driver needs the memory less than they do
        gc.collect()

        plan = ServingPlan(
            str(serving), str(folder), uuid.uuid4().hex, k, USERS_PER_BLOCK, threads_per_task(spark)
        )
        with _phase(report, "score"), stage_progress(spark, "publish", n_users):
            modalities = (
                lake.read_table(spark, config, ITEM_VECTORS)
                .where(F.col("fused_ds") == F.lit(ds))
                .select("item_id", "modalities")
            )
            rows = (
                score_lists(spark, plan, n_users)
                .join(F.broadcast(modalities), "item_id", "left")
                .select(
                    F.lit(ds).alias("ds"),
                    "user_id",
                    "rank",
                    "item_id",
                    "score",
                    F.lit(report.model_version).alias("model_version"),
                    # The end of the run date: a rerun writes identical rows (see the module docstring).
                    F.lit(ds + dt.timedelta(days=1)).cast("timestamp").alias("generated_at"),
                    F.coalesce("modalities", F.array().cast("array<string>")).alias("modalities"),
                )
            )
            # Scored once: the gate and the write see the same rows.
            rows = rows.localCheckpoint(eager=True)
        crash_point("publish.scored")
        with _phase(report, "gate"):
            report.rows = rows.count()
            listed = {r.item_id for r in rows.select("item_id").distinct().collect()}
            report.items_listed, report.cold_items_listed = len(listed), len(listed & cold_items)
            expected = spark.createDataFrame(pa.table({"user_id": data.user_ids, "rows": expected_rows}))
            previous_ds, previous = previous_partition(spark, config, ds)
            report.previous_ds = previous_ds.isoformat() if previous_ds else None
            checks = check_lists(
                rows,
                expected,
                seen_pairs(spark, config, ds),
                catalog,
                ds,
                previous,
                max_changed_share,
                min_coverage,
            )
        report.checks = [asdict(check) for check in checks]
        report.drift = {c.name: c.numbers for c in checks if c.name in ("changed_share", "coverage")}
        report.passed = all(check.passed for check in checks)
        for check in checks:
            (log.info if check.passed else log.error)(
                "gate %s: %s: %s", check.name, "ok" if check.passed else "FAILED", check.detail
            )
        if not report.passed:
            report.seconds = round(time.monotonic() - started, 1)
            path = write_report(config, report)
            failed = "; ".join(f"{c.name}: {c.detail}" for c in checks if not c.passed)
            raise PublishGateError(
                f"publish {ds} stopped by the quality gate, nothing written to {RECOMMENDATIONS.name}: {failed} "
                f"(report: {path})"
            )

        crash_point("publish.gated")
        with _phase(report, "write"):
            lake.replace_where(spark, config, RECOMMENDATIONS, rows, lake.rows_of(ds=ds))
        crash_point("publish.committed")
        report.published = True
        report.table_version = table_version(spark, config)
        log.info(
            "publish: wrote %d rows for %d users to %s (version %s)",
            report.rows,
            n_users,
            RECOMMENDATIONS.name,
            report.table_version,
        )
    finally:
        if not keep_serving:  # only this run's folder: another run of any date may be scoring from its own
            shutil.rmtree(serving, ignore_errors=True)
            with contextlib.suppress(OSError):
                serving.parent.rmdir()  # the date's folder, when no other run of it left one
    report.seconds = round(time.monotonic() - started, 1)
    write_report(config, report)
    return report


def write_report(config: PipelineConfig, report: PublishReport) -> Path:
    """`publish.json` and `publish.md` in the date's report folder; written on success and on a gate failure."""
    folder = config.reports_dir / report.ds
    artifacts.write_json(folder / "publish.json", asdict(report))
    outcome = (
        f"Published {report.rows} rows (table version {report.table_version})."
        if report.published
        else "**Nothing published: the quality gate failed.**"
    )
    lines = [
        f"# Publish — run date {report.ds}",
        "",
        f"{outcome} Ranker `{report.model_version}` (trained on data up to {report.trained_ds}), K = {report.k}. "
        f"Started {report.started_at}, took {report.seconds} s.",
        "",
        "| fact | value |",
        "|---|---|",
        f"| users (with an interaction up to {report.ds}) | {report.users} |",
        f"| rows | {report.rows} |",
        f"| items available on {report.ds} | {report.eligible_items} |",
        f"| distinct items listed | {report.items_listed} |",
        f"| of which cold (no interaction yet) | {report.cold_items_listed} |",
        f"| users with fewer than K eligible items | {report.short_lists} |",
        f"| previous published date | {report.previous_ds or 'none'} |",
        "",
        "## Gate",
        "",
        "| check | passed | detail |",
        "|---|---|---|",
        *(f"| {c['name']} | {'yes' if c['passed'] else 'NO'} | {c['detail']} |" for c in report.checks),
        "",
        "## Seconds per phase",
        "",
        "| phase | seconds |",
        "|---|---:|",
        *(f"| {name} | {seconds} |" for name, seconds in report.timings.items()),
    ]
    if report.notes:
        lines += ["", "## Notes", "", *(f"- {note}" for note in report.notes)]
    artifacts.write_text(folder / "publish.md", "\n".join(lines) + "\n")
    return folder / "publish.md"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser)
    parser.add_argument(
        "--k", type=positive_int, default=DEFAULT_K, help="list length per user (default: %(default)s)"
    )
    # An empty value (Airflow passes every flag) means the current model.
    parser.add_argument(
        "--model-version",
        type=optional_model_version,
        help="ranker version to serve (default: the one train chose for --ds)",
    )
    parser.add_argument(
        "--max-changed-share",
        type=share,
        default=1.0,
        help="fail the gate when more than this share of users' lists changed since the previous date (default: never)",
    )
    parser.add_argument(
        "--min-coverage",
        type=share,
        default=0.0,
        help="fail the gate when fewer than this share of available items is in any list (default: never)",
    )
    parser.add_argument(
        "--keep-serving",
        action="store_true",
        help="keep this run's _models/serving/<ds>/<run id>/ after the run (until the next publish of <ds>)",
    )


def run_from_args(args: argparse.Namespace) -> PublishReport:
    config = load_run_config(args)
    with spark_session("modalrank-publish", config) as spark:
        report = run_publish(
            spark, config, args.ds, k=args.k, model_version=args.model_version,
            max_changed_share=args.max_changed_share, min_coverage=args.min_coverage, keep_serving=args.keep_serving,
        )  # fmt: skip
    log.info(
        "published %d rows for %d users (K=%d, %s) in %.1f s: %s",
        report.rows, report.users, report.k, report.model_version, report.seconds,
        config.reports_dir / report.ds / "publish.md",
    )  # fmt: skip
    return report


def main(argv: list[str] | None = None) -> int:
    return job_main(__doc__, add_arguments, run_from_args, argv)


if __name__ == "__main__":
    raise SystemExit(main())
