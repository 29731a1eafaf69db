"""Media paths a catalog gives, at ingest: each resolved inside the media root (or the reason it may not
be) and the file it names hashed where the row is (`jobs.sources.file_hashes`). A path that leaves the
root quarantines its item; a file that cannot be used costs the item that modality only."""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType

from jobs import media_files, sources
from jobs.schemas import MEDIA_KINDS


def resolve_media_path(media_root: str, path: str | None) -> tuple[str | None, str | None]:
    """(absolute path, None) for a media path inside `media_root`, or (None, reason) when it is not.

    Catalog files come from outside; a path must never point the pipeline at files beyond the
    folder the data engineer configured (`../../etc/passwd`, `/home/x/secret.jpg`, a symlink out of
    it), nor crash it (a NUL byte). Only the path is checked here; `media_files.sha256_of_media_file`
    then refuses anything but a readable regular file.
    """
    if path is None or path.strip() == "":
        return None, None
    return media_files.resolve_under(media_root, path.strip())


_RESOLVED = StructType([StructField("path", StringType()), StructField("reason", StringType())])
# Path problems that reject the whole item (its catalog row is wrong), unlike a file problem, which
# costs the item only that modality.
_PATH_REASONS = (media_files.ESCAPES_ROOT, media_files.NUL_IN_PATH)


def resolve_catalog_media(
    items: DataFrame, media_root: str | None, max_bytes: int | None = None
) -> tuple[DataFrame, list[DataFrame]]:
    """Media paths a catalog gives: resolved inside the media root and hashed; problems quarantined.

    A path that leaves the root or holds a NUL byte quarantines the item; a file that is missing, not a
    regular file (a FIFO, a folder), unreadable or over `max_bytes` costs the item that modality, with a
    quarantine row `<kind> <reason>` (e.g. "poster file not found", "video file too large").
    """
    for kind in MEDIA_KINDS:
        items = items.withColumn(f"{kind}_hash", F.lit(None).cast("string"))
    if media_root is None:
        return items, []
    resolve = F.udf(lambda path: resolve_media_path(media_root, path), _RESOLVED)
    path_problem = F.lit(None).cast("string")
    for kind in MEDIA_KINDS:
        items = items.withColumn(f"{kind}_resolved", resolve(f"{kind}_path"))
        path_problem = F.coalesce(path_problem, F.col(f"{kind}_resolved.reason"))
    items = items.withColumn(
        "reason",
        F.when(F.col("reason").isNull() & path_problem.isin(*_PATH_REASONS), path_problem).otherwise(
            F.col("reason")
        ),
    )
    file_rejects = []
    for kind in MEDIA_KINDS:
        items = items.withColumn("m_path", F.col(f"{kind}_resolved.path"))
        items = items.withColumn("m_hashed", sources.file_hashes("m_path", max_bytes))
        unusable = F.col("m_path").isNotNull() & F.col("m_hashed.hash").isNull()
        file_rejects.append(
            items.where(F.col("reason").isNull() & unusable).select(
                "source_file",
                F.col("item_id").cast("bigint"),
                F.lit(None).cast("bigint").alias("user_id"),
                F.col(f"{kind}_path").alias("record"),
                F.concat(F.lit(f"{kind} "), F.col("m_hashed.reason")).alias("reason"),
            )
        )
        # A missing or unusable file costs the item that modality, not the item: it is ingested without it.
        items = (
            items.withColumn(f"{kind}_path", F.when(F.col("m_hashed.hash").isNotNull(), F.col("m_path")))
            .withColumn(f"{kind}_hash", F.col("m_hashed.hash"))
            .drop("m_path", "m_hashed", f"{kind}_resolved")
        )
    return items, file_rejects
