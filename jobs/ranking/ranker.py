"""The hybrid ranker: collaborative candidates and content candidates, re-ranked by a small torch MLP.

Stage 1 (candidates): for each user, the top items of EASE, item-kNN, content similarity and
popularity, plus the content top for items nobody has interacted with yet ("cold" items), minus the
user's own items.

Stage 2 (ranking): an MLP scores each (user, candidate) from features a data engineer can read:
collaborative scores (EASE, item-kNN), popularity overall and around the user's active time, the
item's age at that time, the user's activity, genre similarity, and one similarity per modality
between the user's profile and the item's fused block. The MLP learns how much each modality is worth
(the fusion's modality weights) and how to combine them with the collaborative signal.

Cold items are ranked from content alone: their collaborative features are zero and a `cold` flag is
set. So the MLP learns that regime, training hides a share of the training items from the
collaborative models (all their interactions become targets), and a second loss term ranks the
hidden items among themselves.

Training labels come from an inner split of the training data (never the evaluation's held-out
pairs): the base models are fit on the rest, and the held-out pairs are what the MLP learns to put
first (a listwise softmax loss per user). For serving, the base models are refit on all training
pairs and the MLP is applied unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

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
from jobs.ranking.data import Interactions, per_user_holdout
from jobs.ranking.kernels import sparse_times_sparse

log = logging.getLogger("modalrank.ranker")

DAY = 86_400.0
# Below this many allowed items, scoring ranks all of them instead of generating candidates.
SCORE_EVERY_ALLOWED_BELOW = 2_000
# Items that are not a user's candidates score this plus log(1 + interactions): after every candidate,
# in popularity order.
NON_CANDIDATE_OFFSET = -1e6


@dataclass(frozen=True)
class RankerSettings:
    """Everything that shapes a trained ranker; saved with it, and part of its version."""

    seed: int = 0
    candidates_per_source: int = 100
    cold_candidates: int = 100
    inner_holdout: str = "random"  # or "chrono": how targets are cut from each user's training pairs
    inner_holdout_share: float = 0.2
    inner_folds: int = 3
    cold_item_share: float = 0.1  # training items hidden from the collaborative models, as cold
    ease_l2: float = 200.0
    knn_neighbours: int = 100
    # EASE and item-kNN keep dense items × items matrices: they cover at most this many items, the
    # most interacted-with (EASE's inverse is cubic in it). ml-latest-small's 9,742 fit whole.
    item_model_items: int = 10_000
    # Users whose targets train the network, per inner fold: a seeded sample above this. The network
    # has ~3k weights; more users than this make training slower, not the ranker better.
    max_training_users: int = 3_000
    # User-kNN looks for neighbours among at most this many users, the most active (its cost per user
    # grows with the pool, so without a bound scoring is quadratic in users). ml-latest-small's 610 fit.
    user_knn_pool: int = 20_000
    window_days: float = 180.0  # "popular around the user's time" window, each side
    recency_half_life: float = 10.0  # positions from the end of a user's history
    sequence_window: int = 5  # positions each side that count as "rated together"
    # Each item's strongest sequence neighbours kept: ml-latest-small's largest row has 1,011, so it
    # keeps them all; at ml-25m's size rows reach tens of thousands and dominate scoring.
    sequence_neighbours_kept: int = 1_024
    hidden: int = 64
    epochs: int = 30
    patience: int = 4
    validation_share: float = 0.15
    dropout: float = 0.1
    learning_rate: float = 3e-3
    weight_decay: float = 1e-5
    users_per_batch: int = 64
    modalities: tuple[str, ...] | None = None  # None: every modality of the item side


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


def feature_names(modalities: list[str]) -> list[str]:
    names = ["ease", "ease_rel", "knn", "knn_rel", "ease_recent", "ease_recent_rel", "seq", "seq_rel"]
    names += [
        "user_knn",
        "user_knn_rel",
        "seq_recent",
        "seq_recent_rel",
        "pop",
        "pop_window",
        "item_age",
        "user_activity",
    ]
    names += ["genre_sim", "content_sum", "cold"]
    for modality in modalities:
        names += [f"sim_{modality}", f"has_{modality}"]
    return names


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
    cold_item = base.item_counts == 0
    cold = np.flatnonzero(cold_item)
    # The "relative" features divide by the row's best score over every item, the user's own included:
    # taken before the candidate search below overwrites the ineligible entries.
    row_best = {
        name: np.maximum(matrix.max(axis=1), 1e-6)
        for name, matrix in (("ease", ease), ("knn", knn), ("ease_recent", ease_recent), ("seq", seq),
                             ("user_knn", user_knn), ("seq_recent", seq_recent))
    }  # fmt: skip

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
        sources = [(ease, settings.candidates_per_source), (knn, settings.candidates_per_source),
                   (ease_recent, settings.candidates_per_source), (seq, settings.candidates_per_source),
                   (content, settings.candidates_per_source), (pop, settings.candidates_per_source)]  # fmt: skip
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
        pairs = np.unique(np.concatenate(picked_rows).astype(np.int64) * n_items + np.concatenate(picked_items))
        row, item = pairs // n_items, pairs % n_items

    def relative(name: str, matrix: np.ndarray) -> np.ndarray:
        return matrix[row, item] / row_best[name][row]  # the candidates only, not the whole block

    user = users[row]
    t_user = base.user_last_time[user]
    window = int(settings.window_days * DAY)
    lo = np.searchsorted(base.time_index, _time_key(item, t_user - window))
    hi = np.searchsorted(base.time_index, _time_key(item, t_user + window), side="right")
    age_days = (t_user - base.item_first_time[item]) / DAY
    columns = [
        ease[row, item], relative("ease", ease), knn[row, item], relative("knn", knn),
        ease_recent[row, item], relative("ease_recent", ease_recent), seq[row, item], relative("seq", seq),
        user_knn[row, item], relative("user_knn", user_knn),
        seq_recent[row, item], relative("seq_recent", seq_recent),
        np.log1p(base.item_counts[item]), np.log1p(hi - lo),
        np.where(cold_item[item], 0.0, np.sign(age_days) * np.log1p(np.abs(age_days))),
        np.log1p(base.user_counts[user]), genre[row, item], content[row, item], cold_item[item].astype(np.float32),
    ]  # fmt: skip
    for modality in modalities:
        columns += [sims[modality][row, item], items.has(modality)[item].astype(np.float32)]
    features = np.stack(columns, axis=1).astype(np.float32)
    return Candidates(user, item, features)


def group_ndcg(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray, k: int) -> float:
    """Mean nDCG@k over groups with a positive, each group ranked by score (ideal: its positives first)."""
    if len(scores) == 0:
        return 0.0
    order = np.lexsort((-scores, groups))
    sorted_groups, sorted_labels = groups[order], labels[order]
    starts = np.searchsorted(sorted_groups, sorted_groups, side="left")
    position = np.arange(len(order)) - starts
    gains = np.where(position < k, sorted_labels / np.log2(position + 2.0), 0.0)
    n_groups = int(groups.max()) + 1
    dcg = np.bincount(sorted_groups, weights=gains, minlength=n_groups)
    positives = np.bincount(groups, weights=labels, minlength=n_groups)
    ideal_discounts = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))])
    idcg = ideal_discounts[np.minimum(positives, k).astype(int)]
    has = positives > 0
    return float((dcg[has] / idcg[has]).mean()) if has.any() else 0.0


class RankerNet(torch.nn.Module):
    def __init__(self, n_features: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(n_features, hidden),
            torch.nn.ReLU(),
            torch.nn.Dropout(dropout),
            torch.nn.Linear(hidden, hidden // 2),
            torch.nn.ReLU(),
            torch.nn.Linear(hidden // 2, 1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features).squeeze(-1)


def _listwise_loss(
    scores: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor, n_groups: int
) -> torch.Tensor:
    """Mean over groups with positives of −Σ log softmax(positives) / #positives (softmax per group)."""
    max_per_group = torch.full((n_groups,), -1e30).scatter_reduce(0, groups, scores.detach(), "amax")
    shifted = torch.exp(scores - max_per_group[groups])
    log_norm = torch.log(torch.zeros(n_groups).index_add(0, groups, shifted)) + max_per_group
    log_prob = scores - log_norm[groups]
    positives = torch.zeros(n_groups).index_add(0, groups, labels)
    per_group = -torch.zeros(n_groups).index_add(0, groups, log_prob * labels)
    has = positives > 0
    return (per_group[has] / positives[has]).mean() if has.any() else scores.sum() * 0.0


