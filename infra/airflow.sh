#!/usr/bin/env bash
# The production-shaped Airflow: PostgreSQL as the metadata database, and the scheduler, DAG processor,
# triggerer and API server as separate processes with the LocalExecutor. (`airflow dags test` and SQLite,
# which infra/demo.sh uses, are what Airflow documents for development only.)
#
#   bash infra/airflow.sh start                 # PostgreSQL, `airflow db migrate`, the pool, the four processes
#   bash infra/airflow.sh trigger DATE [CONF]   # a nightly run through the REST API, followed to its end
#   bash infra/airflow.sh status                # each process, and the API server's health report
#   bash infra/airflow.sh stop                  # the processes, then PostgreSQL
#   bash infra/airflow.sh cli ARGS...           # the `airflow` CLI on this deployment, e.g. `cli backfill create ...`
#
# Everything lives in one folder, MODALRANK_AIRFLOW_DEPLOYMENT (default .airflow-deployment/): the Airflow
# home, logs/<process>.log, logs/tasks/, run/<process>.pid, lineage/ (OpenLineage events), secrets.env,
# passwords.json and, unless
# AIRFLOW__DATABASE__SQL_ALCHEMY_CONN names a server of your own, postgres/ (a server on 127.0.0.1,
# MODALRANK_POSTGRES_PORT, default 5433; its data folder can be put elsewhere: MODALRANK_POSTGRES_DATA). The API server listens on 127.0.0.1:MODALRANK_AIRFLOW_PORT (8080).
# `start` starts only what is not running, so after a crash it is also the restart; every start runs
# `airflow db migrate`, which is how an upgrade of apache-airflow reaches the database.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$MODALRANK_ROOT"

deployment="${MODALRANK_AIRFLOW_DEPLOYMENT:-$MODALRANK_ROOT/.airflow-deployment}"
api_port="${MODALRANK_AIRFLOW_PORT:-8080}"
pg_port="${MODALRANK_POSTGRES_PORT:-5433}"
mkdir -p "$deployment/logs/tasks" "$deployment/run"
deployment="$(cd "$deployment" && pwd)"
# The server's data folder; as root, the `postgres` user must be able to reach it (see postgres_start).
pg_data="${MODALRANK_POSTGRES_DATA:-$deployment/postgres}"
# The order `start` brings them up in; `stop` takes them down in reverse.
components=(api-server dag-processor scheduler triggerer)

log() { echo "airflow.sh: $*"; }

# Secrets made once per deployment, readable by its owner only: the JWT secret the scheduler and the API
# server must share (tasks' tokens are signed by one and checked by the other), the Fernet key for
# connections' passwords, the database password and the admin user's password.
if [ ! -f "$deployment/secrets.env" ]; then
  (
    umask 077
    python_secrets=$("$VIRTUAL_ENV/bin/python" - <<'PY'
import secrets
from cryptography.fernet import Fernet
print(f"jwt_secret={secrets.token_urlsafe(48)}")
print(f"fernet_key={Fernet.generate_key().decode()}")
print(f"postgres_password={secrets.token_urlsafe(24)}")
print(f"admin_password={secrets.token_urlsafe(18)}")
PY
)
    echo "$python_secrets" >"$deployment/secrets.env.tmp"
    mv "$deployment/secrets.env.tmp" "$deployment/secrets.env"
  )
fi
# shellcheck disable=SC1091
source "$deployment/secrets.env"
if [ ! -f "$deployment/passwords.json" ]; then
  (umask 077; printf '{"modalrank": "%s"}\n' "$admin_password" >"$deployment/passwords.json")
fi

export AIRFLOW_HOME="$deployment"
export AIRFLOW__CORE__EXECUTOR=LocalExecutor
# Task slots of this Airflow (the Spark pool's slots cap the Spark jobs among them).
export AIRFLOW__CORE__PARALLELISM="${AIRFLOW__CORE__PARALLELISM:-8}"
# How soon a restarted scheduler retries the tasks a dead one was running: it resets them once that
# scheduler's heartbeat is 30 s old, at its start or at this check (Airflow's default: every 5 minutes).
export AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL="${AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL:-60}"
export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="${AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION:-False}"
export AIRFLOW__API__BASE_URL="http://127.0.0.1:$api_port"
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="http://127.0.0.1:$api_port/execution/"
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="modalrank:admin"
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE="$deployment/passwords.json"
export AIRFLOW__API_AUTH__JWT_SECRET="$jwt_secret"
export AIRFLOW__CORE__FERNET_KEY="$fernet_key"
export AIRFLOW__LOGGING__BASE_LOG_FOLDER="$deployment/logs/tasks"
export AIRFLOW__LOGGING__DAG_PROCESSOR_CHILD_PROCESS_LOG_DIRECTORY="$deployment/logs/dag-processor"
# OpenLineage. Airflow's provider: every task's run events with the Delta tables its stage reads and
# writes (jobs/dag_common.py), one JSON file an event in lineage/, unless AIRFLOW__OPENLINEAGE__TRANSPORT
# names another transport (e.g. {"type": "http", "url": "http://marquez:5000"}). Spark's listener: every
# read and write each Spark job makes, a file per task try in lineage/spark/<dag>/<run>/, as children of
# the tasks' runs (MODALRANK_SPARK_LINEAGE_DIR; empty turns it off).
export AIRFLOW__OPENLINEAGE__NAMESPACE="${AIRFLOW__OPENLINEAGE__NAMESPACE:-modalrank}"
if [ -z "${AIRFLOW__OPENLINEAGE__TRANSPORT:-}" ]; then
  mkdir -p "$deployment/lineage"
  export AIRFLOW__OPENLINEAGE__TRANSPORT='{"type": "file", "log_file_path": "'"$deployment/lineage/event"'"}'
