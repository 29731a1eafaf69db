"""The ranking core without Spark: splits, baselines against hand-computed values, and the ranker's
behaviour on data with a planted structure (it must find it, reproducibly, and survive a save/load)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from jobs.ranking import metrics
from jobs.ranking.baselines import (
    ContentScorer,
    EaseScorer,
    GenreScorer,
    ItemKnnScorer,
    ItemSide,
    PopularityScorer,
    RandomScorer,
)
from jobs.ranking.data import (
    CHRONO,
    ITEM_COLD,
    RANDOM,
    Interactions,
    chrono_split,
    index_interactions,
    item_cold_split,
    make_split,
    random_split,
)
from jobs.ranking.features import feature_names
from jobs.ranking.harness import evaluate_model
from jobs.ranking.ranker import HybridRanker, RankerSettings, fit_variants
from jobs.ranking.serialization import load_ranker, save_ranker
from jobs.ranking.training import _listwise_loss, group_ndcg, variant_columns


def pairs(rows: list[tuple[int, int, int]], n_users: int, n_items: int) -> Interactions:
    users, items, times = (np.array(column) for column in zip(*rows, strict=True))
    return Interactions(users.astype(np.int32), items.astype(np.int32), times.astype(np.int64), n_users, n_items)


def no_content(n_items: int, n_genres: int = 1) -> ItemSide:
    return ItemSide({}, sp.csr_matrix((n_items, n_genres), dtype=np.float32))


# ---------------------------------------------------------------------------------------------------
# Indexing and splits


def test_index_interactions_keeps_each_pair_once_at_its_latest_time():
    data = index_interactions(
        user_ids=np.array([7, 7, 9, 7]),
        item_ids=np.array([30, 10, 10, 30]),
        times=np.array([100, 50, 70, 300]),
        catalog_item_ids=np.array([10, 20, 30]),
    )
    assert list(data.user_ids) == [7, 9] and list(data.item_ids) == [10, 20, 30]
    got = sorted(zip(data.interactions.users, data.interactions.items, data.interactions.times, strict=True))
    # user 7 (index 0) has item 10 (index 0) at 50 and item 30 (index 2) at its latest event, 300.
    assert got == [(0, 0, 50), (0, 2, 300), (1, 0, 70)]
    assert data.interactions.n_items == 3  # item 20 has no interaction, but an index


def test_index_interactions_rejects_items_outside_the_catalog():
    with pytest.raises(ValueError, match="1 interactions name items that are not in the catalog"):
        index_interactions(np.array([1, 1]), np.array([10, 99]), np.array([1, 2]), np.array([10, 20]))


def test_random_split_holds_out_a_quarter_of_each_user_and_is_seeded():
    # user 0: 8 items -> 2 held out; user 1: 4 items -> 1; user 2: 1 item -> kept for training.
    rows = [(0, i, i) for i in range(8)] + [(1, i, i) for i in range(4)] + [(2, 0, 0)]
    data = pairs(rows, 3, 8)
    split = random_split(data, seed=1)
    assert split.protocol == RANDOM
    assert np.bincount(split.test.users, minlength=3).tolist() == [2, 1, 0]
    assert np.bincount(split.train.users, minlength=3).tolist() == [6, 3, 1]
    again = random_split(data, seed=1)
    assert np.array_equal(split.test.items, again.test.items)
    assert list(split.test_users()) == [0, 1]


def test_chrono_split_holds_out_each_users_latest_fifth():
    rows = [(0, i, 1000 - i) for i in range(10)] + [(1, i, i) for i in range(5)]
    split = chrono_split(pairs(rows, 2, 10))
    assert split.protocol == CHRONO
    held = {(int(u), int(i)) for u, i in zip(split.test.users, split.test.items, strict=True)}
    # user 0 rated item i at time 1000 − i, so items 0 and 1 last; user 1 rated item 4 last.
    assert held == {(0, 0), (0, 1), (1, 4)}


def test_item_cold_split_holds_out_every_interaction_of_the_cold_items():
    rows = [(u, i, u * 10 + i) for u in range(6) for i in range(10) if (u + i) % 2 == 0]
    data = pairs(rows, 6, 10)
    split = item_cold_split(data, seed=3)
    assert split.protocol == ITEM_COLD
    assert len(split.candidate_items) == 2  # 20% of the 10 interacted items
    assert set(split.test.items) == set(split.candidate_items)
    assert not np.isin(split.train.items, split.candidate_items).any()
    assert len(split.train) + len(split.test) == len(data)
    with pytest.raises(ValueError, match="unknown protocol"):
        make_split("leave_one_out", data, 0)


# ---------------------------------------------------------------------------------------------------
# Baselines against hand-computed values

# Three users, four items:    item 0  1  2  3
#                      user 0      1  1  0  0
#                      user 1      1  0  1  0
#                      user 2      0  1  1  1
TINY = pairs([(0, 0, 1), (0, 1, 2), (1, 0, 3), (1, 2, 4), (2, 1, 5), (2, 2, 6), (2, 3, 7)], 3, 4)


def test_popularity_counts_training_users_per_item():
    scores = PopularityScorer().fit(TINY, no_content(4)).score(np.array([0, 2]))
    assert scores.tolist() == [[2, 2, 2, 1], [2, 2, 2, 1]]


def test_ease_matches_the_closed_form():
    l2 = 1.0
    x = TINY.matrix().toarray().astype(np.float64)
    p = np.linalg.inv(x.T @ x + l2 * np.eye(4))
    b = np.eye(4) - p / np.diag(p)  # B = I − P·diag(1/diag(P)); its diagonal is 0 by construction
    model = EaseScorer(l2).fit(TINY, no_content(4))
    np.testing.assert_allclose(model.score(np.arange(3)), x @ b, rtol=1e-4, atol=1e-5)


def test_item_knn_sums_cosine_neighbours_of_the_users_items():
    model = ItemKnnScorer(neighbours=3, shrink=0.0).fit(TINY, no_content(4))
    # Users per item: 0 {0,1}, 1 {0,2}, 2 {1,2}, 3 {2}. cos(0,1) = 1/sqrt(2·2) = 1/2, cos(2,1) = 1/2,
    # cos(0,3) = 0, cos(2,3) = 1/sqrt(2·1). User 1 holds items 0 and 2.
    scores = model.score(np.array([1]))[0]
    assert scores[1] == pytest.approx(0.5 + 0.5, rel=1e-5)
    assert scores[3] == pytest.approx(0 + 1 / np.sqrt(2), rel=1e-5)


def test_genre_scorer_is_cosine_of_genre_profiles():
    genres = sp.csr_matrix(np.array([[1, 0], [1, 0], [0, 1], [1, 1]], dtype=np.float32))
    model = GenreScorer().fit(TINY, ItemSide({}, genres))
    # User 0 watched items 0 and 1, both genre 0: profile (1, 0). Item 3 has both genres: cos = 1/sqrt(2).
    assert model.score(np.array([0]))[0].tolist() == pytest.approx([1, 1, 0, 1 / np.sqrt(2)], rel=1e-5)


def test_content_scorer_sums_cosines_over_modalities():
    text = np.array([[1, 0], [1, 0], [0, 1], [0, 0]], dtype=np.float32)  # item 3 has no text
    image = np.array([[0, 1], [1, 0], [1, 0], [1, 0]], dtype=np.float32)
    items = ItemSide({"text": text, "image": image}, sp.csr_matrix((4, 1), dtype=np.float32))
    scores = ContentScorer().fit(TINY, items).score(np.array([0]))
    # user 0: text profile (1, 0); image profile normalised mean of (0,1),(1,0) = (1,1)/sqrt(2).
    expected = [1 + 1 / np.sqrt(2), 1 + 1 / np.sqrt(2), 0 + 1 / np.sqrt(2), 0 + 1 / np.sqrt(2)]
    assert scores[0].tolist() == pytest.approx(expected, rel=1e-5)


def test_random_scorer_is_seeded_per_user():
    model = RandomScorer(seed=5).fit(TINY, no_content(4))
    assert np.array_equal(model.score(np.array([0, 1])), model.score(np.array([0, 1])))
    assert not np.array_equal(model.score(np.array([0]))[0], model.score(np.array([1]))[0])


# ---------------------------------------------------------------------------------------------------
# The ranker's pieces


def test_group_ndcg_agrees_with_the_metric_definition():
    rng = np.random.default_rng(0)
    scores, labels = rng.random(60), (rng.random(60) < 0.3).astype(np.float64)
    groups = np.repeat(np.arange(6), 10)
    expected = []
    for g in range(6):
        rows = np.flatnonzero(groups == g)
        ranked = rows[np.argsort(-scores[rows])]
        truth = set(rows[labels[rows] > 0])
        if truth:
            expected.append(metrics.ndcg_at_k(list(ranked), truth, 5))
    assert group_ndcg(scores, labels, groups, 5) == pytest.approx(np.mean(expected))


def test_listwise_loss_is_the_mean_negative_log_softmax_of_the_positives():
    scores = torch.tensor([2.0, 0.0, 1.0, 1.0, 3.0])
    labels = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0])
    groups = torch.tensor([0, 0, 1, 1, 1])
    # group 0: −log(e² / (e² + 1)); group 1: −(log(e/(e+e+e³)) + log(e³/(e+e+e³))) / 2
    group0 = -np.log(np.e**2 / (np.e**2 + 1))
    norm1 = 2 * np.e + np.e**3
    group1 = -(np.log(np.e / norm1) + np.log(np.e**3 / norm1)) / 2
    assert _listwise_loss(scores, labels, groups, 2).item() == pytest.approx((group0 + group1) / 2, rel=1e-5)


def test_variant_columns_drop_only_the_other_modalities():
    names = feature_names(["image", "text"])
    kept = [names[i] for i in variant_columns(["image", "text"], ["text"])]
    assert "sim_text" in kept and "has_text" in kept
    assert "sim_image" not in kept and "has_image" not in kept
    assert len(kept) == len(names) - 2


# ---------------------------------------------------------------------------------------------------
# The ranker on planted tastes: users like two of six item clusters; items carry a noisy content vector
# of their cluster; some items are never seen in training.


def planted(seed: int = 0, n_users: int = 120, n_items: int = 150, clusters: int = 6):
    rng = np.random.default_rng(seed)
    item_cluster = rng.integers(0, clusters, n_items)
    centres = rng.normal(size=(clusters, 16))
    content = centres[item_cluster] + 0.6 * rng.normal(size=(n_items, 16))
    content /= np.linalg.norm(content, axis=1, keepdims=True)
    noise = rng.normal(size=(n_items, 8))
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    popularity = rng.pareto(1.5, n_items) + 1
    rows = []
    for user in range(n_users):
        liked = rng.choice(clusters, 2, replace=False)
        weights = popularity * np.where(np.isin(item_cluster, liked), 1.0, 0.03)
        chosen = rng.choice(n_items, 20, replace=False, p=weights / weights.sum())
        rows += [(user, int(item), int(rng.integers(0, 10**6))) for item in chosen]
    genres = sp.csr_matrix(
        np.eye(clusters, dtype=np.float32)[(item_cluster + rng.integers(0, 2, n_items)) % clusters]
    )
    items = ItemSide({"content": content.astype(np.float32), "noise": noise.astype(np.float32)}, genres)
    return pairs(rows, n_users, n_items), items


FAST = RankerSettings(epochs=8, inner_folds=1, candidates_per_source=30, cold_candidates=30, seed=0)


def ndcg(model, split) -> float:
    return next(m.value for m in evaluate_model(model, split).metrics if m.metric == "ndcg" and m.k == 10)


def test_ranker_finds_planted_tastes_far_above_popularity():
    data, items = planted()
    split = make_split(RANDOM, data, seed=1)
    ranker = HybridRanker(FAST).fit(split.train, items)
    popularity = PopularityScorer().fit(split.train, items)
    assert ndcg(ranker, split) > 1.5 * ndcg(popularity, split)
    assert ranker.log.best_epoch >= 1 and len(ranker.log.epochs) >= ranker.log.best_epoch


def test_ranker_ranks_cold_items_from_content_and_uses_the_informative_modality():
    data, items = planted(n_items=400)
    split = make_split(ITEM_COLD, data, seed=1)
    rankers = fit_variants(
        split.train, items, FAST, {"ranker": None, "only-content": ["content"], "only-noise": ["noise"]}
    )

    random = ndcg(RandomScorer(0).fit(split.train, items), split)
    assert ndcg(rankers["ranker"], split) > 1.5 * random
    assert ndcg(rankers["only-content"], split) > 1.2 * ndcg(rankers["only-noise"], split)


def test_ranker_is_reproducible_by_seed_and_survives_save_and_load(tmp_path):
    data, items = planted(seed=2)
    split = make_split(CHRONO, data, seed=1)
    first = HybridRanker(FAST).fit(split.train, items)
    second = HybridRanker(FAST).fit(split.train, items)
    users = split.test_users()
    np.testing.assert_array_equal(first.score(users), second.score(users))

    save_ranker(first, tmp_path / "artifact", {"version": "test"})
    assert not any(path.suffix in {".pt", ".pkl", ".tmp"} for path in (tmp_path / "artifact").iterdir())
    loaded = load_ranker(tmp_path / "artifact", items, first.base)
    np.testing.assert_array_equal(loaded.score(users), first.score(users))
    other_items = ItemSide({"content": items.blocks["content"]}, items.genres)
    with pytest.raises(ValueError, match="retrain it"):
        load_ranker(tmp_path / "artifact", other_items, first.base)


@pytest.mark.parametrize("rank_every_allowed_below", [0, 2_000], ids=["candidates", "every-allowed-item"])
def test_top_k_is_the_dense_scores_cut_without_the_dense_scores(monkeypatch, rank_every_allowed_below):
    """Publish's lists come from `top_k`, which sorts only the candidates; they must be exactly the
    lists that ranking every item by `score` gives, including users with fewer candidates than k (they
    continue in popularity order) and users with fewer eligible items than k (short lists)."""
    from jobs.ranking import ranker as ranker_module

    monkeypatch.setattr(ranker_module, "SCORE_EVERY_ALLOWED_BELOW", rank_every_allowed_below)
    data, items = planted()
    ranker = HybridRanker(FAST).fit(data, items)
    allowed = np.random.default_rng(3).random(data.n_items) > 0.2
    users = np.arange(data.n_users)
    excluded = (ranker.base.seen.toarray() > 0) | ~allowed[None, :]
    for k in (10, 140):  # 140: more than most users' candidates, and than every user's eligible items
        scores = ranker.score(users, allowed)
        expected = metrics.top_k_from_scores_padded(scores, excluded, k)
        rows, columns = np.nonzero(expected != metrics.PADDING)
        top = ranker.top_k(users, allowed, k)
        np.testing.assert_array_equal(top.rows, rows)
        np.testing.assert_array_equal(top.ranks, columns + 1)
        np.testing.assert_array_equal(top.items, expected[rows, columns])
        np.testing.assert_array_equal(top.scores, scores[rows, expected[rows, columns]])
    assert (np.bincount(top.rows, minlength=len(users)) < 140).all()
    if rank_every_allowed_below == 0:
        assert (top.scores < -9e5).any(), "some lists should continue past their candidates"