@dataclass
class TrainingLog:
    epochs: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    best_epoch: int = 0
    pairs: int = 0
    positives: int = 0
    users: int = 0


@dataclass(frozen=True)
class TrainingSet:
    """The inner folds' candidate pairs, shared by every variant trained from them."""

    features: np.ndarray  # pairs × feature_names(all modalities)
    labels: np.ndarray
    groups: np.ndarray  # one group per (fold, user): the lists the loss ranks
    cold: np.ndarray
    modalities: list[str]


def build_training_set(train: Interactions, items: ItemSide, settings: RankerSettings) -> TrainingSet:
    rng = np.random.default_rng(settings.seed)
    features, labels, groups = [], [], []
    for fold in range(settings.inner_folds):
        fold_features, fold_labels, fold_users = _inner_fold(train, items, settings, fold, rng)
        features.append(fold_features)
        labels.append(fold_labels)
        groups.append(fold * train.n_users + fold_users)  # a user in each fold is a list of its own
    features = np.concatenate(features)
    cold = features[:, feature_names(items.modalities).index("cold")] > 0
    return TrainingSet(features, np.concatenate(labels), np.concatenate(groups), cold, items.modalities)


def variant_columns(all_modalities: list[str], modalities: list[str]) -> np.ndarray:
    """Feature columns of a variant that sees only `modalities`: every other modality's columns drop out."""
    dropped = {f"{kind}_{m}" for m in all_modalities if m not in modalities for kind in ("sim", "has")}
    names = feature_names(all_modalities)
    return np.array([i for i, name in enumerate(names) if name not in dropped])


