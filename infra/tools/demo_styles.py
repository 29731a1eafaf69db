"""The demo's hidden taste clusters: how each one shows up in text, poster, audio and video.

The vocabulary (theme words, genres, filler words, overview templates) is data, in
`demo_vocabulary.json` beside this module, read once at import; the rendering parameters of each
cluster (palette, poster shapes, pitch, tempo, timbre, motion) are here. The order of
CLUSTER_STYLES is part of the determinism contract: cluster i is CLUSTER_STYLES[i].
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

VOCABULARY_FILE = Path(__file__).with_name("demo_vocabulary.json")


@dataclass(frozen=True)
class ClusterStyle:
    """How one hidden taste cluster shows up in every modality."""

    name: str
    theme_words: tuple[str, ...]
    primary_genre: str
    secondary_genres: tuple[str, ...]
    # Poster and video palette: OpenCV hue (0..179), saturation and brightness (0..255).
    hue_range: tuple[float, float]
    saturation: int
    brightness: int
    accent_hue_shift: int
    poster_shape: str
    # Trailer audio.
    tempo: float  # note onsets per second
    base_pitch: float  # Hz; clusters are at least a minor third apart so FFT peaks separate
    harmonics: int
    noise_mix: float
    # Trailer video: "static", "slow", "fast" or "cuts" (slow motion with hard scene cuts).
    motion: str


_VOCABULARY = json.loads(VOCABULARY_FILE.read_text(encoding="utf-8"))

GENRES: tuple[str, ...] = tuple(_VOCABULARY["genres"])
# Words every cluster shares, so overviews read like prose and text models cannot separate
# clusters on vocabulary size or rare-word presence alone.
FILLER_WORDS: tuple[str, ...] = tuple(_VOCABULARY["filler_words"])
# Slots a/b/c take cluster theme words, f takes mostly filler words.
OVERVIEW_TEMPLATES: tuple[str, ...] = tuple(_VOCABULARY["overview_templates"])


def _style(
    name: str,
    *,
    hue_range: tuple[float, float],
    saturation: int,
    brightness: int,
    accent_hue_shift: int,
    poster_shape: str,
    tempo: float,
    base_pitch: float,
    harmonics: int,
    noise_mix: float,
    motion: str,
) -> ClusterStyle:
    """A cluster's style: its words from the vocabulary file, its rendering from the arguments."""
    words = _VOCABULARY["clusters"][name]
    return ClusterStyle(
        name=name,
        theme_words=tuple(words["theme_words"]),
        primary_genre=words["primary_genre"],
        secondary_genres=tuple(words["secondary_genres"]),
        hue_range=hue_range,
        saturation=saturation,
        brightness=brightness,
        accent_hue_shift=accent_hue_shift,
        poster_shape=poster_shape,
        tempo=tempo,
        base_pitch=base_pitch,
        harmonics=harmonics,
        noise_mix=noise_mix,
        motion=motion,
    )


CLUSTER_STYLES: tuple[ClusterStyle, ...] = (
    _style(
        "space",
        hue_range=(108, 124),
        saturation=200,
        brightness=150,
        accent_hue_shift=-95,
        poster_shape="circles",
        tempo=2.0,
        base_pitch=110.0,
        harmonics=4,
        noise_mix=0.05,
        motion="slow",
    ),
    _style(
        "romance",
        hue_range=(162, 174),
        saturation=150,
        brightness=235,
        accent_hue_shift=8,
        poster_shape="rings",
        tempo=1.0,
        base_pitch=880.0,
        harmonics=2,
        noise_mix=0.0,
        motion="static",
    ),
    _style(
        "crime",
        hue_range=(16, 24),
        saturation=170,
        brightness=110,
        accent_hue_shift=0,
        poster_shape="stripes",
        tempo=3.0,
        base_pitch=220.0,
        harmonics=6,
        noise_mix=0.15,
        motion="cuts",
    ),
    _style(
        "sports",
        hue_range=(52, 66),
        saturation=210,
        brightness=200,
        accent_hue_shift=-30,
        poster_shape="zigzag",
        tempo=6.0,
        base_pitch=660.0,
        harmonics=3,
        noise_mix=0.25,
        motion="fast",
    ),
    _style(
        "nature",
        hue_range=(82, 94),
        saturation=170,
        brightness=170,
        accent_hue_shift=-60,
        poster_shape="triangles",
        tempo=0.5,
        base_pitch=165.0,
        harmonics=1,
        noise_mix=0.2,
        motion="slow",
    ),
    _style(
        "horror",
        hue_range=(0, 6),
        saturation=230,
        brightness=90,
        accent_hue_shift=0,
        poster_shape="cracks",
        tempo=1.5,
        base_pitch=440.0,
        harmonics=8,
        noise_mix=0.35,
        motion="cuts",
    ),
    _style(
        "comedy",
        hue_range=(136, 148),
        saturation=160,
        brightness=220,
        accent_hue_shift=-115,
        poster_shape="dots",
        tempo=4.0,
        base_pitch=330.0,
        harmonics=3,
        noise_mix=0.05,
        motion="fast",
    ),
    _style(
        "history",
        hue_range=(8, 13),
        saturation=90,
        brightness=185,
        accent_hue_shift=90,
        poster_shape="rectangles",
        tempo=2.5,
        base_pitch=550.0,
        harmonics=5,
        noise_mix=0.1,
        motion="static",
    ),
)

if [style.name for style in CLUSTER_STYLES] != list(_VOCABULARY["clusters"]):
    raise ValueError(f"{VOCABULARY_FILE.name} must describe exactly the clusters of CLUSTER_STYLES, in order")
