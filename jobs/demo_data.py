"""Built-in demo data: a deterministic, offline, synthetic multimodal catalog with hidden taste clusters.

Why it exists: the pipeline must be runnable end to end on a laptop without licences, downloads or a
real catalog, and the demo must have *learnable* signal. So every item belongs to one hidden taste
cluster, and that cluster drives every modality at once: the words of its title/overview/tags, its
genres, the palette and shapes of its poster, the pitch/tempo/timbre of its trailer audio, the motion
and colours of its trailer video, and which users interact with it. Feature extraction (sentence
embeddings, image embeddings, librosa, OpenCV) and the ranker can therefore recover real structure
from content, and `truth/` lets the evaluation check whether they did.

Everything is a pure function of `DemoDataConfig` (seed included): no network, no Spark, no clock,
no global state. Running twice into the same folder gives byte-identical CSVs and media files.

Files written under `out_dir` (the contract the ingestion job reads):

- `catalog.csv`: `item_id,title,overview,genres,tags,poster_path,audio_path,video_path,available_from`.
  UTF-8, header row, csv-module quoting (QUOTE_MINIMAL), `\\n` line endings. `genres` and `tags` are
  pipe-separated. Media paths are relative to `out_dir`; an empty path means the modality is missing
  (about 3% of items have no trailer, i.e. neither audio nor video; about 2% have no poster).
  `available_from` is `YYYY-MM-DD`: the first day of the span for most items, a day within the last
  3 days of the span for cold items.
- `interactions.csv`: `user_id,item_id,rating,event_time,source`. rating is 0.5..5.0 in steps of
  0.5, event_time is ISO-8601 UTC (`2026-11-03T14:22:05Z`) and never before the item's
  `available_from`, source is `demo`. Good rows are sorted by event_time, user_id, item_id and never
  repeat a (user_id, item_id) pair. With `faults=True` exactly 4 deliberately bad rows follow them,
  in this order: unknown item_id (`items + 1000`), rating 7.5, an exact copy of an earlier good row,
  an empty user_id. Each bad row has exactly one fault, so quarantine rules can be checked one by one.
- `posters/<id>.jpg`: 120x180 (w x h) BGR JPEG, quality 90.
- `audio/<id>.wav`: mono 16-bit PCM, 22,050 Hz, `audio_seconds` long, peak amplitude 0.5.
- `video/<id>.mp4`: `round(video_seconds * video_fps)` frames of 96x64, fourcc `mp4v`.
- `truth/items.csv` (`item_id,cluster`) and `truth/users.csv` (`user_id,favourite_clusters`,
  pipe-separated ints): the hidden truth, for evaluation only; never feed it to the ranker.

`posters/`, `audio/` and `video/` are deleted and recreated on every run so a smaller run never
leaves stale files from a larger one.

Knobs (`DemoDataConfig`):

- `items`, `users`: catalog and user counts; item_id is 1..items, user_id is 1..users.
- `clusters`: number of hidden taste clusters, 1..len(CLUSTER_STYLES) (8). Items are spread evenly
  over clusters, in random order.
- `days`, `end_date`: interaction history covers the `days` days ending on `end_date` (inclusive).
- `cold_item_share`: share of items that only become available in the last 3 days of the span
  (at least one item always stays non-cold, so every user can always be served).
- `interactions_per_user`: mean interactions per user; actual counts are lognormal (sigma 0.5),
  at least 5, and at most the number of non-cold items.
- `taste_purity`: probability that an interaction is drawn from one of the user's 1-2 favourite
  clusters (item chosen by popularity within that cluster); otherwise it is drawn from overall
  popularity. Item popularity follows a power law (rank ** -POPULARITY_EXPONENT).
- `faults`: append the 4 bad interaction rows described above.
- `seed`: the only source of randomness. Every medium of every item uses its own random stream
  (seed, medium, item_id), so changing e.g. the video renderer does not change posters or audio.
- `audio_seconds`: trailer audio length.
- `video_seconds`, `video_fps`: trailer video length and frame rate.

Fixed module-level choices: NO_TRAILER_SHARE (0.03) and NO_POSTER_SHARE (0.02), rounded up so even
a tiny demo has a missing modality; COLD_WINDOW_DAYS (3); POPULARITY_EXPONENT (0.9).

Video codec (opencv-python-headless 5.0.0): `cv2.VideoWriter.fourcc` and `cv2.VideoWriter_fourcc`
both exist. `mp4v` (MPEG-4 Part 2 via the bundled FFmpeg) works, reads back with
`cv2.VideoCapture` with the exact frame count, and is byte-deterministic across processes for the
same wheel. `avc1`/`H264` do NOT work in this wheel (only the hardware `h264_v4l2m2m` encoder is
present): the writer just reports `isOpened() == False`, so we check it and raise. The writer also
silently drops frames whose size or channel count differ from the declared ones (a warning on
stderr, no exception) and silently crops odd widths/heights to even ones, so frames are built at
exactly VIDEO_SIZE (even) as 3-channel uint8.
"""

from __future__ import annotations

import csv
import datetime
import logging
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import soundfile

