"""Train the hybrid ranker on everything known up to the run date, and save a versioned artifact.

Reads what the lake knew by the end of the training date (`jobs.asof`): `interactions` (events up to
its end), the catalog as of then (genres) and `item_vectors` of that `fused_ds` (the fused content, fitted
as of that date by `jobs.fuse`), fits `jobs.ranking.ranker.HybridRanker`
with a chronological inner split (the nightly job predicts what users do next), and writes
`<artifacts>/_models/ranker/<version>/ranker.safetensors` + `ranker.json` + `manifest.json` (one artifact
folder of `jobs.artifacts`: reused only when it verifies). Training runs on the driver with
torch; the data is collected once as index arrays (see the README for how it moves to more machines).

Cadence: with `--every-days N` the network is trained only on a fixed grid of dates (ordinal days
divisible by N: for N = 7, Sundays), and every other date serves the model of the latest grid date on or
before it. The model a date gets therefore depends on the date alone, never on the order in which
dates ran, and never on interactions after that date: a backfill of any range, in any order, reuses or
trains exactly the same artifacts. Reuse is by version (settings, fusion, data up to the grid date):
an artifact already on disk is not trained again. (The serving base models — EASE, kNN, popularity —
are refit on data up to the run date itself by `jobs.publish`, so the lists still use the day's
interactions.)

Pointers: `_models/ranker/by_ds/<ds>.json` names the model for run date `ds` (what `jobs.publish`
serves, never another), and `_models/ranker/current.json` the model of the newest run date so far
(both paths, and the data loading train shares with evaluate and publish, are in `jobs.ranker_inputs`).

Leases (`jobs.lease`): a run holds the lease of `ds` and of its training date, so the nightly run and a
backfill of the same date, or of two dates of one training week, never interleave their writes.

Run by the DAG through spark-submit, by `modalrank train`, or by hand:
    spark-submit jobs/train.py --ds 2026-11-25 [--every-days 7]
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field

import numpy as np
from pyspark.sql import SparkSession

from jobs import artifacts, lease
from jobs.arguments import TRAIN_EVERY_DAYS
from jobs.asof import training_date
from jobs.config import PipelineConfig, add_run_arguments, load_run_config
from jobs.faults import crash_point
from jobs.ranker_inputs import current_pointer, date_pointer, load_ranking_data
from jobs.ranking.data import IndexedData
from jobs.reports import Report, write_report
from jobs.spark import job_entry_point, spark_session

log = logging.getLogger("modalrank.train")


@dataclass
class TrainReport(Report):
    """`train.json` (these fields) and `train.md` (templates/train.md) in the date's report folder."""

    template = "train"

    ds: str
    trained_ds: str = ""  # the grid date whose data the network saw (== ds when training daily)
    every_days: int = 1
    reused: bool = False  # the artifact for trained_ds existed: nothing was trained this run
    version: str = ""
    artifact: str = ""
    # The training data's size, by field for machines (the run report); `facts` shows it to people.
    training_pairs: int = 0  # unique (user, item) pairs
    training_users: int = 0
    training_items: int = 0
    facts: dict = field(default_factory=dict)
    best_epoch: int = 0
    epochs: list = field(default_factory=list)
    training_seconds: float = 0.0
    seconds: float = 0.0


def ranker_version(settings, fusion_version: str, ds: dt.date, data: IndexedData) -> str:
    """Same settings, fusion and data as of the same date: the same version (and the same weights)."""
    pairs = data.interactions
    fingerprint = hashlib.sha256()
    for array in (data.user_ids[pairs.users], data.item_ids[pairs.items], pairs.times):
        fingerprint.update(np.ascontiguousarray(array, dtype=np.int64).tobytes())
    payload = json.dumps({"settings": asdict(settings), "fusion": fusion_version, "ds": ds.isoformat()})
    return "ranker-" + hashlib.sha256(payload.encode() + fingerprint.digest()).hexdigest()[:12]


# The leases of `ds` and of its training date: two runs of one training week never build or point at the
# same ranker at once.
@lease.holding(
    "train",
    lambda ds, every_days, **_: [lease.date_key(ds), lease.training_key(training_date(ds, every_days))],
)
def run_train(
    spark: SparkSession, config: PipelineConfig, ds: dt.date, settings=None, every_days: int = 1
) -> TrainReport:
    """Train (or reuse) the model for `ds`'s training date and point `ds` at it."""
    from jobs.ranking.ranker import HybridRanker, RankerSettings
    from jobs.ranking.serialization import save_ranker

    started = time.monotonic()
    trained_ds = training_date(ds, every_days)
    settings = settings or RankerSettings(inner_holdout="chrono")
    loaded = load_ranking_data(spark, config, trained_ds)
    pairs = loaded.data.interactions
    report = TrainReport(
        ds.isoformat(),
        trained_ds.isoformat(),
        every_days,
        facts=loaded.facts,
        training_pairs=len(pairs),
        training_users=int(pairs.n_users),
        training_items=int(pairs.n_items),
    )
    report.version = ranker_version(settings, loaded.fusion_version, trained_ds, loaded.data)
    folder = config.models_dir / "ranker" / report.version
    report.artifact = str(folder)
    # Reuse only what verifies against its manifest: a partial or foreign folder is trained again.
    if artifacts.is_verified(folder, "reuse"):
        report.reused = True
        log.info(
            "ranker %s (data up to %s, every %d days) is already trained: serving it for %s",
            report.version,
            trained_ds,
            every_days,
            ds,
        )
    else:
        if trained_ds != ds:
            log.info("ds=%s trains the model of grid date %s (every %d days)", ds, trained_ds, every_days)
        ranker = HybridRanker(settings).fit(loaded.data.interactions, loaded.items)
        metadata = {
            "version": report.version,
            "trained_ds": trained_ds.isoformat(),
            "fusion_version": loaded.fusion_version,
            "data": loaded.facts,
        }
        save_ranker(ranker, folder, metadata, crash_prefix="train.ranker")
        report.best_epoch, report.epochs = ranker.log.best_epoch, ranker.log.epochs
        report.training_seconds = ranker.log.seconds
    crash_point("train.ranker_saved")
    pointer = {"version": report.version, "ds": ds.isoformat(), "trained_ds": trained_ds.isoformat()}
    artifacts.write_json(date_pointer(config, ds), pointer, indent=None)
    crash_point("train.date_pointer_written")
    # A backfill of older dates must not move `current` back to an older model; the comparison and the
    # write happen under the pointer's lock, since runs of other dates move it too.
    artifacts.update_pointer(
        current_pointer(config), pointer, replaces=lambda now: now is None or now.get("ds", "") <= ds.isoformat()
    )
    report.seconds = round(time.monotonic() - started, 1)
    write_report(config, report.ds, "train", report)
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser)
    parser.add_argument(
        "--every-days",
        type=TRAIN_EVERY_DAYS,
        default=1,
        help="train a new model only on dates whose ordinal is a multiple of this (7: Sundays); other dates "
        "reuse the latest such date's model (default: %(default)s, every date)",
    )


def run_from_args(args: argparse.Namespace) -> TrainReport:
    config = load_run_config(args)
    with spark_session("modalrank-train", config) as spark:
        report = run_train(spark, config, args.ds, every_days=args.every_days)
    log.info(
        "%s %s in %.1f s: %s",
        "reused" if report.reused else "trained",
        report.version,
        report.training_seconds,
        report.artifact,
    )
    return report


main = job_entry_point(__doc__, add_arguments, run_from_args)


if __name__ == "__main__":
    raise SystemExit(main())
