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

This module holds the settings and `HybridRanker`, the API that train, evaluate and publish use; the
parts are `candidates` (base models, stage 1), `features` (the named feature columns), `training` (the
network, its loss and training set) and `serialization` (rankers and serving artifacts on disk).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import numpy as np
import torch

from jobs.ranking.baselines import ItemSide, fitted, normalised_rows
from jobs.ranking.candidates import BaseModels, Candidates, TopK, candidates_and_features, fit_base_models
from jobs.ranking.data import Interactions
from jobs.ranking.features import feature_names
from jobs.ranking.training import (
    RankerNet,
    TrainingLog,
    TrainingSet,
    build_training_set,
    train_network,
    variant_columns,
)

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
        return list(chosen) if chosen is not None else fitted(self.items, self).modalities

    @property
    def feature_names(self) -> list[str]:
        names = feature_names(fitted(self.items, self).modalities)
        return [names[i] for i in fitted(self.columns, self)]

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
        self.net = train_network(
            (features - self.mean) / self.std,
            training_set.labels,
            training_set.groups,
            training_set.cold,
            self.settings,
            self.log,
            self.name,
        )
        self.log.seconds = round(time.monotonic() - started, 1)
        return self

    # -- scoring -------------------------------------------------------------------------------------

    def _candidate_scores(self, users: np.ndarray, allowed: np.ndarray | None) -> tuple[Candidates, np.ndarray]:
        """The block's candidates and the network's score for each."""
        base, items, net = fitted(self.base, self), fitted(self.items, self), fitted(self.net, self)
        allowed = np.ones(base.train.n_items, dtype=bool) if allowed is None else allowed
        genre_rows = normalised_rows(items.genres.toarray().astype(np.float32))
        found = candidates_and_features(
            base,
            items,
            genre_rows,
            items.modalities,
            self.settings,
            users,
            allowed,
            all_allowed=allowed.sum() <= SCORE_EVERY_ALLOWED_BELOW,
        )
        features = found.features[:, fitted(self.columns, self)]
        with torch.no_grad():
            pair_scores = net(torch.from_numpy((features - self.mean) / self.std)).numpy()
        if not np.isfinite(pair_scores).all() or (
            len(pair_scores) and pair_scores.min() <= self.non_candidate_scores().max()
        ):
            raise ValueError("the network scored a candidate non-finite, or as low as the non-candidates")
        return found, pair_scores

    def non_candidate_scores(self) -> np.ndarray:
        """Every item's score when it is not a candidate: below every candidate, in popularity order."""
        return (NON_CANDIDATE_OFFSET + np.log1p(fitted(self.base, self).item_counts)).astype(np.float32)

    def score(self, users: np.ndarray, allowed: np.ndarray | None = None) -> np.ndarray:
        """Scores for every item; items outside the candidate set rank after every candidate.

        `allowed` marks the items a list may hold (default: all). When it is small (e.g. the held-out
        cold items of the cold-start protocol) every allowed item is a candidate.
        """
        found, pair_scores = self._candidate_scores(users, allowed)
        n_items = fitted(self.base, self).train.n_items
        scores = np.broadcast_to(self.non_candidate_scores(), (len(users), n_items)).copy()
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
        self,
        users: np.ndarray,
        short: np.ndarray,
        counts: np.ndarray,
        row: np.ndarray,
        item: np.ndarray,
        allowed: np.ndarray,
        k: int,
    ) -> list[np.ndarray]:
        """For the block rows `short`, which have `counts` < k candidates (`row`, `item`): their best
        non-candidate eligible items, as [rows, items, scores, ranks] (0-based, after the candidates)."""
        seen, fallback = fitted(self.base, self).seen, self.non_candidate_scores()
        by_fallback = np.lexsort((np.arange(len(fallback)), -fallback))  # best first, ties: lower index
        by_fallback = by_fallback[allowed[by_fallback]]
        rows, items, scores, ranks = [], [], [], []
        for r in short:
            taken = np.zeros(len(fallback), dtype=bool)
            taken[seen[users[r]].indices] = True
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
