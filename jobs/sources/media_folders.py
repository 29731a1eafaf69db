"""Folders of media files named by item id (posters, trailer audio and video), and the sha256 of the
files a row names, computed on the workers."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
from pyspark.sql import Column, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType

from jobs.media_files import FolderEntry, media_folder_entry, sha256_of_media_file
from jobs.sources.canonical import Extra, SourceError

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
AUDIO_EXTENSIONS = ("wav", "flac", "ogg", "mp3", "m4a")
VIDEO_EXTENSIONS = ("mp4", "m4v", "mkv", "webm", "mov", "avi")


def read_media_folder(
    spark: SparkSession, kind: str, directory: Path, extensions: tuple[str, ...], max_bytes: int | None = None
) -> Extra:
    """Files named `<item_id>.<ext>` in one folder, with the sha256 of their bytes.

    Every entry of the folder is listed, so none is ignored in silence: one with a media extension is
    read (empty files too: an empty poster is the extractor's to reject with a reason, not the lister's
    to skip); any other (another extension, no extension, a hidden `.name` or `_name` entry, a
    subfolder) is a malformed row whose reason says why it was not used. The item id is the entry's own
    name, also for a symlink; a symlink must stay inside the folder, and only regular files are read (a
    FIFO, a folder or an unreadable entry is listed as malformed, with its reason:
    `jobs.media_files.media_folder_entry`), and so is a file over `max_bytes` (`<kind> file too large`, from
    its `stat`, never read).
    """
    if not directory.is_dir():
        raise SourceError(f"{kind} folder not found: {directory}")
    entries = [
        not_media_reason(name, extensions) or media_folder_entry(str(directory), name, max_bytes)
        for name in sorted(os.listdir(directory))
    ]
    listed = [
        (
            entry.name,
            os.path.join(str(directory), entry.name),
            entry.path,
            f"{kind} {entry.reason}" if entry.reason else None,
        )
        for entry in entries
    ]
    files = spark.createDataFrame(listed, "name string, entry string, path string, malformed string")
    stem = F.regexp_extract("name", r"^(.+)\.[^.]+$", 1)
    rows = files.select(
        stem.alias("item_id"),
        "path",
        file_hashes("path", max_bytes)["hash"].alias("content_hash"),
        F.col("entry").alias("source_file"),
        F.col("entry").alias("record"),
        "malformed",
        F.monotonically_increasing_id().alias("row_order"),
        # The folder is the input: each file is one of its records.
        F.lit(str(directory)).alias("input"),
        F.lit(1).cast("long").alias("lines"),
        F.lit(len(listed)).cast("long").alias("input_lines"),
    )
    return Extra(kind, rows)


def not_media_reason(name: str, extensions: tuple[str, ...]) -> FolderEntry | None:
    """A folder entry that is not one of the folder's media files, with the reason it is not used; None
    for a name the folder's reader takes."""
    if name.startswith((".", "_")):
        reason = f"file not used: a hidden name (starts with '{name[0]}')"
    elif Path(name).suffix.lower().lstrip(".") not in extensions:
        suffix = Path(name).suffix.lower() or "no extension"
        reason = f"file not used: {suffix} is not one of {', '.join(extensions)}"
    else:
        return None
    return FolderEntry(name, None, reason)


_HASHED = StructType([StructField("hash", StringType()), StructField("reason", StringType())])


def file_hashes(path_column: str, max_bytes: int | None = None) -> Column:
    """(hash, reason) of the file each row names, computed where the row is: the sha256 of a regular
    file's bytes (streamed, within `max_bytes`: a larger file is "file too large" from its `stat`), or
    why it could not be read (`jobs.media_files`: a FIFO or a
    folder is never opened, no OSError escapes). Both null for a null path."""

    # Built per call: PySpark 4 wants an active session before a pandas UDF exists.
    @F.pandas_udf(_HASHED)
    def hash_files(paths: pd.Series) -> pd.DataFrame:
        return pd.DataFrame(
            [sha256_of_media_file(path, max_bytes) for path in paths], columns=["hash", "reason"], dtype=object
        )

    return hash_files(F.col(path_column))