def _inner_fold(
    train: Interactions, items: ItemSide, settings: RankerSettings, fold: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One inner split of the training pairs: candidates, features and labels for its targets.

    Targets are a share of each user's pairs (random, or their latest for "chrono"; fold f of a
    chrono split ends f shares earlier, as if the run were f steps in the past), plus every pair
    of a share of items hidden entirely, so the network sees the cold regime. Base models are fit
    on the rest.
    """
    modalities = items.modalities
    if settings.inner_holdout == "random":
        fold_pairs = train
        key = rng.random(len(train))
    else:
        keep = ~per_user_holdout(
            train, 1 - (1 - settings.inner_holdout_share) ** fold, train.times.astype(np.float64)
        )
        fold_pairs = train.subset(keep)
        key = fold_pairs.times.astype(np.float64)
    target = per_user_holdout(fold_pairs, settings.inner_holdout_share, key)
    warm_items = np.flatnonzero(fold_pairs.item_counts() > 0)
    hidden_items = rng.choice(warm_items, size=int(len(warm_items) * settings.cold_item_share), replace=False)
    target |= np.isin(fold_pairs.items, hidden_items)
    fit_part, target_part = fold_pairs.subset(~target), fold_pairs.subset(target)
    base = fit_base_models(fit_part, items, settings, modalities)
    genre_rows = normalised_rows(items.genres.toarray().astype(np.float32))
    allowed = np.ones(train.n_items, dtype=bool)
    users = np.unique(target_part.users)
    if len(users) > settings.max_training_users:
        users = np.sort(rng.choice(users, size=settings.max_training_users, replace=False))
    target_matrix = target_part.matrix().tocsr()
    found_blocks, label_blocks = [], []
    for start in range(0, len(users), 256):
        block = users[start : start + 256]
        found = candidates_and_features(base, items, genre_rows, modalities, settings, block, allowed)
        found_blocks.append(found)
        label_blocks.append(np.asarray(target_matrix[found.users, found.items]).ravel().astype(np.float32))
    labels = np.concatenate(label_blocks)
    log.info(
        "ranker fold %d: %d pairs fit the base models, %d targets (%d items hidden as cold); "
        "%d candidate pairs for %d users hold %d of their %d targets (candidate recall %.3f)",
        fold + 1, len(fit_part), len(target_part), len(hidden_items), len(labels), len(users),
        int(labels.sum()), int(target_matrix[users].sum()), labels.sum() / max(1, target_matrix[users].sum()),
    )  # fmt: skip
    return (
        np.concatenate([f.features for f in found_blocks]),
        labels,
        np.concatenate([f.users for f in found_blocks]),
    )


class HybridRanker:
    """fit(train, items) → score(users). See the module docstring for the design.

    `settings.modalities` picks the modalities whose content features the network sees (None: all);
    the modality ablation trains one ranker per choice over one shared training set.
    """

    def __init__(self, settings: RankerSettings | None = None, name: str = "ranker") -> None:
        self.settings = settings or RankerSettings()
        self.name = name
        self.net: RankerNet | None = None
        self.columns: np.ndarray | None = None
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None
        self.base: BaseModels | None = None
        self.items: ItemSide | None = None
        self.log = TrainingLog()

    @property
    def modalities(self) -> list[str]:
        chosen = self.settings.modalities
        return list(chosen) if chosen is not None else self.items.modalities

    @property
    def feature_names(self) -> list[str]:
        names = feature_names(self.items.modalities)
        return [names[i] for i in self.columns]

    # -- training ------------------------------------------------------------------------------------

    def fit(self, train: Interactions, items: ItemSide) -> HybridRanker:
        started = time.monotonic()
        self.items = items
        training_set = build_training_set(train, items, self.settings)
        base = fit_base_models(train, items, self.settings, items.modalities)
        self.fit_from(training_set, base, items)
        self.log.seconds = round(time.monotonic() - started, 1)
        return self

    def fit_from(self, training_set: TrainingSet, base: BaseModels, items: ItemSide) -> HybridRanker:
        """Train the network on a (shared) training set; `base` is what it scores against when serving."""
        started = time.monotonic()
        torch.manual_seed(self.settings.seed)
        self.items, self.base = items, base
        self.columns = variant_columns(training_set.modalities, self.modalities)
        features = training_set.features[:, self.columns]
        self.mean, self.std = features.mean(axis=0), features.std(axis=0) + 1e-6
        self.log.pairs, self.log.positives = len(training_set.labels), int(training_set.labels.sum())
        self.log.users = len(np.unique(training_set.groups))
        self._train_net(features, training_set.labels, training_set.groups, training_set.cold)
        self.log.seconds = round(time.monotonic() - started, 1)
        return self

    def _train_net(
        self, features: np.ndarray, labels: np.ndarray, pair_users: np.ndarray, cold: np.ndarray
    ) -> None:
        """Adam on the listwise loss, users in shuffled batches; early stopping on held-out users.

        A share of the users is kept out of the gradient steps; after each epoch their candidates are
        ranked, and the weights with the best nDCG@10 (all candidates) + nDCG@20 (cold candidates)
        are kept. Without it the network overfits the inner split within a few epochs.
        """
        settings = self.settings
        x = torch.from_numpy((features - self.mean) / self.std)
        y = torch.from_numpy(labels)
        _, groups = np.unique(pair_users, return_inverse=True)
        n_users = int(groups.max()) + 1
        rng = np.random.default_rng(settings.seed)
        shuffled_users = rng.permutation(n_users)
        n_validation = max(1, int(n_users * settings.validation_share))
        validation_users, training_users = shuffled_users[:n_validation], shuffled_users[n_validation:]
        validation_rows = np.flatnonzero(np.isin(groups, validation_users))
        self.net = RankerNet(x.shape[1], settings.hidden, settings.dropout)
        optimiser = torch.optim.Adam(
            self.net.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay
        )
        order = np.argsort(groups, kind="stable")
        bounds = np.searchsorted(groups[order], np.arange(n_users + 1))
        best, best_state, since_best = -1.0, None, 0
        for epoch in range(settings.epochs):
            self.net.train()
            total, batches = 0.0, 0
            shuffled = rng.permutation(training_users)
            for start in range(0, len(shuffled), settings.users_per_batch):
                batch = shuffled[start : start + settings.users_per_batch]
                rows = np.concatenate([order[bounds[g] : bounds[g + 1]] for g in batch])
                local_of = np.empty(n_users, dtype=np.int64)
                local_of[batch] = np.arange(len(batch))
                local = torch.from_numpy(local_of[groups[rows]])
                scores = self.net(x[rows])
                loss = _listwise_loss(scores, y[rows], local, len(batch))
                # The cold term: a second softmax per user over their cold candidates only.
                cold_rows = torch.from_numpy(cold[rows])
                if cold_rows.any():
                    loss = loss + _listwise_loss(
                        scores[cold_rows], y[rows][cold_rows], local[cold_rows], len(batch)
                    )
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                total, batches = total + loss.item(), batches + 1
            self.net.eval()
            with torch.no_grad():
                val_scores = self.net(x[validation_rows]).numpy()
            val_groups, val_labels, val_cold = (
                groups[validation_rows],
                labels[validation_rows],
                cold[validation_rows],
            )
            warm_ndcg = group_ndcg(val_scores, val_labels, val_groups, 10)
            cold_ndcg = group_ndcg(val_scores[val_cold], val_labels[val_cold], val_groups[val_cold], 20)
            criterion = warm_ndcg + cold_ndcg
            self.log.epochs.append(
                {"epoch": epoch + 1, "loss": round(total / batches, 5), "val_ndcg@10": round(warm_ndcg, 5),
                 "val_cold_ndcg@20": round(cold_ndcg, 5)}
            )  # fmt: skip
            log.info(
                "ranker %s: epoch %d/%d loss %.4f, validation nDCG@10 %.4f, cold nDCG@20 %.4f",
                self.name, epoch + 1, settings.epochs, total / batches, warm_ndcg, cold_ndcg,
            )  # fmt: skip
            if criterion > best:
                best, since_best = criterion, 0
                best_state = {name: value.clone() for name, value in self.net.state_dict().items()}
                self.log.best_epoch = epoch + 1
            else:
                since_best += 1
                if since_best >= settings.patience:
                    log.info("ranker %s: no better for %d epochs, stopping", self.name, settings.patience)
                    break
        self.net.load_state_dict(best_state)
        self.net.eval()

    # -- scoring -------------------------------------------------------------------------------------

    def _candidate_scores(self, users: np.ndarray, allowed: np.ndarray | None) -> tuple[Candidates, np.ndarray]:
        """The block's candidates and the network's score for each."""
        base, items = self.base, self.items
        allowed = np.ones(base.train.n_items, dtype=bool) if allowed is None else allowed
        genre_rows = normalised_rows(items.genres.toarray().astype(np.float32))
        found = candidates_and_features(
            base, items, genre_rows, items.modalities, self.settings, users, allowed,
            all_allowed=allowed.sum() <= SCORE_EVERY_ALLOWED_BELOW,
        )  # fmt: skip
        features = found.features[:, self.columns]
        with torch.no_grad():
            pair_scores = self.net(torch.from_numpy((features - self.mean) / self.std)).numpy()
        if not np.isfinite(pair_scores).all() or (
            len(pair_scores) and pair_scores.min() <= self.non_candidate_scores().max()
        ):
            raise ValueError("the network scored a candidate non-finite, or as low as the non-candidates")
        return found, pair_scores

    def non_candidate_scores(self) -> np.ndarray:
        """Every item's score when it is not a candidate: below every candidate, in popularity order."""
        return (NON_CANDIDATE_OFFSET + np.log1p(self.base.item_counts)).astype(np.float32)

    def score(self, users: np.ndarray, allowed: np.ndarray | None = None) -> np.ndarray:
        """Scores for every item; items outside the candidate set rank after every candidate.

        `allowed` marks the items a list may hold (default: all). When it is small (e.g. the held-out
        cold items of the cold-start protocol) every allowed item is a candidate.
        """
        found, pair_scores = self._candidate_scores(users, allowed)
        scores = np.broadcast_to(self.non_candidate_scores(), (len(users), self.base.train.n_items)).copy()
        scores[rows_in_block(users, found.users), found.items] = pair_scores
        return scores

    def top_k(self, users: np.ndarray, allowed: np.ndarray, k: int) -> TopK:
        """Each user's k best allowed items they have not interacted with: what `score` followed by
        `metrics.top_k_from_scores_padded` gives (ties: the lower item index first; a user with fewer
        than k such items gets them all), without the users × items score matrix.

        Candidates outscore every other item, so a user's list is their best candidates; only a user
        with fewer than k candidates continues into the other items, in popularity order. Sorting the
        block's few hundred candidates per user instead of ranking all 62k items is what makes
        publishing at ml-25m's size cheap.
        """
        users = np.asarray(users, dtype=np.int64)
        found, pair_scores = self._candidate_scores(users, allowed)
        row = rows_in_block(users, found.users)
        order = np.lexsort((found.items, -pair_scores, row))
        row, item, score = row[order], found.items[order], pair_scores[order]
        rank = np.arange(len(row)) - np.searchsorted(row, row)
        keep = rank < k
        row, item, score, rank = row[keep], item[keep], score[keep], rank[keep]
        counts = np.bincount(row, minlength=len(users))
        short = np.flatnonzero(counts < k)
        if len(short):
            fill = self._fill_short_rows(users, short, counts, row, item, allowed, k)
            row, item, score, rank = (
                np.concatenate([a, b]) for a, b in zip((row, item, score, rank), fill, strict=True)
            )
            order = np.lexsort((rank, row))
            row, item, score, rank = row[order], item[order], score[order], rank[order]
        return TopK(row, (rank + 1).astype(np.int32), item, score)

    def _fill_short_rows(
        self, users: np.ndarray, short: np.ndarray, counts: np.ndarray, row: np.ndarray, item: np.ndarray,
        allowed: np.ndarray, k: int,
    ) -> list[np.ndarray]:  # fmt: skip
        """For the block rows `short`, which have `counts` < k candidates (`row`, `item`): their best
        non-candidate eligible items, as [rows, items, scores, ranks] (0-based, after the candidates)."""
        fallback = self.non_candidate_scores()
        by_fallback = np.lexsort((np.arange(len(fallback)), -fallback))  # best first, ties: lower index
        by_fallback = by_fallback[allowed[by_fallback]]
        rows, items, scores, ranks = [], [], [], []
        for r in short:
            taken = np.zeros(len(fallback), dtype=bool)
            taken[self.base.seen[users[r]].indices] = True
            taken[item[row == r]] = True
            extra = by_fallback[~taken[by_fallback]][: k - counts[r]]
            rows.append(np.full(len(extra), r, dtype=np.int64))
            items.append(extra)
            scores.append(fallback[extra])
            ranks.append(counts[r] + np.arange(len(extra)))
        return [np.concatenate(part) for part in (rows, items, scores, ranks)]


