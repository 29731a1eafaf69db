"""Fuse, train and evaluate on a small demo lake: artifacts, tables and numbers anyone can recompute.

The lake is a copy of the suite's built lake (conftest's `built_lake`: fused and trained once per run). It
has two imported modalities instead of extracted ones (extraction has its own tests):
`taste`, a noisy vector of each item's hidden cluster from the generator's truth, and `noise`, random
vectors. The ranker has to find the first useful and the second useless.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import BUILT_DEMO

from jobs import lake
from jobs.asof import training_date
from jobs.evaluate import run_evaluate
from jobs.fuse import run_fuse
from jobs.ranking import metrics as ranking_metrics
from jobs.schemas import EVAL_LISTS, EVAL_TRUTH, INTERACTIONS, ITEM_VECTORS, METRICS
from jobs.train import run_train

pytestmark = pytest.mark.spark

DS = BUILT_DEMO.end_date


@pytest.fixture(scope="module")
def evaluated(spark, built_lake, tmp_path_factory):
    config = built_lake.copy_to(tmp_path_factory.mktemp("evaluate"))
    # Train again on the same date: it reuses the built lake's ranker, and its report carries the data facts.
    trained = run_train(spark, config, DS)
    assert trained.reused and trained.version == built_lake.ranker_version
    report = run_evaluate(spark, config, DS, "demo")
    return config, built_lake.fusion_version, trained, report


def test_item_vectors_cover_every_item_with_both_blocks(spark, evaluated):
    config, fusion_version, _, _ = evaluated
    vectors = lake.read_table(spark, config, ITEM_VECTORS).where(f"fused_ds = '{DS}'").toPandas()
    assert len(vectors) == BUILT_DEMO.items
    assert list(vectors["layout"].iloc[0]) == ["noise", "taste"]
    assert fusion_version == vectors["fusion_version"].iloc[0]


def test_train_saves_a_versioned_artifact_and_points_at_it(evaluated):
    config, fusion_version, trained, _ = evaluated
    models = Path(config.lake) / "_models" / "ranker"
    assert json.loads((models / "current.json").read_text())["version"] == trained.version
    card = json.loads((models / trained.version / "ranker.json").read_text())
    assert card["fusion_version"] == fusion_version
    assert card["trained_ds"] == DS.isoformat()
    assert card["settings"]["inner_holdout"] == "chrono"
    assert card["all_modalities"] == ["noise", "taste"]
    assert (models / trained.version / "ranker.safetensors").stat().st_size > 1000
    assert (config.reports_dir / DS.isoformat() / "train.md").is_file()


def test_training_on_an_earlier_date_sees_only_the_past(spark, evaluated):
    config, _, trained, _ = evaluated
    earlier = DS - dt.timedelta(days=7)
    with pytest.raises(ValueError, match=f"item_vectors has no rows for {earlier}"):
        run_train(spark, config, earlier)  # never the vectors of a later date
    run_fuse(spark, config, earlier)
    past = run_train(spark, config, earlier)
    assert past.version != trained.version
    assert past.training_pairs < trained.training_pairs
    assert trained.training_pairs == trained.facts["interactions (unique user-item pairs)"]  # the page's label
    assert past.facts["events up to"] == f"{earlier + dt.timedelta(days=1)} 00:00:00"
    again = run_train(spark, config, DS)  # the same date again: the same version
    assert again.version == trained.version


def test_evaluation_covers_every_model_on_three_protocols(spark, evaluated):
    config, _, _, report = evaluated
    metrics = lake.read_table(spark, config, METRICS).toPandas()
    assert set(metrics.protocol) == {"random_75_25", "chrono_80_20", "item_cold_20"}
    warm = set(metrics[metrics.protocol == "random_75_25"].model)
    assert warm == {"ranker", "ease", "als", "item_knn", "popularity", "content"}
    cold = set(metrics[metrics.protocol == "item_cold_20"].model)
    ablation = {f"ranker-{kind}-{m}" for kind in ("only", "without") for m in ("noise", "taste")}
    assert cold == {"ranker", "random", "genre", "content"} | ablation
    assert set(metrics.metric) == {"ndcg", "precision", "recall", "map", "coverage"}
    assert set(metrics.k) == {10, 20}
    assert metrics.value.between(0, 1).all()
    html = (config.reports_dir / DS.isoformat() / "evaluate_demo.html").read_text()
    assert "item_cold_20" in html and "data:image/png;base64," in html
    assert {target["protocol"] for target in report.targets} >= {"random_75_25", "item_cold_20"}


def test_planted_tastes_are_found_warm_and_cold(spark, evaluated):
    config, _, _, _ = evaluated
    metrics = (
        lake.read_table(spark, config, METRICS).toPandas().set_index(["protocol", "model", "metric", "k"])["value"]
    )
    assert metrics["random_75_25", "ranker", "ndcg", 10] > 1.5 * metrics["random_75_25", "popularity", "ndcg", 10]
    # 16 cold items: every list of 20 holds them all, so the cold comparison is on nDCG@10. (The demo's
    # genres follow its clusters too, so every variant has a strong signal; test_ranking.py checks that
    # the ranker tells an informative modality from noise where genres do not give the answer away.)
    cold = metrics.xs(("item_cold_20", "ndcg", 10), level=("protocol", "metric", "k"))
    assert cold["ranker"] > 1.2 * cold["random"]
    assert cold["content"] > cold["random"]


def test_every_metric_recomputes_from_eval_lists_and_eval_truth(spark, evaluated):
    config, _, _, _ = evaluated
    metrics = lake.read_table(spark, config, METRICS).toPandas()
    lists = lake.read_table(spark, config, EVAL_LISTS).toPandas()
    truth = lake.read_table(spark, config, EVAL_TRUTH).toPandas()
    for protocol, model in (("random_75_25", "ranker"), ("chrono_80_20", "ease"), ("item_cold_20", "genre")):
        held = truth[truth.protocol == protocol].groupby("user_id")["item_id"].apply(set)
        chosen = lists[(lists.protocol == protocol) & (lists.model == model)].sort_values(["user_id", "rank"])
        ranked = chosen.groupby("user_id")["item_id"].apply(list)
        assert set(ranked.index) == set(held.index)
        for metric, function in (("ndcg", ranking_metrics.ndcg_at_k), ("recall", ranking_metrics.recall_at_k)):
            expected = np.mean([function(ranked[user], held[user], 10) for user in held.index])
            stored = metrics[
                (metrics.protocol == protocol)
                & (metrics.model == model)
                & (metrics.metric == metric)
                & (metrics.k == 10)
            ].value
            assert stored.iloc[0] == pytest.approx(expected), (protocol, model, metric)
        # Lists never hold a user's training items: every listed item is outside the user's training set.
        assert chosen.groupby("user_id")["item_id"].apply(lambda items: len(set(items)) == len(items)).all()


def test_rerunning_the_evaluation_gives_the_same_rows(spark, evaluated):
    config, _, _, _ = evaluated
    keys = ["protocol", "model", "metric", "k"]
    before = lake.read_table(spark, config, METRICS).toPandas().sort_values(keys, ignore_index=True)
    counts = {spec.name: lake.read_table(spark, config, spec).count() for spec in (EVAL_TRUTH, EVAL_LISTS)}
    run_evaluate(spark, config, DS, "demo")
    after = lake.read_table(spark, config, METRICS).toPandas().sort_values(keys, ignore_index=True)
    assert after[keys].equals(before[keys])
    np.testing.assert_allclose(after["value"], before["value"], atol=1e-6)
    assert counts == {spec.name: lake.read_table(spark, config, spec).count() for spec in (EVAL_TRUTH, EVAL_LISTS)}


def test_a_date_between_trainings_checks_its_served_model_on_what_came_after_the_training(
    spark, built_lake, tmp_path
):
    config = built_lake.copy_to(tmp_path)
    sunday = training_date(DS, 7)
    assert sunday < DS
    run_fuse(spark, config, DS, every_days=7)  # the date's vectors and the training date's
    served = run_train(spark, config, DS, every_days=7)
    assert served.trained_ds == sunday.isoformat()

    report = run_evaluate(spark, config, DS, "demo", every_days=7)
    assert report.kind == "served-model check"
    metrics = lake.read_table(spark, config, METRICS).toPandas()
    assert set(metrics.protocol) == {"since_training"} and set(metrics.model) == {"ranker", "popularity"}
    assert any(served.version in note for note in report.notes)

    # Held out: every pair whose latest event came after the training date, of a user known before it.
    events = lake.read_table(spark, config, INTERACTIONS).toPandas()
    latest = events.groupby(["user_id", "item_id"]).event_time.max().reset_index()
    after = latest.event_time >= pd.Timestamp(sunday + dt.timedelta(days=1))
    known_users = set(latest[~after].user_id)
    expected = {
        (u, i) for u, i in zip(latest[after].user_id, latest[after].item_id, strict=True) if u in known_users
    }
    truth = lake.read_table(spark, config, EVAL_TRUTH).toPandas()
    assert expected and set(zip(truth.user_id, truth.item_id, strict=True)) == expected

    # The numbers recompute from the stored lists, and the served model ranks the new pairs above chance.
    lists = lake.read_table(spark, config, EVAL_LISTS).toPandas().sort_values(["user_id", "rank"])
    held = truth.groupby("user_id")["item_id"].apply(set)
    for model in ("ranker", "popularity"):
        ranked = lists[lists.model == model].groupby("user_id")["item_id"].apply(list)
        recall = np.mean(
            [ranking_metrics.recall_at_k(ranked.get(user, []), held[user], 10) for user in held.index]
        )
        stored = metrics[(metrics.model == model) & (metrics.metric == "recall") & (metrics.k == 10)].value
        assert stored.iloc[0] == pytest.approx(recall), model
    markdown = (config.reports_dir / DS.isoformat() / "evaluate_demo.md").read_text()
    assert "served-model check" in markdown and "since_training" in markdown
