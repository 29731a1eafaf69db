"""`modalrank`: run the pipeline's stages by hand, the same Spark jobs the DAG runs.

For data engineers working without a scheduler. Each subcommand takes the arguments its job takes
under spark-submit. Errors are one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import importlib.util
import logging
import sys
from pathlib import Path

from jobs import extract, stages
from jobs.arguments import input_path, modality_name, positive_int
from jobs.backfill import BackfillError
from jobs.config import REPO_ROOT, add_lake_arguments, add_run_arguments, configure_logging, load_run_config
from jobs.sources import SourceError
from jobs.spark import EXIT_FAIL_WITHOUT_RETRY, FailWithoutRetry, MissingJarsError

log = logging.getLogger("modalrank")


def _tooling_on_path() -> bool:
    """Whether `infra.tools` (demo data, scale data, benchmarks; not in the wheel) can be imported. Without
    infra/env.sh (an editable install maps only jobs/ and features/) the checkout holding jobs/ is added."""
    if importlib.util.find_spec("infra") is None:
        if not (REPO_ROOT / "infra" / "tools").is_dir():
            return False
        sys.path.append(str(REPO_ROOT))
    return importlib.util.find_spec("infra.tools") is not None


def _demo_data(args: argparse.Namespace) -> int:
    if not _tooling_on_path():
        raise FileNotFoundError(
            "demo-data needs a modalrank checkout (infra/tools); the installed package has none"
        )
    from infra.tools.demo_data import DemoDataConfig, generate_demo_data

    overrides = {
        name: value
        for name, value in {"items": args.items, "users": args.users, "seed": args.seed}.items()
        if value is not None
    }
    summary = generate_demo_data(args.out, DemoDataConfig(**overrides))
    print(
        f"demo data in {summary.out_dir}: {summary.items} items ({summary.cold_items} cold), "
        f"{summary.users} users, {summary.interactions} interactions (+{summary.bad_rows} deliberately bad rows)"
    )
    return 0


def _run_stage(stage: stages.Stage, args: argparse.Namespace) -> int:
    """`modalrank <stage>`: the stage's job as spark-submit runs it, then the stage's one-line summary."""
    report = importlib.import_module(f"jobs.{stage.jobs[0].module}").run_from_args(args)
    _print_done(stage, args, report)
    return 0


def _print_done(stage: stages.Stage, args: argparse.Namespace, report) -> None:
    if stage.command_done is not None:
        print(
            stage.command_done.format(
                report=report, reports=load_run_config(args).reports_dir / report.ds, args=args
            )
        )


def _add_extract_arguments(parser: argparse.ArgumentParser) -> None:
    """`modalrank extract` runs a built-in extractor or imports vectors: the two jobs of the extract stage."""
    add_run_arguments(parser)
    parser.add_argument(
        "--modality",
        required=True,
        type=modality_name,
        help="text, image, audio, video, or a name for imported vectors",
    )
    parser.add_argument(
        "--vectors", type=input_path, help="CSV/Parquet of item id + vector, for an imported modality"
    )
    extract.add_force_argument(parser)


def _extract(stage: stages.Stage, args: argparse.Namespace) -> int:
    from jobs import import_vectors

    built_in = args.modality in extract.MODALITY_INPUTS
    if built_in == bool(args.vectors):
        raise ValueError(
            f"--vectors goes with an imported modality, not a built-in one ({', '.join(extract.MODALITY_INPUTS)})"
            if built_in
            else f"{args.modality!r} is not a built-in modality: give --vectors FILE to import it"
        )
    if built_in:
        report = extract.run_from_args(args)
    else:
        report = import_vectors.run_from_args(argparse.Namespace(**vars(args), name=args.modality))
    _print_done(stage, args, report)
    return 0


# Stage subcommands whose arguments are not their first job's (`add_arguments`, handler).
CUSTOM_STAGE_COMMANDS = {"extract": (_add_extract_arguments, _extract)}


def _backfill(args: argparse.Namespace) -> int:
    from jobs import backfill

    results = backfill.run_from_args(args)
    for result in results:
        rows = "not published" if result.published_rows is None else f"{result.published_rows} rows published"
        print(f"{result.ds}: {rows}, {sum(result.seconds.values()):.0f} s ({result.model_version or 'no model'})")
    return 0


def _latest(args: argparse.Namespace) -> int:
    """A sample of the newest published lists, read with delta-rs as a downstream consumer would."""
    from jobs.consume import format_sample, open_table, read_frame, read_latest

    config = load_run_config(args)
    frame = read_latest(config.table_path("recommendations"))
    if args.user is not None:
        frame = frame[frame.user_id == args.user]
        if frame.empty:
            raise ValueError(f"user {args.user} has no list on the newest published date")
    catalog = read_frame(open_table(config.table_path("catalog")), columns=["item_id", "title"])
    titles = dict(zip(catalog.item_id, catalog.title, strict=True))
    print(format_sample(frame, users=args.users, per_user=args.limit, titles=titles))
    return 0


def _report(args: argparse.Namespace) -> int:
    from jobs import run_report

    return run_report.main(
        [
            "--ds",
            args.ds.isoformat(),
            *(["--lake", args.lake] if args.lake else []),
            *(["--artifacts", args.artifacts] if args.artifacts else []),
            *(["--fail-if-incomplete"] if args.fail_if_incomplete else []),
        ]
    )


def _bench(args: argparse.Namespace) -> int:
    from infra.tools import bench

    rows = bench.bench_extract(args.datasets, args.modalities)
    print()
    print(bench.format_table(rows))
    return 0


def _bench_text_batching(args: argparse.Namespace) -> int:
    from infra.tools import bench

    source, texts = bench.bench_texts(args.texts)
    print(f"{len(texts)} texts from {source}")
    for threads in args.threads:
        result = bench.bench_text_batching(texts, threads)
        print(
            f"threads={threads}: one text per pass {result['single_s']:.2f} s, batches of 64 "
            f"{result['batched_s']:.2f} s, ratio {result['ratio']:.2f}, largest vector difference "
            f"{result['max_abs_diff']:.1e}",
            flush=True,
        )
    return 0


def _bench_scale(args: argparse.Namespace) -> int:
    from infra.tools import bench_scale

    runs = bench_scale.bench_scale(args.fractions, args.work, args.k)
    print(
        f"\nall sizes done; results in {args.work / 'results.json'}, each stage's log in {args.work}/fraction-*/logs"
    )
    return 0 if runs else 1


def _bench_als_peer(args: argparse.Namespace) -> int:
    from infra.tools import bench_scale

    result = bench_scale.als_peer(args.lake, args.ds, args.k, args.out)
    print(f"ALS fit {result['fit_seconds']} s, recommendForAllUsers({args.k}) {result['recommend_seconds']} s")
    return 0


def _bench_serving_probe(args: argparse.Namespace) -> int:
    from infra.tools import bench_scale

    for fraction in args.fractions:
        result = bench_scale.serving_probe(fraction, args.work, args.blocks)
        print(" ".join(f"{key}={value}" for key, value in result.items()), flush=True)
    return 0


def _scale_data(args: argparse.Namespace) -> int:
    from infra.tools import scale_data

    summary = scale_data.run_from_args(args)
    print(
        f"wrote {summary.interactions:,} interactions of {summary.users:,} users and {summary.items:,} items "
        f"to {summary.out} in {summary.seconds} s"
    )
    return 0


def _upkeep(args: argparse.Namespace) -> int:
    from jobs import upkeep

    upkeep.run_from_args(args)
    return 0


def _tables(args: argparse.Namespace) -> int:
    """Every Delta table in the lake with its version and row count, read with delta-rs (no Spark)."""
    from deltalake import DeltaTable

    from jobs.config import delta_rs_uri
    from jobs.consume import arrow_filesystem, lake_feature_modalities
    from jobs.schemas import ALL_TABLES, features_table

    config = load_run_config(args)
    print(f"lake {config.lake}")
    modalities, unlisted = lake_feature_modalities(config)
    if unlisted:
        print(f"  ({unlisted})")
    feature_specs = [features_table(modality) for modality in modalities]
    for spec in (*ALL_TABLES, *feature_specs):
        path = delta_rs_uri(config.table_path(spec.name))
        if not DeltaTable.is_deltatable(path):
            print(f"  {spec.name:<16} (not created yet)")
            continue
        table = DeltaTable(path)
        rows = table.to_pyarrow_dataset(filesystem=arrow_filesystem(table)).count_rows()
        print(f"  {spec.name:<16} version {table.version():>3}  {rows:>9,} rows  {spec.description}")
    return 0


def _lake_identity(args: argparse.Namespace) -> int:
    """The lake's identity and the artifacts folder bound to it (`jobs.lake_identity`); `--adopt` records
    that a moved lake (or folder) is the one the folder serves."""
    import json

    from jobs import lake_identity

    config = load_run_config(args)
    if args.adopt:
        record = lake_identity.adopt(config)
        print(f"lake {config.lake} adopted by {config.artifacts_dir} (id {record['lake_id']})")
    else:
        lake_identity.bind(config)
        record = lake_identity.read_artifacts_side(config) or {}
    print(json.dumps(record, indent=2, sort_keys=True))
    return 0


class OneLineErrorParser(argparse.ArgumentParser):
    """A parser whose errors are one line, like every other `modalrank` error: the usage that argparse
    prints first would push the reason off a narrow terminal, and `-h` shows it anyway."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _add_tooling_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`scale-data` and `bench ...`; absent, not broken, where there is no checkout (see `_tooling_on_path`)."""
    if not _tooling_on_path():
        return
    from infra.tools import bench_scale, scale_data

    scale = commands.add_parser(
        "scale-data", help="write ml-25m-shaped synthetic interactions and content (Spark)"
    )
    scale_data.add_arguments(scale)
    scale.set_defaults(handler=_scale_data)

    bench_parser = commands.add_parser("bench", help="benchmarks with a baseline measured in the same run")
    benches = bench_parser.add_subparsers(dest="bench", required=True)
    bench_extract = benches.add_parser("extract", help="each extractor: Spark job vs a bare in-process loop")
    bench_extract.add_argument(
        "--datasets", nargs="+", default=["demo", "ml-latest-small"], choices=["demo", "ml-latest-small"]
    )
    bench_extract.add_argument(
        "--modalities", nargs="+", default=list(extract.MODALITY_INPUTS), choices=list(extract.MODALITY_INPUTS)
    )
    bench_extract.set_defaults(handler=_bench)
    text_batching = benches.add_parser(
        "text-batching", help="MiniLM one text per pass (the CPU default) vs padded batches of 64"
    )
    text_batching.add_argument("--texts", type=positive_int, default=384, help="how many texts (384)")
    text_batching.add_argument("--threads", type=positive_int, nargs="+", default=[1, 2], help="torch threads")
    text_batching.set_defaults(handler=_bench_text_batching)
    bench_scale_parser = benches.add_parser(
        "scale", help="ingest → fuse → train → publish on ml-25m-shaped data at growing sizes, vs Spark ALS"
    )
    bench_scale.add_arguments(bench_scale_parser)
    bench_scale_parser.set_defaults(handler=_bench_scale)
    probe = benches.add_parser(
        "serving-probe",
        help="publish's base-model fit and per-block scoring cost on generated data, without Spark",
    )
    probe.add_argument("--fractions", nargs="+", type=float, default=[1.0])
    probe.add_argument("--work", type=Path, default=bench_scale.default_work())
    probe.add_argument("--blocks", type=int, default=8, help="blocks of 256 users to score (default: %(default)s)")
    probe.set_defaults(handler=_bench_serving_probe)
    als_parser = benches.add_parser(
        "als-peer", help="Spark ALS fit + recommendForAllUsers on a lake (bench scale's peer)"
    )
    add_run_arguments(als_parser)
    als_parser.add_argument("--k", type=int, default=50)
    als_parser.add_argument("--out", type=Path, required=True, help="JSON file for the timings")
    als_parser.set_defaults(handler=_bench_als_peer)


