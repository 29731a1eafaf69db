"""Run leases between real processes: a second run of a date waits, then fails naming the holder and having
changed nothing; a killed holder frees the lease at once; other dates proceed side by side.

The holder is a separate Python process that takes a lease and waits for a line on stdin; the jobs are
called with `spark=None`, which shows that they take their lease before touching Spark or any file.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

from jobs import lease
from jobs.config import load_config

DS = dt.date(2026, 11, 25)

HOLDER = """
import sys
from jobs import lease
from jobs.config import configure_logging, load_config

configure_logging()
config = load_config(lake=sys.argv[1])
with lease.leases(config, sys.argv[3].split(","), sys.argv[2], timeout=float(sys.argv[4])):
    print("held", flush=True)
    sys.stdin.readline()
print("released", flush=True)
"""


def start_holder(config, keys: list[str], job: str = "backfill", timeout: float = 0) -> subprocess.Popen:
    """A process holding `keys`; it has taken them once this returns (or waits for them: see `waiting`)."""
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER, config.lake, job, ",".join(keys), str(timeout)],
        env=os.environ | {"PYTHONPATH": str(REPO_ROOT), "MODALRANK_RUN_ID": f"{job}-run"},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(stream, text: str) -> list[str]:
    lines = []
    for line in stream:
        lines.append(line)
        if text in line:
            return lines
    raise AssertionError(f"{text!r} never came: {''.join(lines)}")


@pytest.fixture
def config(tmp_path):
    return load_config(lake=str(tmp_path / "lake"), lease_timeout_seconds=1)


@pytest.fixture
def holder(config):
    """Another run holding the lease of DS."""
    process = start_holder(config, [lease.date_key(DS)])
    wait_for(process.stdout, "held")
    yield process
    if process.poll() is None:
        process.kill()
    process.communicate(timeout=30)


def test_a_second_run_of_a_date_fails_naming_the_holder(config, holder):
    with pytest.raises(lease.LeaseBusyError) as caught:
        with lease.lease(config, lease.date_key(DS), "publish", timeout=0.5):
            pytest.fail("took a lease another process holds")
    message = str(caught.value)
    assert f"lease ds-{DS} of lake {config.lake} is held by backfill (pid {holder.pid} on " in message
    assert "run backfill-run" in message and "waited 0.5 s" in message and "changed nothing" in message
    record = json.loads(lease.lock_path(config, lease.date_key(DS)).read_text())
    assert (record["job"], record["pid"], record["lake"]) == ("backfill", holder.pid, config.lake)


@pytest.mark.parametrize("job", ["train", "fuse", "publish"])
def test_a_job_whose_date_is_leased_fails_before_writing_anything(config, holder, job):
    from jobs.fuse import run_fuse
    from jobs.publish import run_publish
    from jobs.train import run_train

    run = {"train": run_train, "fuse": run_fuse, "publish": run_publish}[job]
    with pytest.raises(lease.LeaseBusyError, match=f"held by backfill \\(pid {holder.pid} "):
        run(None, config, DS)  # no Spark: the lease comes first
    written = sorted(str(p.relative_to(config.artifacts_dir)) for p in config.artifacts_dir.rglob("*"))
    # Only the lake's identity (bound by the holder, which took its lease first) and the lock files.
    assert written == ["_lake_identity.json", "_locks", f"_locks/ds-{DS}.lock", "_locks/lake-identity.lock"]


def test_train_waits_for_the_lease_of_its_training_week(config):
    """Two dates of one training week share a ranker: train of the later date waits for the training date's
    lease even though its own date is free."""
    from jobs.train import run_train, training_date

    sunday = training_date(DS, 7)
    process = start_holder(config, [lease.date_key(sunday), lease.training_key(sunday)], job="train")
    try:
        wait_for(process.stdout, "held")
        with pytest.raises(lease.LeaseBusyError, match=f"lease train-{sunday} .* held by train"):
            run_train(None, config, DS, every_days=7)
        assert lease.is_free(config, lease.date_key(DS))  # its own date's lease was given back
    finally:
        process.kill()
        process.communicate(timeout=30)


def test_a_waiting_run_proceeds_once_the_holder_finishes(config, holder):
    waiter = start_holder(config, [lease.date_key(DS)], job="publish", timeout=600)
    try:
        wait_for(waiter.stderr, f"waiting up to 600 s for lease ds-{DS}, held by backfill (pid {holder.pid}")
        holder.stdin.write("done\n")
        holder.stdin.flush()
        wait_for(holder.stdout, "released")
        wait_for(waiter.stdout, "held")
        waiter.stdin.write("done\n")
        waiter.stdin.flush()
        assert waiter.wait(timeout=60) == 0
    finally:
        if waiter.poll() is None:
            waiter.kill()
        waiter.communicate(timeout=30)


def test_a_holder_killed_with_sigkill_frees_the_lease_at_once(config, holder):
    assert not lease.is_free(config, lease.date_key(DS))
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    assert lease.is_free(config, lease.date_key(DS))
    with lease.lease(config, lease.date_key(DS), "publish", timeout=0):
        record = json.loads(lease.lock_path(config, lease.date_key(DS)).read_text())
        assert (record["job"], record["pid"]) == ("publish", os.getpid())
    assert lease.lock_path(config, lease.date_key(DS)).read_text() == ""  # released: no holder named


def test_runs_of_other_dates_proceed_side_by_side(config, holder):
    other = DS - dt.timedelta(days=1)
    with lease.lease(config, lease.date_key(other), "publish", timeout=0):
        assert not lease.is_free(config, lease.date_key(other))
    assert lease.is_free(config, lease.date_key(other))


def test_a_lease_is_reentrant_within_a_process(config):
    with lease.lease(config, lease.date_key(DS), "backfill", timeout=0):
        with lease.lease(config, lease.date_key(DS), "train", timeout=0):
            pass
        assert not lease.is_free(config, lease.date_key(DS))  # the inner release kept the outer hold
    assert lease.is_free(config, lease.date_key(DS))


def test_extractors_of_one_date_lease_their_own_table(config):
    """The DAG's extractors of a date run side by side (they write different tables); two runs of the same
    extractor do not."""
    text = start_holder(config, [lease.date_key(DS, "features_text")], job="extract text")
    try:
        wait_for(text.stdout, "held")
        with lease.lease(config, lease.date_key(DS, "features_image"), "extract image", timeout=0):
            assert not lease.is_free(config, lease.date_key(DS, "features_image"))
        with pytest.raises(lease.LeaseBusyError, match=f"lease ds-{DS}-features_text .* held by extract text"):
            with lease.lease(config, lease.date_key(DS, "features_text"), "extract text", timeout=0):
                pytest.fail("took a lease another process holds")
    finally:
        text.kill()
        text.communicate(timeout=30)
