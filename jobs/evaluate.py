"""Offline evaluation: every baseline and the ranker on three protocols, in one harness, in one run.

Protocols (`jobs.ranking.data`): per-user random 75/25, per-user chronological 80/20, and item
cold-start (20% of items held out with all their interactions; users rank only those). Models:
popularity, Spark MLlib ALS (implicit), EASE, item-kNN, unweighted content similarity and the hybrid
ranker on the warm protocols; random, genre-only, content and the ranker (with its modality
ablation: each modality alone, all, all minus one) on the cold protocol — the collaborative models
cannot score an item nobody interacted with.

The full evaluation retrains every model on every protocol (on ml-latest-small, minutes), so it runs on
training dates only (`--every-days`, as `train` uses it) and when asked (`--full`; `modalrank evaluate`
always asks). Any other date serves a model trained on an earlier date, and gets the cheap check of that
served model instead: the saved ranker and popularity, both fitted on the pairs up to the model's
training date, ranking what each user did after it (protocol `since_training`).

Writes, for the run date and dataset (a label checked by `jobs.arguments.DATASET` before any work), in
one replaceWhere commit each: `metrics`, `eval_truth` (the held-out pairs) and `eval_lists` (every
model's top-20 per user), so every number can be recomputed.
Plus `_reports/<ds>/evaluate_<dataset>.html` (tables and plots), `.md` and `.json`.

Run by the DAG through spark-submit, by `modalrank evaluate`, or by hand:
    spark-submit jobs/evaluate.py --ds 2026-11-25 --dataset demo [--every-days 7 [--full]]
"""

from __future__ import annotations

import argparse
import calendar
import datetime as dt
import json
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from pyspark.sql import SparkSession

from jobs import lake, lease
from jobs.arguments import DATASET, RANDOM_SEED, TRAIN_EVERY_DAYS, add_boolean_flag, dataset_label
from jobs.asof import end_of_day, training_date
from jobs.config import PipelineConfig, add_run_arguments, load_run_config
from jobs.ranker_inputs import RankingData, load_ranking_data
from jobs.ranking.baselines import (
    ContentScorer,
    FactorScorer,
    GenreScorer,
    PopularityScorer,
    RandomScorer,
)
from jobs.ranking.data import CHRONO, ITEM_COLD, PROTOCOLS, RANDOM, Split, make_split, since_training_split
from jobs.ranking.harness import KS, ModelResult, evaluate_model
from jobs.reports import Report, write_report
from jobs.schemas import EVAL_LISTS, EVAL_TRUTH, METRICS
from jobs.serving import ranker_folder
from jobs.spark import job_entry_point, spark_session

log = logging.getLogger("modalrank.evaluate")

SEED = 42
# The inner split the ranker learns from mirrors the protocol it is evaluated on.
INNER_HOLDOUT = {RANDOM: "random", CHRONO: "chrono", ITEM_COLD: "random"}
# Targets from the issue that commissioned the ranker: (protocol, description, check).
WARM_TARGETS = {RANDOM: 1.05, CHRONO: 1.15}


@dataclass
class EvaluateReport(Report):
    """`evaluate_<dataset>.json` (these fields), `.md` (templates/evaluate.md) and `.html` (the page of
    `jobs.ranking.report`) in the date's report folder."""

    template = "evaluate"
    formats = ("md", "html")
    sort_json_keys = False

    ds: str
    dataset: str
    # "full" (every protocol, every model) or "served-model check" (`check_served_model`).
    kind: str = "full"
    facts: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    targets: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    metrics: list = field(default_factory=list)  # this run's METRICS rows, `ds` as text
    # The evaluated data's size, by field for machines (the run report); `facts` shows it to people.
    users: int = 0
    items: int = 0
    seconds: float = 0.0

    @property
    def tables(self) -> dict[str, str]:
        """Per protocol, the padded Markdown table of its numbers (also printed to the terminal)."""
        from jobs.ranking.report import format_metrics_table

        if not self.metrics:
            return {}
        metrics = pd.DataFrame(self.metrics)
        return {protocol: format_metrics_table(metrics, protocol) for protocol in metrics.protocol.unique()}

    def context(self, fmt: str) -> dict:
        if fmt != "html":
            return super().context(fmt)
        from jobs.ranking.report import evaluation_page

        about = {
            "ds": self.ds,
            "dataset": self.dataset,
            "summary": self.facts,
            "timings": self.timings,
            "notes": self.notes,
            "targets": self.targets,
        }
        return evaluation_page(pd.DataFrame(self.metrics), about)


