"""Backfill: the nightly pipeline for every date in a range, oldest first, in one Spark session.

For data engineers who run jobs without a scheduler. With one, `airflow backfill create --dag-id
modalrank_nightly --from-date A --to-date B` runs the same jobs with the same arguments. Each date runs
the DAG's stages in the DAG's order, as `jobs.stages` declares them for both:

    ingest → extract (every built-in modality, then each configured import) → fuse → train → evaluate
    → publish → run report

Every stage is idempotent for its date and reads only what the lake knew by the end of it (`jobs.asof`:
the catalog as of the date, events up to its end, fusion and ranker of its training date), so a
backfill of any range gives each date the partition its own nightly run would have written, and
rerunning the range, one failed date, or an older date on a lake that ran newer ones is safe. (An
older date ingested after newer ones adds what the lake knew then; newer dates whose training date it
precedes use that knowledge only when they run again.) A failed date stops the backfill — later dates build
on its ingest — and the error names the date to resume from; that date's run report is still written.

Without source arguments, `ingest` is skipped: the lake already holds the data (a rerun of later stages).

    modalrank backfill --start 2026-11-01 --end 2026-11-25 --catalog data/demo/catalog.csv \\
        --interactions data/demo/interactions.csv [--skip evaluate]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import logging
import time
from dataclasses import dataclass, field

from pyspark.sql import SparkSession

from jobs import arguments, lease
from jobs import stages as registry  # a BackfillPlan has a field named `stages`
from jobs.arguments import dataset_label
from jobs.config import PipelineConfig, add_lake_arguments, load_run_config
from jobs.ingest import IngestRequest, request_from_args

log = logging.getLogger("modalrank.backfill")

STAGES = registry.STAGE_NAMES


@dataclass(frozen=True)
class BackfillPlan:
    start: dt.date
    end: dt.date
    sources: IngestRequest | None  # its ds is replaced per date; None: skip ingest
    stages: tuple[str, ...] = STAGES
    modalities: tuple[str, ...] = registry.BUILT_IN_MODALITIES
    force_extract: bool = False
    train_every_days: int = 7
    dataset: str = "demo"
    k: int = 50
    full_evaluation: bool = False  # the full evaluation on every date, not only on training dates

    def __post_init__(self) -> None:
        if self.end < self.start:
            raise ValueError(f"--end {self.end} is before --start {self.start}")
        unknown = set(self.stages) - set(STAGES)
        if unknown:
            raise ValueError(f"unknown stages {sorted(unknown)}; stages are {', '.join(STAGES)}")

    def dates(self) -> list[dt.date]:
        return [self.start + dt.timedelta(days=n) for n in range((self.end - self.start).days + 1)]

    def run_values(self, ds: dt.date) -> dict[str, object]:
        """The run values the stages' arguments name (`jobs.stages.Argument.value`), for one date."""
        return {
            "ds": ds,
            "sources": None if self.sources is None else dataclasses.replace(self.sources, ds=ds),
            "force_extract": self.force_extract,
            "train_every_days": self.train_every_days,
            "dataset": self.dataset,
            "k": self.k,
            "full_evaluation": self.full_evaluation,
        }


@dataclass
class DateResult:
    ds: str
    seconds: dict = field(default_factory=dict)  # per stage run
    published_rows: int | None = None
    model_version: str = ""


class BackfillError(RuntimeError):
    """A date failed; the dates before it are complete."""


