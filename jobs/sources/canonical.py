"""The canonical shape every reader maps its layout onto (the package docstring says what each field
means), the reader's result types, and the checks every reader makes before reading."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

ITEM_FIELDS = (
    "item_id",
    "title",
    "year",
    "overview",
    "genres",
    "tags",
    "imdb_id",
    "tmdb_id",
    "poster_path",
    "audio_path",
    "video_path",
    "available_from",
)
INTERACTION_FIELDS = ("user_id", "item_id", "rating", "weight", "event_time", "source")
META_FIELDS = ("source_file", "record", "malformed", "row_order", "input", "lines", "input_lines")


class SourceError(ValueError):
    """The input cannot be read at all (missing file, unknown layout, missing required column)."""


@dataclass(frozen=True)
class Extra:
    """Per-item data from a separate file, joined onto items by item id (overviews, tags, links, media)."""

    kind: str  # overview | tags | links | poster | audio | video
    rows: DataFrame


@dataclass(frozen=True)
class RawSource:
    name: str
    items: DataFrame
    interactions: DataFrame
    extras: list[Extra] = field(default_factory=list)
    rating_range: tuple[float, float] = (0.5, 5.0)
    # Media paths inside a generic catalog are relative to this folder and may not leave it.
    media_root: str | None = None


def require_file(path: Path) -> None:
    if not path.exists():
        raise SourceError(f"input not found: {path}")


def canonical(df: DataFrame, fields: tuple[str, ...], renames: dict[str, str] | None = None) -> DataFrame:
    """`df` with exactly `fields` + META_FIELDS: renamed, and absent optional fields as nulls."""
    renames = renames or {}
    for source_name, canonical_name in renames.items():
        if source_name in df.columns:
            df = df.withColumnRenamed(source_name, canonical_name)
    columns = [F.col(name) if name in df.columns else F.lit(None).cast("string").alias(name) for name in fields]
    return df.select(*columns, *META_FIELDS)


def require_columns(df: DataFrame, required: tuple[str, ...], path: Path) -> None:
    missing = [name for name in required if name not in df.columns]
    if missing:
        raise SourceError(f"{path} lacks required column(s) {', '.join(missing)}; it has {', '.join(df.columns)}")
