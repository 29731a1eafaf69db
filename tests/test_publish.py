"""Publish: top-K lists that pass the gate, reruns that change nothing, and a gate that stops bad lists.

Three tiers: pure numpy (the per-block top K, the serving artifact round trip), the gate on small
hand-made DataFrames (each planted fault fails exactly its check), and end to end on a small demo
lake (ingest, two imported modalities, fuse, train, publish with K = 10). The end-to-end tests share
one lake but none relies on another having run: what a test reads of the first publish (its report
files, the table version it wrote) is kept by the `published` fixture when it runs, and the earlier
date a rerun compares with is the `earlier_published` fixture's. Last, the same stages on a lake given
as a file:// URI with a separate artifacts folder, which must publish the same lists.
Expectations are recomputed with pandas from the lake's own tables, not from the job's models.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import BUILT_DEMO, ingest_with_taste_vectors

from jobs import lake
from jobs.publish import run_publish
from jobs.publish_gate import PublishGateError, check_lists
from jobs.schemas import CATALOG, INTERACTIONS, ITEM_VECTORS, RECOMMENDATIONS
from jobs.serving import user_blocks

DS = BUILT_DEMO.end_date
EARLIER = DS - dt.timedelta(days=7)
K = 10


# ---------------------------------------------------------------------------------------------------
# Pure numpy


def _tiny_ranking_inputs():
    from jobs.ranking.baselines import ItemSide
    from jobs.ranking.data import Interactions

    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(6), 4).astype(np.int32)
    items = np.concatenate([rng.choice(9, size=4, replace=False) for _ in range(6)]).astype(np.int32)
    times = (1_700_000_000 + rng.integers(0, 10**6, size=len(users))).astype(np.int64)
    train = Interactions(users, items, times, n_users=6, n_items=10)  # item 9: nobody has it (cold)
    blocks = {m: rng.normal(size=(10, 3)).astype(np.float32) for m in ("text", "image")}
    blocks["image"][4] = 0.0  # an item without a poster
    genres = sp_random_binary(rng, 10, 4)
    return train, ItemSide(blocks, genres)


def sp_random_binary(rng, rows: int, cols: int):
    import scipy.sparse as sp

    return sp.csr_matrix((rng.random((rows, cols)) > 0.5).astype(np.float32))


def test_base_models_and_item_side_round_trip_through_safetensors(tmp_path):
    import dataclasses

    import scipy.sparse as sp

    from jobs.ranking.candidates import candidates_and_features, fit_base_models
    from jobs.ranking.ranker import RankerSettings
    from jobs.ranking.serialization import load_base_models, load_item_side, save_base_models, save_item_side

    train, items = _tiny_ranking_inputs()
    settings = RankerSettings(knn_neighbours=3, candidates_per_source=4, cold_candidates=2)
    base = fit_base_models(train, items, settings, items.modalities)
    save_base_models(base, tmp_path / "base.safetensors")
    save_item_side(items, tmp_path / "items.safetensors")
    loaded, loaded_items = (
        load_base_models(tmp_path / "base.safetensors"),
        load_item_side(tmp_path / "items.safetensors"),
    )
    assert (tmp_path / "base.json").is_file() and not list(tmp_path.glob("*.pkl"))

    def same(a, b, where):
        if dataclasses.is_dataclass(a):
            assert type(a) is type(b), where
            for f in dataclasses.fields(a):
                same(getattr(a, f.name), getattr(b, f.name), f"{where}.{f.name}")
        elif isinstance(a, dict):
            assert list(a) == list(b), where  # order too: it is the modality order
            for key in a:
                same(a[key], b[key], f"{where}.{key}")
        elif sp.issparse(a):
            assert sp.issparse(b) and a.shape == b.shape and (a != b).nnz == 0, where
        elif isinstance(a, np.ndarray):
            assert a.dtype == b.dtype, where
            np.testing.assert_array_equal(a, b, err_msg=where)
        else:
            assert a == b, where

    same(base, loaded, "base")
    same(items, loaded_items, "items")
    genre_rows = items.genres.toarray()
    users, allowed = np.arange(6), np.ones(10, dtype=bool)
    before = candidates_and_features(base, items, genre_rows, items.modalities, settings, users, allowed)
    after = candidates_and_features(loaded, loaded_items, genre_rows, items.modalities, settings, users, allowed)
    np.testing.assert_array_equal(before.features, after.features)


@pytest.mark.spark
def test_user_blocks_never_straddle_two_tasks(spark):
    partitions = user_blocks(spark, 1000, 256).rdd.map(lambda row: row.user_index).glom().collect()
    assert sorted(user for part in partitions for user in part) == list(range(1000))
    blocks = [{user // 256 for user in part} for part in partitions if part]
    assert len(blocks) > 1 and sum(len(b) for b in blocks) == len(set().union(*blocks)) == 4


# ---------------------------------------------------------------------------------------------------
# The gate on hand-made lists


GOOD_LISTS = [(1, 1, 3, 0.9), (1, 2, 4, 0.5), (2, 1, 3, 0.8), (2, 2, 1, 0.8)]
FAULTS = {
    "no_duplicates": [(1, 1, 3, 0.9), (1, 2, 3, 0.5), (2, 1, 3, 0.8), (2, 2, 1, 0.8)],
    "no_seen_items": [(1, 1, 3, 0.9), (1, 2, 1, 0.5), (2, 1, 3, 0.8), (2, 2, 1, 0.8)],
    "known_items": [(1, 1, 3, 0.9), (1, 2, 99, 0.5), (2, 1, 3, 0.8), (2, 2, 1, 0.8)],
    "available_items": [(1, 1, 3, 0.9), (1, 2, 6, 0.5), (2, 1, 3, 0.8), (2, 2, 1, 0.8)],
    "finite_scores": [(1, 1, 3, float("nan")), (1, 2, 4, 0.5), (2, 1, 3, 0.8), (2, 2, 1, 0.8)],
    "rows_per_user": [(1, 1, 3, 0.9), (1, 2, 4, 0.5), (2, 1, 3, 0.8)],
    "ranks_and_order": [(1, 1, 3, 0.9), (1, 3, 4, 0.5), (2, 1, 3, 0.8), (2, 2, 1, 0.8)],
    "rising scores": [(1, 1, 3, 0.5), (1, 2, 4, 0.9), (2, 1, 3, 0.8), (2, 2, 1, 0.8)],
}


@pytest.fixture
def gate_inputs(spark):
    """Items 1–5 available on DS, item 6 from the day after; user 1 has seen item 1, user 2 item 2."""
    catalog = spark.createDataFrame(
        [(i, None if i % 2 else DS - dt.timedelta(days=i)) for i in range(1, 6)]
        + [(6, DS + dt.timedelta(days=1))],
        "item_id long, available_from date",
    )
    seen = spark.createDataFrame([(1, 1), (2, 2)], "user_id long, item_id long")
    expected = spark.createDataFrame([(1, 2), (2, 2)], "user_id long, rows long")
    return catalog, seen, expected


def lists_frame(spark, rows):
    return spark.createDataFrame(rows, "user_id long, rank int, item_id long, score double")


@pytest.mark.spark
def test_gate_passes_good_lists_and_measures_drift_by_hand(spark, gate_inputs):
    catalog, seen, expected = gate_inputs
    previous = lists_frame(spark, [(1, 1, 3, 0.0), (1, 2, 4, 0.0), (2, 1, 3, 0.0), (2, 2, 5, 0.0)])
    checks = check_lists(lists_frame(spark, GOOD_LISTS), expected, seen, catalog, DS, previous.drop("score"))
    assert [c.name for c in checks if not c.passed] == []
    by_name = {c.name: c for c in checks}
    # User 2's list went from [3, 5] to [3, 1]: 1 of 2 users changed; kept 2/2 and 1/2 of their items.
    assert by_name["changed_share"].numbers == {
        "changed_share": 0.5,
        "users_compared": 2,
        "users_changed": 1,
        "mean_items_kept": 0.75,
        "new_users": 0,
    }
    # Items 1, 3, 4 listed of the 5 available on DS (item 6 is not yet).
    assert by_name["coverage"].numbers["coverage"] == pytest.approx(3 / 5)
    without_previous = {
        c.name: c for c in check_lists(lists_frame(spark, GOOD_LISTS), expected, seen, catalog, DS)
    }
    assert without_previous["changed_share"].passed and without_previous["changed_share"].detail.startswith(
        "no earlier"
    )


@pytest.mark.spark
@pytest.mark.parametrize("fault", FAULTS, ids=list(FAULTS))
def test_each_planted_fault_fails_exactly_its_check(spark, gate_inputs, fault):
    catalog, seen, expected = gate_inputs
    checks = check_lists(lists_frame(spark, FAULTS[fault]), expected, seen, catalog, DS)
    failed = {c.name for c in checks if not c.passed}
    assert failed == {"ranks_and_order" if fault == "rising scores" else fault}
    assert all(c.detail for c in checks)


@pytest.mark.spark
def test_drift_limits_fail_only_when_set(spark, gate_inputs):
    catalog, seen, expected = gate_inputs
    previous = lists_frame(spark, [(1, 1, 5, 0.0), (1, 2, 4, 0.0), (2, 1, 3, 0.0), (2, 2, 1, 0.0)]).drop("score")
    lists = lists_frame(spark, GOOD_LISTS)
    assert all(c.passed for c in check_lists(lists, expected, seen, catalog, DS, previous))
    strict = check_lists(lists, expected, seen, catalog, DS, previous, max_changed_share=0.4, min_coverage=0.9)
    assert {c.name for c in strict if not c.passed} == {"changed_share", "coverage"}


# ---------------------------------------------------------------------------------------------------
# End to end on a demo lake


@pytest.fixture(scope="module")
def trained_lake(spark, built_lake, tmp_path_factory):
    """A copy of the suite's built lake (a `taste` and a `noise` modality), fused and trained as of DS."""
    from jobs.train import run_train

    config = built_lake.copy_to(tmp_path_factory.mktemp("publish"))
    trained = run_train(spark, config, DS)  # reuses the built lake's ranker; its report names it
    assert trained.reused and trained.version == built_lake.ranker_version
    return config, trained


