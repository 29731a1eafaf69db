#!/usr/bin/env bash
# The test command: set-up (fast when already done), then the whole suite. Extra arguments go to pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/infra/setup.sh"
source "$root/infra/env.sh"
cd "$root"
.venv/bin/ruff check dags jobs features tests
# The slowest tests at the end of every run: where the suite's time goes, in CI's own log.
exec .venv/bin/python -m pytest --durations=30 "$@"
