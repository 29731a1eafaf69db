# Environment for every modalrank command run from a checkout. Source it: `source infra/env.sh`.
# It only sets variables; infra/setup.sh installs.
MODALRANK_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export MODALRANK_ROOT
export VIRTUAL_ENV="$MODALRANK_ROOT/.venv"
# The Airflow Spark provider runs `spark-submit` from PATH: the venv's, from the pyspark wheel.
export PATH="$VIRTUAL_ENV/bin:$PATH"
# This checkout's code first, for the driver and for Spark's Python workers (they inherit PYTHONPATH):
# a venv installed editable from another checkout (a git worktree, a second clone) must not run that
# checkout's jobs/ and features/ instead.
export PYTHONPATH="$MODALRANK_ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYSPARK_PYTHON="$VIRTUAL_ENV/bin/python"
export PYSPARK_DRIVER_PYTHON="$VIRTUAL_ENV/bin/python"
export SPARK_LOCAL_IP="${SPARK_LOCAL_IP:-127.0.0.1}"
export MODALRANK_JARS_DIR="${MODALRANK_JARS_DIR:-$MODALRANK_ROOT/.cache/jars}"
# numba's JIT cache (librosa) in the project, not in site-packages: `rm -rf .cache/numba` resets it.
export NUMBA_CACHE_DIR="${NUMBA_CACHE_DIR:-$MODALRANK_ROOT/.cache/numba}"
# Models are loaded from site-packages only; never reach for a hub.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# Airflow: a project-local home with SQLite, our dags/ folder, no examples.
export AIRFLOW_HOME="${AIRFLOW_HOME:-$MODALRANK_ROOT/.airflow}"
export AIRFLOW__CORE__DAGS_FOLDER="$MODALRANK_ROOT/dags"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__UNIT_TEST_MODE="${AIRFLOW__CORE__UNIT_TEST_MODE:-False}"
# The Spark connection the DAG's jobs use. Local mode by default; point it at a cluster with e.g.
#   export AIRFLOW_CONN_MODALRANK_SPARK='{"conn_type": "spark", "host": "spark://host", "port": 7077}'
export AIRFLOW_CONN_MODALRANK_SPARK="${AIRFLOW_CONN_MODALRANK_SPARK:-{\"conn_type\": \"spark\", \"host\": \"local[2]\"\}}"
# Slots of the Airflow pool `modalrank_spark` (infra/setup.sh): how many Spark jobs may run at once.
# One per two cores in local mode; raise it for a cluster.
export MODALRANK_SPARK_POOL_SLOTS="${MODALRANK_SPARK_POOL_SLOTS:-$(( $(nproc) / 2 > 0 ? $(nproc) / 2 : 1 ))}"