@dataclass(frozen=True)
class FirstPublish:
    """The first publish of DS, and what it left that later tests overwrite (a rerun, a failed gate)."""

    config: object
    trained: object
    report: object
    card: dict  # publish.json as this publish wrote it
    markdown: str  # publish.md as this publish wrote it
    table_version: int  # the table's version right after this publish


@pytest.fixture(scope="module")
def published(spark, trained_lake) -> FirstPublish:
    config, trained = trained_lake
    report = run_publish(spark, config, DS, k=K)
    reports = config.reports_dir / DS.isoformat()
    return FirstPublish(
        config,
        trained,
        report,
        json.loads((reports / "publish.json").read_text()),
        (reports / "publish.md").read_text(),
        table_version(spark, config),
    )


@pytest.fixture(scope="module")
def earlier_published(spark, published):
    """EARLIER fused and published with the DS model (train chose none for EARLIER); DS's rows before it."""
    from jobs.fuse import run_fuse

    config = published.config
    run_fuse(spark, config, EARLIER)
    before = partition(spark, config, DS)
    report = run_publish(spark, config, EARLIER, k=K, model_version=published.trained.version)
    return report, before


def partition(spark, config, ds: dt.date) -> pd.DataFrame:
    rows = lake.read_table(spark, config, RECOMMENDATIONS).where(f"ds = '{ds.isoformat()}'").toPandas()
    rows["modalities"] = rows["modalities"].map(list)
    return rows.sort_values(["user_id", "rank"], ignore_index=True)