def rows_in_block(users: np.ndarray, pair_users: np.ndarray) -> np.ndarray:
    """Each pair's row in the block: the position of its user in `users`."""
    position = np.full(int(users.max()) + 1, -1, dtype=np.int64)
    position[users] = np.arange(len(users))
    return position[pair_users]


def fit_variants(
    train: Interactions, items: ItemSide, settings: RankerSettings, variants: dict[str, list[str] | None]
) -> dict[str, HybridRanker]:
    """One ranker per {name: modalities}, all from one training set and one set of base models."""
    training_set = build_training_set(train, items, settings)
    base = fit_base_models(train, items, settings, items.modalities)
    rankers = {}
    for name, modalities in variants.items():
        chosen = dataclasses.replace(settings, modalities=tuple(modalities) if modalities is not None else None)
        rankers[name] = HybridRanker(chosen, name).fit_from(training_set, base, items)
    return rankers


# ---------------------------------------------------------------------------------------------------
# Artifacts: weights as safetensors, everything else as JSON (no pickled objects)


def save_ranker(ranker: HybridRanker, folder: Path, metadata: dict, crash_prefix: str = "ranker") -> Path:
    """Write `ranker.safetensors` and `ranker.json` as one artifact folder (`jobs.artifacts`): built aside,
    manifest last, renamed into place whole, so `folder` never holds half a ranker."""
    from safetensors.torch import save_file

    from jobs.artifacts import build_artifact

    tensors = {f"net.{name}": value.contiguous() for name, value in ranker.net.state_dict().items()}
    tensors |= {
        "columns": torch.from_numpy(ranker.columns.astype(np.int64)),
        "feature_mean": torch.from_numpy(ranker.mean),
        "feature_std": torch.from_numpy(ranker.std),
    }
    description = {
        "name": ranker.name,
        "settings": dataclasses.asdict(ranker.settings),
        "all_modalities": ranker.items.modalities,
        "feature_names": ranker.feature_names,
        "training": dataclasses.asdict(ranker.log),
    } | metadata

    def write(temporary: Path) -> None:
        save_file(tensors, str(temporary / "ranker.safetensors"))
        (temporary / "ranker.json").write_text(json.dumps(description, indent=2, sort_keys=True) + "\n")

    meta = {"kind": "ranker", "version": metadata.get("version", folder.name)}
    return build_artifact(folder, write, meta, crash_prefix=crash_prefix)


