"""Pipeline configuration: the one typed place every job, the CLI, the DAG and the tests read.

Precedence, lowest first: the dataclass defaults below, then `MODALRANK_*` environment variables, then
explicit overrides (CLI flags, Airflow params). Jobs never read the environment themselves; they get a
`PipelineConfig`.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class PipelineConfig:
    # Where the Delta tables live. A local folder by default; any URI Spark can write (s3a://, hdfs://)
    # works for the tables themselves.
    lake: str = str(REPO_ROOT / "lake")
    # Spark. `spark_master` is used only when a job starts its own session (CLI, tests); under
    # spark-submit the master comes from spark-submit, so a cluster is a connection change, not a code one.
    spark_master: str = "local[2]"
    driver_memory: str = "4g"
    shuffle_partitions: int = 4
    spark_ui: bool = False
    # Delta Lake jars, copied from Maven Central by infra/setup.sh; runs never fetch anything.
    jars_dir: str = str(REPO_ROOT / ".cache" / "jars")
    # Extra Spark settings, e.g. {"spark.executor.memory": "2g"}.
    spark_conf: dict[str, str] = field(default_factory=dict)
    # Precomputed vector files imported as modalities of their own: {name: CSV or Parquet path}.
    imported_vectors: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # A relative local lake would mean a different lake for every working directory, and Delta reads
        # a relative path as a table name.
        if "://" not in self.lake:
            object.__setattr__(self, "lake", os.path.abspath(self.lake))

    def with_overrides(self, **overrides: object) -> PipelineConfig:
        """A copy with the given fields replaced; `None` values mean "not given" and are ignored."""
        given = {key: value for key, value in overrides.items() if value is not None}
        return dataclasses.replace(self, **given)

    @property
    def reports_dir(self) -> Path:
        """Human-readable run reports, one folder per run date, beside the tables."""
        return Path(self.lake) / "_reports"

    def table_path(self, table: str) -> str:
        return f"{self.lake.rstrip('/')}/{table}"

    def table_uri(self, table: str) -> str:
        """The table's location as a URI (`file://` for a local lake): how Airflow Assets name it."""
        path = self.table_path(table)
        return path if "://" in path else f"file://{path}"


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """`--lake` and `--ds`, which every job takes. An empty `--lake` (Airflow passes every flag) means
    the configured default."""
    parser.add_argument(
        "--lake", type=lambda text: text or None, help="lake base path (default: ./lake or $MODALRANK_LAKE)"
    )
    parser.add_argument("--ds", required=True, type=datetime.date.fromisoformat, help="run date, YYYY-MM-DD")


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(verbose: bool = False) -> None:
    """One log format for jobs, workers and the CLI, so Airflow's task log reads as one story."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=LOG_FORMAT)


_ENV_FIELDS = {
    "MODALRANK_LAKE": "lake",
    "MODALRANK_SPARK_MASTER": "spark_master",
    "MODALRANK_DRIVER_MEMORY": "driver_memory",
    "MODALRANK_SHUFFLE_PARTITIONS": "shuffle_partitions",
    "MODALRANK_SPARK_UI": "spark_ui",
    "MODALRANK_JARS_DIR": "jars_dir",
    "MODALRANK_IMPORTED_VECTORS": "imported_vectors",  # JSON: {"mmtf_avf": "/data/mmtf/avf.csv"}
}


def load_config(**overrides: object) -> PipelineConfig:
    """Defaults, then `MODALRANK_*` environment variables, then `overrides`."""
    from_env: dict[str, object] = {}
    for variable, name in _ENV_FIELDS.items():
        if variable in os.environ:
            from_env[name] = _parse(name, os.environ[variable])
    return PipelineConfig().with_overrides(**from_env).with_overrides(**overrides)


def _parse(name: str, raw: str) -> object:
    kind = {f.name: f.type for f in dataclasses.fields(PipelineConfig)}[name]
    if kind == "int":
        return int(raw)
    if kind == "bool":
        return raw.strip().lower() in {"1", "true", "yes", "on"}
    if kind.startswith("dict"):
        return json.loads(raw)
    return raw
