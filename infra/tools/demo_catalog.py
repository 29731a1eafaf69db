"""The demo catalog's items: hidden cluster, title, overview, genres, tags, popularity, availability.

Text is drawn from each cluster's vocabulary (`demo_styles`) with some deliberate noise (words and
genres from other clusters), so content carries real but imperfect signal. One random stream
(STREAM_CATALOG) draws everything here, in item order.
"""

from __future__ import annotations

import datetime
import math

import numpy as np

from infra.tools.demo_config import STREAM_CATALOG, CatalogItem, DemoDataConfig, stream_rng
from infra.tools.demo_styles import CLUSTER_STYLES, FILLER_WORDS, GENRES, OVERVIEW_TEMPLATES, ClusterStyle

# Rounded up so even a tiny demo has a missing modality.
NO_TRAILER_SHARE = 0.03
NO_POSTER_SHARE = 0.02
COLD_WINDOW_DAYS = 3
POPULARITY_EXPONENT = 0.9
# Share of theme-word slots filled from another cluster: real catalogs are not perfectly separable.
OFF_THEME_WORD_SHARE = 0.08
FILLER_SLOT_THEME_SHARE = 0.3
PRIMARY_GENRE_NOISE = 0.1
SECONDARY_GENRE_NOISE = 0.2


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
    rng = stream_rng(config.seed, STREAM_CATALOG)
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