def load_ranker(folder: Path, items: ItemSide, base: BaseModels) -> HybridRanker:
    """A saved ranker, ready to score against `base` (refit from the lake for the date being served)."""
    from safetensors.torch import load_file

    description = json.loads((folder / "ranker.json").read_text())
    if description["all_modalities"] != items.modalities:
        raise ValueError(
            f"ranker in {folder} was trained on modalities {description['all_modalities']}, "
            f"but the item vectors have {items.modalities}: retrain it"
        )
    settings = dict(description["settings"])
    settings["modalities"] = tuple(settings["modalities"]) if settings["modalities"] is not None else None
    ranker = HybridRanker(RankerSettings(**settings), description["name"])
    tensors = load_file(str(folder / "ranker.safetensors"))
    ranker.items, ranker.base = items, base
    ranker.columns = tensors["columns"].numpy()
    ranker.mean, ranker.std = tensors["feature_mean"].numpy(), tensors["feature_std"].numpy()
    ranker.net = RankerNet(len(ranker.columns), ranker.settings.hidden, ranker.settings.dropout)
    ranker.net.load_state_dict(
        {name.removeprefix("net."): v for name, v in tensors.items() if name.startswith("net.")}
    )
    ranker.net.eval()
    return ranker


# ---------------------------------------------------------------------------------------------------
# Serving artifacts: base models and item side as plain arrays (safetensors) plus a JSON layout, so the
# Python workers that score users in Spark load what the driver fitted instead of refitting it, and
# nothing is ever unpickled. Sparse matrices are stored as their CSR arrays (data, indices, indptr)
# with the shape in the JSON. The layout walks the dataclasses' fields, so a field added to
# `BaseModels` is saved without touching this code (arrays, CSR matrices, dicts and scalars only).

