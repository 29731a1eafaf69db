"""One evaluation harness for every model: same split, same candidate rules, same metrics.

For each test user a model's scores go through one cut: the user's training items and items outside
the protocol's candidates are excluded, and the top `max(ks)` items form the list. The lists and the
held-out pairs are returned as well as the metrics, so the evaluation job can store all three and
anyone can recompute every number.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from jobs.ranking.data import Split
from jobs.ranking.metrics import PADDING, evaluate_lists, top_k_from_scores_padded

log = logging.getLogger("modalrank.harness")

KS = (10, 20)


@dataclass
class ModelResult:
    model: str
    metrics: list  # MetricValue
    lists: pd.DataFrame  # user index, item index, rank, score
    seconds: float


def score_lists(model, split: Split, users: np.ndarray, k: int, block_size: int = 512) -> pd.DataFrame:
    """The model's top-k lists for `users`: (user, item, rank, score) in index space."""
    allowed = np.zeros(split.train.n_items, dtype=bool)
    allowed[split.candidate_items] = True
    seen = split.train.matrix().tocsr()
    frames = []
    for start in range(0, len(users), block_size):
        block = users[start : start + block_size]
        scores = model.score(block, allowed) if _takes_allowed(model) else model.score(block)
        excluded = np.asarray(seen[block].todense(), dtype=bool) | ~allowed[None, :]
        top = top_k_from_scores_padded(np.asarray(scores, dtype=np.float32), excluded, k)
        rows, ranks = np.nonzero(top != PADDING)
        items = top[rows, ranks]
        frames.append(
            pd.DataFrame(
                {"user": block[rows], "item": items, "rank": ranks + 1, "score": scores[rows, items].astype(float)}
            )
        )
    return pd.concat(frames, ignore_index=True)


def _takes_allowed(model) -> bool:
    import inspect

    return "allowed" in inspect.signature(model.score).parameters


def evaluate_model(model, split: Split, ks: Sequence[int] = KS) -> ModelResult:
    started = time.monotonic()
    users = split.test_users()
    lists = score_lists(model, split, users, max(ks))
    truth = split.test.by_user()
    by_user = {user: group["item"].tolist() for user, group in lists.groupby("user", sort=False)}
    metrics = evaluate_lists(
        {user: by_user.get(user, []) for user in users},
        {user: truth[user] for user in users},
        ks=ks,
        n_candidate_items=len(split.candidate_items),
    )
    seconds = round(time.monotonic() - started, 2)
    ndcg = next((m.value for m in metrics if m.metric == "ndcg" and m.k == ks[0]), float("nan"))
    log.info(
        "%s %s: nDCG@%d %.4f over %d users (%.1f s)", split.protocol, model.name, ks[0], ndcg, len(users), seconds
    )
    return ModelResult(model.name, metrics, lists, seconds)
