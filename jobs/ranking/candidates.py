"""Stage 1 of the hybrid ranker (`jobs.ranking.ranker`): the base models' statistics and the candidates.

`fit_base_models` fits, on one set of (user, item, time) pairs, everything the candidates and their
features are computed from: EASE, item-kNN and user-kNN, popularity and activity counts, first and last
event times, per-modality user profiles, and the users' sequences (recency weights and sequence
neighbours). `candidates_and_features` picks, for a block of users, the top items of each source plus
the content top of the cold items, and reads their feature rows (`jobs.ranking.features`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp
import torch

from jobs.ranking.baselines import (
    EaseScorer,
    ItemKnnScorer,
    ItemSide,
    UserKnnScorer,
    normalised_rows,
    user_profiles,
)
from jobs.ranking.data import Interactions
from jobs.ranking.features import RELATIVE_SCORES, CandidatePairs, feature_matrix
from jobs.ranking.kernels import sparse_times_sparse

if TYPE_CHECKING:  # types only: jobs.ranking.ranker imports this module
    from jobs.ranking.ranker import RankerSettings


@dataclass
class BaseModels:
    """The collaborative and content statistics the features are computed from, fit on one set of pairs."""

    train: Interactions
    ease: EaseScorer
    knn: ItemKnnScorer
    user_knn: UserKnnScorer
    item_counts: np.ndarray
    user_counts: np.ndarray
    user_last_time: np.ndarray
    item_first_time: np.ndarray
    time_index: np.ndarray  # sorted item * 2^40 + time, for windowed counts
    profiles: dict[str, np.ndarray]
    genre_profiles: np.ndarray
    seen: sp.csr_matrix  # users × items, binary
    recent: sp.csr_matrix  # users × items: recency weights, 1 for the latest item, decaying with position
    neighbours: sp.csr_matrix  # items × items: how often two items sit within a few positions of each other

    def interactions_between(self, items: np.ndarray, start: np.ndarray, stop: np.ndarray) -> np.ndarray:
        """Each item's interactions at times in [start, stop] (elementwise)."""
        lo = np.searchsorted(self.time_index, _time_key(items, start))
        hi = np.searchsorted(self.time_index, _time_key(items, stop), side="right")
        return hi - lo


