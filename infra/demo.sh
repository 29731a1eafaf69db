#!/usr/bin/env bash
# The demo command: set-up, the built-in demo data, then the nightly DAG for the demo's run date with
# `airflow dags test` (a real Airflow run, in this process), then what it left in the lake.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/infra/setup.sh"
source "$root/infra/env.sh"
cd "$root"
run_date="${1:-$(sed -n 's/^run_date *= *//p' setup.cfg)}"
lake="${MODALRANK_LAKE:-$root/lake}"
started=$(date +%s)

echo "demo: generating the demo data in data/demo"
modalrank demo-data --out data/demo

echo "demo: running DAG modalrank_nightly for $run_date (log: $AIRFLOW_HOME/demo-$run_date.log)"
# The demo's one night is a Wednesday, not a training date: it asks for the full evaluation that a nightly
# schedule runs on Sundays, so that its report shows every model on every protocol.
airflow dags test modalrank_nightly "$run_date" --conf '{"full_evaluation": true}' >"$AIRFLOW_HOME/demo-$run_date.log" 2>&1 || {
  grep -E "modalrank\.|ERROR|Error" "$AIRFLOW_HOME/demo-$run_date.log" | tail -n 40
  echo "demo: the DAG run failed; full log in $AIRFLOW_HOME/demo-$run_date.log"
  exit 1
}
# The jobs' own progress lines, without Airflow's and Spark's chatter.
grep -oE "INFO modalrank\.[a-z_]+: .*\[airflow" "$AIRFLOW_HOME/demo-$run_date.log" | grep -vE " worker: |: epoch " \
  | sed 's/ \[airflow$//' || true
grep -q "state=success" "$AIRFLOW_HOME/demo-$run_date.log"

echo
modalrank tables --lake "$lake"
echo
for report in ingest extract_text extract_image extract_audio extract_video fuse train evaluate_demo publish; do
  cat "$lake/_reports/$run_date/$report.md"
  echo
done
echo "demo: a sample of the published lists, read back as a consumer would (modalrank latest):"
modalrank latest --lake "$lake" --users 3 --limit 5
echo
echo "demo: evaluation report with plots: $lake/_reports/$run_date/evaluate_demo.html"
echo "demo: run report (every stage, quarantine, times, evaluation, gate): $lake/_reports/$run_date/run.html"
echo "demo: done in $(( $(date +%s) - started )) s; reports: $lake/_reports/$run_date/"
