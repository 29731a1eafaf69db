"""Shared test fixtures: one local SparkSession for the whole run, paths to ../shared/data, and
small demo datasets made by the project's own generator.

Environment variables are set before anything imports pyspark or airflow, so a bare `pytest` from the
venv behaves like `infra/test.sh`.
"""

from __future__ import annotations

import atexit
import dataclasses
import datetime as dt
import fcntl
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

# pytest imports this file as `conftest`; test modules must too (`from conftest import ...`). Imported a
# second time under another name (`tests.conftest`), it would run again and point AIRFLOW_HOME at a new,
# unmigrated folder while an Airflow imported meanwhile keeps the first: "no such table" in a later test.
if __name__ != "conftest":
    raise ImportError(f"import the tests' conftest as `conftest`, not `{__name__}`: it sets the environment once")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
# Spark hands timestamps to Python in the process's zone; the pipeline and its tests think in UTC.
os.environ["TZ"] = "UTC"
time.tzset()
os.environ.setdefault("MODALRANK_JARS_DIR", str(REPO_ROOT / ".cache" / "jars"))
os.environ.setdefault("NUMBA_CACHE_DIR", str(REPO_ROOT / ".cache" / "numba"))  # as infra/env.sh
# Tiny tables: tests/spark-conf/spark-defaults.conf says what it changes and why.
os.environ["SPARK_CONF_DIR"] = str(REPO_ROOT / "tests" / "spark-conf")
# For the environment of a job process a test starts and kills or waits for (a JVM that lives a minute):
# the JIT's first tier only, since the second would compile hot methods again on the same two cores (a
# cold `python -m jobs.publish` on a small lake: 31 s, 27 s with it), and a larger thread stack, since
# first-tier frames are bigger (the shared sessions, which live for the whole run, keep the defaults).
SHORT_LIVED_JVM = {"JAVA_TOOL_OPTIONS": "-XX:TieredStopAtLevel=1 -Xss4m"}
# Airflow: a throwaway home per test run (never the developer's .airflow), our dags/ folder, and the
# Spark connection in local mode. Set before any test module imports airflow.
os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="modalrank-airflow-")
atexit.register(shutil.rmtree, os.environ["AIRFLOW_HOME"], ignore_errors=True)
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO_ROOT / "dags")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ.setdefault("AIRFLOW_CONN_MODALRANK_SPARK", '{"conn_type": "spark", "host": "local[2]"}')
# spark-submit (launched by the DAG's tasks) must come from this venv.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"

from infra.tools.demo_data import DemoDataConfig, generate_demo_data  # noqa: E402
from jobs.config import PipelineConfig, load_config  # noqa: E402

# A catalog small enough for Spark tests to stay quick, large enough for every code path.
SMALL_DEMO = DemoDataConfig(items=40, users=20, interactions_per_user=10, seed=3)
# The built lake's catalog: twice the items and three times the users of SMALL_DEMO, so that a ranker
# trained on it beats its baselines by a margin the evaluation tests can see.
BUILT_DEMO = DemoDataConfig(items=80, users=60, interactions_per_user=15, seed=11)


# The longest test files first (their share of a run, measured with --durations), so that two test
# processes (infra/test.sh hands out whole files in this order) end together rather than one waiting on
# a long file that started last. crash_rerun comes first because it builds `built_lake`, which four
# other files wait for. The cluster and deployment tests (their own tiers) lead when they are selected: each
# is longer than any default file, and the deployment test asks for the backfilled lake only at its end.
LONGEST_FIRST = (
    "test_cluster.py",
    "test_deployment.py",
    "test_crash_rerun.py",
    "test_ingest.py",
    "test_backfill.py",
    "test_extract.py",
    "test_asof.py",
    "test_extract_hostile.py",
    "test_train_evaluate.py",
    "test_consume.py",
    "test_publish.py",
)


