"""kill -9 between the writes of ingest, fuse, train and publish, then a rerun: the same tables and artifacts as a run
that was never interrupted. And a job process racing the same job in the test's own process, on one date and on
two dates of one training week.

A copy of the suite's built lake (conftest's `built_lake`: ingested, fused, trained), published once
in-process: the baseline. Each crash test runs a job as its own process (`python -m jobs.<stage>`) with
`MODALRANK_CRASH_AT` naming a crash point (`jobs.faults`: SIGKILL, no cleanup), checks what the dead run
left, reruns the stage in-process and compares with the baseline: table rows, artifact checksums from the
manifests, pointers. Train and fuse crashes use a fresh artifacts folder over the same lake (the lake's
tables are what they read; their artifacts are what they write), so every test starts from nothing.
Each race runs a job process against the same job in this process.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from conftest import BUILT_DEMO, REPO_ROOT, SHORT_LIVED_JVM

from jobs import artifacts, lake
from jobs.config import PipelineConfig, load_config
from jobs.lake_identity import IDENTITY_FILE
from jobs.schemas import (
    CATALOG,
    CATALOG_HISTORY,
    DEFERRED,
    INTERACTIONS,
    ITEM_VECTORS,
    QUARANTINE,
    RECOMMENDATIONS,
)

pytestmark = pytest.mark.spark

DS = BUILT_DEMO.end_date
K = 10


@dataclass(frozen=True)
class Baseline:
    """What an uninterrupted fuse → train → publish of DS left."""

    config: PipelineConfig
    fusion_version: str
    projections: dict  # the fusion artifact's manifest checksums (fusion.json also holds the wall-clock fit time)
    item_vectors: pd.DataFrame
    ranker_version: str
    ranker: dict  # the ranker artifact's manifest checksums
    ranker_card: dict  # ranker.json without wall-clock timings
    date_pointer: dict
    recommendations: pd.DataFrame


def vectors(spark, config) -> pd.DataFrame:
    columns = ["item_id", "vector", "mask", "modalities", "fusion_version"]  # not fused_at: the wall clock
    rows = lake.read_table(spark, config, ITEM_VECTORS).where(f"fused_ds = '{DS}'").select(*columns).toPandas()
    return rows.sort_values("item_id", ignore_index=True)


def recommendations(spark, config) -> pd.DataFrame:
    rows = lake.read_table(spark, config, RECOMMENDATIONS).where(f"ds = '{DS}'").toPandas()
    return rows.sort_values(["user_id", "rank"], ignore_index=True)


def table_version(spark, config) -> int:
    from delta.tables import DeltaTable

    return DeltaTable.forPath(spark, config.table_path(RECOMMENDATIONS.name)).history(1).first()["version"]


def ranker_card(folder: Path) -> dict:
    card = json.loads((folder / "ranker.json").read_text())
    card["training"].pop("seconds")  # how long training took: the one thing a rerun may change
    return card


@pytest.fixture(scope="module")
def baseline(spark, built_lake, tmp_path_factory) -> Baseline:
    from jobs.publish import run_publish
    from jobs.ranker_inputs import date_pointer

    config = built_lake.copy_to(tmp_path_factory.mktemp("crash"))
    run_publish(spark, config, DS, k=K)
    ranker = config.models_dir / "ranker" / built_lake.ranker_version
    return Baseline(
        config,
        built_lake.fusion_version,
        artifacts.manifest_checksums(config.models_dir / "fusion" / built_lake.fusion_version),
        vectors(spark, config),
        built_lake.ranker_version,
        artifacts.manifest_checksums(ranker),
        ranker_card(ranker),
        json.loads(date_pointer(config, DS).read_text()),
        recommendations(spark, config),
    )


def fresh_artifacts(baseline: Baseline, name: str) -> PipelineConfig:
    """A copy of the baseline's tables with an empty artifacts folder of its own (a lake is served by one
    artifacts folder only: jobs.lake_identity)."""
    folder = Path(baseline.config.artifacts_dir).parent / name
    shutil.rmtree(folder, ignore_errors=True)
    not_tables = shutil.ignore_patterns("_models", "_reports", "_locks", IDENTITY_FILE)
    shutil.copytree(baseline.config.lake, folder / "lake", ignore=not_tables)
    return load_config(lake=str(folder / "lake"), artifacts=str(folder / "artifacts"), shuffle_partitions=2)


def job_process(stage: str, config: PipelineConfig, *args: str, crash_at: str | None = None) -> subprocess.Popen:
    env = {key: value for key, value in os.environ.items() if key != "MODALRANK_CRASH_AT"}
    env |= {"PYTHONPATH": str(REPO_ROOT), "MODALRANK_DRIVER_MEMORY": "1g", "MODALRANK_SHUFFLE_PARTITIONS": "2"}
    env |= SHORT_LIVED_JVM
    if crash_at:
        env["MODALRANK_CRASH_AT"] = crash_at
    command = [sys.executable, "-m", f"jobs.{stage}", "--ds", str(args[0]), "--lake", config.lake]
    command += ["--artifacts", str(config.artifacts_dir), *args[1:]]
    # A session of its own: the JVM and Python workers of a killed driver are reaped with it.
    return subprocess.Popen(
        command,
        env=env,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def finish(process: subprocess.Popen) -> tuple[int, str]:
    try:
        output, _ = process.communicate(timeout=900)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # whatever the dead driver left running
    return process.returncode, output


def crash(stage: str, config: PipelineConfig, point: str, *args: str) -> str:
    code, output = finish(job_process(stage, config, DS.isoformat(), *args, crash_at=point))
    assert code == -signal.SIGKILL, output[-3000:]
    assert f"crash point {point} reached" in output
    return output


def dotted_leftovers(folder: Path) -> list[str]:
    """Temporaries under `folder` (pointer lock files are meant to stay)."""
    return sorted(str(p) for p in folder.rglob(".*") if not p.name.endswith(".lock"))


# ---------------------------------------------------------------------------------------------------
# kill -9, then a rerun


# Each kill costs a job process (a Spark start): one point per write that a rerun must notice. The
# points left out are covered without Spark (tests/test_artifacts.py kills a writer at both of
# `build_artifact`'s points) or by tests/test_publish.py (publish killed while scoring).
# Ingest's tables, each sorted by its key; columns ending in `_at` hold the wall clock of a commit.
INGEST_TABLES = {
    CATALOG: ["item_id"],
    CATALOG_HISTORY: ["item_id", "ingested_ds"],
    INTERACTIONS: ["user_id", "item_id", "event_time", "source"],
    QUARANTINE: ["source_file", "record", "reason"],
    DEFERRED: ["kind", "row_key"],
}


def ingest_tables(spark, config) -> dict[str, pd.DataFrame]:
    tables = {}
    for spec, key in INGEST_TABLES.items():
        rows = lake.read_table(spark, config, spec)
        if spec is QUARANTINE:
            rows = rows.where("stage = 'ingest'")
        rows = rows.select(*(name for name in rows.columns if not name.endswith("_at"))).toPandas()
        tables[spec.name] = rows.sort_values(key, ignore_index=True).astype(str)  # arrays compare as text
    return tables


def test_ingest_killed_between_its_commits_reruns_to_the_same_tables(spark, baseline, built_lake, tmp_path):
    """Killed after the catalog MERGE, before the interactions': the rerun's tables equal the baseline's."""
    from jobs.ingest import IngestRequest, run_ingest

    config = load_config(lake=str(tmp_path / "lake"), shuffle_partitions=2)
    demo = built_lake.demo  # the files the baseline's lake was ingested from
    sources = ("--catalog", str(demo / "catalog.csv"), "--interactions", str(demo / "interactions.csv"))
    crash("ingest", config, "ingest.catalog_merged", *sources)
    assert lake.read_table(spark, config, CATALOG).count() > 0
    assert lake.read_table(spark, config, INTERACTIONS).count() == 0  # the commit the kill cut off

    request = IngestRequest(ds=DS, catalog=demo / "catalog.csv", interactions=demo / "interactions.csv")
    run_ingest(spark, config, request)
    rerun, expected = ingest_tables(spark, config), ingest_tables(spark, baseline.config)
    assert {name: len(rows) for name, rows in rerun.items()} == {
        name: len(rows) for name, rows in expected.items()
    }
    for name, rows in expected.items():
        pd.testing.assert_frame_equal(rerun[name], rows, obj=name)


