"""The lake and the artifacts folder: where tables live (a local folder or any URI Spark writes) and where
models and reports live (always a local or mounted folder), and how each delta-rs reader names a table."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from jobs.config import PipelineConfig, add_run_arguments, delta_rs_uri, load_config, load_run_config, local_path


@pytest.fixture(autouse=True)
def no_lake_in_the_environment(monkeypatch):
    for variable in ("MODALRANK_LAKE", "MODALRANK_ARTIFACTS"):
        monkeypatch.delenv(variable, raising=False)


def test_a_local_lake_holds_its_own_artifacts(tmp_path):
    config = load_config(lake=str(tmp_path / "lake"))
    assert config.artifacts == ""  # derived, so a copy pointed at another lake follows that lake
    assert config.artifacts_dir == tmp_path / "lake"
    assert config.reports_dir == tmp_path / "lake" / "_reports"
    assert config.models_dir == tmp_path / "lake" / "_models"
    moved = config.with_overrides(lake=str(tmp_path / "other"))
    assert moved.reports_dir == tmp_path / "other" / "_reports"


@pytest.mark.parametrize("lake", ["s3a://bucket/lake", "hdfs://namenode:8020/modalrank/lake", "file://host/lake"])
def test_a_uri_lake_without_an_artifacts_folder_is_refused_with_what_to_set(lake):
    with pytest.raises(ValueError, match=r"not a local folder.*set MODALRANK_ARTIFACTS \(or --artifacts"):
        load_config(lake=lake)


def test_a_uri_lake_keeps_its_uri_and_puts_artifacts_in_the_given_folder():
    config = load_config(lake="s3a://bucket/lake/", artifacts="/mnt/shared/modalrank")
    assert config.lake == "s3a://bucket/lake/"
    assert config.table_path("catalog") == "s3a://bucket/lake/catalog"
    assert config.table_uri("catalog") == "s3a://bucket/lake/catalog"
    assert config.reports_dir == Path("/mnt/shared/modalrank/_reports")
    assert config.models_dir == Path("/mnt/shared/modalrank/_models")


def test_a_file_uri_lake_is_a_local_folder_and_holds_its_own_artifacts():
    config = load_config(lake="file:///data/my%20lake")
    assert config.table_path("catalog") == "file:///data/my%20lake/catalog"  # Spark reads it as given
    assert local_path(config.lake) == "/data/my lake"
    assert config.reports_dir == Path("/data/my lake/_reports")
    assert load_config(lake="file://localhost/data/lake").artifacts_dir == Path("/data/lake")


def test_artifacts_come_from_the_environment_and_yield_to_the_command_line(monkeypatch, tmp_path):
    monkeypatch.setenv("MODALRANK_LAKE", "hdfs://namenode:8020/lake")
    monkeypatch.setenv("MODALRANK_ARTIFACTS", "/mnt/shared/modalrank")
    assert load_config().reports_dir == Path("/mnt/shared/modalrank/_reports")
    assert load_config(artifacts=str(tmp_path)).artifacts_dir == tmp_path
    # A URI lake from the environment with the folder from the command line is whole only once merged.
    monkeypatch.delenv("MODALRANK_ARTIFACTS")
    assert load_config(artifacts=str(tmp_path)).lake == "hdfs://namenode:8020/lake"


def test_the_artifacts_folder_is_a_local_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_config(lake="s3a://bucket/lake", artifacts="shared").artifacts == os.path.join(tmp_path, "shared")
    with pytest.raises(ValueError, match="not a URI"):
        PipelineConfig(lake="s3a://bucket/lake", artifacts="s3a://bucket/artifacts")


def test_jobs_take_artifacts_from_the_command_line_and_airflow_empty_means_default():
    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    args = parser.parse_args(["--ds", "2026-11-25", "--lake", "s3a://b/lake", "--artifacts", "/mnt/m"])
    assert load_run_config(args).models_dir == Path("/mnt/m/_models")
    empty = parser.parse_args(["--ds", "2026-11-25", "--lake", "/data/lake", "--artifacts", ""])
    assert load_run_config(empty).artifacts_dir == Path("/data/lake")


def test_delta_rs_reads_spark_s3a_paths_as_s3_and_everything_else_as_given():
    assert delta_rs_uri("s3a://bucket/lake/recommendations") == "s3://bucket/lake/recommendations"
    for path in ("/data/lake/catalog", "file:///data/lake/catalog", "hdfs://nn:8020/lake/catalog", "s3://b/t"):
        assert delta_rs_uri(path) == path
    assert delta_rs_uri(Path("/data/lake/catalog")) == "/data/lake/catalog"


def test_a_job_on_a_uri_lake_without_artifacts_stops_before_spark_in_one_line(capsys):
    from jobs import cli

    assert cli.main(["fuse", "--ds", "2026-11-25", "--lake", "s3a://bucket/lake"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("modalrank fuse: error: the lake s3a://bucket/lake is not a local folder")
    assert "set MODALRANK_ARTIFACTS" in error and error.count("\n") == 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1", True),
        (" TRUE ", True),
        ("yes", True),
        ("On", True),
        ("0", False),
        ("false", False),
        ("no", False),
        ("", False),
    ],
)
def test_one_boolean_reading_for_flags_and_the_environment(monkeypatch, text, expected):
    from jobs.extract import add_force_argument
    from jobs.fuse import add_arguments as add_fuse_arguments

    monkeypatch.setenv("MODALRANK_SPARK_UI", text)
    assert load_config().spark_ui is expected
    force, fuse = argparse.ArgumentParser(), argparse.ArgumentParser()
    add_force_argument(force)
    add_fuse_arguments(fuse)
    assert force.parse_args(["--force", text]).force is expected
    assert force.parse_args(["--force"]).force is True and force.parse_args([]).force is False
    assert fuse.parse_args(["--ds", "2026-11-01", "--refit", text]).refit is expected
