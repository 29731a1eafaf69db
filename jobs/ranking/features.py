"""The ranker's feature columns, declared once, in order: the names and the feature matrix both come from
the tables below, so a column cannot drift away from its name.

A trained ranker stores its feature columns by position (`ranker.safetensors` holds their indices and
normalisation, `ranker.json` their names), so the order here is part of every saved ranker: append new
columns at the end of `PAIR_FEATURES` (or to `MODALITY_FEATURES`), never reorder, and retrain.

Each column is a function of one block's `CandidatePairs`: the candidate (row, item) pairs and the
users × items score matrices they were picked from. Pure numpy; nothing here picks candidates
(`jobs.ranking.candidates` does).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # types only: jobs.ranking.candidates imports this module
    from jobs.ranking.baselines import ItemSide
    from jobs.ranking.candidates import BaseModels

DAY = 86_400.0

# The users × items score matrices that enter twice, as they are and divided by the row's best (the
# "relative" features keep scores comparable between the training folds and serving).
RELATIVE_SCORES = ("ease", "knn", "ease_recent", "seq", "user_knn", "seq_recent")


@dataclass
class CandidatePairs:
    """One block's candidate (user, item) pairs and everything their feature columns are read from."""

    base: BaseModels
    items: ItemSide
    window_days: float  # "popular around the user's time": this many days each side of their last event
    scores: dict[str, np.ndarray]  # users × items of the block: RELATIVE_SCORES, "genre", "content"
    row_best: dict[str, np.ndarray]  # per row of the block, the best of each RELATIVE_SCORES matrix
    sims: dict[str, np.ndarray]  # per modality, users × items: profile · item block
    users: np.ndarray  # the block's users
    row: np.ndarray  # each pair's row in the block
    item: np.ndarray  # each pair's item

    @property
    def user(self) -> np.ndarray:
        return self.users[self.row]

    @property
    def user_time(self) -> np.ndarray:
        """Each pair's user's last event (seconds since 1970)."""
        return self.base.user_last_time[self.user]

    @property
    def cold(self) -> np.ndarray:
        """Each pair's item has no interaction in the pairs the base models were fit on."""
        return self.base.item_counts[self.item] == 0


FeatureColumn = Callable[[CandidatePairs], np.ndarray]
ModalityColumn = Callable[[CandidatePairs, str], np.ndarray]


def _score(name: str) -> FeatureColumn:
    """The column of score matrix `name` at each pair."""
    return lambda pairs: pairs.scores[name][pairs.row, pairs.item]


def _relative(name: str) -> FeatureColumn:
    """Score matrix `name` at each pair over its row's best over every item, the user's own included
    (`row_best` is taken before the candidate search overwrites the ineligible entries)."""
    return lambda pairs: pairs.scores[name][pairs.row, pairs.item] / pairs.row_best[name][pairs.row]


def _interactions_around_user_time(pairs: CandidatePairs) -> np.ndarray:
    """log(1 + the item's interactions within `window_days` either side of the user's last event)."""
    window = int(pairs.window_days * DAY)
    return np.log1p(
        pairs.base.interactions_between(pairs.item, pairs.user_time - window, pairs.user_time + window)
    )


def _item_age(pairs: CandidatePairs) -> np.ndarray:
    """Signed log(1 + days between the item's first interaction and the user's last event); 0 if cold."""
    age_days = (pairs.user_time - pairs.base.item_first_time[pairs.item]) / DAY
    return np.where(pairs.cold, 0.0, np.sign(age_days) * np.log1p(np.abs(age_days)))


# (name, column), in the order of the feature matrix's columns. Part of every saved ranker: append only.
PAIR_FEATURES: tuple[tuple[str, FeatureColumn], ...] = (
    ("ease", _score("ease")),
    ("ease_rel", _relative("ease")),
    ("knn", _score("knn")),
    ("knn_rel", _relative("knn")),
    ("ease_recent", _score("ease_recent")),
    ("ease_recent_rel", _relative("ease_recent")),
    ("seq", _score("seq")),
    ("seq_rel", _relative("seq")),
    ("user_knn", _score("user_knn")),
    ("user_knn_rel", _relative("user_knn")),
    ("seq_recent", _score("seq_recent")),
    ("seq_recent_rel", _relative("seq_recent")),
    ("pop", lambda pairs: np.log1p(pairs.base.item_counts[pairs.item])),
    ("pop_window", _interactions_around_user_time),
    ("item_age", _item_age),
    ("user_activity", lambda pairs: np.log1p(pairs.base.user_counts[pairs.user])),
    ("genre_sim", _score("genre")),
    ("content_sum", _score("content")),
    ("cold", lambda pairs: pairs.cold.astype(np.float32)),
)

# (name template, column), repeated for each modality in the item side's order, after PAIR_FEATURES.
MODALITY_FEATURES: tuple[tuple[str, ModalityColumn], ...] = (
    ("sim_{}", lambda pairs, modality: pairs.sims[modality][pairs.row, pairs.item]),
    ("has_{}", lambda pairs, modality: pairs.items.has(modality)[pairs.item].astype(np.float32)),
)


def modality_feature_names(modality: str) -> list[str]:
    return [template.format(modality) for template, _ in MODALITY_FEATURES]


def feature_columns(modalities: list[str]) -> list[tuple[str, FeatureColumn]]:
    """Every (name, column) of the feature matrix for an item side with `modalities`, in column order."""
    columns = list(PAIR_FEATURES)
    for modality in modalities:
        columns += [
            (template.format(modality), _for_modality(column, modality)) for template, column in MODALITY_FEATURES
        ]
    return columns


def _for_modality(column: ModalityColumn, modality: str) -> FeatureColumn:
    return lambda pairs: column(pairs, modality)


def feature_names(modalities: list[str]) -> list[str]:
    return [name for name, _ in feature_columns(modalities)]


def feature_matrix(pairs: CandidatePairs, modalities: list[str]) -> np.ndarray:
    """Pairs × features, float32, columns in `feature_names(modalities)` order."""
    return np.stack([column(pairs) for _, column in feature_columns(modalities)], axis=1).astype(np.float32)
