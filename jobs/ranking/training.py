"""Stage 2 of the hybrid ranker (`jobs.ranking.ranker`): the network, its loss and its training.

The training set comes from inner folds of the training pairs (never the evaluation's held-out pairs):
per fold, a share of each user's pairs and every pair of a share of the items become targets, the base
models are fit on the rest, and the targets label the candidates (`jobs.ranking.candidates`). The
network learns to put them first with a listwise softmax loss per user, plus a second term over the
cold candidates alone, and stops early on the nDCG of held-out users.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from jobs.ranking.baselines import ItemSide, normalised_rows
from jobs.ranking.candidates import candidates_and_features, fit_base_models
from jobs.ranking.data import Interactions, per_user_holdout
from jobs.ranking.features import feature_names, modality_feature_names

if TYPE_CHECKING:  # types only: jobs.ranking.ranker imports this module
    from jobs.ranking.ranker import RankerSettings

log = logging.getLogger("modalrank.ranker")


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
    feature_blocks, labels, groups = [], [], []
    for fold in range(settings.inner_folds):
        fold_features, fold_labels, fold_users = _inner_fold(train, items, settings, fold, rng)
        feature_blocks.append(fold_features)
        labels.append(fold_labels)
        groups.append(fold * train.n_users + fold_users)  # a user in each fold is a list of its own
    features = np.concatenate(feature_blocks)
    cold = features[:, feature_names(items.modalities).index("cold")] > 0
    return TrainingSet(features, np.concatenate(labels), np.concatenate(groups), cold, items.modalities)


def variant_columns(all_modalities: list[str], modalities: list[str]) -> np.ndarray:
    """Feature columns of a variant that sees only `modalities`: every other modality's columns drop out."""
    dropped = {name for m in all_modalities if m not in modalities for name in modality_feature_names(m)}
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
        fold + 1,
        len(fit_part),
        len(target_part),
        len(hidden_items),
        len(labels),
        len(users),
        int(labels.sum()),
        int(target_matrix[users].sum()),
        labels.sum() / max(1, target_matrix[users].sum()),
    )
    return (
        np.concatenate([f.features for f in found_blocks]),
        labels,
        np.concatenate([f.users for f in found_blocks]),
    )


def train_network(
    features: np.ndarray,
    labels: np.ndarray,
    pair_users: np.ndarray,
    cold: np.ndarray,
    settings: RankerSettings,
    training_log: TrainingLog,
    ranker_name: str,
) -> RankerNet:
    """The network for (normalised) `features`, trained with Adam on the listwise loss, users in shuffled
    batches, with early stopping on held-out users; each epoch goes into `training_log`.

    A share of the users is kept out of the gradient steps; after each epoch their candidates are
    ranked, and the weights with the best nDCG@10 (all candidates) + nDCG@20 (cold candidates)
    are kept. Without it the network overfits the inner split within a few epochs.
    """
    x = torch.from_numpy(features)
    y = torch.from_numpy(labels)
    _, groups = np.unique(pair_users, return_inverse=True)
    n_users = int(groups.max()) + 1
    rng = np.random.default_rng(settings.seed)
    shuffled_users = rng.permutation(n_users)
    n_validation = max(1, int(n_users * settings.validation_share))
    validation_users, training_users = shuffled_users[:n_validation], shuffled_users[n_validation:]
    validation_rows = np.flatnonzero(np.isin(groups, validation_users))
    net = RankerNet(x.shape[1], settings.hidden, settings.dropout)
    optimiser = torch.optim.Adam(net.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    order = np.argsort(groups, kind="stable")
    bounds = np.searchsorted(groups[order], np.arange(n_users + 1))
    best, since_best = -1.0, 0
    best_state: dict[str, torch.Tensor] | None = None
    for epoch in range(settings.epochs):
        net.train()
        total, batches = 0.0, 0
        shuffled = rng.permutation(training_users)
        for start in range(0, len(shuffled), settings.users_per_batch):
            batch = shuffled[start : start + settings.users_per_batch]
            rows = np.concatenate([order[bounds[g] : bounds[g + 1]] for g in batch])
            local_of = np.empty(n_users, dtype=np.int64)
            local_of[batch] = np.arange(len(batch))
            local = torch.from_numpy(local_of[groups[rows]])
            scores = net(x[rows])
            loss = _listwise_loss(scores, y[rows], local, len(batch))
            # The cold term: a second softmax per user over their cold candidates only.
            cold_rows = torch.from_numpy(cold[rows])
            if cold_rows.any():
                loss = loss + _listwise_loss(scores[cold_rows], y[rows][cold_rows], local[cold_rows], len(batch))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total, batches = total + loss.item(), batches + 1
        net.eval()
        with torch.no_grad():
            val_scores = net(x[validation_rows]).numpy()
        val_groups, val_labels, val_cold = groups[validation_rows], labels[validation_rows], cold[validation_rows]
        warm_ndcg = group_ndcg(val_scores, val_labels, val_groups, 10)
        cold_ndcg = group_ndcg(val_scores[val_cold], val_labels[val_cold], val_groups[val_cold], 20)
        criterion = warm_ndcg + cold_ndcg
        training_log.epochs.append(
            {
                "epoch": epoch + 1,
                "loss": round(total / batches, 5),
                "val_ndcg@10": round(warm_ndcg, 5),
                "val_cold_ndcg@20": round(cold_ndcg, 5),
            }
        )
        log.info(
            "ranker %s: epoch %d/%d loss %.4f, validation nDCG@10 %.4f, cold nDCG@20 %.4f",
            ranker_name,
            epoch + 1,
            settings.epochs,
            total / batches,
            warm_ndcg,
            cold_ndcg,
        )
        if criterion > best:
            best, since_best = criterion, 0
            best_state = {name: value.clone() for name, value in net.state_dict().items()}
            training_log.best_epoch = epoch + 1
        else:
            since_best += 1
            if since_best >= settings.patience:
                log.info("ranker %s: no better for %d epochs, stopping", ranker_name, settings.patience)
                break
    if best_state is None:  # a finite criterion is >= 0, so the first epoch always beats -1
        raise ValueError(f"training kept no weights: {settings.epochs} epochs, or every validation nDCG was NaN")
    net.load_state_dict(best_state)
    net.eval()
    return net