log = logging.getLogger("modalrank.demo_data")

Colour = tuple[int, int, int]  # BGR, as cv2 draws

POSTER_SIZE = (120, 180)  # (width, height), cv2 order
VIDEO_SIZE = (96, 64)  # (width, height); both even, see the codec note above
VIDEO_FOURCC = "mp4v"
JPEG_QUALITY = 90
SAMPLE_RATE = 22_050
AUDIO_PEAK = 0.5
NO_TRAILER_SHARE = 0.03
NO_POSTER_SHARE = 0.02
COLD_WINDOW_DAYS = 3
POPULARITY_EXPONENT = 0.9
MIN_INTERACTIONS_PER_USER = 5
PROGRESS_EVERY = 100
UNKNOWN_ITEM_OFFSET = 1000
OUT_OF_RANGE_RATING = 7.5
SOURCE = "demo"
CATALOG_COLUMNS = (
    "item_id", "title", "overview", "genres", "tags",
    "poster_path", "audio_path", "video_path", "available_from",
)  # fmt: skip
INTERACTION_COLUMNS = ("user_id", "item_id", "rating", "event_time", "source")

# Independent random streams; the numbers are part of the determinism contract, never renumber.
_STREAM_CATALOG, _STREAM_USERS, _STREAM_INTERACTIONS, _STREAM_FAULTS = 1, 2, 3, 4
_STREAM_POSTER, _STREAM_AUDIO, _STREAM_VIDEO = 11, 12, 13


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