fi
export MODALRANK_SPARK_LINEAGE_DIR="${MODALRANK_SPARK_LINEAGE_DIR-$deployment/lineage/spark}"
own_postgres=0
if [ -z "${AIRFLOW__DATABASE__SQL_ALCHEMY_CONN:-}" ]; then
  own_postgres=1
  export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="postgresql+psycopg2://airflow:$postgres_password@127.0.0.1:$pg_port/airflow"
fi

# PostgreSQL refuses to run as root: as root, its server and tools run as Debian's `postgres` user.
pg_bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
as_postgres=()
if [ "$(id -u)" = 0 ]; then as_postgres=(runuser -u postgres --); fi

postgres_start() {
  [ -n "$pg_bin" ] || { log "no PostgreSQL server here: infra/setup.sh installs Debian's postgresql (as root)"; exit 1; }
  if [ ! -f "$pg_data/PG_VERSION" ]; then
    log "creating a PostgreSQL cluster in $pg_data"
    rm -rf "$pg_data" && mkdir -p "$pg_data" && chmod 700 "$pg_data"
    if [ "$(id -u)" = 0 ]; then
      chown postgres:postgres "$pg_data"
      # The server's user must be able to reach its folder: let it pass (not list) every folder above.
      # (A folder that something else keeps private, such as pytest's /tmp/pytest-of-<user>, takes that
      # back: put the data elsewhere with MODALRANK_POSTGRES_DATA.)
      local dir
      dir="$(dirname "$pg_data")"
      while [ "$dir" != / ]; do
        runuser -u postgres -- test -x "$dir" || { chmod o+x "$dir"; log "let postgres pass through $dir"; }
        dir="$(dirname "$dir")"
      done
    fi
    "${as_postgres[@]}" "$pg_bin/initdb" -D "$pg_data" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
      --encoding=UTF8 --locale=C.UTF-8 >"$deployment/logs/postgres-initdb.log" 2>&1 \
      || { tail -n 20 "$deployment/logs/postgres-initdb.log"; exit 1; }
  fi
  if "${as_postgres[@]}" "$pg_bin/pg_ctl" -D "$pg_data" status >/dev/null 2>&1; then
    log "postgres: already running"
  else
    # The server writes its log where it can (its own folder); logs/postgres.log points there. Airflow's
    # transactions last milliseconds: one idle for five minutes belongs to a process that died or hung
    # while holding locks the scheduler needs, and the server ends it.
    ln -sfn "$pg_data/server.log" "$deployment/logs/postgres.log"
    "${as_postgres[@]}" "$pg_bin/pg_ctl" -D "$pg_data" -l "$pg_data/server.log" -w -t 60 \
      -o "-p $pg_port -c listen_addresses=127.0.0.1 -k $pg_data -c idle_in_transaction_session_timeout=300s" \
      start >/dev/null \
      || { tail -n 20 "$pg_data/server.log"; exit 1; }
    log "postgres: started on 127.0.0.1:$pg_port"
  fi
  # The database and its owner, made once (the socket in the data folder is the superuser's only door).
  local psql=("${as_postgres[@]}" "$pg_bin/psql" -h "$pg_data" -p "$pg_port" -U postgres -d postgres -qtA -v ON_ERROR_STOP=1)
  if [ -z "$("${psql[@]}" -c "SELECT 1 FROM pg_roles WHERE rolname = 'airflow'")" ]; then
    "${psql[@]}" -c "CREATE ROLE airflow LOGIN PASSWORD '$postgres_password'"
    "${psql[@]}" -c "CREATE DATABASE airflow OWNER airflow"
  fi
}

postgres_stop() {
  if [ -f "$pg_data/postmaster.pid" ]; then
    "${as_postgres[@]}" "$pg_bin/pg_ctl" -D "$pg_data" -m fast -w stop >/dev/null && log "postgres: stopped"
  fi
}

pid_of() {
  local pid_file="$deployment/run/$1.pid"
  [ -f "$pid_file" ] && kill -0 "$(cat "$pid_file")" 2>/dev/null && cat "$pid_file"
}

