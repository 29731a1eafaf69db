"""Reading the published `recommendations` table: the consumer side of the contract.

`jobs.publish` replaces a run date's partition in one Delta commit, and only after its quality gate
passed, so every `ds` present in the table is a complete set of lists. "The newest complete date" is
therefore simply the greatest `ds` in the table, and it can be read from the Delta log alone (the table
is partitioned by `ds`), without opening a data file.

Everything here reads with delta-rs (`deltalake`) and pyarrow: no JVM, so a service, a notebook or an
Airflow task can read the lists without Spark. Only `latest_view` uses Spark, for SQL users. This
module never writes to the lake. Tables are named as `jobs.config.delta_rs_uri` names them for delta-rs,
so a lake that Spark writes as s3a:// is read from the same place.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from jobs.config import delta_rs_uri

if TYPE_CHECKING:
    from deltalake import DeltaTable
    from pyspark.sql import DataFrame, SparkSession

LATEST_VIEW = "recommendations_latest"


def open_table(path: str | Path, version: int | None = None) -> DeltaTable:
    """The Delta table at `path` (as of `version`, or the newest), or a FileNotFoundError that says why."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        return DeltaTable(delta_rs_uri(path), version=version)
    except TableNotFoundError as error:
        raise FileNotFoundError(f"no Delta table at {path}: run publish first ({error})") from error


def arrow_filesystem(table: DeltaTable):
    """pyarrow's own filesystem, rooted at `table`, for delta-rs to read the table's files with.

    By default delta-rs reads through a filesystem written in Python (a `PyFileSystem` over its Rust
    object store), so Arrow's IO threads call into the interpreter for every file they open, read and
    close, and drop their last references to it there. A thread that does so while the interpreter is
    shutting down is stopped by Python (`pthread_exit`) inside Arrow's C++ frames, which ends in
    `std::terminate`: "terminate called without an active exception", exit 134, after the work was
    done (about one `modalrank latest` in a dozen). Arrow's native filesystems never need the
    interpreter. For a scheme pyarrow cannot open here (hdfs:// without libhdfs) this returns None:
    delta-rs's own filesystem, and its rare abort at exit.
    """
    from pyarrow import fs

    try:
        filesystem, root = fs.FileSystem.from_uri(table.table_uri)
    except (OSError, ValueError):
        return None
    return fs.SubTreeFileSystem(root, filesystem)


def read_frame(
    table: DeltaTable, partitions: list[tuple] | None = None, columns: Sequence[str] | None = None
) -> pd.DataFrame:
    """`table.to_pandas(...)` through Arrow's native filesystem (`arrow_filesystem` says why)."""
    return table.to_pandas(
        partitions=partitions, columns=list(columns) if columns else None, filesystem=arrow_filesystem(table)
    )


def published_dates(table: DeltaTable) -> list[dt.date]:
    """Every run date in `table`'s snapshot, oldest first, from the Delta log's file actions only."""
    return sorted({dt.date.fromisoformat(partition["ds"]) for partition in table.partitions()})


def latest_ds(path: str | Path, version: int | None = None) -> dt.date | None:
    """The newest complete run date in the recommendations table at `path`; None when none is published."""
    return max(published_dates(open_table(path, version)), default=None)


def read_date(
    path: str | Path, ds: dt.date, version: int | None = None, columns: Sequence[str] | None = None
) -> pd.DataFrame:
    """The lists of run date `ds`, as of table `version` (time travel) or the newest version.

    Only the files of that partition are read. Rows come in (user_id, rank) order when those columns
    are read. A date that is not in the table raises ValueError: an empty frame would read as "no
    users", which is never what a missing date means.
    """
    return _read_partition(open_table(path, version), ds, columns)


