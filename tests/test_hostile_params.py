"""Hostile values at every entry point: the CLI, the jobs' own parsers and the DAGs' Params refuse them
with one clear line, before any table changes; what passes is used only as a literal.

Most of this needs no Spark: argparse and Airflow's Param validation run in this process, and the one
real `modalrank` process checks a Delta table's version with delta-rs before and after.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT

from jobs import arguments
from jobs.cli import build_parser

DS = "2026-11-29"
QUOTE = "children's"
INJECTION = "x' OR '1'='1"
SLASH = "a/b"
PARENT = ".."
NUL = "a\x00b"
HUGE = "a" * 10_240
CREDENTIALS = "s3a://AKIAEXAMPLE:secret-key@bucket/lake"
HOSTILE = {"quote": QUOTE, "injection": INJECTION, "slash": SLASH, "parent": PARENT, "nul": NUL, "10kB": HUGE}
# Values every label-like rule refuses (a label is a name, never a path or SQL).
LABEL_RULES = [arguments.DATASET, arguments.MODEL_VERSION, arguments.MODALITY_NAME, arguments.RUN_DATE]


@pytest.mark.parametrize("rule", LABEL_RULES, ids=lambda rule: rule.name)
@pytest.mark.parametrize("value", HOSTILE.values(), ids=HOSTILE.keys())
def test_label_rules_refuse_every_hostile_value(rule, value):
    with pytest.raises(ValueError, match=rule.name) as error:
        rule.check(value)
    assert "\n" not in str(error.value) and len(str(error.value)) < 400  # one readable line, even for 10 kB


@pytest.mark.parametrize("rule", [arguments.LAKE, arguments.ARTIFACTS], ids=lambda rule: rule.name)
@pytest.mark.parametrize(
    "value",
    [QUOTE, INJECTION, PARENT, "../lake", "/data/../lake", NUL, HUGE, "/data/`lake`", "/data/lake\n"],
)
def test_lake_and_artifacts_refuse_quotes_parents_control_characters_and_huge_values(rule, value):
    with pytest.raises(ValueError, match=rule.name):
        rule.check(value)


def test_paths_that_are_plain_pass():
    for lake in (
        "lake",
        "/tmp/a b/lake",
        "s3a://bucket/lake",
        "file:///tmp/lake",
        "hdfs://nn:8020/lake",
        "/a/..b",
    ):
        assert arguments.LAKE.check(lake) == lake
    with pytest.raises(ValueError, match="lake"):
        arguments.LAKE.check("ftp://host/lake")  # a scheme neither Spark's Delta nor delta-rs reads
    with pytest.raises(ValueError, match="artifacts"):
        arguments.ARTIFACTS.check("s3a://bucket/artifacts")
    # Inputs are only read: quotes, '/' and '..' are ordinary (the README names ../shared/data/...).
    for path in (QUOTE, SLASH, PARENT, "../shared/data/ml-latest-small"):
        assert arguments.input_path(path) == Path(path)
    for bad in (NUL, HUGE, "a\nb"):
        with pytest.raises(ValueError, match="path"):
            arguments.input_path(bad)
    assert arguments.run_date(DS).isoformat() == DS
    for bad in ("20261129", "2026-02-30", "2026-11-29 OR 1=1"):
        with pytest.raises(ValueError, match="run date"):
            arguments.run_date(bad)


# (command line with {} where the value goes, the rule's name in the error, values it must refuse)
LABELS = list(HOSTILE.values())
CLI_CASES = [
    (["evaluate", "--ds", DS, "--dataset", "{}"], "dataset label", LABELS),
    (["backfill", "--start", DS, "--end", DS, "--dataset", "{}"], "dataset label", LABELS),
    (["publish", "--ds", DS, "--model-version", "{}"], "model version", LABELS),
    (["extract", "--ds", DS, "--modality", "{}"], "modality name", LABELS),
    (["fuse", "--ds", DS, "--modalities", "text", "{}"], "modality name", LABELS),
    (["train", "--ds", "{}"], "run date", LABELS),
    (["backfill", "--start", DS, "--end", "{}"], "run date", LABELS),
    (["latest", "--lake", "{}"], "lake", [QUOTE, INJECTION, PARENT, NUL, HUGE]),
    (["tables", "--artifacts", "{}"], "artifacts folder", [QUOTE, INJECTION, PARENT, NUL, HUGE]),
    # Numbers and dates out of their range: each a one-line refusal, not a traceback later on.
    (["train", "--ds", "{}"], "run date", ["9999-12-31", "1969-12-31"]),
    (["train", "--ds", DS, "--every-days", "{}"], "training cadence in days", ["1000000", "0", "7.5"]),
    (["fuse", "--ds", DS, "--every-days", "{}"], "training cadence in days", ["1000000", "0"]),
    (["publish", "--ds", DS, "--k", "{}"], "list length k", ["1000000", "0"]),
    (
        ["backfill", "--start", DS, "--end", DS, "--train-every-days", "{}"],
        "training cadence in days",
        ["1000000"],
    ),
    (["backfill", "--start", DS, "--end", DS, "--k", "{}"], "list length k", ["100000"]),
    (["evaluate", "--ds", DS, "--dataset", "demo", "--seed", "{}"], "seed", ["-1", str(2**40)]),
    (["upkeep", "--ds", DS, "--keep-days", "{}"], "days kept", ["0", "1000000"]),
    (["ingest", "--ds", DS, "--catalog", "{}", "--interactions", "i.csv"], "path", [NUL, HUGE]),
    (["extract", "--ds", DS, "--modality", "mmtf", "--vectors", "{}"], "path", [NUL, HUGE]),
]


@pytest.mark.parametrize(
    ("template", "rule", "value"),
    [(template, rule, value) for template, rule, values in CLI_CASES for value in values],
    ids=lambda part: part[0] if isinstance(part, list) else None,
)
def test_modalrank_refuses_hostile_values_with_one_line(template, rule, value, capsys):
    argv = [value if part == "{}" else part for part in template]
    with pytest.raises(SystemExit) as stopped:
        build_parser().parse_args(argv)
    assert stopped.value.code == 2
    stderr = capsys.readouterr().err
    assert stderr.count("\n") == 1, stderr  # one line: no usage block, no traceback
    assert stderr.startswith(f"modalrank {template[0]}: error: argument ")
    assert rule in stderr


@pytest.mark.parametrize(
    ("module", "argv"),
    [
        ("evaluate", ["--ds", DS, "--dataset", INJECTION]),
        ("import_vectors", ["--ds", DS, "--name", "../features", "--vectors", "v.csv"]),
        ("publish", ["--ds", DS, "--model-version", "ranker-x' OR '1'='1"]),
        ("publish", ["--ds", DS, "--min-coverage", "nan"]),
        ("train", ["--ds", DS, "--every-days", "0"]),
        ("ingest", ["--ds", DS, "--lake", "/tmp/x'y"]),
    ],
)
def test_the_jobs_spark_submit_parsers_refuse_them_too(module, argv, capsys):
    # What the DAG's spark-submit runs: each job's own add_arguments, not the CLI's.
    job = importlib.import_module(f"jobs.{module}")
    parser = argparse.ArgumentParser()
    job.add_arguments(parser)
    with pytest.raises(SystemExit) as stopped:
        parser.parse_args(argv)
    assert stopped.value.code == 2
    stderr = capsys.readouterr().err
    assert "is not valid" in stderr or "is not a" in stderr or "is out of range" in stderr, stderr


def test_run_evaluate_refuses_a_bad_label_before_any_work(lake_config):
    # Called from Python (backfill does), not through argparse: refused before Spark is touched (a None
    # session would fail at once if it were).
    from jobs.evaluate import run_evaluate

    with pytest.raises(ValueError, match="dataset label"):
        run_evaluate(None, lake_config, arguments.run_date(DS), INJECTION)


def test_a_lake_uri_with_credentials_is_refused_without_printing_them(monkeypatch, capsys):
    from jobs.config import load_config

    for refuse in (arguments.LAKE.check, lambda lake: load_config(lake=lake)):
        with pytest.raises(ValueError, match="credentials") as refused:
            refuse(CREDENTIALS)
        assert "secret-key" not in str(refused.value) and "AKIAEXAMPLE" not in str(refused.value)
        assert "s3a://***@bucket/lake" in str(refused.value)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["tables", "--lake", CREDENTIALS])
    stderr = capsys.readouterr().err
    assert "credentials" in stderr and "secret-key" not in stderr and stderr.count("\n") == 1
    # An '@' in a path, after the host, is an ordinary character.
    assert arguments.LAKE.check("s3a://bucket/team@example/lake") == "s3a://bucket/team@example/lake"


def test_a_config_refuses_a_hostile_lake_from_anywhere(monkeypatch):
    from jobs.config import load_config

    with pytest.raises(ValueError, match="lake"):
        load_config(lake="/tmp/lake' OR '1'='1")
    monkeypatch.setenv("MODALRANK_LAKE", "/tmp/../etc")
    with pytest.raises(ValueError, match="lake"):
        load_config()


def _write_metrics_table(lake) -> str:
    """A real `metrics` table (delta-rs, no Spark) with one evaluated dataset in it."""
    import datetime as dt

    import pyarrow as pa
    from deltalake import write_deltalake

    path = str(lake / "metrics")
    rows = pa.table({"ds": [dt.date(2026, 11, 29)], "dataset": ["demo"], "model": ["ranker"], "value": [0.5]})
    write_deltalake(path, rows, partition_by=["ds"])
    return path


@pytest.mark.parametrize(
    "argv",
    [
        ["evaluate", "--ds", DS, "--dataset", INJECTION],
        ["publish", "--ds", DS, "--model-version", "ranker-1' OR '1'='1"],
    ],
    ids=["evaluate", "publish"],
)
def test_a_real_modalrank_process_stops_before_the_lake_changes(tmp_path, argv):
    from deltalake import DeltaTable

    lake = tmp_path / "lake"
    metrics = _write_metrics_table(lake)
    before = (DeltaTable(metrics).version(), sorted(p.name for p in (lake / "metrics" / "_delta_log").iterdir()))
    # This checkout's code, whatever the venv was installed from.
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "jobs.cli", argv[0], "--lake", str(lake), *argv[1:]],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=env,
        check=False,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.count("\n") == 1 and " is not valid: " in result.stderr, result.stderr
    after = (DeltaTable(metrics).version(), sorted(p.name for p in (lake / "metrics" / "_delta_log").iterdir()))
    assert after == before
    assert not (lake / "_reports").exists()  # no report file was named after the value either


def _load_dag(file_name: str):
    spec = importlib.util.spec_from_file_location(f"hostile_{file_name}", REPO_ROOT / "dags" / f"{file_name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


NIGHTLY_PARAM_CASES = (
    [("dataset", value) for value in HOSTILE.values()]
    + [
        (name, value)
        for name in ("lake", "artifacts")
        for value in (QUOTE, INJECTION, PARENT, "/data/../lake", NUL, HUGE)
    ]
    + [
        (name, value)
        for name in ("catalog", "interactions", "movielens", "overviews", "posters", "audio", "video")
        for value in (NUL, HUGE, "a\nb")
    ]
    + [("k", 0), ("train_every_days", 0), ("max_changed_share", 1.5), ("min_coverage", -0.1)]
    + [("k", 100_000), ("train_every_days", 10**6), ("lake", CREDENTIALS)]
)


@pytest.fixture(scope="module")
def nightly():
    return _load_dag("modalrank_nightly")


@pytest.mark.airflow
@pytest.mark.parametrize(("name", "value"), NIGHTLY_PARAM_CASES, ids=lambda v: str(v)[:12])
def test_nightly_params_refuse_hostile_values_at_trigger(nightly, name, value):
    from airflow.sdk.definitions.param import ParamValidationError

    params = copy.deepcopy(nightly.dag.params)
    params.validate()  # the defaults are valid
    with pytest.raises(ParamValidationError, match=f"Invalid input for param {name}"):
        params.update({name: value})  # what a trigger's conf does: each value resolved against its Param


@pytest.mark.airflow
def test_nightly_params_take_plain_values_and_empty_optional_ones(nightly):
    params = copy.deepcopy(nightly.dag.params)
    params.update(
        {
            "dataset": "ml-latest-small",
            "lake": "s3a://bucket/lake",
            "artifacts": "/mnt/shared/modalrank",
            "movielens": "../shared/data/ml-latest-small",
            "posters": "",
            "max_changed_share": 0.2,
        }
    )
    resolved = params.validate()
    assert resolved["dataset"] == "ml-latest-small" and resolved["posters"] == ""


@pytest.mark.airflow
@pytest.mark.parametrize("value", [QUOTE, INJECTION, "/data/../lake", NUL, HUGE])
def test_consumer_params_refuse_hostile_lakes(value):
    from airflow.sdk.definitions.param import ParamValidationError

    params = copy.deepcopy(_load_dag("modalrank_consumer_example").dag.params)
    with pytest.raises(ParamValidationError, match="Invalid input for param lake"):
        params.update({"lake": value})
