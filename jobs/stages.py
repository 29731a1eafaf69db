"""The pipeline's stages, declared once: the nightly DAG, the backfill runner and the `modalrank` CLI read them.

A `Stage` is what a person names (`modalrank backfill --skip evaluate`, `modalrank fuse`); it runs one or
more `Job`s, each a file `jobs/<module>.py` that spark-submit runs with flags, and a function in it that
the backfill calls in its own Spark session with keywords. Each `Argument` says both at once: which run
value a job takes, as which flag and as which keyword. The run values are the DAG's Params (the backfill
has a flag or a plan field for each it passes), the run date `ds`, and a fanned-out item's fields.

The order of `STAGES` is the order of a night: in the DAG each stage's tasks start when every task of the
stage before is done (the jobs of one stage, and the items a job fans out to, run side by side); the
backfill runs them one after another, the teardown stage last whatever happened.

Adding a stage is one entry in `STAGES`; a new run value also needs its DAG Param and backfill flag.
The tables and artifacts a stage reads and writes are checked by tests/test_stages.py (every input is
written by an earlier stage or comes from outside) and are what each DAG task reports to OpenLineage
(`lineage_tables`); they do not wire anything.

This module imports neither Spark nor Airflow: Airflow imports it whenever it parses the DAG file, and a
job's module is imported only when the backfill calls it.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from typing import Any

# The modalities that `jobs.extract` extracts itself (its MODALITY_INPUTS; a test checks they agree).
BUILT_IN_MODALITIES = ("text", "image", "audio", "video")

# How a job fans out: one task (one backfill call) per built-in modality, or per configured vector file.
PER_MODALITY = "modality"
PER_IMPORTED_VECTORS = "imported_vectors"

# Inputs that come from outside the lake.
SOURCES = ("source files", "vector files")


@dataclass(frozen=True)
class Argument:
    """One run value a job takes: as a flag under spark-submit, as a keyword of its function in a backfill."""

    flag: str | None  # the job's flag; None: the DAG does not pass it
    value: str  # the run value: a DAG Param, `ds`, a backfill value (`sources`) or a fanned-out item's field
    keyword: str | None = None  # the job function's keyword; None: the backfill does not pass it
    template: str | None = None  # the DAG's value when it is not the Param itself, `{{ params.<value> }}`

    def dag_value(self, item: dict[str, str]) -> str:
        """What the DAG passes after the flag: the fanned-out item's own value, or a Jinja template."""
        if self.value in item:
            return item[self.value]
        return self.template or f"{{{{ params.{self.value} }}}}"


@dataclass(frozen=True)
class Job:
    """One Spark job file and its function: a DAG task (one per item when it fans out) and a backfill call."""

    module: str  # jobs/<module>.py, which spark-submit runs and which holds `function`
    task: str  # the DAG task id; a fanned-out job's names its item's field, e.g. "extract_{modality}"
    function: str  # what the backfill calls: function(spark, config, **keywords), or (config, ...) without Spark
    arguments: tuple[Argument, ...]
    fan_out: str | None = None  # PER_MODALITY or PER_IMPORTED_VECTORS
    spark: bool = True  # False: no Spark session, and the DAG runs it as a task of its own (the run report)
    needs: str | None = None  # a run value without which the backfill skips the job instead of running it

    def items(
        self, imported_vectors: dict[str, str], modalities: tuple[str, ...] = BUILT_IN_MODALITIES
    ) -> list[dict[str, str]]:
        """The items this job runs once for, each a dict of its fields; one empty item when it does not fan out."""
        if self.fan_out == PER_MODALITY:
            return [{"modality": modality} for modality in modalities]
        if self.fan_out == PER_IMPORTED_VECTORS:
            return [{"name": name, "vectors": vectors} for name, vectors in sorted(imported_vectors.items())]
        return [{}]

    def task_id(self, item: dict[str, str]) -> str:
        return self.task.format(**item)

    def application_args(self, item: dict[str, str]) -> list[str]:
        """The job's command line as the DAG templates it: flag, value, flag, value, ..."""
        return [
            part
            for argument in self.arguments
            if argument.flag
            for part in (argument.flag, argument.dag_value(item))
        ]

    def run(self, spark, config, values: dict[str, Any]) -> Any:
        """The job's function for one item, in this process: what the backfill calls (`values` has the item's fields)."""
        function = getattr(importlib.import_module(f"jobs.{self.module}"), self.function)
        keywords = {argument.keyword: values[argument.value] for argument in self.arguments if argument.keyword}
        return function(spark, config, **keywords) if self.spark else function(config, **keywords)


