#!/usr/bin/env bash
# Everything a fresh machine needs, from the package registries only: a Python 3.11 virtualenv with the
# pinned dependencies (setup.cfg), the Delta Lake jars (infra/jars/pom.xml, from Maven Central) and an
# Airflow metadata database. A rerun checks stamps and skips what is already in place.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$MODALRANK_ROOT"
mkdir -p .cache
started=$(date +%s)

python_bin="${MODALRANK_PYTHON:-python3.11}"
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $python_bin"
  "$python_bin" -m venv .venv
fi

# Reinstall only when setup.cfg changed: pip's resolver alone takes ~20 s even when nothing is missing.
deps_stamp=".cache/deps.$(sha256sum setup.cfg | cut -c1-16)"
if [ ! -f "$deps_stamp" ]; then
  echo "setup: installing Python dependencies (first time: several GB, mostly torch)"
  .venv/bin/python -m pip install --quiet --upgrade "pip>=24" "setuptools>=70" wheel
  .venv/bin/python -m pip install --quiet --editable ".[dev]"
  rm -f .cache/deps.*
  touch "$deps_stamp"
else
  echo "setup: Python dependencies up to date"
fi

# Only Delta's own jars, Unity Catalog's client and OpenLineage's (shaded) listener: Spark already ships
# Hadoop, Parquet, Jackson and Scala, and a second copy of those on the classpath breaks it.
jars_stamp="$MODALRANK_JARS_DIR/.stamp.$(sha256sum infra/jars/pom.xml | cut -c1-16)"
if [ ! -f "$jars_stamp" ]; then
  echo "setup: fetching Spark's jars (Delta Lake, OpenLineage) into $MODALRANK_JARS_DIR"
  rm -rf "$MODALRANK_JARS_DIR"
  mvn --quiet --batch-mode -f infra/jars/pom.xml dependency:copy-dependencies \
    -DoutputDirectory="$MODALRANK_JARS_DIR" -DincludeScope=runtime \
    -DincludeGroupIds=io.delta,io.unitycatalog,io.openlineage
  touch "$jars_stamp"
else
  echo "setup: Spark's jars up to date"
fi

# Opt-in (MODALRANK_S3_JARS=1): Hadoop's S3 connector for an s3a:// lake, at the Hadoop version of the
# pyspark wheel (a different one fails at run time), and the AWS SDK bundle it needs (~650 MB).
if [ "${MODALRANK_S3_JARS:-0}" = 1 ]; then
  hadoop_version=$(.venv/bin/python -c 'import glob, os, pyspark
print(glob.glob(os.path.join(os.path.dirname(pyspark.__file__), "jars", "hadoop-client-api-*.jar"))[0][:-4].rsplit("-", 1)[1])')
  s3_stamp="$MODALRANK_JARS_DIR/.s3-stamp.$hadoop_version.$(sha256sum infra/jars/s3/pom.xml | cut -c1-16)"
  if [ ! -f "$s3_stamp" ]; then
    echo "setup: fetching hadoop-aws $hadoop_version and the AWS SDK bundle into $MODALRANK_JARS_DIR"
    mvn --quiet --batch-mode -f infra/jars/s3/pom.xml dependency:copy-dependencies \
      -Dhadoop.version="$hadoop_version" -DoutputDirectory="$MODALRANK_JARS_DIR" -DincludeScope=runtime \
      -DincludeGroupIds=org.apache.hadoop,software.amazon.awssdk,software.amazon.s3.analyticsaccelerator,org.wildfly.openssl
    touch "$s3_stamp"
  else
    echo "setup: S3 jars up to date"
  fi
fi

# PostgreSQL's server, for the production-shaped Airflow (infra/airflow.sh) and its tests: Debian's package,
# installed when its programs are missing (as root; otherwise a note, and those tests skip saying why).
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing PostgreSQL (Debian's postgresql package)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  else
    echo "setup: no PostgreSQL server here; infra/airflow.sh needs one (apt-get install postgresql, as root)"
  fi
fi

airflow_stamp="$AIRFLOW_HOME/.migrated.$(.venv/bin/python -c 'import airflow; print(airflow.__version__)').pool$MODALRANK_SPARK_POOL_SLOTS"
if [ ! -f "$airflow_stamp" ]; then
  echo "setup: creating the Airflow metadata database in $AIRFLOW_HOME"
  mkdir -p "$AIRFLOW_HOME"
  .venv/bin/airflow db migrate >"$AIRFLOW_HOME/db-migrate.log" 2>&1 \
    || { tail -n 30 "$AIRFLOW_HOME/db-migrate.log"; exit 1; }
  # Every Spark task of the DAG takes a slot of this pool: it caps concurrent Spark jobs (each one a
  # local[2] driver on this machine, or a cluster application) whatever the executor allows.
  .venv/bin/airflow pools set modalrank_spark "$MODALRANK_SPARK_POOL_SLOTS" "modalrank Spark jobs at once" \
    >>"$AIRFLOW_HOME/db-migrate.log" 2>&1 || { tail -n 30 "$AIRFLOW_HOME/db-migrate.log"; exit 1; }
  touch "$airflow_stamp"
else
  echo "setup: Airflow database up to date"
fi

echo "setup: done in $(( $(date +%s) - started )) s"
