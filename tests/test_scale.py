"""Scale-out pieces: the bounded item-item models, the memory-frugal user-kNN and sequence neighbours
(same numbers as the straightforward definitions), the ml-25m-shaped generator, and the scale bench's
arithmetic and memory sampler. The benchmark itself is a command (`modalrank bench scale`), not a test."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp
from test_ranking import TINY, no_content, pairs, planted

from infra.tools.bench_scale import TreeMemory, growth_exponent
from infra.tools.scale_data import FIRST_EVENT, LAST_EVENT, VECTOR_DIM, ScaleShape, generate_scale_data
from jobs.ranking.baselines import EaseScorer, ItemKnnScorer, UserKnnScorer, keep_nearest, most_interacted
from jobs.ranking.candidates import keep_strongest_per_row, sequence_neighbours, user_sequences
from jobs.ranking.ranker import RankerSettings
from jobs.ranking.training import build_training_set


def random_pairs(seed: int, n_users: int = 40, n_items: int = 60, per_user: int = 12):
    rng = np.random.default_rng(seed)
    popularity = rng.pareto(1.2, n_items) + 0.05
    rows = []
    for user in range(n_users):
        chosen = rng.choice(n_items, per_user, replace=False, p=popularity / popularity.sum())
        rows += [(user, int(item), int(rng.integers(0, 10**6))) for item in chosen]
    return pairs(rows, n_users, n_items)


def test_most_interacted_keeps_the_top_items_in_index_order_ties_to_the_lower_index():
    counts = np.array([3, 0, 5, 3, 1, 5])
    assert most_interacted(counts, 0).tolist() == [0, 2, 3, 4, 5]
    assert most_interacted(counts, 3).tolist() == [0, 2, 5]
    assert most_interacted(counts, 10).tolist() == [0, 2, 3, 4, 5]


def test_item_models_with_a_limit_at_or_above_the_warm_items_are_unchanged():
    data = random_pairs(0)
    warm = int((data.item_counts() > 0).sum())
    users = np.arange(data.n_users)
    for model in (EaseScorer, ItemKnnScorer):
        whole = model().fit(data, no_content(data.n_items)).score(users)
        limited = model(max_items=warm).fit(data, no_content(data.n_items)).score(users)
        np.testing.assert_array_equal(whole, limited)


def test_item_models_with_a_limit_score_only_the_most_interacted_items():
    # TINY: items 0, 1 and 2 have two users each, item 3 one; user 1 holds items 0 and 2.
    knn = ItemKnnScorer(neighbours=3, shrink=0.0, max_items=3).fit(TINY, no_content(4))
    assert knn.score(np.array([1]))[0, 3] == 0.0  # uncapped it is cos(2, 3) = 1/sqrt(2)
    assert knn.score(np.array([1]))[0, 1] == pytest.approx(1.0, rel=1e-5)
    ease = EaseScorer(l2=1.0, max_items=2).fit(TINY, no_content(4))
    assert ease.warm.tolist() == [0, 1]
    assert np.all(ease.score(np.arange(3))[:, 2:] == 0.0)


def test_user_knn_scores_equal_the_dense_definition():
    data = random_pairs(1)
    model = UserKnnScorer(neighbours=5, shrink=2.0).fit(data, no_content(data.n_items))
    users = np.array([0, 7, 31])
    dense = data.matrix().toarray()
    norms = np.sqrt(dense.sum(axis=1))
    similarity = (dense[users] @ dense.T) / (np.outer(norms[users], norms) + 2.0)
    similarity[np.arange(len(users)), users] = 0.0
    keep_nearest(similarity, 5, axis=1)
    np.testing.assert_allclose(model.score(users), similarity @ dense, rtol=1e-5, atol=1e-6)


def test_user_knn_pool_limits_neighbours_to_the_most_active_users():
    data = random_pairs(4, per_user=8)
    extra = pairs([(0, item, 10**6 + item) for item in range(20, 40)], data.n_users, data.n_items)
    data = pairs(
        list(
            zip(
                np.r_[data.users, extra.users],
                np.r_[data.items, extra.items],
                np.r_[data.times, extra.times],
                strict=True,
            )
        ),
        data.n_users,
        data.n_items,
    )  # user 0 is the most active
    model = UserKnnScorer(neighbours=3, shrink=1.0, max_pool=10).fit(data, no_content(data.n_items))
    pool = most_interacted(data.user_counts(), 10)
    assert model.pool.tolist() == pool.tolist() and 0 in pool
    users = np.array([0, 5, 17])
    dense = data.matrix().toarray()
    norms = np.sqrt(dense.sum(axis=1))
    similarity = (dense[users] @ dense[pool].T) / (np.outer(norms[users], norms[pool]) + 1.0)
    for row, user in enumerate(users):  # nobody is their own neighbour
        similarity[row, pool == user] = 0.0
    keep_nearest(similarity, 3, axis=1)
    np.testing.assert_allclose(model.score(users), similarity @ dense[pool], rtol=1e-5, atol=1e-6)


def test_sequence_neighbours_count_pairs_within_the_window_cosine_scaled():
    data = random_pairs(2)
    order, users, _ = user_sequences(data)
    items = data.items[order]
    expected = np.zeros((data.n_items, data.n_items))
    for offset in (1, 2):
        for a in range(len(items) - offset):
            if users[a] == users[a + offset]:
                expected[items[a], items[a + offset]] += 1
                expected[items[a + offset], items[a]] += 1
    norms = np.sqrt(np.maximum(data.item_counts(), 1))
    expected /= np.outer(norms, norms)
    np.testing.assert_allclose(sequence_neighbours(data, 2).toarray(), expected, rtol=1e-6)


def test_keep_strongest_per_row_keeps_the_largest_entries_of_long_rows_only():
    matrix = sp.csr_matrix(np.array([[0.1, 0.5, 0.3, 0.5], [0.2, 0, 0, 0], [0, 0.4, 0.9, 0]], dtype=np.float32))
    kept = keep_strongest_per_row(matrix, 2).toarray()
    # Row 0 keeps its two 0.5s (a tie, both kept because they are the top two); rows 1 and 2 are short.
    np.testing.assert_allclose(kept, [[0, 0.5, 0, 0.5], [0.2, 0, 0, 0], [0, 0.4, 0.9, 0]])
    assert keep_strongest_per_row(matrix, 3) is not matrix and keep_strongest_per_row(matrix, 4) is matrix
    data = random_pairs(3)
    capped = sequence_neighbours(data, 2, keep=5)
    whole = sequence_neighbours(data, 2).toarray()
    assert np.diff(capped.indptr).max() == 5
    for row in range(data.n_items):  # each kept entry is one of the row's 5 largest
        kept_values = capped[row].data
        if len(kept_values):
            assert kept_values.min() >= np.sort(whole[row])[-5] - 1e-7


def test_training_set_samples_at_most_max_training_users_per_fold():
    data, items = planted(n_users=60)
    settings = RankerSettings(inner_folds=2, candidates_per_source=20, cold_candidates=20, max_training_users=25)
    training = build_training_set(data, items, settings)
    groups = np.unique(training.groups)
    assert len(groups) <= 2 * 25
    assert len(groups[groups < data.n_users]) == 25  # fold 0's users: exactly the sample
    unlimited = build_training_set(data, items, RankerSettings(inner_folds=1, candidates_per_source=20))
    assert len(np.unique(unlimited.groups)) > 25


# ---------------------------------------------------------------------------------------------------
# The generator (Spark) and the bench's arithmetic


@pytest.mark.spark
def test_scale_generator_writes_the_ml25m_shape_deterministically(spark, tmp_path):
    shape = ScaleShape(fraction=0.0005, seed=3, items=3_000)  # 81 users
    first = generate_scale_data(spark, tmp_path / "a", shape)
    again = generate_scale_data(spark, tmp_path / "b", shape)
    assert first.users == 81 and first.items == 3_000
    events = spark.read.parquet(str(tmp_path / "a" / "interactions.parquet")).toPandas()
    assert len(events) == first.interactions == again.interactions
    assert not events.duplicated(["user_id", "item_id"]).any()
    per_user = events.groupby("user_id").size()
    assert len(per_user) == 81 and per_user.min() >= 20 and per_user.max() <= 3_000 // 4
    assert 80 <= per_user.mean() <= 260  # ml-25m: 154 a user
    assert events["item_id"].between(1, 3_000).all() and events["rating"].between(0.5, 5.0).all()
    assert events["timestamp"].between(FIRST_EVENT.timestamp(), LAST_EVENT.timestamp()).all()
    # Long-tailed popularity: the top 10% of items carry several times their share of the interactions.
    counts = events["item_id"].value_counts()
    assert counts.iloc[:300].sum() > 0.3 * len(events)
    rerun = spark.read.parquet(str(tmp_path / "b" / "interactions.parquet")).toPandas()
    key = ["user_id", "item_id"]
    assert events.sort_values(key, ignore_index=True).equals(rerun.sort_values(key, ignore_index=True))
    catalog = spark.read.parquet(str(tmp_path / "a" / "catalog.parquet"))
    vectors = spark.read.parquet(str(tmp_path / "a" / "vectors.parquet")).toPandas()
    assert catalog.count() == 3_000 and len(vectors) == 3_000
    assert {len(v) for v in vectors["vector"]} == {VECTOR_DIM}


def test_growth_exponent_is_the_log_log_slope():
    assert growth_exponent([0.01, 0.1, 1.0], [2.0, 20.0, 200.0]) == pytest.approx(1.0)
    assert growth_exponent([0.01, 0.1, 1.0], [5.0, 5.0 * 10**0.5, 50.0]) == pytest.approx(0.5)
    assert growth_exponent([0.01, 1.0], [30.0, 30.0]) == pytest.approx(0.0)


def test_tree_memory_sees_the_driver_and_its_children():
    script = (
        "import subprocess, sys, time; block = bytearray(300 * 2**20); "
        "child = subprocess.Popen([sys.executable, '-c', 'b = bytearray(200 * 2**20); import time; time.sleep(2)']); "
        "time.sleep(2); child.wait()"
    )
    process = subprocess.Popen([sys.executable, "-c", script])
    with TreeMemory(process.pid, every_seconds=0.1) as memory:
        process.wait()
    peaks = memory.gib()
    assert peaks["driver_python"] >= 0.29
    assert peaks["python_workers"] >= 0.19  # a non-java child counts as a worker
    assert peaks["total"] >= 0.48 and peaks["jvm"] == 0.0


def test_scoring_kernels_equal_scipy_bit_for_bit():
    from jobs.ranking.kernels import sparse_times_dense_rows, sparse_times_sparse

    rng = np.random.default_rng(5)
    left = sp.random(30, 50, density=0.15, format="csr", dtype=np.float32, random_state=1)
    reweighted = left.copy()
    reweighted.data = rng.random(left.nnz).astype(np.float32)  # the same pattern: one shared pass
    other = sp.random(30, 50, density=0.1, format="csr", dtype=np.float32, random_state=2)  # another pattern
    right = sp.random(50, 70, density=0.2, format="csr", dtype=np.float32, random_state=3)
    products = sparse_times_sparse([left, reweighted, other], right)
    for matrix, product in zip([left, reweighted, other], products, strict=True):
        assert product.dtype == np.float32
        np.testing.assert_array_equal(product, (matrix @ right).toarray())

    rows = np.sort(rng.choice(50, 20, replace=False))  # the left columns the dense rows stand for
    dense = rng.normal(size=(20, 40)).astype(np.float32)
    for matrix, product in zip(
        [left, reweighted], sparse_times_dense_rows([left, reweighted], rows, dense), strict=True
    ):
        np.testing.assert_array_equal(product, matrix[:, rows] @ dense)
    with pytest.raises(ValueError, match="do not multiply"):
        sparse_times_sparse([left], right.T.tocsr())