@dataclass(frozen=True)
class Stage:
    """A step of the night as a person names it, the jobs it runs, and what it reads and writes."""

    name: str  # as `modalrank backfill --skip` and the stage's own `modalrank` subcommand name it
    jobs: tuple[Job, ...]
    inputs: tuple[str, ...]  # tables, `_models/...` and `_reports/...` artifacts, or SOURCES
    outputs: tuple[str, ...]
    # `modalrank <name>`: its help line (None: no subcommand from here) and what it prints when done, formatted
    # with `report` (what the job's run_from_args returned), `reports` (the date's report folder) and `args`.
    # The subcommand takes the first job's arguments and runs its run_from_args.
    command_help: str | None = None
    command_done: str | None = None
    teardown: bool = (
        False  # runs whatever happened before it: a teardown task in the DAG, a `finally` in a backfill
    )


# Every job's first flags: the run date and where the lake and its artifacts are. The backfill passes the
# date as a keyword; the lake and the artifacts folder are in the config it passes.
DS = Argument("--ds", "ds", keyword="ds", template="{{ ds }}")
RUN_DATE = (DS, Argument("--lake", "lake"), Argument("--artifacts", "artifacts"))
EVERY_DAYS = Argument("--every-days", "train_every_days", keyword="every_days")

STAGES = (
    Stage(
        "ingest",
        jobs=(
            Job(
                "ingest",
                task="ingest",
                function="run_ingest",
                arguments=(
                    dataclasses.replace(DS, keyword=None),  # the backfill's date is in its request
                    *RUN_DATE[1:],
                    # A MovieLens folder replaces the generic pair; the job rejects a request with both.
                    Argument("--catalog", "catalog", template="{{ '' if params.movielens else params.catalog }}"),
                    Argument(
                        "--interactions",
                        "interactions",
                        template="{{ '' if params.movielens else params.interactions }}",
                    ),
                    Argument("--movielens", "movielens"),
                    Argument("--overviews", "overviews"),
                    Argument("--posters", "posters"),
                    Argument("--audio", "audio"),
                    Argument("--video", "video"),
                    # The backfill builds the whole request from its own source flags (`--media-root` too).
                    Argument(None, "sources", keyword="request"),
                ),
                needs="sources",  # a backfill without sources reruns later stages on the lake as it is
            ),
        ),
        inputs=("source files", "catalog", "catalog_history", "deferred"),
        outputs=("catalog", "catalog_history", "interactions", "deferred", "quarantine", "_reports/ingest"),
        command_help="ingest a catalog and interactions into the lake",
        command_done="ingested ds={report.ds}: report {reports}/ingest.md",
    ),
    Stage(
        "extract",
        jobs=(
            Job(
                "extract",
                task="extract_{modality}",
                function="run_extract",
                arguments=(
                    *RUN_DATE,
                    Argument("--modality", "modality", keyword="modality"),
                    Argument("--force", "force_extract", keyword="force"),
                ),
                fan_out=PER_MODALITY,
            ),
            Job(
                "import_vectors",
                task="import_{name}",
                function="run_import",
                arguments=(
                    *RUN_DATE,
                    Argument("--name", "name", keyword="name"),
                    Argument("--vectors", "vectors", keyword="vectors_path"),
                ),
                fan_out=PER_IMPORTED_VECTORS,
            ),
        ),
        inputs=("catalog", "catalog_history", "vector files"),
        outputs=("features_<modality>", "quarantine", "_reports/extract"),
        command_help="extract one modality's features (text, image, audio, video) or import vectors",
        command_done="extracted {args.modality} ds={report.ds}: report {reports}",
    ),
    Stage(
        "fuse",
        jobs=(Job("fuse", task="fuse", function="run_fuse", arguments=(*RUN_DATE, EVERY_DAYS)),),
        inputs=("features_<modality>", "catalog", "catalog_history"),
        outputs=("item_vectors", "_models/fusion", "_reports/fuse"),
        command_help="fuse the modality features into one vector per item",
        command_done="fused ds={report.ds}: report {reports}/fuse.md",
    ),
    Stage(
        "train",
        jobs=(Job("train", task="train_ranker", function="run_train", arguments=(*RUN_DATE, EVERY_DAYS)),),
        inputs=("catalog", "catalog_history", "interactions", "item_vectors"),
        outputs=("_models/ranker", "_reports/train"),
        command_help="train the hybrid ranker on data up to the run date",
        command_done="trained {report.version} ds={report.ds}: {report.artifact}",
    ),
    Stage(
        "evaluate",
        jobs=(
            Job(
                "evaluate",
                task="evaluate",
                function="run_evaluate",
                arguments=(
                    *RUN_DATE,
                    Argument("--dataset", "dataset", keyword="dataset"),
                    # The full evaluation on training dates (or when asked), the served model's check otherwise.
                    EVERY_DAYS,
                    Argument("--full", "full_evaluation", keyword="full"),
                ),
            ),
        ),
        inputs=("catalog", "catalog_history", "interactions", "item_vectors"),
        outputs=("metrics", "eval_truth", "eval_lists", "_reports/evaluate"),
        command_help="every baseline and the ranker on three protocols: metrics tables and an HTML report",
        command_done=None,  # evaluate prints its metrics tables, targets and report path itself
    ),
    Stage(
        "publish",
        jobs=(
            Job(
                "publish",
                task="publish",
                function="run_publish",
                arguments=(
                    *RUN_DATE,
                    Argument("--k", "k", keyword="k"),
                    # Gate thresholds: only the DAG sets them; a backfill publishes with publish's defaults.
                    Argument("--max-changed-share", "max_changed_share"),
                    Argument("--min-coverage", "min_coverage"),
                ),
            ),
        ),
        inputs=("catalog", "catalog_history", "interactions", "item_vectors", "_models/ranker"),
        outputs=("recommendations", "_models/serving", "_reports/publish"),
        command_help="every user's top-K for the run date into `recommendations`, behind the quality gate",
        command_done=(
            "published ds={report.ds}: {report.rows} rows for {report.users} users (K={report.k}, "
            "{report.model_version}); report {reports}/publish.md"
        ),
    ),
    Stage(
        "report",
        jobs=(Job("run_report", task="run_report", function="write_run_report", arguments=(DS,), spark=False),),
        inputs=(
            "_reports/ingest",
            "_reports/extract",
            "_reports/fuse",
            "_reports/train",
            "_reports/evaluate",
            "_reports/publish",
            "quarantine",
        ),
        outputs=("_reports/run",),
        teardown=True,
    ),
)

STAGE_NAMES = tuple(stage.name for stage in STAGES)
# How a stage names the feature table of each modality among its inputs and outputs.
FEATURES = "features_<modality>"


def lineage_tables(stage: Stage, item: dict[str, str], modalities: list[str]) -> tuple[list[str], list[str]]:
    """The Delta tables one job of `stage` reads and writes for one item: its inputs and outputs without the
    files (`_models/...`, `_reports/...`, SOURCES), the feature table named for the item's modality (or
    imported vectors' name), or for every one of `modalities` when the job does not fan out (fuse reads them
    all)."""
    own = item.get("modality") or item.get("name")
    feature_tables = [f"features_{m}" for m in ([own] if own else modalities)]

    def tables(names: tuple[str, ...]) -> list[str]:
        found: list[str] = []
        for name in names:
            if name in SOURCES or "/" in name:
                continue
            found += feature_tables if name == FEATURES else [name]
        return found

    return tables(stage.inputs), tables(stage.outputs)


def stage(name: str) -> Stage:
    return STAGES[STAGE_NAMES.index(name)]