def fit_als(spark: SparkSession, split: Split, seed: int) -> FactorScorer:
    """Spark MLlib ALS with implicit preferences on the split's training pairs; factors come back as numpy."""
    from pyspark.ml.recommendation import ALS

    pairs = pd.DataFrame({"user": split.train.users, "item": split.train.items, "rating": 1.0})
    train = spark.createDataFrame(pairs, "user int, item int, rating float")
    als = ALS(
        rank=64,
        maxIter=15,
        regParam=0.05,
        alpha=10.0,
        implicitPrefs=True,
        seed=seed,
        userCol="user",
        itemCol="item",
        ratingCol="rating",
        coldStartStrategy="drop",
    )
    model = als.fit(train)
    users = np.zeros((split.train.n_users, model.rank), dtype=np.float32)
    items = np.zeros((split.train.n_items, model.rank), dtype=np.float32)
    for frame, target in ((model.userFactors.toPandas(), users), (model.itemFactors.toPandas(), items)):
        if len(frame):
            target[frame["id"].to_numpy()] = np.stack(frame["features"].to_numpy())
    return FactorScorer(users, items, name="als")


def evaluate_protocol(
    spark: SparkSession, loaded: RankingData, protocol: str, seed: int, ablation: bool, report: EvaluateReport
) -> tuple[Split, list[ModelResult], dict]:
    from jobs.ranking.ranker import RankerSettings, fit_variants

    split = make_split(protocol, loaded.data.interactions, seed)
    items = loaded.items
    log.info(
        "%s: %d training pairs, %d held out, %d test users, %d candidate items",
        protocol,
        len(split.train),
        len(split.test),
        len(split.test_users()),
        len(split.candidate_items),
    )
    timings: dict[str, float] = {}
    models = []

    def timed(name: str, fit):
        started = time.monotonic()
        model = fit()
        timings[f"{protocol} fit {name}"] = round(time.monotonic() - started, 1)
        return model

    settings = RankerSettings(inner_holdout=INNER_HOLDOUT[protocol], seed=seed)
    variants: dict[str, list[str] | None] = {"ranker": None}
    if protocol == ITEM_COLD and ablation and len(items.modalities) > 1:
        for modality in items.modalities:
            variants[f"ranker-only-{modality}"] = [modality]
            variants[f"ranker-without-{modality}"] = [m for m in items.modalities if m != modality]
    rankers = timed("ranker", lambda: fit_variants(split.train, items, settings, variants))
    ranker = rankers["ranker"]
    if protocol == ITEM_COLD:
        models += [RandomScorer(seed).fit(split.train, items), GenreScorer().fit(split.train, items)]
    else:
        models.append(PopularityScorer().fit(split.train, items))
        models.append(timed("als", lambda: fit_als(spark, split, seed)))
        # The ranker's serving base models were fit on this split's training pairs with the same
        # settings as the baselines: reuse them rather than fit EASE and item-kNN twice.
        ease, knn = ranker.base.ease, ranker.base.knn
        models += [ease, knn]
    models.append(ContentScorer().fit(split.train, items))
    models += list(rankers.values())
    results = [evaluate_model(model, split, KS) for model in models]
    log_epochs = {name: r.log.best_epoch for name, r in rankers.items()}
    timings[f"{protocol} ranker training (network only)"] = ranker.log.seconds
    report.notes += [f"{protocol}: {note}" for note in split.notes]
    report.notes.append(f"{protocol}: ranker best epochs {log_epochs}")
    return split, results, timings


def check_served_model(loaded: RankingData, config: PipelineConfig, ds: dt.date, report: EvaluateReport):
    """The ranker `ds` serves (trained on an earlier date) and popularity, both fitted on the pairs known at
    the end of the model's training date, ranking what each user did after it: a drop here says the served
    model went stale before its next training date. Seconds where the full evaluation takes minutes."""
    from jobs.ranking.candidates import fit_base_models
    from jobs.ranking.serialization import load_ranker

    started = time.monotonic()
    folder = ranker_folder(config, ds)  # verified against its manifest; fails when train has not run for ds
    card = json.loads((folder / "ranker.json").read_text())
    trained_ds = dt.date.fromisoformat(card["trained_ds"])
    cutoff = calendar.timegm(end_of_day(trained_ds).timetuple())
    split = since_training_split(loaded.data.interactions, cutoff)
    users = len(split.test_users())
    report.notes.append(
        f"served-model check of {card['version']} (trained on data up to {trained_ds}): {len(split.test)} pairs "
        f"since then, {users} users to rank them; the full evaluation runs on training dates"
    )
    if not users:
        report.notes.append(f"nothing happened after {trained_ds} that the model could be checked on")
        return split, [], {}
    ranker = load_ranker(folder, loaded.items, base=None)
    ranker.base = fit_base_models(split.train, loaded.items, ranker.settings, loaded.items.modalities)
    ranker.name = "ranker"
    models = [PopularityScorer().fit(split.train, loaded.items), ranker]
    results = [evaluate_model(model, split, KS) for model in models]
    return split, results, {"served-model check": round(time.monotonic() - started, 1)}


