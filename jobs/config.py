"""Pipeline configuration: the one typed place every job, the CLI, the DAG and the tests read.

Precedence, lowest first: the dataclass defaults below, then `MODALRANK_*` environment variables, then
explicit overrides (CLI flags, Airflow params). Jobs never read the environment themselves; they get a
`PipelineConfig`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobs.arguments import ARTIFACTS, LAKE, boolean, optional_artifacts, optional_lake, run_date

REPO_ROOT = Path(__file__).resolve().parents[1]

# What a decode child needs on top of a media file's own bytes to decode it: decoder state, a frame or a
# minute of samples, the reply's arrays (a 16-frame video sample at 960 px is ~44 MiB).
DECODE_HEADROOM_MB = 256


@dataclass(frozen=True)
class PipelineConfig:
    # Where the Delta tables live. A local folder by default, or any URI Spark can write (s3a://, hdfs://,
    # file://); a URI lake needs `artifacts` too.
    lake: str = str(REPO_ROOT / "lake")
    # Where the file artifacts live: `_models/` (fusion projections, rankers, the serving artifact that
    # publish's executors load) and `_reports/`. They are written with plain file operations (an atomic
    # rename makes a pointer or a model visible at once, which an object store does not offer) and read by
    # the driver and every executor, so this is a local or shared POSIX folder: the lake itself for a
    # local lake (empty: derived from the lake), a mount such as /mnt/shared/modalrank for an s3a:// or
    # hdfs:// lake. A file:// lake is a local folder too and keeps its artifacts inside by default.
    artifacts: str = ""
    # Spark. `spark_master` is used only when a job starts its own session (CLI, tests); under
    # spark-submit the master comes from spark-submit, so a cluster is a connection change, not a code one.
    spark_master: str = "local[2]"
    driver_memory: str = "4g"
    shuffle_partitions: int = 4
    spark_ui: bool = False
    # Spark's jars (Delta Lake, OpenLineage's Spark listener), copied from Maven Central by infra/setup.sh;
    # runs never fetch anything.
    jars_dir: str = str(REPO_ROOT / ".cache" / "jars")
    # A folder for OpenLineage's Spark listener: when set, every Spark job the DAGs submit reports each read
    # and write it makes to a file of its own there, as a child of its Airflow task (infra/airflow.sh sets
    # it to the deployment's lineage/spark). Empty: Spark reports nothing; Airflow's tasks still do.
    spark_lineage_dir: str = ""
    # Extra Spark settings, e.g. {"spark.executor.memory": "2g"}.
    spark_conf: dict[str, str] = field(default_factory=dict)
    # Precomputed vector files imported as modalities of their own: {name: CSV or Parquet path}.
    imported_vectors: dict[str, str] = field(default_factory=dict)
    # How long a job waits for the run lease of its date (`jobs.lease`) while another run of the same date
    # (or training week) holds it, before failing with a message that names the holder.
    lease_timeout_seconds: int = 600
    # Media safety (jobs.decode_sandbox): a media file over `max_media_bytes` is refused before it is read
    # (2 GiB: a long 4K trailer fits); one item's read + decode gets `decode_timeout_s` of wall clock and
    # `decode_memory_mb` of address space on top of its decode child's start-up; images are refused when
    # their header says more than `max_image_pixels` pixels (OpenCV's own limit in the child is the same).
    max_media_bytes: int = 2 * 1024**3
    decode_timeout_s: int = 600
    decode_memory_mb: int = 8192
    max_image_pixels: int = 40_000_000
    # CSV and delimited inputs (jobs.sources.files): a record over `max_record_chars` characters is
    # quarantined before any check reads it (1 M: a 4096-dimension vector in text is ~80 k); a compressed
    # input that expands beyond `max_decompressed_bytes` is refused as a whole (8 GiB: ml-32m's ratings
    # are under 1 GiB), measured before Spark reads it.
    max_record_chars: int = 1_000_000
    max_decompressed_bytes: int = 8 * 1024**3
    # A decode that times out is retried on the next runs (a busy machine, a stalled mount), but only this
    # many times in all for the same content and extractor version; then it fails for good, so one clip
    # that never decodes in time does not cost `decode_timeout_s` and hold up its chunk every night.
    max_decode_attempts: int = 3
    # How much of one clip a decode child decodes at most, whatever its header claims: seconds and frames of
    # video (600 s at 60 fps), pixels per second of video (frame size x frame rate: 4K at 60 fps; a stream
    # over it fails "video decode rate too high"), seconds of audio and its sample rate (a rate over it
    # fails "audio sample rate too high"). The analysed part of longer clips ends there, so changing a
    # bound changes the vectors of the clips past it: re-extract them (`--force`) after changing one.
    max_video_seconds: int = 600
    max_video_frames: int = 36_000
    max_video_pixels_per_second: int = 500_000_000
    max_audio_seconds: int = 60
    max_audio_sample_rate: int = 192_000
    # Extraction commits its results every this many items, and sooner when items are slow: a chunk is
    # sized from the rate measured so far to take about `extract_commit_seconds`, so a killed run keeps the
    # chunks it finished and a slow stretch of clips never holds an hour of work uncommitted.
    extract_chunk_items: int = 1000
    extract_commit_seconds: int = 300
    # Alerts (jobs.alerts): an http(s) URL that gets each alert as a JSON POST (empty: the alert is written to
    # the date's report folder and logged), and how long after it was queued a night counts as late.
    alert_target: str = ""
    night_deadline_minutes: int = 360

    def __post_init__(self) -> None:
        for name in (
            "max_media_bytes",
            "decode_timeout_s",
            "decode_memory_mb",
            "max_image_pixels",
            "max_record_chars",
            "max_decompressed_bytes",
            "max_decode_attempts",
            "max_video_seconds",
            "max_video_frames",
            "max_video_pixels_per_second",
            "max_audio_seconds",
            "max_audio_sample_rate",
            "extract_chunk_items",
            "extract_commit_seconds",
            "night_deadline_minutes",
        ):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive whole number, got {getattr(self, name)!r}")
        # A decode child holds the file's bytes and decodes them within `decode_memory_mb`: a limit that
        # cannot hold one file of the size cap plus room to decode it would fail every large item, each with
        # a permanent reason, so the two are checked together here rather than discovered item by item.
        needed_mb = -(-int(self.max_media_bytes) // 2**20) + DECODE_HEADROOM_MB
        if int(self.decode_memory_mb) < needed_mb:
            raise ValueError(
                f"decode_memory_mb={self.decode_memory_mb} cannot hold one media file of max_media_bytes="
                f"{self.max_media_bytes} plus {DECODE_HEADROOM_MB} MiB to decode it: set MODALRANK_DECODE_MEMORY_MB "
                f"to at least {needed_mb}, or lower MODALRANK_MAX_MEDIA_BYTES"
            )
        if self.alert_target and urllib.parse.urlsplit(self.alert_target).scheme not in ("http", "https"):
            raise ValueError(f"alert_target must be an http(s) URL, got {self.alert_target!r}")
        if int(self.lease_timeout_seconds) < 0:
            raise ValueError(f"lease_timeout_seconds must be 0 or more, got {self.lease_timeout_seconds!r}")
        # However the value came (flag, Param, environment, code): a lake path becomes table identifiers
        # and the Asset's URI, so it is checked here too, not only where a flag is parsed.
        LAKE.check(self.lake)
        # A relative local lake would mean a different lake for every working directory, and Delta reads
        # a relative path as a table name.
        if "://" not in self.lake:
            object.__setattr__(self, "lake", os.path.abspath(self.lake))
        if self.artifacts:
            if "://" in self.artifacts:
                raise ValueError(
                    f"artifacts must be a local or mounted folder, not a URI ({self.artifacts}): "
                    "models and reports are written with plain file operations"
                )
            ARTIFACTS.check(self.artifacts)
            object.__setattr__(self, "artifacts", os.path.abspath(self.artifacts))
        elif local_path(self.lake) is None:
            # Fail before any work: every stage writes its report, and most a model, under the artifacts.
            raise ValueError(
                f"the lake {self.lake} is not a local folder, so models and reports need one of their own: "
                "set MODALRANK_ARTIFACTS (or --artifacts, or the DAG param `artifacts`) to a local or "
                "mounted folder that the driver and every executor see, e.g. /mnt/shared/modalrank"
            )

    def with_overrides(self, **overrides: object) -> PipelineConfig:
        """A copy with the given fields replaced; `None` values mean "not given" and are ignored."""
        given: dict[str, Any] = {key: value for key, value in overrides.items() if value is not None}
        return dataclasses.replace(self, **given)  # an unknown field raises TypeError

    @property
    def artifacts_dir(self) -> Path:
        """The folder that holds `_models/` and `_reports/`: `artifacts`, or else the local lake's own."""
        folder = self.artifacts or local_path(self.lake)
        assert folder is not None, "__post_init__ refuses a URI lake without an artifacts folder"
        return Path(folder)

    @property
    def models_dir(self) -> Path:
        """Model artifacts: fusion projections, rankers and publish's serving artifact."""
        return self.artifacts_dir / "_models"

    @property
    def reports_dir(self) -> Path:
        """Human-readable run reports, one folder per run date."""
        return self.artifacts_dir / "_reports"

    def table_path(self, table: str) -> str:
        return f"{self.lake.rstrip('/')}/{table}"

    def table_uri(self, table: str) -> str:
        """The table's location as a URI (`file://` for a local lake): how Airflow Assets name it."""
        path = self.table_path(table)
        return path if "://" in path else f"file://{path}"