@pytest.mark.parametrize("point", ["fuse.projections.files_written"])
def test_fuse_killed_between_its_writes_reruns_to_the_same_projections_and_vectors(spark, baseline, point):
    from jobs.fuse import run_fuse

    config = fresh_artifacts(baseline, f"fuse-{point}")
    crash("fuse", config, point)
    fusion = config.models_dir / "fusion"
    assert not (fusion / "current.json").exists()  # the pointer comes last
    assert not (fusion / baseline.fusion_version).exists()  # only a temporary folder: no artifact to reuse

    report = run_fuse(spark, config, DS)
    assert (report.projections, report.fusion_version) == ("fitted", baseline.fusion_version)  # no pointer: a fit
    assert artifacts.verify(fusion / report.fusion_version) == []
    checksums = artifacts.manifest_checksums(fusion / report.fusion_version)
    assert checksums["projections.safetensors"] == baseline.projections["projections.safetensors"]
    assert json.loads((fusion / "current.json").read_text()) == {"fusion_version": baseline.fusion_version}
    pd.testing.assert_frame_equal(vectors(spark, config), baseline.item_vectors)
    assert dotted_leftovers(fusion) == []


@pytest.mark.parametrize("point", ["train.ranker.manifest_written", "train.date_pointer_written"])
def test_train_killed_between_its_writes_reruns_to_the_same_ranker_and_pointers(spark, baseline, point):
    from jobs.ranker_inputs import current_pointer, date_pointer
    from jobs.train import run_train

    config = fresh_artifacts(baseline, f"train-{point}")
    crash("train", config, point)
    folder = config.models_dir / "ranker" / baseline.ranker_version
    assert not current_pointer(config).exists()
    if point == "train.ranker.manifest_written":  # the whole ranker sat in a temporary folder
        assert not folder.exists() and not date_pointer(config, DS).exists()
        assert len(dotted_leftovers(config.models_dir)) == 1
    else:
        assert artifacts.verify(folder) == [] and date_pointer(config, DS).exists()

    report = run_train(spark, config, DS)
    assert (report.version, report.reused) == (baseline.ranker_version, point == "train.date_pointer_written")
    assert artifacts.verify(folder) == []
    assert artifacts.manifest_checksums(folder)["ranker.safetensors"] == baseline.ranker["ranker.safetensors"]
    assert ranker_card(folder) == baseline.ranker_card
    assert json.loads(date_pointer(config, DS).read_text()) == baseline.date_pointer
    assert json.loads(current_pointer(config).read_text()) == baseline.date_pointer
    assert dotted_leftovers(config.models_dir) == []


