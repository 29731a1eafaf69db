"""The demo's users and interactions: favourite clusters, simulated ratings over time, the bad rows.

Users take 1-2 favourite clusters; each interaction is drawn at a time, then among the items
available at that time, mostly from a favourite cluster by popularity. `make_fault_rows` adds the
4 deliberately bad rows the quarantine rules are checked against.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from infra.tools.demo_config import (
    STREAM_FAULTS,
    STREAM_INTERACTIONS,
    STREAM_USERS,
    CatalogItem,
    DemoDataConfig,
    DemoUser,
    Interaction,
    stream_rng,
)

MIN_INTERACTIONS_PER_USER = 5
UNKNOWN_ITEM_OFFSET = 1000
OUT_OF_RANGE_RATING = 7.5


def build_users(config: DemoDataConfig) -> list[DemoUser]:
    rng = stream_rng(config.seed, STREAM_USERS)
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
    rng = stream_rng(config.seed, STREAM_INTERACTIONS)
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
    rng = stream_rng(config.seed, STREAM_FAULTS)
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
