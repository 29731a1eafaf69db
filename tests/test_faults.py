"""Crash points kill the process exactly where and when `MODALRANK_CRASH_AT` says, and nowhere else."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

SCRIPT = """
from jobs.faults import crash_point
for chunk in range(1, 4):
    print("before", chunk, flush=True)
    crash_point("demo.chunk_done")
    print("after", chunk, flush=True)
"""


def run_with(crash_at: str | None) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "MODALRANK_CRASH_AT"}
    if crash_at is not None:
        env["MODALRANK_CRASH_AT"] = crash_at
    env["PYTHONPATH"] = str(REPO_ROOT)
    return subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    ("crash_at", "printed", "returncode"),
    [
        (None, ["before 1", "after 1", "before 2", "after 2", "before 3", "after 3"], 0),
        ("other.point", ["before 1", "after 1", "before 2", "after 2", "before 3", "after 3"], 0),
        ("demo.chunk_done", ["before 1"], -signal.SIGKILL),
        ("demo.chunk_done:2", ["before 1", "after 1", "before 2"], -signal.SIGKILL),
    ],
)
def test_crash_point_kills_with_sigkill_at_the_named_hit(crash_at, printed, returncode):
    finished = run_with(crash_at)
    assert finished.returncode == returncode
    assert finished.stdout.split("\n")[:-1] == printed
