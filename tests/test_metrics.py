"""Ranking metrics and the top-k cut, on lists small enough to score by hand, plus one random
cross-check against a plain-Python implementation written from the definitions."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import scipy.sparse as sp

from jobs.ranking.metrics import (
    PADDING,
    MetricValue,
    average_precision_at_k,
    catalog_coverage,
    evaluate_lists,
    lists_from_top_k,
    ndcg_at_k,
    precision_at_k,
    recall_at_k,
    top_k_from_scores,
    top_k_from_scores_padded,
)

ALL_FOUR = (ndcg_at_k, precision_at_k, recall_at_k, average_precision_at_k)


def scores_of(ranked, truth, k) -> tuple[float, float, float, float]:
    return tuple(metric(ranked, truth, k) for metric in ALL_FOUR)


class TestPerUserMetrics:
    def test_two_hits_in_four(self):
        # Hits at positions 2 and 4; three held-out items, so the ideal list has 3 hits at the top.
        dcg = 1 / math.log2(3) + 1 / math.log2(5)
        idcg = 1 + 1 / math.log2(3) + 1 / math.log2(4)
        assert scores_of([1, 2, 3, 4], {2, 4, 9}, 4) == pytest.approx(
            (dcg / idcg, 2 / 4, 2 / 3, (1 / 2 + 2 / 4) / 3)
        )

    def test_only_the_first_k_positions_count(self):
        # k = 2: one hit, at position 2. The ideal list has min(3, 2) = 2 hits.
        idcg = 1 + 1 / math.log2(3)
        assert scores_of([1, 2, 3, 4], {2, 4, 9}, 2) == pytest.approx(
            ((1 / math.log2(3)) / idcg, 1 / 2, 1 / 3, (1 / 2) / 2)
        )

    def test_no_hits_score_zero(self):
        assert scores_of([5, 6, 7], {1, 2}, 3) == (0.0, 0.0, 0.0, 0.0)

    def test_all_hits_score_one(self):
        assert scores_of([3, 1, 2], {1, 2, 3}, 3) == pytest.approx((1.0, 1.0, 1.0, 1.0))

    def test_a_list_shorter_than_k_is_not_rewarded_for_being_short(self):
        # One item, a hit, k = 5: precision divides by k; IDCG has min(2, 5) = 2 hits; AP = (1/1) / 2.
        assert scores_of([7], {7, 8}, 5) == pytest.approx((1 / (1 + 1 / math.log2(3)), 1 / 5, 1 / 2, 1 / 2))

    def test_k_larger_than_truth_is_normalised_by_the_truth(self):
        # One held-out item found at position 2: DCG = 1/log2(3), IDCG = 1 (one item at the top);
        # AP = precision@2 / min(1, 4) = 1/2.
        assert scores_of([4, 1, 5, 6], {1}, 4) == pytest.approx((1 / math.log2(3), 1 / 4, 1.0, 1 / 2))

    def test_an_empty_list_scores_zero(self):
        assert scores_of([], {1}, 3) == (0.0, 0.0, 0.0, 0.0)

    def test_an_empty_truth_scores_zero(self):
        assert scores_of([1, 2], set(), 2) == (0.0, 0.0, 0.0, 0.0)

    def test_truth_may_be_any_iterable(self):
        assert recall_at_k([1, 2], [2, 3, 3], 2) == pytest.approx(1 / 2)

    @pytest.mark.parametrize("metric", ALL_FOUR)
    def test_a_list_repeating_an_item_is_refused(self, metric):
        with pytest.raises(ValueError, match="must not repeat"):
            metric([1, 2, 1], {1}, 3)

    def test_positions_past_k_are_neither_read_nor_checked(self):
        assert precision_at_k([1, 2, 1], {1}, 2) == pytest.approx(1 / 2)

    @pytest.mark.parametrize("k", [0, -1, 2.0, True])
    def test_k_must_be_a_positive_integer(self, k):
        with pytest.raises(ValueError, match="k must be a positive integer"):
            ndcg_at_k([1], {1}, k)


class TestCatalogCoverage:
    def test_distinct_items_over_candidates(self):
        lists = {"a": [1, 2, 3], "b": [3, 4]}
        # {1, 2, 3, 4} of 10; cut at 1: {1, 3}.
        assert catalog_coverage(lists, 10) == pytest.approx(4 / 10)
        assert catalog_coverage(lists, 10, k=1) == pytest.approx(2 / 10)
        assert catalog_coverage(list(lists.values()), 4) == pytest.approx(1.0)

    def test_more_items_than_candidates_is_an_error(self):
        with pytest.raises(ValueError, match="only 2 candidates"):
            catalog_coverage([[1, 2, 3]], 2)


class TestEvaluateLists:
    TRUTH = {"u1": {1, 2}, "u2": {3}, "u3": set()}
    # u3 has nothing held out and u4 no truth at all: neither is evaluated.
    LISTS = {"u1": [1, 5], "u2": [4, 3], "u3": [9], "u4": [8]}

    def test_means_over_users_with_held_out_items(self):
        values = evaluate_lists(self.LISTS, self.TRUTH, ks=(1, 2), n_candidate_items=10)
        # k = 1: u1 [1] is a hit (AP = 1/min(2, 1) = 1), u2 [4] is not; coverage {1, 4} of 10.
        # k = 2: u1 hits at 1 (IDCG = 1 + 1/log2(3), AP = (1/1)/2), u2 at 2 (IDCG = 1, AP = (1/2)/1);
        #        coverage {1, 5, 4, 3} of 10.
        ndcg_at_2 = (1 / (1 + 1 / math.log2(3)) + 1 / math.log2(3)) / 2
        expected = [
            MetricValue("ndcg", 1, 0.5, 2),
            MetricValue("precision", 1, 0.5, 2),
            MetricValue("recall", 1, (1 / 2 + 0) / 2, 2),
            MetricValue("map", 1, 0.5, 2),
            MetricValue("coverage", 1, 0.2, 2),
            MetricValue("ndcg", 2, ndcg_at_2, 2),
            MetricValue("precision", 2, 0.5, 2),
            MetricValue("recall", 2, (1 / 2 + 1) / 2, 2),
            MetricValue("map", 2, 0.5, 2),
            MetricValue("coverage", 2, 0.4, 2),
        ]
        assert [(v.metric, v.k, v.users) for v in values] == [(v.metric, v.k, v.users) for v in expected]
        assert [v.value for v in values] == pytest.approx([v.value for v in expected])

    def test_an_evaluated_user_without_a_list_scores_zero(self):
        values = evaluate_lists({"u1": [1]}, {"u1": {1}, "u2": {2}}, ks=(1,), n_candidate_items=5)
        assert {v.metric: v.value for v in values}["precision"] == pytest.approx(1 / 2)

    def test_nobody_to_evaluate_is_an_error(self):
        with pytest.raises(ValueError, match="no user has a held-out item"):
            evaluate_lists({"u1": [1]}, {"u1": set()}, n_candidate_items=5)

    def test_a_repeated_item_is_refused(self):
        with pytest.raises(ValueError, match="must not repeat"):
            evaluate_lists({"u1": [1, 1]}, {"u1": {1}}, ks=(2,), n_candidate_items=5)


def brute_force(ranked: list[int], truth: set[int], k: int) -> dict[str, float]:
    """The definitions, one position at a time."""
    top = ranked[:k]
    hits = [item in truth for item in top]
    dcg = sum(1 / math.log2(position + 1) for position, hit in enumerate(hits, start=1) if hit)
    idcg = sum(1 / math.log2(position + 1) for position in range(1, min(len(truth), k) + 1))
    precisions_at_hits = [sum(hits[:position]) / position for position, hit in enumerate(hits, start=1) if hit]
    return {
        "ndcg": dcg / idcg,
        "precision": sum(hits) / k,
        "recall": sum(hits) / len(truth),
        "map": sum(precisions_at_hits) / min(len(truth), k),
    }


def test_agrees_with_a_brute_force_implementation_on_random_lists():
    rng = random.Random(7)
    n_items, ks = 30, (1, 5, 10)
    truth = {user: set(rng.sample(range(n_items), rng.randint(0, 6))) for user in range(60)}
    lists = {user: rng.sample(range(n_items), rng.randint(0, 12)) for user in range(60)}
    evaluated = [user for user in truth if truth[user]]
    assert 0 < len(evaluated) < 60  # the draw covers users with and without held-out items

    values = {(v.metric, v.k): v for v in evaluate_lists(lists, truth, ks=ks, n_candidate_items=n_items)}
    for k in ks:
        per_user = [brute_force(lists[user], truth[user], k) for user in evaluated]
        for metric in ("ndcg", "precision", "recall", "map"):
            assert values[metric, k].value == pytest.approx(np.mean([row[metric] for row in per_user]))
            assert values[metric, k].users == len(evaluated)
        recommended = set().union(*(lists[user][:k] for user in evaluated))
        assert values["coverage", k].value == pytest.approx(len(recommended) / n_items)
        for user in evaluated:
            assert scores_of(lists[user], truth[user], k) == pytest.approx(
                tuple(brute_force(lists[user], truth[user], k).values())
            )


class TestTopKFromScores:
    def test_excluded_items_never_rank_and_ties_go_to_the_lower_index(self):
        scores = np.array([[0.1, 0.9, 0.5, 0.9, 0.2], [1.0, 1.0, 1.0, 1.0, 1.0]], dtype=np.float32)
        seen = sp.csr_matrix(([1.0, 1.0], ([0, 1], [3, 0])), shape=(2, 5))
        # Row 0: item 3 (0.9) is excluded, so 1 (0.9), 2 (0.5), 4 (0.2). Row 1: all tied, 0 excluded.
        assert top_k_from_scores(scores, seen, 3).tolist() == [[1, 2, 4], [1, 2, 3]]

    def test_a_tie_straddling_the_cut_keeps_the_lower_indices(self):
        scores = np.array([[0.5, 0.7, 0.7, 0.7, 0.1]])
        assert top_k_from_scores(scores, None, 2).tolist() == [[1, 2]]

    def test_a_one_dimensional_mask_excludes_for_every_user(self):
        scores = np.array([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0]])
        candidates = np.array([False, True, True])
        assert top_k_from_scores(scores, ~candidates, 1).tolist() == [[1], [2]]

    def test_explicit_zeros_in_a_sparse_exclusion_do_not_exclude(self):
        scores = np.array([[3.0, 2.0]])
        exclude = sp.csr_matrix((np.array([0.0, 1.0]), np.array([0, 1]), np.array([0, 2])), shape=(1, 2))
        assert top_k_from_scores(scores, exclude, 1).tolist() == [[0]]

    def test_the_callers_scores_are_not_changed(self):
        scores = np.array([[1.0, 2.0]])
        top_k_from_scores(scores, np.array([[False, True]]), 1)
        assert scores.tolist() == [[1.0, 2.0]]

    def test_agrees_with_a_full_sort_on_tie_heavy_scores(self):
        rng = np.random.default_rng(11)
        # Four score levels over 50 items: every cut falls inside a tie.
        scores = rng.integers(0, 4, size=(40, 50)).astype(np.float32)
        exclude = rng.random((40, 50)) < 0.3
        expected = [
            sorted((i for i in range(50) if not exclude[u, i]), key=lambda i, u=u: (-scores[u, i], i))[:10]
            for u in range(40)
        ]
        assert top_k_from_scores(scores, sp.csr_matrix(exclude), 10).tolist() == expected

    def test_too_few_eligible_items_is_an_error_without_padding(self):
        with pytest.raises(ValueError, match="fewer than k=2 eligible"):
            top_k_from_scores(np.array([[1.0, 2.0]]), np.array([[True, False]]), 2)

    def test_rows_with_too_few_eligible_items_are_padded(self):
        scores = np.array([[4.0, 3.0, 2.0, 1.0], [4.0, 3.0, 2.0, 1.0]])
        exclude = np.array([[True, True, True, False], [False, False, False, False]])
        assert top_k_from_scores_padded(scores, exclude, 3).tolist() == [[3, PADDING, PADDING], [0, 1, 2]]
        # k beyond the catalog pads too.
        assert top_k_from_scores_padded(scores[1:], None, 6).tolist() == [[0, 1, 2, 3, PADDING, PADDING]]

    @pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
    def test_non_finite_scores_are_refused(self, bad):
        with pytest.raises(ValueError, match="finite"):
            top_k_from_scores(np.array([[1.0, bad]]), None, 1)

    def test_an_exclusion_of_the_wrong_shape_is_refused(self):
        with pytest.raises(ValueError, match="does not broadcast"):
            top_k_from_scores(np.zeros((2, 3)), np.zeros((2, 2), dtype=bool), 1)


def test_lists_from_top_k_maps_indices_to_ids_and_drops_padding():
    top = np.array([[3, PADDING], [0, 1]])
    assert lists_from_top_k(top, np.array([10, 20]), np.array([100, 101, 102, 103])) == {
        10: [103],
        20: [100, 101],
    }