def local_path(lake: str) -> str | None:
    """The local folder a lake is, or None when it is elsewhere (s3a://, hdfs://, a file:// on another host)."""
    if "://" not in lake:
        return lake
    parts = urllib.parse.urlsplit(lake)
    if parts.scheme == "file" and parts.netloc in ("", "localhost"):
        return urllib.request.url2pathname(parts.path)
    return None


# Beside `table_uri` and `local_path`, not in jobs.lake: the delta-rs readers (jobs.consume, the run report,
# `modalrank latest` and `tables`) never import Spark.
def delta_rs_uri(path: str | Path) -> str:
    """A lake or table path as Spark names it (`PipelineConfig.table_path`), as delta-rs and pyarrow name it.

    Local paths, file:// and hdfs:// are the same for both. Hadoop's S3 connector is s3a://, which
    delta-rs and pyarrow's filesystems call s3:// (delta-rs 1.6 takes s3a:// too, pyarrow does not).
    delta-rs takes S3 credentials and region from the standard environment variables
    (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION, AWS_ENDPOINT_URL, or
    AWS_PROFILE), so no storage options are passed here.
    """
    text = str(path)
    return "s3://" + text.removeprefix("s3a://") if text.startswith("s3a://") else text


def add_lake_arguments(parser: argparse.ArgumentParser) -> None:
    """`--lake` and `--artifacts`. Empty values (Airflow passes every flag) mean the configured default."""
    parser.add_argument(
        "--lake",
        type=optional_lake,
        help="lake base path or URI (default: ./lake or $MODALRANK_LAKE)",
    )
    parser.add_argument(
        "--artifacts",
        type=optional_artifacts,
        help="local or mounted folder for _models/ and _reports/ (default: $MODALRANK_ARTIFACTS, else the "
        "lake's own folder; required for an s3a:// or hdfs:// lake)",
    )
    parser.add_argument(
        "--lease-timeout",
        type=lambda text: int(text) if text else None,
        help="seconds to wait while another run holds this date's lease, then fail naming it "
        "(default: $MODALRANK_LEASE_TIMEOUT_SECONDS, else 600)",
    )


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """`--lake`, `--artifacts` and `--ds`, which every job takes."""
    add_lake_arguments(parser)
    parser.add_argument("--ds", required=True, type=run_date, help="run date, YYYY-MM-DD")