_SERVABLE_CLASSES = {
    cls.__name__: cls for cls in (BaseModels, Interactions, EaseScorer, ItemKnnScorer, UserKnnScorer, ItemSide)
}
_SERVING_FORMAT = 1


def _flatten(value: object, key: str, arrays: dict[str, np.ndarray]) -> dict:
    """The JSON layout of `value`; its arrays go into `arrays` under keys that start with `key`."""
    if value is None:
        return {"kind": "none"}
    if isinstance(value, np.ndarray):
        arrays[key] = np.ascontiguousarray(value)
        return {"kind": "array"}
    if sp.issparse(value):
        csr = sp.csr_matrix(value)
        for part in ("data", "indices", "indptr"):
            arrays[f"{key}.{part}"] = np.ascontiguousarray(getattr(csr, part))
        return {"kind": "csr", "shape": [int(n) for n in csr.shape]}
    if isinstance(value, dict):
        # A list, not a JSON object: the order is meaningful (ItemSide.blocks is the modality order).
        return {"kind": "dict", "entries": [[str(k), _flatten(v, f"{key}.{k}", arrays)] for k, v in value.items()]}
    if dataclasses.is_dataclass(value) and type(value).__name__ in _SERVABLE_CLASSES:
        fields = {
            f.name: _flatten(getattr(value, f.name), f"{key}.{f.name}", arrays) for f in dataclasses.fields(value)
        }
        return {"kind": "object", "class": type(value).__name__, "fields": fields}
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (bool, int, float, str)):
        return {"kind": "value", "value": value}
    raise TypeError(f"cannot save {key} of type {type(value).__name__} as a serving artifact")