def run_date(spark: SparkSession, config: PipelineConfig, plan: BackfillPlan, ds: dt.date) -> DateResult:
    """Every stage of the plan for one date, in the DAG's order (`jobs.stages`)."""
    result = DateResult(ds.isoformat())
    values = plan.run_values(ds)

    def run_stage(stage: registry.Stage) -> None:
        for job in stage.jobs:
            if job.needs and values[job.needs] is None:
                continue
            for item in job.items(config.imported_vectors, plan.modalities):
                # Timed and logged by stage; a fanned-out job's items by their DAG task ids (extract_text).
                name = job.task_id(item) if job.fan_out else stage.name
                started = time.monotonic()
                outcome = job.run(spark, config, {**values, **item})
                result.seconds[name] = round(time.monotonic() - started, 1)
                log.info("backfill %s: %s done in %.1f s", ds, name, result.seconds[name])
                if stage.name == "train":
                    result.model_version = outcome.version
                elif stage.name == "publish":
                    result.published_rows = outcome.rows

    planned = [stage for stage in registry.STAGES if stage.name in plan.stages]
    # The date's lease for all its stages (each stage takes its own leases too: `lease.holding`; the date's
    # is then held already): a scheduler's run of the same date waits for this one, and the other way round.
    with lease.lease(config, lease.date_key(ds), "backfill"):
        try:
            for stage in planned:
                if not stage.teardown:
                    run_stage(stage)
        finally:
            # Like the DAG's teardown: the date's report is written whether its stages passed or not.
            for stage in planned:
                if stage.teardown:
                    run_stage(stage)
        return result


def run_backfill(spark: SparkSession, config: PipelineConfig, plan: BackfillPlan) -> list[DateResult]:
    """Every date of the plan, oldest first; stops at the first failed date (see the module docstring)."""
    dates = plan.dates()
    started, results = time.monotonic(), []
    log.info("backfill %s … %s: %d dates, stages %s", plan.start, plan.end, len(dates), ", ".join(plan.stages))
    for number, ds in enumerate(dates, start=1):
        try:
            results.append(run_date(spark, config, plan, ds))
        except Exception as error:
            raise BackfillError(
                f"backfill stopped at {ds} ({number}/{len(dates)}): {error}. Dates before it are complete; "
                f"resume with --start {ds}"
            ) from error
        elapsed = time.monotonic() - started
        log.info(
            "backfill %d/%d dates done (%s, %.0f s); about %.0f s to go",
            number,
            len(dates),
            ds,
            elapsed,
            elapsed / number * (len(dates) - number),
        )
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from jobs.extract import add_force_argument
    from jobs.ingest import add_source_arguments
    from jobs.modality_inputs import MODALITY_INPUTS
    from jobs.publish import DEFAULT_K

    add_lake_arguments(parser)
    parser.add_argument("--start", required=True, type=arguments.run_date, help="first run date, YYYY-MM-DD")
    parser.add_argument("--end", required=True, type=arguments.run_date, help="last run date (inclusive)")
    add_source_arguments(parser)
    parser.add_argument("--skip", nargs="+", default=[], choices=STAGES, help="stages not to run")
    parser.add_argument(
        "--modalities",
        nargs="+",
        default=list(MODALITY_INPUTS),
        choices=list(MODALITY_INPUTS),
        help="built-in modalities to extract (default: all)",
    )
    add_force_argument(parser)
    parser.add_argument(
        "--train-every-days",
        type=arguments.TRAIN_EVERY_DAYS,
        default=7,
        help="train cadence (default: %(default)s)",
    )
    parser.add_argument(
        "--dataset",
        default="demo",
        type=dataset_label,
        help="label of the evaluation's rows (default: %(default)s)",
    )
    arguments.add_boolean_flag(
        parser,
        "--full-evaluation",
        help="the full evaluation on every date (default: on training dates; the others check the served model)",
    )
    parser.add_argument(
        "--k", type=arguments.LIST_LENGTH, default=DEFAULT_K, help="published list length (default: %(default)s)"
    )


def plan_from_args(args: argparse.Namespace) -> BackfillPlan:
    has_sources = bool(args.movielens or args.catalog or args.interactions)
    sources = request_from_args(args, ds=args.start) if has_sources else None
    return BackfillPlan(
        args.start,
        args.end,
        sources,
        tuple(s for s in STAGES if s not in args.skip),
        tuple(args.modalities),
        args.force,
        args.train_every_days,
        args.dataset,
        args.k,
        args.full_evaluation,
    )


def run_from_args(args: argparse.Namespace) -> list[DateResult]:
    from jobs.spark import spark_session

    config = load_run_config(args)
    plan = plan_from_args(args)
    if plan.sources is None:
        log.info("backfill: no sources given, so no ingest: the lake's tables are used as they are")
    with spark_session("modalrank-backfill", config) as spark:
        return run_backfill(spark, config, plan)
