#!/usr/bin/env bash
# The test command: set-up (fast when already done), then the whole suite. Extra arguments go to pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/infra/setup.sh"
source "$root/infra/env.sh"
cd "$root"
.venv/bin/ruff check dags jobs features tests infra
# One layout for everyone: a change that `ruff format` would rewrite fails here (run it, then commit).
.venv/bin/ruff format --check dags jobs features tests infra
# Types of the pure packages (setup.cfg's [mypy]): ~10 s with a warm cache.
.venv/bin/mypy features jobs/ranking
# Two processes (MODALRANK_TEST_WORKERS), each with its own SparkSession and Airflow home, a whole test
# file at a time so that module fixtures (built lakes) are made once, in collection order (the longest
# files first: tests/conftest.py's LONGEST_FIRST). The release tier is `bash infra/test.sh -m cluster`.
# The slowest tests are listed at the end of every run: where the suite's time goes, in CI's own log.
exec .venv/bin/python -m pytest --numprocesses "${MODALRANK_TEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder --durations=30 "$@"
