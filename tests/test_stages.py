"""The stage registry (`jobs.stages`) agrees with the jobs it names: no Spark, no Airflow.

The DAG's side is in tests/test_dag.py; the backfill's run of every stage in tests/test_backfill.py.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import inspect

import pytest

from jobs import stages
from jobs.backfill import BackfillPlan
from jobs.schemas import ALL_TABLES

JOBS = [job for stage in stages.STAGES for job in stage.jobs]


def test_built_in_modalities_are_the_extractors():
    from jobs.modality_inputs import MODALITY_INPUTS

    assert stages.BUILT_IN_MODALITIES == tuple(MODALITY_INPUTS)


@pytest.mark.parametrize("job", JOBS, ids=lambda job: job.module)
def test_every_keyword_is_a_parameter_of_the_function(job):
    function = getattr(importlib.import_module(f"jobs.{job.module}"), job.function)
    parameters = inspect.signature(function).parameters
    keywords = [argument.keyword for argument in job.arguments if argument.keyword]
    assert keywords and set(keywords) <= set(parameters)
    assert list(parameters)[: 2 if job.spark else 1] == (["spark", "config"] if job.spark else ["config"])


@pytest.mark.parametrize("job", [job for job in JOBS if job.spark], ids=lambda job: job.module)
def test_every_flag_the_dag_passes_is_one_the_job_takes(job):
    module = importlib.import_module(f"jobs.{job.module}")
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    flags = [argument.flag for argument in job.arguments if argument.flag]
    assert flags[:3] == ["--ds", "--lake", "--artifacts"]
    assert set(flags) <= set(parser._option_string_actions)


def test_the_backfill_has_a_value_for_every_keyword():
    plan = BackfillPlan(dt.date(2026, 11, 1), dt.date(2026, 11, 1), None)
    for job in JOBS:
        fields = {field for item in job.items({"v": "v.csv"}) for field in item}
        wanted = {argument.value for argument in job.arguments if argument.keyword}
        assert wanted <= set(plan.run_values(dt.date(2026, 11, 1))) | fields, job.module


def test_fanned_out_jobs_name_one_task_per_item():
    extract, imports = stages.stage("extract").jobs
    assert [extract.task_id(item) for item in extract.items({})] == [
        f"extract_{m}" for m in stages.BUILT_IN_MODALITIES
    ]
    items = imports.items({"b": "/b.csv", "a": "/a.parquet"})
    assert [imports.task_id(item) for item in items] == ["import_a", "import_b"]
    assert imports.application_args(items[0])[-4:] == ["--name", "a", "--vectors", "/a.parquet"]
    assert stages.stage("fuse").jobs[0].items({"a": "/a.csv"}) == [{}]


def test_every_input_is_written_before_it_is_read():
    written: set[str] = set(stages.SOURCES)
    for stage in stages.STAGES:
        written |= set(stage.outputs)  # a stage may read what it wrote for earlier dates (ingest's catalog)
        assert set(stage.inputs) <= written, stage.name


def test_every_table_is_written_by_a_stage():
    outputs = {output for stage in stages.STAGES for output in stage.outputs}
    assert {spec.name for spec in ALL_TABLES} <= outputs


def test_only_the_last_stage_is_a_teardown():
    assert [stage.teardown for stage in stages.STAGES] == [False] * (len(stages.STAGES) - 1) + [True]
    assert stages.STAGE_NAMES == ("ingest", "extract", "fuse", "train", "evaluate", "publish", "report")


def test_lineage_names_each_jobs_tables_with_its_own_feature_table():
    extract, fuse = stages.stage("extract"), stages.stage("fuse")
    modalities = ["text", "image", "audio", "video", "mmtf_avf"]
    assert stages.lineage_tables(extract, {"modality": "text"}, modalities) == (
        ["catalog", "catalog_history"],
        ["features_text", "quarantine"],
    )
    assert stages.lineage_tables(extract, {"name": "mmtf_avf", "vectors": "x.csv"}, modalities)[1] == [
        "features_mmtf_avf",
        "quarantine",
    ]
    # fuse does not fan out: it reads every modality's table; files (_models/..., _reports/...) are left out.
    assert stages.lineage_tables(fuse, {}, modalities) == (
        [f"features_{m}" for m in modalities] + ["catalog", "catalog_history"],
        ["item_vectors"],
    )


@pytest.mark.parametrize(
    "path, dataset",
    [
        ("/data/lake/catalog", ("file", "/data/lake/catalog")),
        ("file:///data/lake/catalog", ("file", "/data/lake/catalog")),
        ("s3a://bucket/modalrank/lake/catalog", ("s3://bucket", "/modalrank/lake/catalog")),
        ("hdfs://namenode:8020/lake/catalog", ("hdfs://namenode:8020", "/lake/catalog")),
    ],
)
def test_lineage_datasets_follow_openlineage_naming(path, dataset):
    from jobs.dag_common import lineage_dataset

    assert lineage_dataset(path) == dataset


def test_each_task_try_reports_its_spark_lineage_to_a_file_of_its_own(tmp_path):
    from jobs.dag_common import spark_lineage_file
    from jobs.spark import OPENLINEAGE_LISTENER, spark_lineage_settings

    nightly = "scheduled__2026-12-01T00:00:00+00:00"
    first = spark_lineage_file(tmp_path, "modalrank_nightly", nightly, "fuse", 1)
    assert first == tmp_path / "modalrank_nightly" / "scheduled__2026-12-01T00_00_00_00_00" / "fuse.1.jsonl"
    others = {
        spark_lineage_file(tmp_path, "modalrank_nightly", nightly, "fuse", 2),
        spark_lineage_file(tmp_path, "modalrank_nightly", "backfill__2026-11-30T00:00:00+00:00", "fuse", 1),
        spark_lineage_file(tmp_path, "modalrank_nightly", nightly, "train", 1),
    }
    assert first not in others and len(others) == 3
    settings = spark_lineage_settings(first)
    assert settings["spark.extraListeners"] == OPENLINEAGE_LISTENER
    assert settings["spark.openlineage.transport.type"] == "file"
    assert settings["spark.openlineage.transport.location"] == str(first)