def user_sequences(train: Interactions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each user's pairs in time order (ties by item): (order, user of each, position from the end)."""
    order = np.lexsort((train.items, train.times, train.users))
    users = train.users[order]
    counts = np.bincount(users, minlength=train.n_users)
    ends = np.cumsum(counts)
    from_end = ends[users] - 1 - np.arange(len(order))
    return order, users, from_end


def recency_matrix(train: Interactions, half_life: float) -> sp.csr_matrix:
    """Users × items weights 2^(−position from the end / half_life): what the user did last counts most."""
    order, users, from_end = user_sequences(train)
    weights = np.power(2.0, -from_end / half_life).astype(np.float32)
    return sp.csr_matrix((weights, (users, train.items[order])), shape=(train.n_users, train.n_items))


def sequence_neighbours(train: Interactions, window: int, keep: int = 0) -> sp.csr_matrix:
    """Item × item counts of "rated within `window` positions of each other by the same user", cosine-scaled,
    each item keeping its `keep` strongest neighbours (0: all).

    Users rate in sessions that follow what they were browsing, so neighbours in a user's sequence
    are related more tightly than items that merely share a user. The cap bounds the cost of scoring:
    at ml-25m's size popular items sit next to tens of thousands of others.
    """
    order, users, _ = user_sequences(train)
    items = train.items[order]
    shape = (train.n_items, train.n_items)
    counts = sp.csr_matrix(shape, dtype=np.float32)
    for offset in range(1, window + 1):  # one offset at a time: peak memory ~ one offset's pairs
        same_user = users[offset:] == users[:-offset]
        row, col = items[:-offset][same_user], items[offset:][same_user]
        pairs = sp.csr_matrix((np.ones(len(row), dtype=np.float32), (row, col)), shape=shape)
        counts = counts + pairs + pairs.T
    norms = np.sqrt(np.maximum(train.item_counts(), 1)).astype(np.float32)
    scale = sp.diags(1.0 / norms)
    return keep_strongest_per_row((scale @ counts @ scale).tocsr(), keep)


def keep_strongest_per_row(matrix: sp.csr_matrix, keep: int, entries_per_chunk: int = 4_000_000) -> sp.csr_matrix:
    """`matrix` with only each row's `keep` largest entries (ties: the lower column); unchanged when no row
    has more, or when `keep` is 0. Works through chunks of rows holding about `entries_per_chunk`
    entries, so the sort's temporaries stay small next to a 70M-entry matrix."""
    counts = np.diff(matrix.indptr)
    if keep <= 0 or counts.max(initial=0) <= keep:
        return matrix
    kept_rows, kept_columns, kept_values = [], [], []
    start = 0
    while start < matrix.shape[0]:
        stop = max(start + 1, int(np.searchsorted(matrix.indptr, matrix.indptr[start] + entries_per_chunk)) - 1)
        stop = min(stop, matrix.shape[0])
        chunk = matrix[start:stop]
        rows = np.repeat(np.arange(start, stop, dtype=np.int32), np.diff(chunk.indptr))
        order = np.lexsort((chunk.indices, -chunk.data, rows))  # row by row, strongest first
        rank = np.arange(len(order)) - chunk.indptr[rows[order] - start]
        kept = order[rank < keep]
        kept_rows.append(rows[kept])
        kept_columns.append(chunk.indices[kept])
        kept_values.append(chunk.data[kept])
        start = stop
    coordinates = (np.concatenate(kept_rows), np.concatenate(kept_columns))
    return sp.csr_matrix((np.concatenate(kept_values), coordinates), shape=matrix.shape)


def _time_key(items: np.ndarray, times: np.ndarray) -> np.ndarray:
    """One sortable key per (item, time): item in the high bits, seconds since 1970 (< 2^40) in the low."""
    return items.astype(np.int64) * (1 << 40) + times.astype(np.int64)


def fit_base_models(
    train: Interactions, items: ItemSide, settings: RankerSettings, modalities: list[str]
) -> BaseModels:
    item_counts = train.item_counts()
    user_last_time = np.zeros(train.n_users, dtype=np.int64)
    np.maximum.at(user_last_time, train.users, train.times)
    item_first_time = np.full(train.n_items, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(item_first_time, train.items, train.times)
    item_first_time[item_counts == 0] = 0
    return BaseModels(
        train=train,
        ease=EaseScorer(settings.ease_l2, max_items=settings.item_model_items).fit(train, items),
        knn=ItemKnnScorer(settings.knn_neighbours, max_items=settings.item_model_items).fit(train, items),
        user_knn=UserKnnScorer(max_pool=settings.user_knn_pool).fit(train, items),
        item_counts=item_counts,
        user_counts=train.user_counts(),
        user_last_time=user_last_time,
        item_first_time=item_first_time,
        time_index=np.sort(_time_key(train.items, train.times)),
        profiles={m: user_profiles(train, items.blocks[m]) for m in modalities},
        genre_profiles=user_profiles(train, normalised_rows(items.genres.toarray().astype(np.float32))),
        seen=train.matrix().tocsr(),
        recent=recency_matrix(train, settings.recency_half_life),
        neighbours=sequence_neighbours(train, settings.sequence_window, settings.sequence_neighbours_kept),
    )


@dataclass
class TopK:
    """A block's lists: entry i puts `items[i]` at 1-based `ranks[i]` of row `rows[i]`'s list."""

    rows: np.ndarray  # position of the user in the block
    ranks: np.ndarray
    items: np.ndarray
    scores: np.ndarray  # float32


@dataclass
class Candidates:
    """(user, item) pairs of one block of users, with their feature rows."""

    users: np.ndarray  # user index per pair
    items: np.ndarray  # item index per pair
    features: np.ndarray  # pairs × features, float32


def candidates_and_features(
    base: BaseModels,
    items: ItemSide,
    genre_rows: np.ndarray,
    modalities: list[str],
    settings: RankerSettings,
    users: np.ndarray,
    allowed: np.ndarray,
    all_allowed: bool = False,
) -> Candidates:
    """Stage 1 and the stage-2 features for one block of users.

    `allowed` marks the items a list may contain; `all_allowed` makes every allowed item a candidate
    (used when the allowed set is small, e.g. the cold items of the cold-start protocol).
    """
    n_items = base.train.n_items
    seen_rows, recent_rows = base.seen[users], base.recent[users]
    ease, ease_recent = base.ease.score_vectors(seen_rows, recent_rows)
    knn = base.knn.score(users)
    user_knn = base.user_knn.score(users)
    seq, seq_recent = sparse_times_sparse([seen_rows, recent_rows], base.neighbours)
    sims = {m: base.profiles[m][users] @ items.blocks[m].T for m in modalities}
    content = sum(sims.values()) if sims else np.zeros_like(ease)  # a new array either way: masked below
    genre = base.genre_profiles[users] @ genre_rows.T
    scores = {
        "ease": ease,
        "knn": knn,
        "ease_recent": ease_recent,
        "seq": seq,
        "user_knn": user_knn,
        "seq_recent": seq_recent,
        "genre": genre,
        "content": content,
    }
    cold = np.flatnonzero(base.item_counts == 0)
    # The "relative" features divide by the row's best score over every item, the user's own included:
    # taken before the candidate search below overwrites the ineligible entries.
    row_best = {name: np.maximum(scores[name].max(axis=1), 1e-6) for name in RELATIVE_SCORES}

    if all_allowed:
        eligible = np.broadcast_to(allowed, ease.shape).copy()
        eligible[seen_rows.nonzero()] = False
        row, item = np.nonzero(eligible)
    else:
        # Each source's top items among the eligible ones (allowed, not the user's own). The sources are
        # overwritten with -inf where ineligible, in place: a full masked copy per source cost more than
        # the top-k itself, and the features below read only eligible entries.
        seen_at = seen_rows.nonzero()
        disallowed = np.flatnonzero(~allowed)

        def ineligible_to_minus_inf(matrix: np.ndarray) -> np.ndarray:
            matrix[seen_at] = -np.inf
            matrix[:, disallowed] = -np.inf
            return matrix

        cold_content = content[:, cold] + 0.1 * genre[:, cold]  # nobody has seen a cold item
        cold_content[:, ~allowed[cold]] = -np.inf
        content_of_cold = content[:, cold]
        content[:, cold] = -np.inf  # the warm-content source: cold items come from their own source
        pop = np.broadcast_to(base.item_counts.astype(np.float32), ease.shape).copy()
        sources = [
            (ease, settings.candidates_per_source),
            (knn, settings.candidates_per_source),
            (ease_recent, settings.candidates_per_source),
            (seq, settings.candidates_per_source),
            (content, settings.candidates_per_source),
            (pop, settings.candidates_per_source),
        ]
        picked_rows, picked_items = [], []
        for source, n, columns in [(ineligible_to_minus_inf(source), n, None) for source, n in sources] + [
            (cold_content, settings.cold_candidates, cold)
        ]:
            n = min(n, source.shape[1])
            if n == 0:
                continue
            # torch's top-k is ~6× faster than np.argpartition on 256 × 62k rows; which of several
            # items tied at the cut it keeps is as arbitrary as argpartition's.
            top = torch.topk(torch.from_numpy(source), n, dim=1, sorted=False).indices.numpy()
            rows = np.broadcast_to(np.arange(len(users))[:, None], top.shape)
            finite = np.isfinite(source[rows, top])  # fewer than n eligible: the rest are -inf
            picked_rows.append(rows[finite])
            picked_items.append(top[finite] if columns is None else columns[top[finite]])
        content[:, cold] = content_of_cold
        # Each (row, item) once, in row-major order.
        pair_keys = np.unique(
            np.concatenate(picked_rows).astype(np.int64) * n_items + np.concatenate(picked_items)
        )
        row, item = pair_keys // n_items, pair_keys % n_items

    pairs = CandidatePairs(base, items, settings.window_days, scores, row_best, sims, users, row, item)
    return Candidates(pairs.user, item, feature_matrix(pairs, modalities))
