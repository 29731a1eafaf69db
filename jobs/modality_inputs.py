"""What each built-in modality's extractor reads from the catalog: the content hash that says when an
item must be extracted again, the file (or, for text, none), the model batch size, and the inputs
themselves as the extractor sees them. Plain Python and pandas, no Spark."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from jobs import media_files
from jobs.config import PipelineConfig


@dataclass(frozen=True)
class ModalityInput:
    """Where a modality's input lives in the catalog, and how big its model batches are."""

    hash_column: str
    path_column: str | None  # None: the input is the item's text
    batch_size: int


MODALITY_INPUTS = {
    "text": ModalityInput("text_hash", None, 64),
    "image": ModalityInput("poster_hash", "poster_path", 32),
    "audio": ModalityInput("audio_hash", "audio_path", 16),
    "video": ModalityInput("video_hash", "video_path", 8),
}


def extractor_inputs(
    modality: str, items: pd.DataFrame, max_bytes: int = PipelineConfig.max_media_bytes
) -> list[bytes | str]:
    """What the extractor sees for each row: the composed text, or the media file's bytes (or why not).

    `items` has the catalog's title, overview, genres and tags, and the modality's file as `path`.
    """
    if MODALITY_INPUTS[modality].path_column is None:
        from features.text import compose_item_text

        return [
            compose_item_text(row.title, row.overview, list(row.genres), list(row.tags))
            for row in items.itertuples()
        ]
    return [media_files.read_media_file(path, max_bytes) for path in items["path"]]