def metric_rows(ds: dt.date, dataset: str, protocol: str, results: list[ModelResult]) -> pd.DataFrame:
    rows = [
        {
            "ds": ds,
            "dataset": dataset,
            "protocol": protocol,
            "model": result.model,
            "metric": value.metric,
            "k": value.k,
            "value": float(value.value),
            "users": int(value.users),
        }
        for result in results
        for value in result.metrics
    ]
    return pd.DataFrame(rows, columns=["ds", "dataset", "protocol", "model", "metric", "k", "value", "users"])


def check_targets(metrics: pd.DataFrame, dataset: str) -> list[dict]:
    """The issue's targets, computed from this run's numbers (reported, never asserted)."""

    def value(protocol: str, model: str, metric: str, k: int) -> float | None:
        found = metrics[
            (metrics.protocol == protocol)
            & (metrics.model == model)
            & (metrics.metric == metric)
            & (metrics.k == k)
        ]
        return float(found.value.iloc[0]) if len(found) else None

    targets = []
    for protocol, factor in WARM_TARGETS.items():
        ranker, ease = value(protocol, "ranker", "ndcg", 10), value(protocol, "ease", "ndcg", 10)
        if ranker is not None and ease:
            targets.append(
                {
                    "protocol": protocol,
                    "description": f"ranker nDCG@10 / EASE nDCG@10 ≥ {factor}",
                    "value": round(ranker / ease, 3),
                    "target": factor,
                    "met": ranker / ease >= factor,
                }
            )
    ranker, random, genre = (value(ITEM_COLD, m, "recall", 20) for m in ("ranker", "random", "genre"))
    if ranker is not None and random:
        targets.append(
            {
                "protocol": ITEM_COLD,
                "description": "cold-item recall@20: ranker / random ≥ 3",
                "value": round(ranker / random, 2),
                "target": 3,
                "met": ranker / random >= 3,
            }
        )
    if ranker is not None and genre is not None:
        targets.append(
            {
                "protocol": ITEM_COLD,
                "description": "cold-item recall@20: ranker > genre-only",
                "value": f"{ranker:.4f} vs {genre:.4f}",
                "target": "above",
                "met": ranker > genre,
            }
        )
    singles = metrics[(metrics.protocol == ITEM_COLD) & metrics.model.str.startswith("ranker-only-")]
    singles = singles[(singles.metric == "recall") & (singles.k == 20)]
    if ranker is not None and len(singles):
        best = singles.loc[singles.value.idxmax()]
        targets.append(
            {
                "protocol": ITEM_COLD,
                "description": "all modalities together ≥ the best single modality (recall@20)",
                "value": f"{ranker:.4f} vs {best.value:.4f} ({best.model})",
                "target": "≥",
                "met": ranker >= best.value,
            }
        )
    ranker, popularity = value(RANDOM, "ranker", "ndcg", 10), value(RANDOM, "popularity", "ndcg", 10)
    if dataset == "demo" and ranker is not None and popularity:
        targets.append(
            {
                "protocol": RANDOM,
                "description": "demo: ranker recovers hidden tastes, nDCG@10 / popularity ≥ 2",
                "value": round(ranker / popularity, 2),
                "target": 2,
                "met": ranker / popularity >= 2,
            }
        )
    return targets