def table_version(spark, config) -> int:
    from delta.tables import DeltaTable

    return DeltaTable.forPath(spark, config.table_path(RECOMMENDATIONS.name)).history(1).first()["version"]


def expected_lists(spark, config, ds: dt.date) -> tuple[dict[int, set[int]], set[int], set[int]]:
    """From the lake alone: each eligible user's seen items, the items available on `ds`, and the cold ones."""
    end = pd.Timestamp(ds + dt.timedelta(days=1))
    events = lake.read_table(spark, config, INTERACTIONS).toPandas()
    events = events[events.event_time < end]
    catalog = lake.read_table(spark, config, CATALOG).toPandas()
    available = set(catalog[catalog.available_from.isna() | (catalog.available_from <= ds)].item_id)
    seen = events.groupby("user_id")["item_id"].apply(set).to_dict()
    return seen, available, available - set(events.item_id)


@pytest.mark.spark
def test_every_eligible_user_gets_k_unseen_available_items_in_rank_order(spark, published):
    config, trained, report = published.config, published.trained, published.report
    rows = partition(spark, config, DS)
    seen, available, _ = expected_lists(spark, config, DS)
    assert set(rows.user_id) == set(seen) and report.users == len(seen)
    for user, items in seen.items():
        mine = rows[rows.user_id == user]
        assert len(mine) == min(K, len(available - items)), user
        assert mine["rank"].tolist() == list(range(1, len(mine) + 1))
        assert len(set(mine.item_id)) == len(mine)
        assert not set(mine.item_id) & items  # nothing the user has already seen
        assert set(mine.item_id) <= available  # only catalog items available on DS
        assert (np.diff(mine.score.to_numpy()) <= 0).all()
    assert np.isfinite(rows.score).all()
    assert len(rows) == report.rows and report.published and report.passed
    assert set(rows.model_version) == {trained.version} and set(rows.ds) == {DS}
    assert set(rows.generated_at) == {pd.Timestamp(DS + dt.timedelta(days=1))}  # the run date's end, UTC
    # DS's own item vectors: once another test fused EARLIER, the table holds a row per item for each date.
    vectors = lake.read_table(spark, config, ITEM_VECTORS).where(f"fused_ds = '{DS.isoformat()}'")
    vectors = vectors.toPandas().set_index("item_id")["modalities"]
    assert all(
        modalities == list(vectors[item]) for item, modalities in zip(rows.item_id, rows.modalities, strict=True)
    )
    assert {"noise", "taste"} in [set(m) for m in rows.modalities]
    # The report: every check passed, in json and md; the serving artifact is gone.
    card = published.card
    assert card["published"] and {c["name"] for c in card["checks"]} >= {
        "rows_per_user",
        "no_duplicates",
        "coverage",
    }
    assert all(c["passed"] for c in card["checks"]) and card["table_version"] == published.table_version
    assert {"load data", "fit base models", "score", "gate", "write"} <= set(card["timings"])
    assert "| no_seen_items | yes |" in published.markdown
    assert not (Path(config.lake) / "_models" / "serving" / DS.isoformat()).exists()


