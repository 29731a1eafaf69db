"""Interactions as index arrays, and the evaluation protocols' splits.

Everything here is numpy: the Spark jobs collect the (user, item, time) triples once, and models see
dense integer indices. Implicit feedback: every (user, item) pair a user interacted with is a
positive, whatever the rating; repeated events of a pair collapse into one, at its latest time.

The three protocols (all seeded, so a rerun splits the same way):
- `random_split`: per user, a random 25% of their items is held out (the MovieLens protocol of
  recommenders-team/recommenders' README).
- `chrono_split`: per user, their latest 20% is held out.
- `item_cold_split`: 20% of the items are held out with all their interactions; users then rank only
  those items, which no model saw during training.

And one check, not a protocol of the full evaluation: `since_training_split` holds out every pair that
came after a model's training date, to see how the model served on a later date does on what happened
since it was trained.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

RANDOM = "random_75_25"
CHRONO = "chrono_80_20"
ITEM_COLD = "item_cold_20"
PROTOCOLS = (RANDOM, CHRONO, ITEM_COLD)
SINCE_TRAINING = "since_training"


@dataclass(frozen=True)
class Interactions:
    """Unique (user, item) pairs over fixed user and item index spaces."""

    users: np.ndarray  # int32 user index per pair
    items: np.ndarray  # int32 item index per pair
    times: np.ndarray  # int64 seconds since the epoch, the pair's latest event
    n_users: int
    n_items: int

    def __post_init__(self) -> None:
        if not (len(self.users) == len(self.items) == len(self.times)):
            raise ValueError("users, items and times must have the same length")

    def __len__(self) -> int:
        return len(self.users)

    def matrix(self, dtype=np.float32) -> sp.csr_matrix:
        """The binary users × items matrix."""
        ones = np.ones(len(self), dtype=dtype)
        return sp.csr_matrix((ones, (self.users, self.items)), shape=(self.n_users, self.n_items))

    def subset(self, mask: np.ndarray) -> Interactions:
        return Interactions(self.users[mask], self.items[mask], self.times[mask], self.n_users, self.n_items)

    def by_user(self) -> dict[int, set[int]]:
        """Each user's items, for users with any."""
        grouped: dict[int, set[int]] = {}
        for user, item in zip(self.users.tolist(), self.items.tolist(), strict=True):
            grouped.setdefault(user, set()).add(item)
        return grouped

    def item_counts(self) -> np.ndarray:
        return np.bincount(self.items, minlength=self.n_items)

    def user_counts(self) -> np.ndarray:
        return np.bincount(self.users, minlength=self.n_users)


@dataclass(frozen=True)
class IndexedData:
    """The interactions with the id ↔ index maps that translate results back to the lake's ids."""

    interactions: Interactions
    user_ids: np.ndarray  # index → user_id
    item_ids: np.ndarray  # index → item_id (every catalog item, interacted with or not)

    def item_index(self) -> dict[int, int]:
        return {int(item_id): index for index, item_id in enumerate(self.item_ids)}


def index_interactions(
    user_ids: np.ndarray, item_ids: np.ndarray, times: np.ndarray, catalog_item_ids: np.ndarray
) -> IndexedData:
    """Dense indices for raw id triples. Items span the catalog, so never-seen items have an index too.

    Pairs whose item is not in the catalog are an upstream bug (ingest rejects them), hence an error.
    """
    catalog_item_ids = np.unique(np.asarray(catalog_item_ids, dtype=np.int64))
    item_index = np.searchsorted(catalog_item_ids, item_ids)
    known = (item_index < len(catalog_item_ids)) & (
        catalog_item_ids[np.minimum(item_index, len(catalog_item_ids) - 1)] == item_ids
    )
    if not known.all():
        raise ValueError(f"{int((~known).sum())} interactions name items that are not in the catalog")
    unique_users, user_index = np.unique(np.asarray(user_ids, dtype=np.int64), return_inverse=True)
    # One row per pair, at its latest event: sort by time and keep each pair's last occurrence.
    order = np.lexsort((times, item_index, user_index))
    user_index, item_index, times = user_index[order], item_index[order], np.asarray(times, dtype=np.int64)[order]
    last_of_pair = np.ones(len(order), dtype=bool)
    last_of_pair[:-1] = (user_index[1:] != user_index[:-1]) | (item_index[1:] != item_index[:-1])
    pairs = Interactions(
        user_index[last_of_pair].astype(np.int32),
        item_index[last_of_pair].astype(np.int32),
        times[last_of_pair],
        len(unique_users),
        len(catalog_item_ids),
    )
    return IndexedData(pairs, unique_users, catalog_item_ids)