def load_run_config(args: argparse.Namespace, **overrides: object) -> PipelineConfig:
    """The config for a command line that took `add_lake_arguments`."""
    return load_config(
        lake=args.lake,
        artifacts=args.artifacts,
        lease_timeout_seconds=getattr(args, "lease_timeout", None),
        **overrides,
    )


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(verbose: bool = False) -> None:
    """One log format for jobs, workers and the CLI, so Airflow's task log reads as one story."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=LOG_FORMAT)


_ENV_FIELDS = {
    "MODALRANK_LAKE": "lake",
    "MODALRANK_ARTIFACTS": "artifacts",
    "MODALRANK_SPARK_MASTER": "spark_master",
    "MODALRANK_DRIVER_MEMORY": "driver_memory",
    "MODALRANK_SHUFFLE_PARTITIONS": "shuffle_partitions",
    "MODALRANK_SPARK_UI": "spark_ui",
    "MODALRANK_JARS_DIR": "jars_dir",
    "MODALRANK_SPARK_LINEAGE_DIR": "spark_lineage_dir",
    "MODALRANK_IMPORTED_VECTORS": "imported_vectors",  # JSON: {"mmtf_avf": "/data/mmtf/avf.csv"}
    "MODALRANK_LEASE_TIMEOUT_SECONDS": "lease_timeout_seconds",
    "MODALRANK_MAX_MEDIA_BYTES": "max_media_bytes",
    "MODALRANK_DECODE_TIMEOUT_S": "decode_timeout_s",
    "MODALRANK_DECODE_MEMORY_MB": "decode_memory_mb",
    "MODALRANK_MAX_IMAGE_PIXELS": "max_image_pixels",
    "MODALRANK_MAX_RECORD_CHARS": "max_record_chars",
    "MODALRANK_MAX_DECOMPRESSED_BYTES": "max_decompressed_bytes",
    "MODALRANK_MAX_DECODE_ATTEMPTS": "max_decode_attempts",
    "MODALRANK_MAX_VIDEO_SECONDS": "max_video_seconds",
    "MODALRANK_MAX_VIDEO_FRAMES": "max_video_frames",
    "MODALRANK_MAX_VIDEO_PIXELS_PER_SECOND": "max_video_pixels_per_second",
    "MODALRANK_MAX_AUDIO_SECONDS": "max_audio_seconds",
    "MODALRANK_MAX_AUDIO_SAMPLE_RATE": "max_audio_sample_rate",
    "MODALRANK_EXTRACT_CHUNK_ITEMS": "extract_chunk_items",
    "MODALRANK_EXTRACT_COMMIT_SECONDS": "extract_commit_seconds",
    "MODALRANK_ALERT_TARGET": "alert_target",
    "MODALRANK_NIGHT_DEADLINE_MINUTES": "night_deadline_minutes",
}


def load_config(**overrides: object) -> PipelineConfig:
    """Defaults, then `MODALRANK_*` environment variables, then `overrides`."""
    from_env: dict[str, object] = {}
    for variable, name in _ENV_FIELDS.items():
        if variable in os.environ:
            from_env[name] = _parse(name, os.environ[variable])
    given = {key: value for key, value in overrides.items() if value is not None}
    # One replace, not two: a URI lake from the environment with `--artifacts` from the command line is
    # a valid config, but the environment's half alone is not.
    return PipelineConfig().with_overrides(**{**from_env, **given})


def _parse(name: str, raw: str) -> object:
    kind = {f.name: f.type for f in dataclasses.fields(PipelineConfig)}[name]
    if kind == "int":
        return int(raw)
    if kind == "bool":
        return boolean(raw)
    if kind.startswith("dict"):
        return json.loads(raw)
    return raw