@pytest.mark.spark
def test_cold_items_reach_some_lists(spark, published):
    config, report = published.config, published.report
    _, _, cold = expected_lists(spark, config, DS)
    listed = set(partition(spark, config, DS).item_id)
    assert cold, "the demo should have available items nobody interacted with yet"
    assert listed & cold
    assert report.cold_items_listed == len(listed & cold)


@pytest.mark.spark
def test_an_earlier_date_adds_its_own_partition_and_leaves_the_other_alone(spark, published, earlier_published):
    config = published.config
    report, before = earlier_published
    # Nothing chose a model for EARLIER: publish refuses the newest one unless it is named.
    with pytest.raises(FileNotFoundError, match=f"no ranker chosen for {EARLIER}"):
        run_publish(spark, config, EARLIER, k=K)
    assert partition(spark, config, DS).equals(before)
    earlier = partition(spark, config, EARLIER)
    seen, available, _ = expected_lists(spark, config, EARLIER)
    assert set(earlier.user_id) == set(seen) and len(earlier) == report.rows
    assert set(earlier.item_id) <= available and report.previous_ds is None
    assert any("after this run date" in note for note in report.notes)  # served by the DS model


@pytest.mark.spark
def test_rerunning_a_date_writes_the_same_rows_in_one_commit(spark, published, earlier_published):
    config = published.config
    before, version = partition(spark, config, DS), table_version(spark, config)
    report = run_publish(spark, config, DS, k=K)
    assert table_version(spark, config) == version + 1
    pd.testing.assert_frame_equal(partition(spark, config, DS), before)
    # Compared with the earlier date now in the table: drift is measured, and it does not fail the gate.
    assert report.previous_ds == EARLIER.isoformat()
    assert report.drift["changed_share"]["users_compared"] > 0