def build_parser() -> argparse.ArgumentParser:
    # Subcommand parsers are made with the same class.
    parser = OneLineErrorParser(prog="modalrank", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo-data", help="write the synthetic demo catalog, media and interactions")
    demo.add_argument("--out", type=Path, required=True, help="output folder")
    demo.add_argument("--items", type=positive_int, help="number of items (default 600)")
    demo.add_argument("--users", type=positive_int, help="number of users (default 300)")
    demo.add_argument("--seed", type=int, help="random seed (default 7)")
    demo.set_defaults(handler=_demo_data)

    # One subcommand per stage, in the pipeline's order, each taking its job's own arguments (jobs.stages).
    for stage in stages.STAGES:
        if stage.command_help is None:
            continue
        module = importlib.import_module(f"jobs.{stage.jobs[0].module}")
        add_arguments, handler = CUSTOM_STAGE_COMMANDS.get(stage.name, (module.add_arguments, _run_stage))
        stage_parser = commands.add_parser(stage.name, help=stage.command_help)
        add_arguments(stage_parser)
        stage_parser.set_defaults(handler=functools.partial(handler, stage))

    from jobs import backfill

    backfill_parser = commands.add_parser(
        "backfill", help="the nightly stages for every date from --start to --end, oldest first"
    )
    backfill.add_arguments(backfill_parser)
    backfill_parser.set_defaults(handler=_backfill)

    latest = commands.add_parser("latest", help="print a sample of the newest published recommendation lists")
    add_lake_arguments(latest)
    latest.add_argument("--user", type=int, help="only this user's list")
    latest.add_argument(
        "--users", type=positive_int, default=5, help="how many users to show (default: %(default)s)"
    )
    latest.add_argument("--limit", type=positive_int, default=10, help="items per user (default: %(default)s)")
    latest.set_defaults(handler=_latest)

    report = commands.add_parser(
        "report", help="write the run report (_reports/<ds>/run.html) from the stages' reports"
    )
    add_run_arguments(report)
    report.add_argument("--fail-if-incomplete", action="store_true", help="exit 1 when a stage did not report")
    report.set_defaults(handler=_report)

    from jobs import upkeep

    upkeep_parser = commands.add_parser(
        "upkeep", help="OPTIMIZE and VACUUM every table; drop old evaluation lists, reports and unused models"
    )
    upkeep.add_arguments(upkeep_parser)
    upkeep_parser.set_defaults(handler=_upkeep)

    _add_tooling_commands(commands)

    tables = commands.add_parser("tables", help="list the lake's Delta tables: version and row count")
    add_lake_arguments(tables)
    tables.set_defaults(handler=_tables)

    identity = commands.add_parser(
        "lake-identity", help="the lake's id and its artifacts folder; binds them when neither has one yet"
    )
    add_lake_arguments(identity)
    identity.add_argument(
        "--adopt",
        action="store_true",
        help="this lake (moved from where the folder's record says) is the one this artifacts folder serves",
    )
    identity.set_defaults(handler=_lake_identity)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    try:
        return args.handler(args)
    except FailWithoutRetry as error:  # e.g. a failed quality gate: the same status the job exits with
        print(f"modalrank {args.command}: error: {error}", file=sys.stderr)
        return EXIT_FAIL_WITHOUT_RETRY
    except (SourceError, MissingJarsError, FileNotFoundError, ValueError) as error:
        print(f"modalrank {args.command}: error: {error}", file=sys.stderr)
        return 2
    except BackfillError as error:  # the failing stage's details are in the log above
        print(f"modalrank backfill: error: {error}", file=sys.stderr)
        return 1
    except Exception as error:  # a Spark or Delta failure: one line here, the details in the log above
        from pyspark.errors import PySparkException

        if isinstance(error, PySparkException):
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            print(f"modalrank {args.command}: spark error: {first_line}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    raise SystemExit(main())