# A component that died without `stop` (a crash, a kill -9) leaves its children running in its session:
# LocalExecutor workers (idle ones ignore SIGTERM and wait for work forever), the log server, the
# spark-submits of the tasks it ran. Every one of them holds the dead scheduler's PostgreSQL connection (a
# forked copy of its socket), so the server never sees it close: a transaction the scheduler had open when
# it died keeps its row locks, and a new scheduler skips those DAG runs forever (seen: a nightly stuck in
# `running` for 45 minutes). So the whole session is ended; the new scheduler resets the tasks that were
# running and retries them (it would stop their old workers anyway: their task instances have a new try).
# True when there was such a session.
end_dead_session() {
  local pid_file="$deployment/run/$1.pid"
  [ -f "$pid_file" ] && ! pid_of "$1" >/dev/null || return 1
  ps -o pid= --sid "$(cat "$pid_file")" | xargs -r kill -KILL 2>/dev/null || true
}

start_component() {
  local name=$1
  shift
  local pid
  if pid=$(pid_of "$name"); then
    log "$name: already running (pid $pid)"
    return
  fi
  if end_dead_session "$name"; then
    log "$name: pid $(cat "$deployment/run/$name.pid") had died; ended what it left running, started again (its tasks are retried)"
  fi
  # A session of its own: `stop` ends the process with its children (API workers, executor workers).
  setsid "$@" >>"$deployment/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$deployment/run/$name.pid"
  log "$name: started (pid $!, log $deployment/logs/$name.log)"
}

health() { curl -sf --max-time 5 "http://127.0.0.1:$api_port/api/v2/monitor/health"; }

wait_healthy() {
  local component=$1 deadline=$(( $(date +%s) + 180 ))
  until health 2>/dev/null | "$VIRTUAL_ENV/bin/python" -c "import json, sys
sys.exit(json.load(sys.stdin).get('$component', {}).get('status') != 'healthy')" 2>/dev/null; do
    if [ "$(date +%s)" -gt "$deadline" ]; then
      log "$component is not healthy after 180 s; its log: $deployment/logs/$component.log"
      exit 1
    fi
    sleep 2
  done
}

start() {
  if [ "$own_postgres" = 1 ]; then postgres_start; else log "postgres: using AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"; fi
  log "migrating the metadata database (log: $deployment/logs/db-migrate.log)"
  airflow db migrate >"$deployment/logs/db-migrate.log" 2>&1 || { tail -n 30 "$deployment/logs/db-migrate.log"; exit 1; }
  airflow pools set modalrank_spark "$MODALRANK_SPARK_POOL_SLOTS" "modalrank Spark jobs at once" \
    >>"$deployment/logs/db-migrate.log" 2>&1 || { tail -n 30 "$deployment/logs/db-migrate.log"; exit 1; }
  start_component api-server airflow api-server --host 127.0.0.1 --port "$api_port" --workers 1
  wait_healthy metadatabase
  start_component dag-processor airflow dag-processor
  start_component scheduler airflow scheduler
  start_component triggerer airflow triggerer
  wait_healthy scheduler
  wait_healthy dag_processor
  wait_healthy triggerer
  log "up: API and UI at http://127.0.0.1:$api_port (user modalrank, password in $deployment/passwords.json)"
}

stop() {
  local index pid
  for (( index=${#components[@]}-1; index>=0; index-- )); do
    local name=${components[index]}
    if pid=$(pid_of "$name"); then
      kill -TERM -- "-$pid" 2>/dev/null || true
      for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
      kill -KILL -- "-$pid" 2>/dev/null || true
      log "$name: stopped (pid $pid)"
    elif end_dead_session "$name"; then
      log "$name: pid $(cat "$deployment/run/$name.pid") had died; ended what it left running"
    fi
    rm -f "$deployment/run/$name.pid"
  done
  if [ "$own_postgres" = 1 ]; then postgres_stop; fi
}

status() {
  local name pid down=0
  for name in "${components[@]}"; do
    if pid=$(pid_of "$name"); then echo "$name: running (pid $pid)"; else echo "$name: not running"; down=1; fi
  done
  if [ "$own_postgres" = 1 ]; then
    if [ -f "$pg_data/postmaster.pid" ]; then echo "postgres: running ($pg_data)"; else echo "postgres: not running"; down=1; fi
  fi
  echo "health: $(health || echo 'no answer from the API server')"
  return $down
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  trigger)
    [ -n "${2:-}" ] || { echo "usage: bash infra/airflow.sh trigger DATE [CONF_JSON]" >&2; exit 2; }
    conf="${3:-}"
    exec "$VIRTUAL_ENV/bin/python" -m infra.tools.airflow_api --deployment "$deployment" --url "$AIRFLOW__API__BASE_URL" \
      trigger --date "$2" --conf "${conf:-"{}"}" --wait
    ;;
  cli)
    shift
    exec airflow "$@"
    ;;
  *)
    echo "usage: bash infra/airflow.sh start|stop|status|trigger DATE [CONF_JSON]|cli ARGS..." >&2
    exit 2
    ;;
esac