@pytest.mark.spark
def test_a_failed_gate_publishes_nothing_and_says_why(spark, published, monkeypatch):
    import jobs.publish

    config = published.config
    before, version = partition(spark, config, DS), table_version(spark, config)
    scored = jobs.publish.score_lists

    def with_a_duplicate(spark, plan, n_users):
        lists = scored(spark, plan, n_users)
        return lists.unionByName(lists.orderBy("user_id", "rank").limit(1))

    monkeypatch.setattr(jobs.publish, "score_lists", with_a_duplicate)
    with pytest.raises(PublishGateError, match="no_duplicates"):
        run_publish(spark, config, DS, k=K)
    assert table_version(spark, config) == version
    pd.testing.assert_frame_equal(partition(spark, config, DS), before)
    card = json.loads((config.reports_dir / DS.isoformat() / "publish.json").read_text())
    assert not card["published"] and not card["passed"] and card["table_version"] is None
    failed = {c["name"] for c in card["checks"] if not c["passed"]}
    assert "no_duplicates" in failed and "finite_scores" not in failed
    assert "Nothing published" in (config.reports_dir / DS.isoformat() / "publish.md").read_text()


def test_without_a_trained_ranker_the_job_says_to_train_first(lake_config):
    with pytest.raises(FileNotFoundError, match="run train first"):
        run_publish(None, lake_config, DS)


# ---------------------------------------------------------------------------------------------------
# A lake given as a URI, with its models and reports in a folder of their own


@pytest.mark.spark
def test_a_uri_lake_with_its_own_artifacts_folder_publishes_the_same_lists(spark, published, built_lake, capsys):
    """The shape of an s3a:// or hdfs:// deployment on one machine: the tables at a file:// URI (every
    Spark, Hadoop and delta-rs access goes through the URI, none through a local path), models and
    reports in a separate folder. Same data and date as the plain local lake above: same lists."""
    from jobs import cli
    from jobs.config import load_config
    from jobs.consume import read_date
    from jobs.fuse import run_fuse
    from jobs.run_report import write_run_report
    from jobs.schemas import QUARANTINE
    from jobs.train import run_train

    local_config, local_trained = published.config, published.trained
    root = Path(local_config.lake).parent / "uri"
    lake_folder, artifacts = root / "lake", root / "artifacts"
    config = load_config(lake=lake_folder.as_uri(), artifacts=str(artifacts), shuffle_partitions=2)
    assert config.lake.startswith("file:///")
    ingest_with_taste_vectors(spark, config, built_lake.demo, BUILT_DEMO.clusters, DS)
    run_fuse(spark, config, DS)
    trained = run_train(spark, config, DS)
    report = run_publish(spark, config, DS, k=K)
    run = write_run_report(config, DS)  # delta-rs reads the quarantine table at the URI

    # Tables in the lake; models and reports in the artifacts folder, and none of them in the lake.
    for table in ("catalog", "interactions", "quarantine", "features_taste", "item_vectors", "recommendations"):
        assert (lake_folder / table / "_delta_log").is_dir(), table
    assert not [path for path in lake_folder.rglob("_*") if path.name in {"_models", "_reports"}]
    assert (artifacts / "_models" / "fusion" / "current.json").is_file()
    assert Path(trained.artifact) == artifacts / "_models" / "ranker" / trained.version
    assert (Path(trained.artifact) / "ranker.safetensors").is_file()
    assert (artifacts / "_models" / "ranker" / "by_ds" / f"{DS.isoformat()}.json").is_file()
    assert not (artifacts / "_models" / "serving" / DS.isoformat()).exists()  # publish cleaned up
    for name in ("ingest", "fuse", "train", "publish", "run"):
        assert (artifacts / "_reports" / DS.isoformat() / f"{name}.json").is_file(), name

    # The same model and lists as the local lake's, read back through Spark and through delta-rs.
    assert trained.version == local_trained.version and report.published
    lists = partition(spark, config, DS)
    pd.testing.assert_frame_equal(lists, partition(spark, local_config, DS))
    from_delta_rs = read_date(config.table_path("recommendations"), DS, columns=["user_id", "rank", "item_id"])
    pd.testing.assert_frame_equal(from_delta_rs, lists[["user_id", "rank", "item_id"]], check_dtype=False)
    quarantined = lake.read_table(spark, config, QUARANTINE).where(f"ds = '{DS.isoformat()}'").count()
    assert run.quarantine_note == "" and sum(row["rows"] for row in run.quarantine) == quarantined

    # `modalrank tables` lists the URI lake's feature tables and counts rows with delta-rs.
    capsys.readouterr()
    assert cli.main(["tables", "--lake", config.lake, "--artifacts", config.artifacts]) == 0
    printed = capsys.readouterr().out
    assert f"lake {config.lake}" in printed and "features_taste" in printed and "features_noise" in printed
    assert f"{len(lists):>9,} rows" in printed