def pytest_collection_modifyitems(items):
    rank = {name: position for position, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: other files keep their order


@pytest.fixture(scope="session")
def spark():
    from jobs.spark import start_spark

    session = start_spark("modalrank-tests", load_config(shuffle_partitions=2, spark_ui=False))
    yield session
    session.stop()
    # py4j logs from a finalizer after pytest has closed its capture streams.
    logging.getLogger("py4j").setLevel(logging.WARNING)


@pytest.fixture(autouse=True)
def _no_airflow_task_context():
    """An in-process `dag.test()` leaves its last task's AIRFLOW_CTX_* variables in os.environ; later tests
    (and the processes they start) would take that run's id for their own (jobs.artifacts.run_id)."""
    yield
    for name in [name for name in os.environ if name.startswith("AIRFLOW_CTX_")]:
        del os.environ[name]


@pytest.fixture
def lake_config(tmp_path):
    """A config whose lake is a fresh folder for this test."""
    return load_config(lake=str(tmp_path / "lake"), shuffle_partitions=2)


@pytest.fixture(scope="session")
def small_demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    generate_demo_data(out, SMALL_DEMO)
    return out


@dataclass(frozen=True)
class BuiltLake:
    """The end-to-end modules' shared lake: BUILT_DEMO ingested as of its end date with two imported
    modalities (`taste`, `noise`: conftest's `ingest_with_taste_vectors`), fused and trained; nothing
    evaluated or published. Read-only: a test that writes works on `copy_to(folder)`."""

    root: Path
    fusion_version: str
    ranker_version: str

    @property
    def demo(self) -> Path:
        return self.root / "demo"

    def copy_to(self, folder: Path) -> PipelineConfig:
        return copy_lake(self.root / "lake", folder)


def copy_lake(lake: Path | str, folder: Path) -> PipelineConfig:
    """A config over a private copy of a shared lake in `folder` (tables and artifacts: the lake is its own
    artifacts folder). Delta tables and the artifact store keep relative paths only, so a copy is a whole lake."""
    shutil.copytree(lake, folder / "lake")
    return load_config(lake=str(folder / "lake"), shuffle_partitions=2)


def _once_per_run(tmp_path_factory, name: str, build) -> tuple[Path, Any]:
    """(`<run>/<name>`, its JSON card) where `build(folder)` filled the folder and returned the card, once
    per test run: under pytest-xdist the first process to ask builds in the run's common temporary folder
    while the other waits on a lock, then both read it."""
    common = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        common = common.parent  # basetemp is <run>/popen-gw<N>: the run's folder is shared
    root, card = common / name, common / f"{name}.json"
    with (common / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not card.exists():
            shutil.rmtree(root, ignore_errors=True)  # a build that failed half-way
            card.write_text(json.dumps(build(root)))
        return root, json.loads(card.read_text())


@pytest.fixture(scope="session")
def built_lake(spark, tmp_path_factory) -> BuiltLake:
    """Built once per test run (`_once_per_run`)."""

    def build(root: Path) -> dict:
        from jobs.fuse import run_fuse
        from jobs.train import run_train

        generate_demo_data(root / "demo", BUILT_DEMO)
        config = load_config(lake=str(root / "lake"), shuffle_partitions=2)
        ingest_with_taste_vectors(spark, config, root / "demo", BUILT_DEMO.clusters, BUILT_DEMO.end_date)
        fused = run_fuse(spark, config, BUILT_DEMO.end_date)
        trained = run_train(spark, config, BUILT_DEMO.end_date)
        return {"fusion_version": fused.fusion_version, "ranker": trained.version}

    root, versions = _once_per_run(tmp_path_factory, "built-lake", build)
    return BuiltLake(root, versions["fusion_version"], versions["ranker"])


# The backfilled lake's dates: SMALL_DEMO's last three days (a Monday to a Wednesday of one training week).
BACKFILL_DATES = [SMALL_DEMO.end_date - dt.timedelta(days=days) for days in (2, 1, 0)]
BACKFILL_K = 5


@dataclass(frozen=True)
class BackfilledLake:
    """SMALL_DEMO backfilled over BACKFILL_DATES on a fresh lake (every stage but evaluate, every built-in
    modality, weekly training, K = BACKFILL_K), and what `run_backfill` said of each date. Read-only, like
    `built_lake`: the backfill tests check it, the as-of tests compare an older date re-run elsewhere with
    its first date, and the deployment tests compare what the scheduler published with it."""

    config: PipelineConfig
    results: list  # jobs.backfill.DateResult per date, in date order

    def copy_to(self, folder: Path) -> PipelineConfig:
        return copy_lake(self.config.lake, folder)


@pytest.fixture(scope="session")
def backfilled_lake(spark, small_demo, tmp_path_factory) -> BackfilledLake:
    from jobs.backfill import BackfillPlan, DateResult, run_backfill
    from jobs.ingest import IngestRequest

    def build(root: Path) -> list:
        config = load_config(lake=str(root / "lake"), shuffle_partitions=2)
        sources = IngestRequest(
            ds=BACKFILL_DATES[0], catalog=small_demo / "catalog.csv", interactions=small_demo / "interactions.csv"
        )
        plan = BackfillPlan(
            BACKFILL_DATES[0],
            BACKFILL_DATES[-1],
            sources,
            stages=("ingest", "extract", "fuse", "train", "publish", "report"),
            train_every_days=7,
            k=BACKFILL_K,
        )
        return [dataclasses.asdict(result) for result in run_backfill(spark, config, plan)]

    root, results = _once_per_run(tmp_path_factory, "backfilled-lake", build)
    config = load_config(lake=str(root / "lake"), shuffle_partitions=2)
    return BackfilledLake(config, [DateResult(**result) for result in results])


def shared_path(*parts: str) -> Path:
    """A path in ../shared/data, or a skip that says what is missing."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: ../shared/data is only beside the repo on project machines")
    return path


def run_airflow(*arguments: str) -> None:
    """The venv's `airflow` CLI on the tests' Airflow home; fails the test with its output's tail."""
    airflow = Path(sys.executable).parent / "airflow"
    result = subprocess.run([str(airflow), *arguments], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


@pytest.fixture(scope="session")
def airflow_db():
    """The throwaway Airflow home's metadata database, migrated once per test run."""
    run_airflow("db", "migrate")
    run_airflow("pools", "set", "modalrank_spark", "1", "modalrank Spark jobs")
    return Path(os.environ["AIRFLOW_HOME"])


def write_vectors(path: Path, vectors: dict) -> Path:
    """Item id + comma-separated vector, as CSV: the format `jobs.import_vectors` reads."""
    import csv

    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["item_id", "embedding"])
        for item_id, vector in vectors.items():
            writer.writerow([item_id, ",".join(f"{value:.5f}" for value in vector)])
    return path


def ingest_with_taste_vectors(spark, config, demo: Path, clusters: int, ds, noise: bool = True) -> None:
    """Ingest a generated demo folder as of `ds`, then import two modalities made from its hidden truth:
    `taste` (the item's cluster centre plus a little noise: content that predicts interactions) and,
    with `noise`, `noise` (pure noise: content that does not); their CSVs go beside the artifacts folder
    (the lake's own for a local lake; a URI lake is no place for plain files). Cheap stand-ins for the media
    extractors, for tests about fusion, ranking and publishing rather than extraction."""
    import csv

    import numpy as np

    from jobs.import_vectors import run_import
    from jobs.ingest import IngestRequest, run_ingest

    run_ingest(
        spark, config, IngestRequest(ds=ds, catalog=demo / "catalog.csv", interactions=demo / "interactions.csv")
    )
    rng = np.random.default_rng(0)
    cluster_of = {
        int(row["item_id"]): int(row["cluster"]) for row in csv.DictReader((demo / "truth" / "items.csv").open())
    }
    centres = rng.normal(size=(clusters, 8))
    taste = {item: centres[cluster] + 0.3 * rng.normal(size=8) for item, cluster in cluster_of.items()}
    run_import(spark, config, "taste", write_vectors(config.artifacts_dir.parent / "taste.csv", taste), ds)
    if noise:
        vectors = {item: rng.normal(size=8) for item in cluster_of}
        run_import(spark, config, "noise", write_vectors(config.artifacts_dir.parent / "noise.csv", vectors), ds)


class AlertReceiver:
    """A real HTTP server on 127.0.0.1 that keeps every JSON body POSTed to it."""

    def __init__(self):
        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
