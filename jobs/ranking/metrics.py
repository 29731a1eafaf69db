"""Ranking metrics for the offline evaluation, and the top-k cut every model's scores go through.

Pure numpy (and scipy.sparse for exclusions): never imports pyspark, so the metrics are unit-tested
on hand-computed lists and the Spark jobs only collect lists and write the numbers.

Conventions, the same for every model and protocol:
- Relevance is binary: an item is relevant to a user when it is in the user's held-out set (`truth`).
- A user's list is an ordered sequence of item ids, best first. It may be shorter than k (a model
  with fewer eligible items); it must not repeat an item (ValueError). Only its first k positions
  are read, and only those are checked.
- nDCG@k: DCG = Σ_{p=1..k} rel_p / log2(p + 1); IDCG is the DCG of min(|truth|, k) relevant items at
  the top, so a perfect list scores 1 even when the user has fewer than k held-out items.
- precision@k = hits in the top k / k. The divisor is k, not the list's length, so a short list is
  not rewarded for being short (recommenders-team/recommenders' python_evaluation does the same).
- recall@k = hits in the top k / |truth|.
- AP@k (averaged over users: MAP@k) = Σ over hit positions p of precision@p, / min(|truth|, k).
- catalog coverage@k = distinct items in all users' top-k lists / items that could be recommended.
- A user with an empty truth scores 0 on the per-user functions, but `evaluate_lists` leaves such
  users out of every mean: they have nothing to find.

`top_k_from_scores` turns a users × items score matrix into top-k item indices. Excluded entries
(a user's training items, or items outside a protocol's candidates) never appear; equal scores are
ordered by the lower item index first, so the lists, and every metric, are the same on every run.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

METRIC_NAMES = ("ndcg", "precision", "recall", "map", "coverage")
# What top_k_from_scores_padded writes where a row has fewer than k eligible items.
PADDING = -1

Item = Hashable
User = Hashable


@dataclass(frozen=True)
class MetricValue:
    """One number of the METRICS table, before dataset, protocol and model are attached."""

    metric: str  # one of METRIC_NAMES
    k: int
    value: float  # mean over `users` (coverage: share of candidate items)
    users: int  # users with a non-empty truth


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


def _top(ranked: Sequence[Item], k: int) -> list[Item]:
    """The list's first k items, refusing a list that repeats an item there."""
    top = list(ranked[:k])
    if len(set(top)) != len(top):
        raise ValueError(f"a ranked list must not repeat an item: {top!r}")
    return top


def _as_set(truth: Iterable[Item]) -> set[Item] | frozenset[Item]:
    return truth if isinstance(truth, set | frozenset) else set(truth)


def _hit_row(ranked: Sequence[Item], truth: Iterable[Item], k: int) -> tuple[np.ndarray, int]:
    """A (1 × k) hit matrix, zero past the list's end, and |truth|."""
    k = _check_k(k)
    relevant = _as_set(truth)
    hits = np.zeros((1, k), dtype=bool)
    top = _top(ranked, k)
    hits[0, : len(top)] = [item in relevant for item in top]
    return hits, len(relevant)


def _discounts(k: int) -> np.ndarray:
    """1 / log2(p + 1) for positions p = 1..k."""
    return 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))