CLUSTER_STYLES: tuple[ClusterStyle, ...] = (
    ClusterStyle(
        name="space",
        theme_words=(
            "astronaut",
            "rocket",
            "galaxy",
            "planet",
            "robot",
            "starship",
            "nebula",
            "orbit",
            "alien",
            "android",
            "comet",
            "asteroid",
            "satellite",
            "cosmos",
            "colony",
            "laser",
            "spacecraft",
            "moon",
            "gravity",
            "wormhole",
            "reactor",
            "cyborg",
            "station",
            "pilot",
            "transmission",
            "meteor",
            "eclipse",
            "hyperdrive",
            "frontier",
            "circuit",
        ),
        primary_genre="Sci-Fi",
        secondary_genres=("Action", "Adventure", "Thriller"),
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
    ClusterStyle(
        name="romance",
        theme_words=(
            "love",
            "wedding",
            "kiss",
            "heart",
            "letter",
            "bride",
            "groom",
            "rose",
            "promise",
            "date",
            "dance",
            "sweetheart",
            "proposal",
            "honeymoon",
            "valentine",
            "romance",
            "couple",
            "ring",
            "bouquet",
            "candle",
            "flirt",
            "crush",
            "anniversary",
            "passion",
            "moonlight",
            "embrace",
            "serenade",
            "affair",
            "engagement",
            "poem",
        ),
        primary_genre="Romance",
        secondary_genres=("Drama", "Comedy", "Music"),
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
    ClusterStyle(
        name="crime",
        theme_words=(
            "detective",
            "murder",
            "heist",
            "gangster",
            "police",
            "gun",
            "robbery",
            "witness",
            "alibi",
            "suspect",
            "mafia",
            "smuggler",
            "badge",
            "casino",
            "informant",
            "ransom",
            "interrogation",
            "cartel",
            "prison",
            "fraud",
            "clue",
            "forensics",
            "evidence",
            "kidnapping",
            "sniper",
            "corruption",
            "courtroom",
            "hitman",
            "getaway",
            "vault",
        ),
        primary_genre="Crime",
        secondary_genres=("Thriller", "Mystery", "Drama"),
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
    ClusterStyle(
        name="sports",
        theme_words=(
            "stadium",
            "championship",
            "coach",
            "athlete",
            "marathon",
            "boxer",
            "goal",
            "trophy",
            "referee",
            "league",
            "sprint",
            "rival",
            "team",
            "tournament",
            "victory",
            "medal",
            "training",
            "playoff",
            "striker",
            "racer",
            "finish",
            "comeback",
            "underdog",
            "arena",
            "locker",
            "scoreboard",
            "dribble",
            "knockout",
            "season",
            "podium",
        ),
        primary_genre="Sport",
        secondary_genres=("Action", "Drama", "Comedy"),
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
    ClusterStyle(
        name="nature",
        theme_words=(
            "forest",
            "river",
            "wolf",
            "ocean",
            "mountain",
            "glacier",
            "eagle",
            "whale",
            "jungle",
            "desert",
            "volcano",
            "coral",
            "migration",
            "savanna",
            "elephant",
            "tiger",
            "rainforest",
            "reef",
            "canyon",
            "waterfall",
            "tundra",
            "meadow",
            "bison",
            "penguin",
            "wilderness",
            "island",
            "lagoon",
            "herd",
            "butterfly",
            "wildlife",
        ),
        primary_genre="Documentary",
        secondary_genres=("Family", "Adventure", "Drama"),
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
    ClusterStyle(
        name="horror",
        theme_words=(
            "ghost",
            "haunting",
            "demon",
            "curse",
            "zombie",
            "vampire",
            "nightmare",
            "graveyard",
            "ritual",
            "possession",
            "monster",
            "skull",
            "blood",
            "shadow",
            "coffin",
            "witch",
            "exorcism",
            "scream",
            "asylum",
            "crypt",
            "corpse",
            "phantom",
            "mansion",
            "fog",
            "spirit",
            "werewolf",
            "seance",
            "butcher",
            "cellar",
            "poltergeist",
        ),
        primary_genre="Horror",
        secondary_genres=("Thriller", "Mystery", "Fantasy"),
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
    ClusterStyle(
        name="comedy",
        theme_words=(
            "prank",
            "joke",
            "roommate",
            "party",
            "clown",
            "sitcom",
            "blunder",
            "mischief",
            "slapstick",
            "caper",
            "vacation",
            "neighbour",
            "parody",
            "hijinks",
            "sidekick",
            "karaoke",
            "wisecrack",
            "costume",
            "pet",
            "bachelor",
            "reunion",
            "mixup",
            "gag",
            "comedian",
            "hangover",
            "dorm",
            "fiasco",
            "improv",
            "sleepover",
            "sketch",
        ),
        primary_genre="Comedy",
        secondary_genres=("Family", "Romance", "Animation"),
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
    ClusterStyle(
        name="history",
        theme_words=(
            "empire",
            "king",
            "queen",
            "battle",
            "castle",
            "soldier",
            "revolution",
            "dynasty",
            "treaty",
            "knight",
            "siege",
            "general",
            "kingdom",
            "crusade",
            "throne",
            "pharaoh",
            "legion",
            "fortress",
            "rebellion",
            "trench",
            "armada",
            "monarch",
            "colonial",
            "cavalry",
            "chronicle",
            "conquest",
            "parliament",
            "emperor",
            "regiment",
            "archive",
        ),
        primary_genre="History",
        secondary_genres=("War", "Drama", "Adventure"),
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

GENRES: tuple[str, ...] = (
    "Action",
    "Adventure",
    "Animation",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Family",
    "Fantasy",
    "History",
    "Horror",
    "Music",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Sport",
    "Thriller",
    "War",
)

# Words every cluster shares, so overviews read like prose and text models cannot separate
# clusters on vocabulary size or rare-word presence alone.
FILLER_WORDS: tuple[str, ...] = (
    "family",
    "city",
    "secret",
    "journey",
    "friend",
    "night",
    "past",
    "home",
    "life",
    "world",
    "stranger",
    "truth",
    "dream",
    "chance",
    "fate",
    "summer",
    "town",
    "mistake",
    "choice",
    "legacy",
)

# Slots a/b/c take cluster theme words, f takes mostly filler words.
OVERVIEW_TEMPLATES: tuple[str, ...] = (
    "A {a} and a {b} are drawn into a {f} of {c}.",
    "When the {a} meets the {b}, nothing about the {c} stays the same.",
    "Years after the {a}, a {f} returns to face the {b}.",
    "Between the {a} and the {b}, one {f} could change everything.",
    "This is a tale of {a}, {b} and {c}.",
    "An unlikely {a} must protect the {b} before the {c} is lost.",
    "Only the {a} knows the {f} behind the {b}.",
    "Every {a} hides a {b}, and every {b} hides a {c}.",
    "Far from {f}, a {a} searches for the {b}.",
    "Nobody expected the {a} to lead a {f} toward the {b}.",
)
# Share of theme-word slots filled from another cluster: real catalogs are not perfectly separable.
OFF_THEME_WORD_SHARE = 0.08
FILLER_SLOT_THEME_SHARE = 0.3
PRIMARY_GENRE_NOISE = 0.1
SECONDARY_GENRE_NOISE = 0.2


@dataclass(frozen=True)
class DemoDataConfig:
    """Every knob of the demo; see the module docstring for what each one does."""

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


# ---------------------------------------------------------------------------------------------
# Randomness


def stream_rng(seed: int, stream: int, index: int = 0) -> np.random.Generator:
    """An independent generator per (seed, stream, index), so streams never shift each other."""
    return np.random.default_rng([seed, stream, index])


# ---------------------------------------------------------------------------------------------
# Catalog text and metadata


def assign_clusters(items: int, clusters: int, rng: np.random.Generator) -> np.ndarray:
    # Even spread, so a tiny demo still has every cluster populated.
    return rng.permutation(np.arange(items) % clusters)


def _theme_word(style_index: int, clusters: int, rng: np.random.Generator) -> str:
    if clusters > 1 and rng.random() < OFF_THEME_WORD_SHARE:
        style_index = int(rng.integers(clusters))
    words = CLUSTER_STYLES[style_index].theme_words
    return words[int(rng.integers(len(words)))]


def make_title(style: ClusterStyle, rng: np.random.Generator, taken: set[str]) -> str:
    while True:
        first, second = rng.choice(len(style.theme_words), size=2, replace=False)
        title = (
            f"{style.theme_words[first].title()} {style.theme_words[second].title()} {int(rng.integers(2, 100))}"
        )
        if title not in taken:
            taken.add(title)
            return title


def make_overview(style_index: int, clusters: int, rng: np.random.Generator) -> str:
    sentences = []
    for _ in range(int(rng.integers(2, 4))):
        template = OVERVIEW_TEMPLATES[int(rng.integers(len(OVERVIEW_TEMPLATES)))]
        if rng.random() < FILLER_SLOT_THEME_SHARE:
            filler = _theme_word(style_index, clusters, rng)
        else:
            filler = FILLER_WORDS[int(rng.integers(len(FILLER_WORDS)))]
        slots = {slot: _theme_word(style_index, clusters, rng) for slot in "abc"}
        sentences.append(template.format(f=filler, **slots))
    return " ".join(sentences)


def make_genres(style: ClusterStyle, rng: np.random.Generator) -> tuple[str, ...]:
    if rng.random() < PRIMARY_GENRE_NOISE:
        primary = GENRES[int(rng.integers(len(GENRES)))]
    else:
        primary = style.primary_genre
    genres = [primary]
    for _ in range(int(rng.choice(3, p=[0.3, 0.45, 0.25]))):
        pool = GENRES if rng.random() < SECONDARY_GENRE_NOISE else style.secondary_genres
        genre = pool[int(rng.integers(len(pool)))]
        if genre not in genres:
            genres.append(genre)
    return tuple(genres)


def make_tags(style: ClusterStyle, rng: np.random.Generator) -> tuple[str, ...]:
    count = int(rng.integers(0, 4))
    picks = rng.choice(len(style.theme_words), size=count, replace=False)
    return tuple(style.theme_words[i] for i in picks)


def _pick_share(items: int, share: float, rng: np.random.Generator) -> set[int]:
    # Rounded up so even a 20-item demo exercises the missing-modality paths.
    count = min(items, math.ceil(items * share))
    return {int(i) + 1 for i in rng.choice(items, size=count, replace=False)}


def build_catalog(config: DemoDataConfig) -> list[CatalogItem]:
    rng = stream_rng(config.seed, _STREAM_CATALOG)
    clusters = assign_clusters(config.items, config.clusters, rng)
    # Power-law popularity over a random ranking: a few hits, a long tail, in every cluster.
    ranks = rng.permutation(config.items)
    popularity = (ranks + 1.0) ** -POPULARITY_EXPONENT
    cold_count = min(round(config.items * config.cold_item_share), config.items - 1)
    cold_ids = {int(i) + 1 for i in rng.choice(config.items, size=cold_count, replace=False)}
    no_trailer = _pick_share(config.items, NO_TRAILER_SHARE, rng)
    no_poster = _pick_share(config.items, NO_POSTER_SHARE, rng)
    cold_window = min(COLD_WINDOW_DAYS, config.days)

    catalog = []
    titles: set[str] = set()
    for index in range(config.items):
        item_id = index + 1
        cluster = int(clusters[index])
        style = CLUSTER_STYLES[cluster]
        available_from = config.start_date
        if item_id in cold_ids:
            available_from = config.end_date - datetime.timedelta(days=int(rng.integers(cold_window)))
        catalog.append(
            CatalogItem(
                item_id=item_id,
                cluster=cluster,
                title=make_title(style, rng, titles),
                overview=make_overview(cluster, config.clusters, rng),
                genres=make_genres(style, rng),
                tags=make_tags(style, rng),
                has_poster=item_id not in no_poster,
                has_trailer=item_id not in no_trailer,
                available_from=available_from,
                popularity=float(popularity[index]),
            )
        )
    return catalog


# ---------------------------------------------------------------------------------------------
# Users and interactions


def build_users(config: DemoDataConfig) -> list[DemoUser]:
    rng = stream_rng(config.seed, _STREAM_USERS)
    users = []
    for user_id in range(1, config.users + 1):
        count = 1 if config.clusters == 1 or rng.random() < 0.5 else 2
        favourites = rng.choice(config.clusters, size=count, replace=False)
        users.append(DemoUser(user_id, tuple(sorted(int(c) for c in favourites))))
    return users


def _rating(in_taste: bool, item_quality: float, user_bias: float, rng: np.random.Generator) -> float:
    mean = 2.6 + (1.5 if in_taste else 0.0) + item_quality + user_bias
    raw = mean + rng.normal(0.0, 0.6)
    return float(np.clip(np.round(raw * 2.0) / 2.0, 0.5, 5.0))


def _weighted_pick(weights: np.ndarray, rng: np.random.Generator) -> int | None:
    total = weights.sum()
    if total <= 0.0:
        return None
    cumulative = np.cumsum(weights)
    return int(min(np.searchsorted(cumulative, rng.random() * total, side="right"), len(weights) - 1))


def simulate_interactions(
    config: DemoDataConfig, catalog: Sequence[CatalogItem], users: Sequence[DemoUser]
) -> list[Interaction]:
    """Good interaction rows, sorted by (event_second, user_id, item_id).

    Time is drawn first and the item second, among items already available at that moment, so
    no interaction can precede its item's available_from and cold items only show up late.
    """
    rng = stream_rng(config.seed, _STREAM_INTERACTIONS)
    span_seconds = config.days * 86_400
    item_clusters = np.array([item.cluster for item in catalog])
    popularity = np.array([item.popularity for item in catalog])
    available_second = np.array([(item.available_from - config.start_date).days * 86_400 for item in catalog])
    always_available = int((available_second == 0).sum())
    item_quality = rng.normal(0.0, 0.35, size=len(catalog))
    cluster_masks = [item_clusters == c for c in range(config.clusters)]

    # Lognormal parameterised so its mean is interactions_per_user before the floor of 5.
    sigma = 0.5
    mu = math.log(config.interactions_per_user) - sigma**2 / 2.0
    rows: list[Interaction] = []
    for user in users:
        wanted = max(MIN_INTERACTIONS_PER_USER, round(rng.lognormal(mu, sigma)))
        # Capped by the items available from day one, so every draw always has a candidate left.
        wanted = min(wanted, always_available)
        user_bias = rng.normal(0.0, 0.3)
        taken = np.zeros(len(catalog), dtype=bool)
        for event_second in rng.integers(0, span_seconds, size=wanted):
            candidates = (available_second <= event_second) & ~taken
            index = None
            if rng.random() < config.taste_purity:
                favourite = user.favourite_clusters[int(rng.integers(len(user.favourite_clusters)))]
                index = _weighted_pick(popularity * (candidates & cluster_masks[favourite]), rng)
            if index is None:
                # Background draw, and the fallback when a favourite cluster is exhausted.
                index = _weighted_pick(popularity * candidates, rng)
            if index is None:
                continue
            taken[index] = True
            item = catalog[index]
            rating = _rating(item.cluster in user.favourite_clusters, item_quality[index], user_bias, rng)
            rows.append(Interaction(user.user_id, item.item_id, rating, int(event_second)))
    rows.sort(key=lambda row: (row.event_second, row.user_id, row.item_id))
    return rows


def make_fault_rows(
    config: DemoDataConfig,
    catalog: Sequence[CatalogItem],
    good_rows: Sequence[Interaction],
) -> list[Interaction]:
    """The 4 deliberately bad rows, each with exactly one fault, in the documented order."""
    rng = stream_rng(config.seed, _STREAM_FAULTS)
    span_seconds = config.days * 86_400
    seen = {(row.user_id, row.item_id) for row in good_rows}
    day_one_items = [item.item_id for item in catalog if item.available_from == config.start_date]

    def fresh_pair() -> tuple[int, int]:
        # A pair absent from the good rows, so the out-of-range row is not also a duplicate.
        for _ in range(1000):
            user_id = int(rng.integers(1, config.users + 1))
            item_id = day_one_items[int(rng.integers(len(day_one_items)))]
            if (user_id, item_id) not in seen:
                return user_id, item_id
        return user_id, item_id

    user_id, item_id = fresh_pair()
    return [
        Interaction(
            int(rng.integers(1, config.users + 1)),
            config.items + UNKNOWN_ITEM_OFFSET,
            4.0,
            int(rng.integers(span_seconds)),
        ),
        Interaction(user_id, item_id, OUT_OF_RANGE_RATING, int(rng.integers(span_seconds))),
        good_rows[int(rng.integers(len(good_rows)))],
        Interaction(
            None,
            day_one_items[int(rng.integers(len(day_one_items)))],
            3.0,
            int(rng.integers(span_seconds)),
        ),
    ]


# ---------------------------------------------------------------------------------------------
# Media


def hsv_colour(hue: float, saturation: float, value: float) -> Colour:
    """A BGR colour from OpenCV-scale HSV (hue 0..179, wrapping; s and v clipped to 0..255)."""
    pixel = np.array(
        [[[round(hue) % 180, int(np.clip(saturation, 0, 255)), int(np.clip(value, 0, 255))]]],
        dtype=np.uint8,
    )
    b, g, r = cv2.cvtColor(pixel, cv2.COLOR_HSV2BGR)[0, 0]
    return int(b), int(g), int(r)


def vertical_gradient(width: int, height: int, top: Colour, bottom: Colour) -> np.ndarray:
    ramp = np.linspace(0.0, 1.0, height)[:, None, None]
    rows = (1.0 - ramp) * np.array(top, dtype=np.float64) + ramp * np.array(bottom, dtype=np.float64)
    return np.ascontiguousarray(np.broadcast_to(np.round(rows), (height, width, 3)).astype(np.uint8))


def _paint_circles(image: np.ndarray, colour: Colour, rng: np.random.Generator) -> None:
    height, width = image.shape[:2]
    for _ in range(int(rng.integers(2, 5))):
        centre = (int(rng.integers(0, width)), int(rng.integers(0, int(height * 0.8))))
        cv2.circle(image, centre, int(rng.integers(10, 34)), colour, -1, cv2.LINE_AA)


def _paint_rings(image: np.ndarray, colour: Colour, rng: np.random.Generator) -> None:
    height, width = image.shape[:2]
    for _ in range(int(rng.integers(2, 5))):
        centre = (int(rng.integers(10, width - 10)), int(rng.integers(10, int(height * 0.8))))
        radius = int(rng.integers(12, 40))
        cv2.circle(image, centre, radius, colour, int(rng.integers(3, 7)), cv2.LINE_AA)


def _paint_stripes(image: np.ndarray, colour: Colour, rng: np.random.Generator) -> None:
    height, width = image.shape[:2]
    spacing = int(rng.integers(10, 16))
    thickness = int(rng.integers(3, 6))
    offset = int(rng.integers(0, spacing))
    slope = int(rng.integers(-20, 21))
    for y in range(offset, int(height * 0.8), spacing):
        cv2.line(image, (0, y), (width - 1, y + slope), colour, thickness, cv2.LINE_AA)


def _paint_triangles(image: np.ndarray, colour: Colour, rng: np.random.Generator) -> None:
    height, width = image.shape[:2]
    base_y = int(height * 0.8)
    for _ in range(int(rng.integers(2, 5))):
        peak_x = int(rng.integers(0, width))
        half = int(rng.integers(20, 50))
        peak_y = int(rng.integers(int(height * 0.25), int(height * 0.6)))
        points = np.array([[peak_x - half, base_y], [peak_x, peak_y], [peak_x + half, base_y]], np.int32)
        cv2.fillPoly(image, [points], colour, cv2.LINE_AA)


def _paint_dots(image: np.ndarray, colour: Colour, rng: np.random.Generator) -> None:
    height, width = image.shape[:2]
    for _ in range(int(rng.integers(30, 60))):
        centre = (int(rng.integers(0, width)), int(rng.integers(0, int(height * 0.8))))
        cv2.circle(image, centre, int(rng.integers(2, 6)), colour, -1, cv2.LINE_AA)


def _paint_zigzag(image: np.ndarray, colour: Colour, rng: np.random.Generator) -> None:
    height, width = image.shape[:2]
    for _ in range(int(rng.integers(1, 3))):
        y = int(rng.integers(20, int(height * 0.7)))
        step = int(rng.integers(12, 22))
        amplitude = int(rng.integers(8, 18))
        xs = range(-step, width + step, step)
        points = np.array([[x, y + (amplitude if i % 2 else -amplitude)] for i, x in enumerate(xs)], np.int32)
        cv2.polylines(image, [points], False, colour, int(rng.integers(4, 8)), cv2.LINE_AA)


def _paint_cracks(image: np.ndarray, colour: Colour, rng: np.random.Generator) -> None:
    height, width = image.shape[:2]
    for _ in range(int(rng.integers(2, 4))):
        steps = rng.normal(0.0, 9.0, size=(12, 2)) + np.array([0.0, 9.0])
        start = np.array([rng.integers(0, width), rng.integers(0, height // 4)], dtype=np.float64)
        points = np.round(start + np.cumsum(steps, axis=0)).astype(np.int32)
        cv2.polylines(image, [points], False, colour, int(rng.integers(1, 3)), cv2.LINE_AA)


def _paint_rectangles(image: np.ndarray, colour: Colour, rng: np.random.Generator) -> None:
    height, width = image.shape[:2]
    base_y = int(height * 0.8)
    x = int(rng.integers(-10, 5))
    while x < width:
        block_width = int(rng.integers(12, 30))
        top = int(rng.integers(int(height * 0.35), int(height * 0.7)))
        cv2.rectangle(image, (x, top), (x + block_width - 3, base_y), colour, -1)
        x += block_width


SHAPE_PAINTERS: dict[str, Callable[[np.ndarray, Colour, np.random.Generator], None]] = {
    "circles": _paint_circles,
    "rings": _paint_rings,
    "stripes": _paint_stripes,
    "triangles": _paint_triangles,
    "dots": _paint_dots,
    "zigzag": _paint_zigzag,
    "cracks": _paint_cracks,
    "rectangles": _paint_rectangles,
}


def draw_poster(style: ClusterStyle, rng: np.random.Generator) -> np.ndarray:
    """A POSTER_SIZE BGR uint8 image: cluster palette and shapes, jittered per item."""
    width, height = POSTER_SIZE
    hue = rng.uniform(*style.hue_range)
    saturation = style.saturation + rng.uniform(-20, 20)
    brightness = style.brightness + rng.uniform(-20, 20)
    top = hsv_colour(hue, saturation, brightness)
    bottom = hsv_colour(hue + rng.uniform(-4, 4), saturation, brightness * 0.55)
    poster = vertical_gradient(width, height, top, bottom)
    accent = hsv_colour(hue + style.accent_hue_shift + rng.uniform(-6, 6), 200, 235)
    SHAPE_PAINTERS[style.poster_shape](poster, accent, rng)
    # A dark title band with a light "title" bar, like a real one-sheet; the same for every cluster.
    band_top = int(height * 0.82)
    poster[band_top:] = (poster[band_top:] * 0.35).astype(np.uint8)
    bar_width = int(rng.integers(40, width - 20))
    cv2.rectangle(poster, (10, band_top + 10), (10 + bar_width, band_top + 17), (225, 225, 225), -1)
    return poster


def synth_trailer_audio(
    style: ClusterStyle, rng: np.random.Generator, seconds: float, sample_rate: int = SAMPLE_RATE
) -> np.ndarray:
    """Mono float32 audio, peak AUDIO_PEAK: plucked notes at the cluster's tempo, pitch and timbre.

    The root note dominates (with an occasional, quieter fifth), so the strongest FFT bin sits at the
    cluster's base pitch; tempo shows up in onset strength, timbre in spectral shape and flatness.
    """
    sample_count = max(1, round(seconds * sample_rate))
    pitch = style.base_pitch * rng.uniform(0.97, 1.03)
    interval = 1.0 / (style.tempo * rng.uniform(0.9, 1.1))
    harmonic_numbers = np.arange(1, style.harmonics + 1)
    overtone_jitter = rng.uniform(0.7, 1.3, style.harmonics - 1)
    harmonic_gains = harmonic_numbers**-1.2 * np.concatenate([[1.0], overtone_jitter])
    harmonic_phases = rng.uniform(0, 2 * np.pi, style.harmonics)
    decay = 0.4 * interval
    audio = np.zeros(sample_count, dtype=np.float64)

    onset = rng.uniform(0.0, 0.25 * interval)
    note_number = 0
    while onset < seconds:
        start = int(onset * sample_rate)
        length = min(sample_count - start, int(interval * sample_rate) + 1)
        if length <= 0:
            break
        t = np.arange(length) / sample_rate
        # An occasional quieter fifth gives a melody; only on odd notes, so the root always sounds
        # at least as often and the strongest FFT bin stays on the cluster's pitch.
        is_fifth = note_number % 2 == 1 and rng.random() < 0.4
        frequency = pitch * (1.5 if is_fifth else 1.0)
        envelope = (0.4 if is_fifth else 1.0) * np.minimum(t / 0.005, 1.0) * np.exp(-t / decay)
        phases = 2 * np.pi * frequency * harmonic_numbers[:, None] * t[None, :] + harmonic_phases[:, None]
        tone = harmonic_gains @ np.sin(phases)
        hit = rng.standard_normal(length) * np.exp(-t / (decay / 3.0))
        audio[start : start + length] += envelope * tone + style.noise_mix * hit
        onset += interval * rng.uniform(0.97, 1.03)
        note_number += 1

    audio += 0.05 * style.noise_mix * rng.standard_normal(sample_count)
    peak = np.abs(audio).max()
    if peak > 0:
        audio *= AUDIO_PEAK / peak
    return audio.astype(np.float32)


def _bounce(position: float, low: float, high: float) -> float:
    span = high - low
    if span <= 0:
        return low
    phase = (position - low) % (2 * span)
    return low + (phase if phase <= span else 2 * span - phase)


def render_trailer_video(style: ClusterStyle, rng: np.random.Generator, frame_count: int) -> np.ndarray:
    """(frame_count, height, width, 3) BGR uint8 frames: cluster colours and motion level."""
    width, height = VIDEO_SIZE
    hue = rng.uniform(*style.hue_range)
    speed = {"static": 0.0, "slow": 1.0, "fast": 7.0, "cuts": 1.0}[style.motion] * rng.uniform(0.8, 1.2)
    scene_count = 3 if style.motion == "cuts" else 1
    scenes = []
    for scene in range(scene_count):
        # Cut scenes differ in light and a little in hue, but stay in the cluster's palette.
        scene_hue = hue + 8 * scene
        scene_brightness = style.brightness * (1.0, 0.55, 0.8)[scene]
        background = vertical_gradient(
            width,
            height,
            hsv_colour(scene_hue, style.saturation, scene_brightness),
            hsv_colour(scene_hue, style.saturation, scene_brightness * 0.5),
        )
        sprite_colour = hsv_colour(scene_hue + style.accent_hue_shift, 200, 235)
        start = (rng.uniform(0, width), rng.uniform(0, height))
        angle = rng.uniform(0, 2 * np.pi)
        scenes.append((background, sprite_colour, start, (np.cos(angle), np.sin(angle))))
    frames_per_scene = max(2, round(frame_count / rng.uniform(3.5, 5.0)))
    radius = int(rng.integers(7, 12))
    breathing_phase = rng.uniform(0, 2 * np.pi)

    frames = np.empty((frame_count, height, width, 3), dtype=np.uint8)
    for index in range(frame_count):
        background, sprite_colour, start, direction = scenes[(index // frames_per_scene) % scene_count]
        frame = background.copy()
        if style.motion == "static":
            # Near-static, not frozen: a slow light breathing, as in a held shot.
            shift = round(2 * np.sin(breathing_phase + index * 0.3))
            frame = cv2.add(frame, np.full_like(frame, max(shift, 0)))
        x = _bounce(start[0] + direction[0] * speed * index, radius, width - radius)
        y = _bounce(start[1] + direction[1] * speed * index, radius, height - radius)
        cv2.circle(frame, (round(x), round(y)), radius, sprite_colour, -1, cv2.LINE_AA)
        frames[index] = frame
    return frames


def encode_jpeg(image: np.ndarray) -> bytes:
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError("cv2.imencode failed to encode a JPEG poster")
    return buffer.tobytes()


def write_wav(path: Path, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    # Quantised here rather than by libsndfile so the bytes do not depend on its float scaling.
    pcm = np.round(np.clip(audio, -1.0, 1.0) * 32767.0).astype(np.int16)
    soundfile.write(str(path), pcm, sample_rate, subtype="PCM_16", format="WAV")


def write_mp4(path: Path, frames: np.ndarray, fps: int) -> None:
    height, width = frames.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*VIDEO_FOURCC), float(fps), (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"cv2.VideoWriter cannot encode fourcc {VIDEO_FOURCC!r} to {path}")
    try:
        for frame in frames:
            writer.write(np.ascontiguousarray(frame))
    finally:
        writer.release()


# ---------------------------------------------------------------------------------------------
# Files


def _iso_utc(config: DemoDataConfig, event_second: int) -> str:
    start = datetime.datetime.combine(config.start_date, datetime.time(), tzinfo=datetime.UTC)
    return (start + datetime.timedelta(seconds=event_second)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def write_catalog_csv(path: Path, catalog: Sequence[CatalogItem]) -> None:
    _write_csv(
        path,
        CATALOG_COLUMNS,
        [
            [
                item.item_id,
                item.title,
                item.overview,
                "|".join(item.genres),
                "|".join(item.tags),
                item.poster_path,
                item.audio_path,
                item.video_path,
                item.available_from.isoformat(),
            ]
            for item in catalog
        ],
    )


def write_interactions_csv(path: Path, config: DemoDataConfig, rows: Sequence[Interaction]) -> None:
    _write_csv(
        path,
        INTERACTION_COLUMNS,
        [
            [
                "" if row.user_id is None else row.user_id,
                row.item_id,
                f"{row.rating:.1f}",
                _iso_utc(config, row.event_second),
                SOURCE,
            ]
            for row in rows
        ],
    )


def write_truth(truth_dir: Path, catalog: Sequence[CatalogItem], users: Sequence[DemoUser]) -> None:
    truth_dir.mkdir(parents=True, exist_ok=True)
    _write_csv(truth_dir / "items.csv", ["item_id", "cluster"], [[item.item_id, item.cluster] for item in catalog])
    _write_csv(
        truth_dir / "users.csv",
        ["user_id", "favourite_clusters"],
        [[user.user_id, "|".join(str(c) for c in user.favourite_clusters)] for user in users],
    )


def write_media(out_dir: Path, config: DemoDataConfig, catalog: Sequence[CatalogItem]) -> None:
    media_dirs = [out_dir / "posters", out_dir / "audio", out_dir / "video"]
    for media_dir in media_dirs:
        # Cleared, not merged: a previous larger run must not leave orphan files behind.
        if media_dir.exists():
            shutil.rmtree(media_dir)
        media_dir.mkdir(parents=True)

    started = time.perf_counter()
    total = len(catalog)
    for done, item in enumerate(catalog, start=1):
        style = CLUSTER_STYLES[item.cluster]
        if item.has_poster:
            poster = draw_poster(style, stream_rng(config.seed, _STREAM_POSTER, item.item_id))
            (out_dir / item.poster_path).write_bytes(encode_jpeg(poster))
        if item.has_trailer:
            audio_rng = stream_rng(config.seed, _STREAM_AUDIO, item.item_id)
            audio = synth_trailer_audio(style, audio_rng, config.audio_seconds)
            write_wav(out_dir / item.audio_path, audio)
            frames = render_trailer_video(
                style, stream_rng(config.seed, _STREAM_VIDEO, item.item_id), config.video_frame_count
            )
            write_mp4(out_dir / item.video_path, frames, config.video_fps)
        if done % PROGRESS_EVERY == 0 or done == total:
            elapsed = time.perf_counter() - started
            log.info("media %d/%d items (%.0f items/s)", done, total, done / elapsed if elapsed > 0 else 0.0)


def generate_demo_data(out_dir: Path | str, config: DemoDataConfig = DemoDataConfig()) -> DemoDataSummary:
    """Write the demo catalog, interactions, media and hidden truth under `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    log.info(
        "demo data: %d items, %d users, %d clusters, seed %d -> %s",
        config.items,
        config.users,
        config.clusters,
        config.seed,
        out_dir,
    )

    catalog = build_catalog(config)
    users = build_users(config)
    good_rows = simulate_interactions(config, catalog, users)
    bad_rows = make_fault_rows(config, catalog, good_rows) if config.faults and good_rows else []
    write_catalog_csv(out_dir / "catalog.csv", catalog)
    write_interactions_csv(out_dir / "interactions.csv", config, [*good_rows, *bad_rows])
    write_truth(out_dir / "truth", catalog, users)
    log.info("interactions: %d good rows + %d bad rows", len(good_rows), len(bad_rows))

    write_media(out_dir, config, catalog)
    summary = DemoDataSummary(
        out_dir=out_dir,
        items=len(catalog),
        users=len(users),
        interactions=len(good_rows),
        bad_rows=len(bad_rows),
        cold_items=sum(item.available_from != config.start_date for item in catalog),
    )
    log.info("demo data written in %.1f s: %s", time.perf_counter() - started, summary)
    return summary