def _unflatten(layout: dict, key: str, arrays: dict[str, np.ndarray]) -> object:
    kind = layout["kind"]
    if kind == "none":
        return None
    if kind == "array":
        return arrays[key]
    if kind == "csr":
        parts = (arrays[f"{key}.data"], arrays[f"{key}.indices"], arrays[f"{key}.indptr"])
        return sp.csr_matrix(parts, shape=tuple(layout["shape"]))
    if kind == "dict":
        return {k: _unflatten(v, f"{key}.{k}", arrays) for k, v in layout["entries"]}
    if kind == "object":
        cls = _SERVABLE_CLASSES[layout["class"]]  # only known classes: the JSON never names code to run
        return cls(**{name: _unflatten(v, f"{key}.{name}", arrays) for name, v in layout["fields"].items()})
    if kind == "value":
        return layout["value"]
    raise ValueError(f"unknown serving artifact entry {kind!r} at {key}")


def _save_servable(value: object, path: Path) -> Path:
    """`path` (.safetensors) and its .json layout, each written whole, then renamed (`jobs.artifacts`;
    publish writes them into an artifact folder that is itself built aside and renamed whole)."""
    from safetensors.numpy import save_file

    from jobs.artifacts import write_file, write_text

    arrays: dict[str, np.ndarray] = {}
    layout = {"format": _SERVING_FORMAT, "root": _flatten(value, "root", arrays)}
    write_file(path, lambda temporary: save_file(arrays, str(temporary)))
    write_text(path.with_suffix(".json"), json.dumps(layout, indent=1) + "\n")
    return path


def _load_servable(path: Path, expected: type) -> object:
    from safetensors.numpy import load_file

    layout = json.loads(path.with_suffix(".json").read_text())
    if layout.get("format") != _SERVING_FORMAT:
        raise ValueError(f"{path} has serving format {layout.get('format')}, this code reads {_SERVING_FORMAT}")
    value = _unflatten(layout["root"], "root", load_file(str(path)))
    if not isinstance(value, expected):
        raise ValueError(f"{path} holds a {type(value).__name__}, not a {expected.__name__}")
    return value


def save_base_models(base: BaseModels, path: Path) -> Path:
    """Write `base` to `path` (e.g. `base.safetensors`) and `base.json` beside it."""
    return _save_servable(base, path)


def load_base_models(path: Path) -> BaseModels:
    """The `BaseModels` that `save_base_models` wrote, array for array."""
    return _load_servable(path, BaseModels)


def save_item_side(items: ItemSide, path: Path) -> Path:
    """Write the item side (modality blocks in order, genres) to `path` and a .json beside it."""
    return _save_servable(items, path)


def load_item_side(path: Path) -> ItemSide:
    return _load_servable(path, ItemSide)
