"""The demo data's knobs (`DemoDataConfig`), the records its parts pass each other, and its random streams.

Shared by the catalog, interaction, media and file parts of the generator (`demo_data` runs them);
see `demo_data`'s docstring for what each knob does to the files.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from infra.tools.demo_styles import CLUSTER_STYLES

# Independent random streams; the numbers are part of the determinism contract, never renumber.
STREAM_CATALOG, STREAM_USERS, STREAM_INTERACTIONS, STREAM_FAULTS = 1, 2, 3, 4
STREAM_POSTER, STREAM_AUDIO, STREAM_VIDEO = 11, 12, 13


@dataclass(frozen=True)
class DemoDataConfig:
    """Every knob of the demo; `demo_data`'s docstring says what each one does."""

    items: int = 600
    users: int = 300
    clusters: int = 6  # hidden taste clusters, at most len(CLUSTER_STYLES)
    days: int = 28  # span of interaction history, ending on end_date (inclusive)
    end_date: datetime.date = datetime.date(2026, 11, 25)
    cold_item_share: float = 0.1  # items available only from a day in the last 3 days of the span
    interactions_per_user: int = 40  # mean; lognormal per user, at least 5
    taste_purity: float = 0.8  # P(interaction drawn from a favourite cluster) vs popularity background
    faults: bool = True  # append the 4 deliberately bad interaction rows
    seed: int = 7
    audio_seconds: float = 3.0
    video_seconds: float = 2.0
    video_fps: int = 8

    def __post_init__(self) -> None:
        if self.items < 1 or self.users < 1:
            raise ValueError("items and users must be at least 1")
        if not 1 <= self.clusters <= len(CLUSTER_STYLES):
            raise ValueError(f"clusters must be in 1..{len(CLUSTER_STYLES)} (one style per cluster)")
        if self.days < 1:
            raise ValueError("days must be at least 1")
        if not 0.0 <= self.cold_item_share <= 1.0 or not 0.0 <= self.taste_purity <= 1.0:
            raise ValueError("cold_item_share and taste_purity are probabilities in [0, 1]")
        if self.interactions_per_user < 1:
            raise ValueError("interactions_per_user must be at least 1")
        if self.audio_seconds <= 0 or self.video_fps < 1 or self.video_frame_count < 1:
            raise ValueError("audio_seconds must be positive and the video must have a frame")

    @property
    def start_date(self) -> datetime.date:
        return self.end_date - datetime.timedelta(days=self.days - 1)

    @property
    def video_frame_count(self) -> int:
        return round(self.video_seconds * self.video_fps)


@dataclass(frozen=True)
class DemoDataSummary:
    out_dir: Path
    items: int
    users: int
    interactions: int
    bad_rows: int
    cold_items: int


@dataclass(frozen=True)
class CatalogItem:
    item_id: int
    cluster: int
    title: str
    overview: str
    genres: tuple[str, ...]
    tags: tuple[str, ...]
    has_poster: bool
    has_trailer: bool
    available_from: datetime.date
    popularity: float

    @property
    def poster_path(self) -> str:
        return f"posters/{self.item_id}.jpg" if self.has_poster else ""

    @property
    def audio_path(self) -> str:
        return f"audio/{self.item_id}.wav" if self.has_trailer else ""

    @property
    def video_path(self) -> str:
        return f"video/{self.item_id}.mp4" if self.has_trailer else ""


@dataclass(frozen=True)
class DemoUser:
    user_id: int
    favourite_clusters: tuple[int, ...]


@dataclass(frozen=True)
class Interaction:
    user_id: int | None  # None only in the deliberately bad "empty user_id" row
    item_id: int
    rating: float
    event_second: int  # seconds since the start of the span (start_date 00:00:00 UTC)


def stream_rng(seed: int, stream: int, index: int = 0) -> np.random.Generator:
    """An independent generator per (seed, stream, index), so streams never shift each other."""
    return np.random.default_rng([seed, stream, index])
