"""One lake per artifacts folder, one artifacts folder per lake (jobs.lake_identity).

The binding is decided on the file system before a job writes anything, so most of these tests call it
(and the stages, with `spark=None`: they are refused before they touch Spark) on real folders; the last
ones run `modalrank` as a process on copies of the suite's built lake and check that the production side
was left exactly as it was.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import BUILT_DEMO, REPO_ROOT

from jobs import lake_identity, lease
from jobs.config import load_config
from jobs.lake_identity import IDENTITY_FILE, LakeMismatchError, bind
from jobs.publish import run_publish
from jobs.train import run_train

DS = dt.date(2026, 11, 25)


@pytest.fixture(autouse=True)
def _each_test_decides_afresh():
    # bind() remembers a checked pair for the life of the process; every test here changes the folders.
    lake_identity._bound.clear()
    yield
    lake_identity._bound.clear()


def record(folder: Path) -> dict:
    return json.loads((folder / IDENTITY_FILE).read_text())


def test_a_new_lake_and_folder_are_bound_once_and_both_sides_hold_the_same_record(tmp_path):
    config = load_config(lake=str(tmp_path / "lake"), artifacts=str(tmp_path / "artifacts"))
    lake_id = bind(config)
    assert record(tmp_path / "lake") == record(tmp_path / "artifacts")
    assert record(tmp_path / "lake")["lake_id"] == lake_id
    assert record(tmp_path / "lake")["lake"] == str(tmp_path / "lake")
    assert record(tmp_path / "lake")["artifacts"] == str(tmp_path / "artifacts")
    lake_identity._bound.clear()
    assert bind(config) == lake_id  # read back, not made again


def test_a_second_lake_is_refused_the_first_lakes_artifacts_folder(tmp_path):
    production = load_config(lake=str(tmp_path / "production"), artifacts=str(tmp_path / "artifacts"))
    production_id = bind(production)
    staging = load_config(lake=str(tmp_path / "staging"), artifacts=str(tmp_path / "artifacts"))
    with pytest.raises(LakeMismatchError) as refused:
        bind(staging)
    message = str(refused.value)
    assert "\n" not in message
    assert f"belongs to the lake {tmp_path / 'production'} (id {production_id})" in message
    assert str(tmp_path / "staging") in message
    # Refused before anything was written on the staging side, and the folder's record is untouched.
    assert not (tmp_path / "staging").exists()
    assert record(tmp_path / "artifacts")["lake_id"] == production_id


def test_a_lake_is_refused_a_second_artifacts_folder(tmp_path):
    lake = str(tmp_path / "lake")
    bind(load_config(lake=lake, artifacts=str(tmp_path / "first")))
    with pytest.raises(LakeMismatchError, match=f"keeps its artifacts in {tmp_path / 'first'}, not in"):
        bind(load_config(lake=lake, artifacts=str(tmp_path / "second")))
    assert not (tmp_path / "second" / "_locks").exists() or not any(
        path.name.startswith("ds-") for path in (tmp_path / "second" / "_locks").iterdir()
    )


def test_a_lake_that_keeps_its_own_artifacts_is_refused_another_folder_and_the_reverse(tmp_path):
    lake = str(tmp_path / "lake")
    own = load_config(lake=lake)
    lake_id = bind(own)
    assert record(tmp_path / "lake")["artifacts"] == ""
    with pytest.raises(LakeMismatchError, match="keeps its artifacts in its own folder"):
        bind(load_config(lake=lake, artifacts=str(tmp_path / "elsewhere")))
    lake_identity._bound.clear()
    assert bind(own) == lake_id


def test_a_copied_lake_gets_an_identity_of_its_own_and_not_the_originals_folder(tmp_path):
    original = load_config(lake=str(tmp_path / "lake"), artifacts=str(tmp_path / "artifacts"))
    original_id = bind(original)
    shutil.copytree(tmp_path / "lake", tmp_path / "copy")  # a staging lake made by copying production
    with pytest.raises(LakeMismatchError, match="has no identity of its own yet"):
        bind(load_config(lake=str(tmp_path / "copy"), artifacts=str(tmp_path / "artifacts")))
    copy_id = bind(load_config(lake=str(tmp_path / "copy"), artifacts=str(tmp_path / "copy-artifacts")))
    assert copy_id != original_id
    assert record(tmp_path / "copy") == record(tmp_path / "copy-artifacts")
    lake_identity._bound.clear()
    assert bind(original) == original_id  # the original's binding is unchanged


def test_a_copied_lake_that_keeps_its_own_artifacts_takes_a_new_identity(tmp_path):
    original_id = bind(load_config(lake=str(tmp_path / "lake")))
    shutil.copytree(tmp_path / "lake", tmp_path / "copy")
    copy_id = bind(load_config(lake=str(tmp_path / "copy")))
    assert copy_id != original_id
    assert record(tmp_path / "copy")["lake"] == str(tmp_path / "copy")


def test_a_binding_cut_between_its_two_writes_is_finished_by_the_next_run(tmp_path):
    config = load_config(lake=str(tmp_path / "lake"), artifacts=str(tmp_path / "artifacts"))
    first = lake_identity.new_record(config)
    assert lake_identity.write_lake_side(config, first, exclusive=True)  # then the process died
    assert bind(config) == first["lake_id"]
    assert record(tmp_path / "artifacts") == first


def test_a_moved_lake_is_refused_until_adopted(tmp_path):
    lake_id = bind(load_config(lake=str(tmp_path / "lake"), artifacts=str(tmp_path / "artifacts")))
    os.rename(tmp_path / "lake", tmp_path / "moved")
    moved = load_config(lake=str(tmp_path / "moved"), artifacts=str(tmp_path / "artifacts"))
    with pytest.raises(LakeMismatchError, match="modalrank lake-identity --adopt"):
        bind(moved)
    assert lake_identity.adopt(moved)["lake_id"] == lake_id
    assert bind(moved) == lake_id
    assert record(tmp_path / "moved") == record(tmp_path / "artifacts")


def test_a_moved_artifacts_folder_brings_its_binding_along(tmp_path):
    lake_id = bind(load_config(lake=str(tmp_path / "lake"), artifacts=str(tmp_path / "artifacts")))
    os.rename(tmp_path / "artifacts", tmp_path / "new-mount")
    assert bind(load_config(lake=str(tmp_path / "lake"), artifacts=str(tmp_path / "new-mount"))) == lake_id
    # The lake follows the folder, so an empty folder at the old path is now a second folder.
    assert record(tmp_path / "lake")["artifacts"] == str(tmp_path / "new-mount")
    lake_identity._bound.clear()
    with pytest.raises(LakeMismatchError):
        bind(load_config(lake=str(tmp_path / "lake"), artifacts=str(tmp_path / "artifacts")))


def test_a_record_that_is_not_one_is_a_clear_error(tmp_path):
    (tmp_path / "artifacts").mkdir()
    (tmp_path / "artifacts" / IDENTITY_FILE).write_text('["not", "a", "record"]')
    with pytest.raises(LakeMismatchError, match="is not a lake identity record"):
        bind(load_config(lake=str(tmp_path / "lake"), artifacts=str(tmp_path / "artifacts")))


BINDER = """
import sys
from jobs.config import load_config
from jobs.lake_identity import bind
sys.stdin.readline()
print(bind(load_config(lake=sys.argv[1], artifacts=sys.argv[2])), flush=True)
"""


def test_first_runs_racing_on_one_new_pair_agree_on_one_identity(tmp_path):
    arguments = [str(tmp_path / "lake"), str(tmp_path / "artifacts")]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", BINDER, *arguments],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(4)
    ]
    for racer in racers:  # all imported and waiting: released together
        racer.stdin.write("go\n")
        racer.stdin.flush()
    ids = {racer.communicate(timeout=120)[0].strip() for racer in racers}
    assert all(racer.returncode == 0 for racer in racers)
    assert ids == {record(tmp_path / "lake")["lake_id"]} == {record(tmp_path / "artifacts")["lake_id"]}


def test_stages_are_refused_a_foreign_artifacts_folder_before_they_touch_spark(tmp_path):
    bind(load_config(lake=str(tmp_path / "production"), artifacts=str(tmp_path / "artifacts")))
    staging = load_config(lake=str(tmp_path / "staging"), artifacts=str(tmp_path / "artifacts"))
    with pytest.raises(LakeMismatchError):
        run_train(None, staging, DS, every_days=7)
    with pytest.raises(LakeMismatchError):
        run_publish(None, staging, DS)
    assert not any((tmp_path / "artifacts" / lease.LOCKS_FOLDER).glob("ds-*"))


def folder_digest(folder: Path) -> dict[str, str]:
    """Every file under `folder` (lock files aside: a refused run may open its own) and its sha256."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and "_locks" not in path.parts
    }


@pytest.mark.spark
def test_modalrank_refuses_a_staging_lake_on_productions_artifacts_and_changes_nothing(built_lake, tmp_path):
    production = built_lake.copy_to(tmp_path / "production")
    staging = built_lake.copy_to(tmp_path / "staging")  # a staging lake made by copying production
    bind(production)
    before = folder_digest(Path(production.lake))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "MODALRANK_DRIVER_MEMORY": "1g"}
    for stage in ("train", "publish"):
        run = subprocess.run(
            [sys.executable, "-m", "jobs.cli", stage, "--ds", str(BUILT_DEMO.end_date)]
            + ["--lake", staging.lake, "--artifacts", production.lake],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert run.returncode == 2, run.stderr[-2000:]
        # One line says why (Spark's own shutdown lines may follow it in the log).
        errors = [line for line in run.stderr.splitlines() if line.startswith(f"modalrank {stage}: error: ")]
        assert len(errors) == 1, run.stderr[-2000:]
        assert errors[0].startswith(f"modalrank {stage}: error: the artifacts folder {production.lake} belongs to")
    assert folder_digest(Path(production.lake)) == before
