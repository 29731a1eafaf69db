"""The ranker's feature columns against their names: each named column of `candidates_and_features` must
hold what its name says, computed here independently from the base models and the raw pairs. A column
declared under the wrong name, or moved, fails here (a saved ranker reads its columns by position)."""

from __future__ import annotations

import numpy as np
from test_ranking import planted

from jobs.ranking.baselines import ItemSide, normalised_rows
from jobs.ranking.candidates import candidates_and_features, fit_base_models
from jobs.ranking.features import DAY, feature_names
from jobs.ranking.ranker import RankerSettings

SETTINGS = RankerSettings(candidates_per_source=12, cold_candidates=6, window_days=2.0, sequence_window=3)


def relative(scores: np.ndarray) -> np.ndarray:
    return scores / np.maximum(scores.max(axis=1, keepdims=True), 1e-6)


def expected_columns(base, items: ItemSide, users: np.ndarray, pair_users: np.ndarray, item: np.ndarray):
    """{feature name: its value for each (pair_users, item)}, from the definitions, not from the table."""
    row = np.searchsorted(users, pair_users)  # `users` is sorted
    train = base.train
    seen, recent = base.seen[users], base.recent[users]
    per_user = {
        "ease": base.ease.score(users),
        "knn": base.knn.score(users),
        "ease_recent": base.ease.score_vectors(recent)[0],
        "seq": (seen @ base.neighbours).toarray(),
        "user_knn": base.user_knn.score(users),
        "seq_recent": (recent @ base.neighbours).toarray(),
    }
    columns = {}
    for name, scores in per_user.items():
        columns[name] = scores[row, item]
        columns[f"{name}_rel"] = relative(scores)[row, item]
    counts = np.bincount(train.items, minlength=train.n_items)
    last_event = np.array([train.times[train.users == u].max() for u in pair_users])
    window = SETTINGS.window_days * DAY
    columns["pop"] = np.log1p(counts[item])
    columns["pop_window"] = np.log1p(
        [
            ((train.items == i) & (np.abs(train.times - t) <= window)).sum()
            for i, t in zip(item, last_event, strict=True)
        ]
    )
    first_event = np.array([train.times[train.items == i].min() if counts[i] else 0 for i in item])
    age_days = (last_event - first_event) / DAY
    columns["item_age"] = np.where(counts[item] == 0, 0.0, np.sign(age_days) * np.log1p(np.abs(age_days)))
    columns["user_activity"] = np.log1p(np.bincount(train.users, minlength=train.n_users)[pair_users])
    genres = normalised_rows(items.genres.toarray().astype(np.float32))
    columns["genre_sim"] = (base.genre_profiles[pair_users] * genres[item]).sum(axis=1)
    columns["cold"] = (counts[item] == 0).astype(np.float32)
    columns["content_sum"] = 0.0
    for modality, block in items.blocks.items():
        columns[f"sim_{modality}"] = (base.profiles[modality][pair_users] * block[item]).sum(axis=1)
        columns[f"has_{modality}"] = (np.abs(block[item]).sum(axis=1) > 0).astype(np.float32)
        columns["content_sum"] = columns["content_sum"] + columns[f"sim_{modality}"]
    return columns


def test_every_feature_column_holds_what_its_name_says():
    data, items = planted(seed=4, n_users=50, n_items=90)
    noise = items.blocks["noise"].copy()
    noise[::3] = 0.0  # a third of the items lack the "noise" modality: has_noise must vary
    items = ItemSide({"content": items.blocks["content"], "noise": noise}, items.genres)
    train = data.subset(data.items % 7 != 0)  # every seventh item is cold: no training pair
    base = fit_base_models(train, items, SETTINGS, items.modalities)
    users = np.arange(0, data.n_users, 2)
    allowed = np.random.default_rng(0).random(data.n_items) > 0.1
    genre_rows = normalised_rows(items.genres.toarray().astype(np.float32))
    found = candidates_and_features(base, items, genre_rows, items.modalities, SETTINGS, users, allowed)

    names = feature_names(items.modalities)
    expected = expected_columns(base, items, users, found.users, found.items)
    assert sorted(names) == sorted(expected) and len(set(names)) == len(names)
    assert found.features.shape == (len(found.items), len(names)) and found.features.dtype == np.float32
    assert found.features[:, names.index("cold")].any() and not found.features[:, names.index("has_noise")].all()
    for position, name in enumerate(names):
        np.testing.assert_allclose(found.features[:, position], expected[name], rtol=1e-5, atol=1e-6, err_msg=name)