@dataclass(frozen=True)
class Split:
    """A protocol's training pairs, held-out pairs and which items users may be offered."""

    protocol: str
    train: Interactions
    test: Interactions
    # Items a list may contain: all items seen in training (warm protocols) or the held-out items.
    candidate_items: np.ndarray
    notes: list[str] = field(default_factory=list)

    def test_users(self) -> np.ndarray:
        """Users with held-out items and at least one training item (a profile to rank from)."""
        has_train = self.train.user_counts() > 0
        return np.unique(self.test.users[has_train[self.test.users]])


def per_user_holdout(data: Interactions, held_share: float, order_key: np.ndarray) -> np.ndarray:
    """A held-out mask: per user, the last `held_share` of their pairs in `order_key` order.

    Each user keeps at least one training pair; the held-out count is round(n * share).
    """
    order = np.lexsort((order_key, data.users))
    users_sorted = data.users[order]
    counts = np.bincount(users_sorted, minlength=data.n_users)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    position = np.arange(len(order)) - starts[users_sorted]
    n_held = np.minimum(np.rint(counts * held_share).astype(np.int64), np.maximum(counts - 1, 0))
    held_sorted = position >= counts[users_sorted] - n_held[users_sorted]
    held = np.zeros(len(data), dtype=bool)
    held[order] = held_sorted
    return held


def random_split(data: Interactions, seed: int, test_share: float = 0.25) -> Split:
    random_key = np.random.default_rng(seed).random(len(data))
    held = per_user_holdout(data, test_share, random_key)
    return _warm_split(RANDOM, data, held)


def chrono_split(data: Interactions, test_share: float = 0.20) -> Split:
    # Ties in time (MovieLens rates many movies in the same second) break by item index, not by chance.
    key = data.times.astype(np.float64) + data.items / (10.0 * data.n_items + 1.0)
    held = per_user_holdout(data, test_share, key)
    return _warm_split(CHRONO, data, held)


def _warm_split(protocol: str, data: Interactions, held: np.ndarray) -> Split:
    train, test = data.subset(~held), data.subset(held)
    candidates = np.flatnonzero(train.item_counts() > 0)
    unseen = int(np.isin(test.items, candidates, invert=True).sum())
    notes = [f"{unseen} held-out pairs name items with no training interaction (no model can rank them)"]
    return Split(protocol, train, test, candidates, notes)


def item_cold_split(data: Interactions, seed: int, cold_share: float = 0.20) -> Split:
    """Hold out `cold_share` of the interacted items with every interaction they have."""
    interacted = np.flatnonzero(data.item_counts() > 0)
    rng = np.random.default_rng(seed)
    cold = np.sort(rng.choice(interacted, size=max(1, round(len(interacted) * cold_share)), replace=False))
    held = np.isin(data.items, cold)
    return Split(ITEM_COLD, data.subset(~held), data.subset(held), cold, [f"{len(cold)} cold items"])


def since_training_split(data: Interactions, cutoff_seconds: int) -> Split:
    """Pairs before `cutoff_seconds` (the end of a model's training date, seconds since the epoch) train; the
    pairs from then on are held out. A pair keeps only its latest event, so one a user interacted with again
    after the cutoff counts as new."""
    return _warm_split(SINCE_TRAINING, data, data.times >= cutoff_seconds)


def make_split(protocol: str, data: Interactions, seed: int) -> Split:
    if protocol == RANDOM:
        return random_split(data, seed)
    if protocol == CHRONO:
        return chrono_split(data)
    if protocol == ITEM_COLD:
        return item_cold_split(data, seed)
    raise ValueError(f"unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
