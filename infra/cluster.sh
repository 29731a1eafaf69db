#!/usr/bin/env bash
# A Spark standalone cluster on this machine, for running the nightly DAG in cluster mode: one master and
# two workers started with `spark-class` from the pyspark wheel (no Spark download, no Docker).
#
#   bash infra/cluster.sh start    # prints the master URL, spark://127.0.0.1:PORT (a no-op when running)
#   bash infra/cluster.sh status   # the master URL; its web UI and how many workers are alive (exit 1: down)
#   bash infra/cluster.sh stop     # stops the workers and the master and waits until they are gone
#
# Only the master URL goes to stdout, so `master=$(bash infra/cluster.sh start)` works; progress goes to
# stderr. Pid files, the chosen ports and every daemon's log live in MODALRANK_CLUSTER_DIR (default
# .cache/spark-cluster/; the workers' executor logs are under worker-N/work/<app>/). Ports are free ones
# picked at start unless MODALRANK_CLUSTER_PORT / MODALRANK_CLUSTER_WEBUI_PORT name them. Each of the
# MODALRANK_CLUSTER_WORKERS (2) workers offers MODALRANK_CLUSTER_WORKER_CORES (1) cores and
# MODALRANK_CLUSTER_WORKER_MEMORY (2g) of executor memory: two one-core workers fill the 2-core machine.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

state="${MODALRANK_CLUSTER_DIR:-$MODALRANK_ROOT/.cache/spark-cluster}"
workers="${MODALRANK_CLUSTER_WORKERS:-2}"
worker_cores="${MODALRANK_CLUSTER_WORKER_CORES:-1}"
worker_memory="${MODALRANK_CLUSTER_WORKER_MEMORY:-2g}"
# The daemons only schedule; the executors they launch get their own memory (spark.executor.memory).
export SPARK_DAEMON_MEMORY="${SPARK_DAEMON_MEMORY:-512m}"
# Every application leaves its executors' logs and a copy of the Delta jars (~13 MB per executor) in the
# workers' work dirs: workers delete those of applications that ended more than a day ago.
export SPARK_WORKER_OPTS="${SPARK_WORKER_OPTS:--Dspark.worker.cleanup.enabled=true -Dspark.worker.cleanup.appDataTtl=86400}"
spark_class="$VIRTUAL_ENV/bin/spark-class"
python="$VIRTUAL_ENV/bin/python"

say() { echo "cluster: $*" >&2; }

# A process is alive until it has exited; an exited daemon can stay a zombie until init reaps it.
alive() {
  local process_state
  process_state="$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)"
  [[ -n "$process_state" && "$process_state" != "Z" && "$process_state" != "X" ]]
}

# A daemon is running when its pid file names a live process that is still a Spark daemon (pids are
# reused, so a stale pid file must not make an unrelated process look like the master).
running() {
  local pid_file="$state/$1.pid"
  [[ -f "$pid_file" ]] || return 1
  local pid
  pid="$(cat "$pid_file")"
  alive "$pid" && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "org.apache.spark.deploy"
}

free_port() {
  "$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# The master's view of the cluster, from its web UI's JSON: "<alive workers> <status>", or nothing.
master_view() {
  curl --silent --fail --max-time 5 "$(cat "$state/webui_url")/json/" 2>/dev/null | "$python" -c '
import json, sys
view = json.load(sys.stdin)
alive = sum(1 for worker in view["workers"] if worker["state"] == "ALIVE")
print(alive, view["status"])' 2>/dev/null || true
}

# spark-class execs java, so $! is the daemon's own pid.
launch() {
  local name="$1"
  shift
  nohup "$spark_class" "$@" </dev/null >"$state/$name.log" 2>&1 &
  echo $! >"$state/$name.pid"
}

start() {
  mkdir -p "$state"
  if ! running master; then
    local port="${MODALRANK_CLUSTER_PORT:-$(free_port)}"
    local webui_port="${MODALRANK_CLUSTER_WEBUI_PORT:-$(free_port)}"
    echo "spark://127.0.0.1:$port" >"$state/master_url"
    echo "http://127.0.0.1:$webui_port" >"$state/webui_url"
    say "starting the master on $(cat "$state/master_url") (web UI $(cat "$state/webui_url"))"
    launch master org.apache.spark.deploy.master.Master --host 127.0.0.1 --port "$port" --webui-port "$webui_port"
  fi
  local master_url
  master_url="$(cat "$state/master_url")"
  for n in $(seq 1 "$workers"); do
    running "worker-$n" && continue
    mkdir -p "$state/worker-$n/work"
    say "starting worker $n ($worker_cores core(s), $worker_memory for executors)"
    # Port 0: any free port, so workers never collide with each other or with another cluster.
    launch "worker-$n" org.apache.spark.deploy.worker.Worker "$master_url" --host 127.0.0.1 --port 0 \
      --webui-port 0 --cores "$worker_cores" --memory "$worker_memory" --work-dir "$state/worker-$n/work"
  done
  # Ready when the master answers and every worker has registered with it.
  local waited=0 view=""
  while true; do
    view="$(master_view)"
    [[ "$view" == "$workers ALIVE" ]] && break
    for daemon in master $(seq -f "worker-%g" 1 "$workers"); do
      if ! running "$daemon"; then
        say "$daemon is not running; the end of $state/$daemon.log:"
        tail -n 20 "$state/$daemon.log" >&2 || true
        stop
        exit 1
      fi
    done
    if (( waited >= 120 )); then
      say "the master still reports '${view:-no answer}' after ${waited} s (logs in $state)"
      stop
      exit 1
    fi
    sleep 2
    waited=$(( waited + 2 ))
  done
  say "ready: $workers workers registered with $master_url"
  echo "$master_url"
}

status() {
  if ! running master; then
    say "not running (no live master in $state)"
    return 1
  fi
  local view
  view="$(master_view)"
  say "master $(cat "$state/master_url"), web UI $(cat "$state/webui_url"): ${view%% *} of $workers workers alive"
  cat "$state/master_url"
}

# Workers first (each stops its executors), then the master; TERM, then KILL after 30 s.
stop() {
  for daemon in $(seq -f "worker-%g" "$workers" -1 1) master; do
    if running "$daemon"; then
      local pid
      pid="$(cat "$state/$daemon.pid")"
      say "stopping $daemon (pid $pid)"
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 30); do
        alive "$pid" || break
        sleep 1
      done
      if alive "$pid"; then
        say "$daemon ignored TERM for 30 s; killing it"
        kill -9 "$pid" 2>/dev/null || true
      fi
    fi
    rm -f "$state/$daemon.pid"
  done
}

case "${1:-}" in
  start) start ;;
  status) status ;;
  stop) stop ;;
  *) echo "usage: bash infra/cluster.sh start|status|stop" >&2; exit 2 ;;
esac