@pytest.mark.parametrize("point", ["publish.gated", "publish.committed"])
def test_publish_killed_between_its_writes_reruns_to_the_same_lists(spark, baseline, point):
    from jobs.publish import run_publish
    from jobs.serving import serving_root

    config = baseline.config
    version = table_version(spark, config)
    crash("publish", config, point, "--k", str(K))
    committed = point == "publish.committed"
    assert table_version(spark, config) == version + committed  # no commit before the commit point
    pd.testing.assert_frame_equal(recommendations(spark, config), baseline.recommendations)
    assert list((serving_root(config) / DS.isoformat()).iterdir())  # the dead run's serving folder

    report = run_publish(spark, config, DS, k=K)
    assert report.published and report.rows == len(baseline.recommendations)
    pd.testing.assert_frame_equal(recommendations(spark, config), baseline.recommendations)
    assert not (serving_root(config) / DS.isoformat()).exists()  # the rerun removed the dead run's folder
    assert dotted_leftovers(config.models_dir) == []


# ---------------------------------------------------------------------------------------------------
# A job process racing the same job in this test's own process: two drivers on one lake, as two Airflow
# tasks (or a backfill beside the nightly run) would be. One cold process per race rather than two: the
# leases are files, so a driver in this process contends for them as any other process would.


def racing(process: subprocess.Popen, run_here):
    """((exit code, output) of `process`, what `run_here()` returned), the two running at once."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        here = pool.submit(run_here)
        there = finish(process)
        return there, here.result()


def test_two_dates_of_one_training_week_racing_build_one_ranker(spark, baseline):
    """Both dates serve the model of their Sunday: one process trains it, the other waits for the training
    date's lease and reuses it. Both finish; one verified ranker; both dates point at it."""
    from jobs.fuse import run_fuse
    from jobs.ranker_inputs import date_pointer
    from jobs.train import run_train, training_date

    config = fresh_artifacts(baseline, "train-race")
    sunday = training_date(DS, 7)
    dates = [sunday, sunday + dt.timedelta(days=1)]
    run_fuse(spark, config, sunday, every_days=7)  # train reads the vectors fused for its training date
    process = job_process("train", config, dates[0].isoformat(), "--every-days", "7")
    (code, output), _ = racing(process, lambda: run_train(spark, config, dates[1], every_days=7))
    assert code == 0, output[-3000:]

    reports = [json.loads((config.reports_dir / ds.isoformat() / "train.json").read_text()) for ds in dates]
    assert sorted(report["reused"] for report in reports) == [False, True]
    pointers = [json.loads(date_pointer(config, ds).read_text()) for ds in dates]
    assert {(p["version"], p["trained_ds"]) for p in pointers} == {(reports[0]["version"], sunday.isoformat())}
    models = sorted(p.name for p in (config.models_dir / "ranker").iterdir() if not p.name.startswith("."))
    assert models == sorted(["by_ds", "current.json", reports[0]["version"]])
    assert artifacts.verify(config.models_dir / "ranker" / reports[0]["version"]) == []
    assert json.loads((config.models_dir / "ranker" / "current.json").read_text())["ds"] == dates[1].isoformat()


def test_two_publishes_of_one_date_racing_both_leave_the_same_lists(spark, baseline):
    """The second run waits for the date's lease (or starts after the first ended); each scores from its
    own serving folder, so neither removes what the other loads. Two commits, the same rows."""
    from jobs.publish import run_publish
    from jobs.serving import serving_root

    config = baseline.config
    version = table_version(spark, config)
    process = job_process("publish", config, DS.isoformat(), "--k", str(K))
    (code, output), report = racing(process, lambda: run_publish(spark, config, DS, k=K))
    assert code == 0, output[-3000:]
    assert report.published
    assert table_version(spark, config) == version + 2
    pd.testing.assert_frame_equal(recommendations(spark, config), baseline.recommendations)
    assert not (serving_root(config) / DS.isoformat()).exists()