def read_latest(path: str | Path, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """The lists of the newest complete run date.

    The date and the rows come from one snapshot of the table, so a publish that commits between the
    two reads cannot mix dates.
    """
    table = open_table(path)
    newest = max(published_dates(table), default=None)
    if newest is None:
        raise ValueError(f"no run date is published in {path} yet")
    return _read_partition(table, newest, columns)


def _read_partition(table: DeltaTable, ds: dt.date, columns: Sequence[str] | None) -> pd.DataFrame:
    dates = published_dates(table)
    if ds not in dates:
        newest = f"the newest is {dates[-1]}" if dates else "none is published yet"
        raise ValueError(
            f"run date {ds} is not published in version {table.version()} of {table.table_uri} ({newest})"
        )
    frame = read_frame(table, partitions=[("ds", "=", ds.isoformat())], columns=columns)
    order = [column for column in ("user_id", "rank") if column in frame.columns]
    return frame.sort_values(order, ignore_index=True) if order else frame


def latest_view(spark: SparkSession, path: str, name: str = LATEST_VIEW) -> DataFrame:
    """Register the temp view `name`: the recommendations of the newest complete run date.

    A temp view, because a local Spark session has no persistent metastore: each session registers
    it (one call) and it lives as long as the session. The view is SQL text that Spark analyses again
    on every query, so it finds the newest date at query time: a session that outlives a nightly
    publish reads the new date without registering the view again. Returns `spark.table(name)`, the
    view as resolved now (query the view by name to see a later date).
    """
    from delta.tables import DeltaTable

    if not DeltaTable.isDeltaTable(spark, path):
        raise FileNotFoundError(f"no Delta table at {path}: run publish first")
    table = "delta.`{}`".format(path.replace("`", "``"))
    spark.sql(
        f"CREATE OR REPLACE TEMPORARY VIEW `{name}` AS "
        f"SELECT * FROM {table} WHERE ds = (SELECT MAX(ds) FROM {table})"
    )
    return spark.table(name)


def format_sample(
    frame: pd.DataFrame, users: int = 5, per_user: int = 10, titles: Mapping[int, str] | None = None
) -> str:
    """A few users' lists as text, for a terminal: the first `users` user ids, each user's top `per_user`.

    `frame` holds recommendations rows (at least ds, user_id, rank, item_id, score, model_version), as
    `read_latest` returns them; `titles` (item_id to title), when given, adds each item's title.
    """
    if frame.empty:
        return "no recommendations to show"
    dates = ", ".join(sorted({str(ds) for ds in frame["ds"]}))
    models = ", ".join(sorted(set(frame["model_version"])))
    total_users = frame["user_id"].nunique()
    shown = sorted(frame["user_id"].unique())[:users]
    lines = [
        f"recommendations for {dates} (model {models}): {total_users} users, {len(frame)} rows; "
        f"showing {len(shown)} users, top {per_user} each"
    ]
    for user_id in shown:
        lines.append(f"user {user_id}")
        mine = frame[(frame["user_id"] == user_id) & (frame["rank"] <= per_user)].sort_values("rank")
        for row in mine.itertuples(index=False):
            title = f"  {titles.get(row.item_id, '')}" if titles else ""
            lines.append(f"  {row.rank:>3}. item {row.item_id:<8} score {row.score:8.4f}{title}".rstrip())
    return "\n".join(lines)


def lake_feature_modalities(config) -> tuple[list[str], str | None]:
    """The modalities with a `features_<name>` folder in the lake, sorted, and why the lake could not be
    listed (None when it could).

    Feature tables exist per modality, imported ones under names chosen at import time, so the lake is
    listed: with pyarrow's filesystems (no JVM), which take a local path, file:// and s3:// alike. Where
    pyarrow cannot list (hdfs:// without libhdfs), the built-in and configured modalities stand in.
    """
    from pyarrow import fs

    from jobs.stages import BUILT_IN_MODALITIES

    try:
        lake_fs, root = fs.FileSystem.from_uri(delta_rs_uri(config.lake))
        found = lake_fs.get_file_info(fs.FileSelector(root, allow_not_found=True))
    except (OSError, ValueError) as error:
        unlisted = f"cannot list {config.lake}: {error}; showing the built-in and configured modalities"
        return sorted({*BUILT_IN_MODALITIES, *config.imported_vectors}), unlisted
    modalities = sorted(
        info.base_name.removeprefix("features_")
        for info in found
        if info.type == fs.FileType.Directory and info.base_name.startswith("features_")
    )
    return modalities, None