# The date's run lease: a second run of this date waits, then fails naming the holder.
@lease.holding("evaluate", lambda ds, **_: [lease.date_key(ds)])
def run_evaluate(
    spark: SparkSession,
    config: PipelineConfig,
    ds: dt.date,
    dataset: str,
    protocols: tuple[str, ...] = PROTOCOLS,
    seed: int = SEED,
    ablation: bool = True,
    every_days: int = 1,
    full: bool = False,
) -> EvaluateReport:
    # Before any work: the label is a column value and part of the report's file name.
    DATASET.check(dataset)
    started = time.monotonic()
    report = EvaluateReport(ds.isoformat(), dataset)
    loading = time.monotonic()
    loaded = load_ranking_data(spark, config, ds)
    report.facts = loaded.facts
    report.users, report.items = int(loaded.data.interactions.n_users), int(loaded.data.interactions.n_items)
    report.timings["load data"] = round(time.monotonic() - loading, 1)
    frames, truth_frames, list_frames = [], [], []
    if full or ds == training_date(ds, every_days):
        evaluated = []
        for protocol in protocols:
            split, results, timings = evaluate_protocol(spark, loaded, protocol, seed, ablation, report)
            report.timings.update(timings)
            evaluated.append((split, results))
    else:
        report.kind = "served-model check"
        split, results, timings = check_served_model(loaded, config, ds, report)
        report.timings.update(timings)
        evaluated = [(split, results)]
    data = loaded.data
    for split, results in evaluated:
        protocol = split.protocol
        frames.append(metric_rows(ds, dataset, protocol, results))
        users = split.test_users()
        held = split.test.subset(np.isin(split.test.users, users))
        truth_frames.append(
            pd.DataFrame(
                {"protocol": protocol, "user_id": data.user_ids[held.users], "item_id": data.item_ids[held.items]}
            )
        )
        for result in results:
            lists = result.lists
            list_frames.append(
                pd.DataFrame(
                    {
                        "protocol": protocol,
                        "model": result.model,
                        "user_id": data.user_ids[lists["user"].to_numpy()],
                        "item_id": data.item_ids[lists["item"].to_numpy()],
                        "rank": lists["rank"].astype("int32"),
                        "score": lists["score"],
                    }
                )
            )
    metrics = pd.concat(frames, ignore_index=True)
    writing = time.monotonic()
    # No lists only when the served-model check found nobody to rank: the date's rows are then replaced by none.
    lists = pd.concat(list_frames) if list_frames else pd.DataFrame()
    write_tables(spark, config, ds, dataset, metrics, pd.concat(truth_frames), lists)
    report.timings["write tables"] = round(time.monotonic() - writing, 1)
    report.targets = check_targets(metrics, dataset)
    report.seconds = round(time.monotonic() - started, 1)
    report.timings["total"] = report.seconds
    report.metrics = metrics.assign(ds=report.ds).to_dict(orient="records")
    write_report(config, report.ds, f"evaluate_{dataset}", report)
    return report


def write_tables(
    spark: SparkSession,
    config: PipelineConfig,
    ds: dt.date,
    dataset: str,
    metrics: pd.DataFrame,
    truth: pd.DataFrame,
    lists: pd.DataFrame,
) -> None:
    """Replace this run date's and dataset's rows of the three tables (one Delta commit each)."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import StructType

    rows = lake.rows_of(ds=ds, dataset=dataset)
    stamped = {"ds": F.lit(ds), "dataset": F.lit(dataset)}
    evaluated_at = {"evaluated_at": F.current_timestamp(), "model_version": F.lit(None).cast("string")}
    for spec, frame, extra in (
        (METRICS, metrics.drop(columns=["ds", "dataset"]), evaluated_at),
        (EVAL_TRUTH, truth, {}),
        (EVAL_LISTS, lists, {}),
    ):
        if len(frame):
            df = spark.createDataFrame(frame.reset_index(drop=True))
        else:  # nothing to infer column types from
            df = spark.createDataFrame(
                [], StructType([f for f in spec.schema if f.name not in (*stamped, *extra)])
            )
        df = df.withColumns(stamped | extra)
        lake.replace_where(spark, config, spec, df, rows)
        log.info("wrote %d rows to %s for ds=%s dataset=%s", len(frame), spec.name, ds, dataset)


def print_summary(report: EvaluateReport, config: PipelineConfig) -> None:
    print(f"\nEvaluation of {report.dataset} as of {report.ds} ({report.seconds} s)")
    for protocol, table in report.tables.items():
        print(f"\n{protocol}\n{table}")
    print("\nTargets:")
    for target in report.targets:
        print(
            f"  [{'met' if target['met'] else 'NOT met'}] {target['protocol']}: {target['description']}: {target['value']}"
        )
    print(f"\nreport: {config.reports_dir / report.ds / f'evaluate_{report.dataset}.html'}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser)
    parser.add_argument(
        "--dataset",
        required=True,
        type=dataset_label,
        help="label for the rows written, e.g. demo or ml-latest-small",
    )
    parser.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=list(PROTOCOLS))
    parser.add_argument("--seed", type=RANDOM_SEED, default=SEED, help="seed for the splits and the ranker")
    parser.add_argument("--no-ablation", dest="ablation", action="store_false", help="skip the modality ablation")
    parser.add_argument(
        "--every-days",
        type=TRAIN_EVERY_DAYS,
        default=1,
        help="the training cadence (as train's): other dates run the served-model check instead of the full "
        "evaluation (default: %(default)s, every date is a training date)",
    )
    add_boolean_flag(parser, "--full", help="the full evaluation even on a date that is not a training date")


def run_from_args(args: argparse.Namespace) -> EvaluateReport:
    config = load_run_config(args)
    with spark_session("modalrank-evaluate", config) as spark:
        report = run_evaluate(
            spark,
            config,
            args.ds,
            args.dataset,
            tuple(args.protocols),
            seed=args.seed,
            ablation=args.ablation,
            every_days=args.every_days,
            full=args.full,
        )
    print_summary(report, config)
    return report


main = job_entry_point(__doc__, add_arguments, run_from_args)


if __name__ == "__main__":
    raise SystemExit(main())