def _ranking_metrics(hits: np.ndarray, truth_sizes: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Per-user nDCG, precision, recall and AP at k from a users × (≥ k) hit matrix.

    One implementation for one user and for a hundred thousand: the per-user functions call it with
    a single row. Users with an empty truth get 0 everywhere.
    """
    hit = hits[:, :k].astype(np.float64)
    truth_sizes = np.asarray(truth_sizes, dtype=np.int64)
    discounts = _discounts(k)
    # ideal_dcg[n] is the DCG of n relevant items at the top; n = 0 gives 0.
    ideal_dcg = np.concatenate([[0.0], np.cumsum(discounts)])
    ideal_hits = np.minimum(truth_sizes, k)
    dcg = hit @ discounts
    idcg = ideal_dcg[ideal_hits]
    n_hits = hit.sum(axis=1)
    precision_at_each_position = np.cumsum(hit, axis=1) / np.arange(1, k + 1)
    summed_precision_at_hits = (precision_at_each_position * hit).sum(axis=1)
    has_truth = truth_sizes > 0
    # np.divide with `where` leaves the 0 of `out` for users with nothing held out.
    return {
        "ndcg": np.divide(dcg, idcg, out=np.zeros_like(dcg), where=idcg > 0),
        "precision": n_hits / k,
        "recall": np.divide(n_hits, truth_sizes, out=np.zeros_like(n_hits), where=has_truth),
        "map": np.divide(
            summed_precision_at_hits, ideal_hits, out=np.zeros_like(summed_precision_at_hits), where=has_truth
        ),
    }


def ndcg_at_k(ranked: Sequence[Item], truth: Iterable[Item], k: int) -> float:
    """Normalised discounted cumulative gain of the list's top k (binary relevance)."""
    hits, truth_size = _hit_row(ranked, truth, k)
    return float(_ranking_metrics(hits, np.array([truth_size]), k)["ndcg"][0])


def precision_at_k(ranked: Sequence[Item], truth: Iterable[Item], k: int) -> float:
    """Hits in the top k / k."""
    hits, truth_size = _hit_row(ranked, truth, k)
    return float(_ranking_metrics(hits, np.array([truth_size]), k)["precision"][0])


def recall_at_k(ranked: Sequence[Item], truth: Iterable[Item], k: int) -> float:
    """Hits in the top k / |truth|."""
    hits, truth_size = _hit_row(ranked, truth, k)
    return float(_ranking_metrics(hits, np.array([truth_size]), k)["recall"][0])


def average_precision_at_k(ranked: Sequence[Item], truth: Iterable[Item], k: int) -> float:
    """Σ over hit positions p ≤ k of precision@p, / min(|truth|, k): one user's share of MAP@k."""
    hits, truth_size = _hit_row(ranked, truth, k)
    return float(_ranking_metrics(hits, np.array([truth_size]), k)["map"][0])


def catalog_coverage(
    lists: Mapping[User, Sequence[Item]] | Iterable[Sequence[Item]], n_candidate_items: int, k: int | None = None
) -> float:
    """Distinct items in the users' lists (cut at k when given) / the number of recommendable items."""
    if n_candidate_items < 1:
        raise ValueError(f"n_candidate_items must be positive, got {n_candidate_items}")
    ranked_lists = lists.values() if isinstance(lists, Mapping) else lists
    cut = None if k is None else _check_k(k)
    distinct: set[Item] = set()
    for ranked in ranked_lists:
        distinct.update(ranked[:cut])
    if len(distinct) > n_candidate_items:
        raise ValueError(f"{len(distinct)} distinct items recommended but only {n_candidate_items} candidates")
    return len(distinct) / n_candidate_items


def evaluate_lists(
    lists: Mapping[User, Sequence[Item]],
    truth: Mapping[User, Iterable[Item]],
    *,
    ks: Sequence[int] = (10, 20),
    n_candidate_items: int,
) -> list[MetricValue]:
    """Every metric at every k, averaged over the users with a non-empty truth.

    The evaluated users are those of `truth` with at least one held-out item. One of them without a
    list counts as an empty list (0 on every metric), so a model cannot score higher by skipping hard
    users; lists of users outside `truth` are ignored. Coverage is over the evaluated users' lists.

    Rows come out by k (in the order of `ks`), then in the order of METRIC_NAMES.
    """
    ks = [_check_k(k) for k in ks]
    if not ks:
        raise ValueError("ks must name at least one k")
    if n_candidate_items < 1:
        raise ValueError(f"n_candidate_items must be positive, got {n_candidate_items}")
    longest_k = max(ks)
    evaluated = [(user, relevant) for user, held_out in truth.items() if (relevant := _as_set(held_out))]
    if not evaluated:
        raise ValueError("no user has a held-out item: nothing to evaluate")

    hits = np.zeros((len(evaluated), longest_k), dtype=bool)
    truth_sizes = np.empty(len(evaluated), dtype=np.int64)
    # Each item's best (lowest) position over all lists: coverage@k counts items with one below k.
    best_position: dict[Item, int] = {}
    for row, (user, relevant) in enumerate(evaluated):
        truth_sizes[row] = len(relevant)
        top = _top(lists.get(user, ()), longest_k)
        if top:
            hits[row, : len(top)] = [item in relevant for item in top]
        for position, item in enumerate(top):
            if best_position.get(item, longest_k) > position:
                best_position[item] = position

    best_positions = np.fromiter(best_position.values(), dtype=np.int64, count=len(best_position))
    if len(best_positions) > n_candidate_items:
        raise ValueError(
            f"{len(best_positions)} distinct items recommended but only {n_candidate_items} candidates"
        )
    n_users = len(evaluated)
    values: list[MetricValue] = []
    for k in ks:
        per_user = _ranking_metrics(hits, truth_sizes, k)
        for metric in METRIC_NAMES[:-1]:
            values.append(MetricValue(metric, k, float(per_user[metric].mean()), n_users))
        coverage = float((best_positions < k).sum()) / n_candidate_items
        values.append(MetricValue("coverage", k, coverage, n_users))
    return values


def _excluded_entries(
    exclude: sp.spmatrix | sp.sparray | np.ndarray | None, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray] | np.ndarray | None:
    """Index arrays or a boolean mask (broadcastable to `shape`) of the entries that must not rank."""
    if exclude is None:
        return None
    if sp.issparse(exclude):
        if exclude.shape != shape:
            raise ValueError(f"exclude has shape {exclude.shape}, scores {shape}")
        # Stored entries with a value count; explicit zeros do not (nonzero() drops them).
        rows, columns = exclude.nonzero()
        return rows, columns
    mask = np.asarray(exclude)
    if mask.dtype != bool:
        raise ValueError(f"a dense exclude must be a boolean mask, got dtype {mask.dtype}")
    try:
        return np.broadcast_to(mask, shape)
    except ValueError:
        raise ValueError(f"exclude mask of shape {mask.shape} does not broadcast to scores {shape}") from None


def _top_k_indices(
    scores: np.ndarray, exclude: sp.spmatrix | sp.sparray | np.ndarray | None, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Top-min(k, n_items) item indices per row (excluded ones last) and each row's eligible count."""
    k = _check_k(k)
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be users × items, got shape {scores.shape}")
    n_users, n_items = scores.shape
    if not np.isfinite(scores).all():
        # Excluded entries rank as -inf below, and NaN has no order: either in a model's output is a bug.
        raise ValueError("scores must be finite")
    # Work on the negated scores (ascending order = best first): this is also the copy that keeps the
    # caller's scores unchanged. float32 stays float32. Excluded entries become +inf, i.e. last.
    cost = np.negative(scores, dtype=scores.dtype if scores.dtype.kind == "f" else np.float64)
    excluded = _excluded_entries(exclude, scores.shape)
    if excluded is None:
        eligible_counts = np.full(n_users, n_items, dtype=np.int64)
    else:
        cost[excluded] = np.inf
        eligible_counts = np.isfinite(cost).sum(axis=1)
    cut = min(k, n_items)
    if n_items == 0 or n_users == 0:
        return np.empty((n_users, cut), dtype=np.int64), eligible_counts

    # argpartition finds the top `cut` in linear time, but picks arbitrarily among items tied with
    # the cut-th score. Rows where such a tie straddles the cut are redone so the lower indices win.
    chosen = np.argpartition(cost, cut - 1, axis=1)[:, :cut]
    cut_cost = np.take_along_axis(cost, chosen, axis=1).max(axis=1, keepdims=True)
    better_than_cut = (cost < cut_cost).sum(axis=1)
    tied_with_cut = (cost == cut_cost).sum(axis=1)
    for row in np.flatnonzero(better_than_cut + tied_with_cut > cut):
        better = np.flatnonzero(cost[row] < cut_cost[row, 0])
        tied = np.flatnonzero(cost[row] == cut_cost[row, 0])[: cut - len(better)]
        chosen[row] = np.concatenate([better, tied])
    # Sort the chosen few: by score descending, then by item index ascending.
    order = np.lexsort((chosen, np.take_along_axis(cost, chosen, axis=1)), axis=1)
    return np.take_along_axis(chosen, order, axis=1).astype(np.int64, copy=False), eligible_counts


def top_k_from_scores(
    scores: np.ndarray, exclude: sp.spmatrix | sp.sparray | np.ndarray | None, k: int
) -> np.ndarray:
    """The k best item indices per user (users × k), best first; equal scores: lower index first.

    `exclude` is a sparse users × items matrix whose stored nonzero entries are excluded (a user's
    training items), a boolean mask broadcastable to the scores' shape (e.g. one (n_items,) mask for
    every user), or None. Raises ValueError when a row has fewer than k eligible items; use
    `top_k_from_scores_padded` where that can happen. Memory: one copy of `scores`, so callers score
    users in blocks.
    """
    top, eligible_counts = _top_k_indices(scores, exclude, k)
    short_rows = np.flatnonzero(eligible_counts < k)
    if len(short_rows):
        raise ValueError(
            f"{len(short_rows)} row(s) have fewer than k={k} eligible items (first: row {short_rows[0]}, "
            f"{eligible_counts[short_rows[0]]} eligible); use top_k_from_scores_padded"
        )
    return top


def top_k_from_scores_padded(
    scores: np.ndarray, exclude: sp.spmatrix | sp.sparray | np.ndarray | None, k: int
) -> np.ndarray:
    """As `top_k_from_scores`, but a row with fewer than k eligible items ends in PADDING (-1)."""
    top, eligible_counts = _top_k_indices(scores, exclude, k)
    padded = np.full((top.shape[0], k), PADDING, dtype=np.int64)
    padded[:, : top.shape[1]] = top
    # Excluded items rank as -inf and every eligible score is finite, so a row's eligible items come
    # first: everything from position `eligible_count` on is excluded, or past the catalog's end.
    padded[np.arange(k)[None, :] >= eligible_counts[:, None]] = PADDING
    return padded


def lists_from_top_k(
    top_k: np.ndarray, user_ids: Sequence[User] | np.ndarray, item_ids: np.ndarray
) -> dict[User, list[Item]]:
    """Top-k index rows → {user id: [item id, ...]}, dropping PADDING: the input of `evaluate_lists`."""
    top_k = np.asarray(top_k)
    item_ids = np.asarray(item_ids)
    if len(user_ids) != top_k.shape[0]:
        raise ValueError(f"{len(user_ids)} user ids for {top_k.shape[0]} rows")
    user_list = user_ids.tolist() if isinstance(user_ids, np.ndarray) else list(user_ids)
    return {user: item_ids[row[row != PADDING]].tolist() for user, row in zip(user_list, top_k, strict=True)}
