"""Fusion: the pure projections of features/fusion.py on numbers checked by hand, and the Spark job
that writes `item_vectors` (one row per catalog item, reused artifact on reruns, same fit on refit)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest

from features.fusion import Fusion, Projection, fit_projection, fuse_blocks
from jobs.config import load_config
from jobs.fusion_artifacts import fit_set_digest, fusion_version, models_dir

# ---------------------------------------------------------------------------------------------------
# Pure: features/fusion.py


def test_standardisation_centres_and_scales_each_dimension_and_leaves_constant_ones_unscaled():
    vectors = np.array([[1.0, 10.0], [3.0, 10.0], [5.0, 10.0]])
    projection = fit_projection(vectors, out_dim=2)
    assert projection.mean == pytest.approx([3.0, 10.0])
    assert projection.scale == pytest.approx([np.sqrt(8 / 3), 1.0])  # population std; constant -> 1
    # Only the first dimension varies: one component, along it.
    assert projection.k == 1
    assert projection.components[:, 0] == pytest.approx([1.0, 0.0])
    # Rows below, at and above the mean: -1, a zero row (no direction), +1.
    assert projection.apply(vectors)[:, 0] == pytest.approx([-1.0, 0.0, 1.0])


def test_standardising_first_lets_a_small_scale_dimension_count_as_much_as_a_large_one():
    # Both dimensions carry the same signal, one at 100 times the scale of the other.
    vectors = np.array([[0.0, 0.0], [1.0, 100.0], [2.0, 200.0], [3.0, 300.0]])
    projection = fit_projection(vectors, out_dim=2)
    assert projection.k == 1  # rank 1 after standardising
    assert projection.components[:, 0] == pytest.approx([1 / np.sqrt(2), 1 / np.sqrt(2)])
    assert projection.explained_variance == pytest.approx(1.0)
    assert projection.apply(vectors)[:, 0] == pytest.approx([-1.0, -1.0, 1.0, 1.0])


def test_k_is_bounded_by_out_dim_dim_rows_minus_one_and_rank():
    rng = np.random.default_rng(0)
    assert fit_projection(rng.normal(size=(3, 10)), out_dim=64).k == 2  # n - 1
    assert fit_projection(rng.normal(size=(50, 4)), out_dim=64).k == 4  # dim
    assert fit_projection(rng.normal(size=(50, 10)), out_dim=3).k == 3  # out_dim
    low_rank = rng.normal(size=(50, 2)) @ rng.normal(size=(2, 6))
    assert fit_projection(low_rank, out_dim=64).k == 2  # rank
    assert fit_projection(np.ones((5, 3)), out_dim=4).k == 0  # nothing varies
    assert fit_projection(np.ones((1, 3)), out_dim=4).k == 0


def test_components_are_orthonormal_with_a_fixed_sign_and_output_rows_are_unit_float32():
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(60, 6)) * np.array([0.01, 1.0, 100.0, 5.0, 0.5, 2000.0])
    projection = fit_projection(vectors, out_dim=3)
    components = projection.components
    assert components.T @ components == pytest.approx(np.eye(3), abs=1e-12)
    assert np.all(components[np.argmax(np.abs(components), axis=0), np.arange(3)] > 0)
    # Negating or reordering the data flips no sign: the same projection every time.
    assert fit_projection(-vectors, out_dim=3).components == pytest.approx(components, abs=1e-12)
    assert fit_projection(vectors[::-1], out_dim=3).components == pytest.approx(components, abs=1e-12)
    out = projection.apply(rng.normal(size=(7, 6)) * 50)
    assert out.dtype == np.float32 and out.shape == (7, 3)
    assert np.linalg.norm(out, axis=1) == pytest.approx(np.ones(7), abs=1e-6)
    assert projection.apply(projection.mean[None, :]).tolist() == [[0.0, 0.0, 0.0]]


@pytest.mark.parametrize("shape", [(60, 6), (5, 8)], ids=["tall", "wide"])
def test_components_match_an_svd_of_the_standardised_matrix(shape):
    rng = np.random.default_rng(4)
    vectors = rng.normal(size=shape) * rng.uniform(0.01, 100, size=shape[1])
    projection = fit_projection(vectors, out_dim=3)
    standardised = (vectors - vectors.mean(axis=0)) / vectors.std(axis=0)
    singular, vt = np.linalg.svd(standardised, full_matrices=False)[1:]
    expected = vt[:3].T * np.sign(vt[:3].T[np.argmax(np.abs(vt[:3].T), axis=0), np.arange(3)])
    assert projection.components == pytest.approx(expected, abs=1e-9)
    assert projection.explained_variance == pytest.approx(np.sum(singular[:3] ** 2) / np.sum(singular**2))


def test_fit_and_apply_reject_what_they_cannot_use():
    with pytest.raises(ValueError, match="non-empty"):
        fit_projection(np.zeros((0, 3)), out_dim=2)
    with pytest.raises(ValueError, match="finite"):
        fit_projection(np.array([[1.0, np.nan], [2.0, 3.0]]), out_dim=2)
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        fit_projection(np.array([[1.0, 0.0], [2.0, 3.0]]), out_dim=2).apply(np.zeros((1, 3)))


def test_fuse_blocks_zeroes_a_missing_modality_and_masks_it_false():
    text = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    image = np.array([[7.0], [8.0], [9.0]])
    vectors, mask = fuse_blocks([text, image], [np.array([True, False, True]), np.array([False, True, True])])
    assert vectors.dtype == np.float32
    assert vectors.tolist() == [[1.0, 2.0, 0.0], [0.0, 0.0, 8.0], [5.0, 6.0, 9.0]]
    assert mask.tolist() == [[True, False], [False, True], [True, True]]


def test_fusion_concatenates_unit_blocks_in_layout_order():
    rng = np.random.default_rng(2)
    audio = fit_projection(rng.normal(size=(20, 5)), out_dim=2)
    text = fit_projection(rng.normal(size=(20, 4)), out_dim=3)
    fusion = Fusion(("audio", "text"), {"text": text, "audio": audio})
    assert fusion.block_dims == [2, 3]
    a, t = rng.normal(size=5), rng.normal(size=4)
    vectors, mask = fusion.fuse({"audio": [a, None, None], "text": [t, t, None]})
    assert mask.tolist() == [[True, True], [False, True], [False, False]]
    assert vectors[0].tolist() == [*audio.apply(a[None])[0], *text.apply(t[None])[0]]
    assert vectors[1, :2].tolist() == [0.0, 0.0] and np.linalg.norm(vectors[1, 2:]) == pytest.approx(1.0)
    assert vectors[2].tolist() == [0.0] * 5
    with pytest.raises(ValueError, match="does not match"):
        Fusion(("audio",), {"text": text})


def test_projections_round_trip_through_safetensors(tmp_path):
    rng = np.random.default_rng(3)
    fusion = Fusion(
        ("image", "text"),
        {
            "image": fit_projection(rng.normal(size=(30, 7)) * 100, out_dim=4),
            "text": fit_projection(rng.normal(size=(30, 5)), out_dim=2),
        },
    )
    fusion.save(tmp_path / "projections.safetensors")
    loaded = Fusion.load(["image", "text"], tmp_path / "projections.safetensors")
    for modality in fusion.layout:
        before, after = fusion.projections[modality], loaded.projections[modality]
        for name, array in before.to_arrays().items():
            assert np.array_equal(array, after.to_arrays()[name]), (modality, name)
    assert loaded.block_dims == [4, 2]
    assert Projection.from_arrays(fusion.projections["text"].to_arrays()).k == 2
    raw = {"image": list(rng.normal(size=(3, 7))), "text": [None, *rng.normal(size=(2, 5))]}
    assert np.array_equal(fusion.fuse(raw)[0], loaded.fuse(raw)[0])


# ---------------------------------------------------------------------------------------------------
# Pure: the job's artifact identity


def test_fusion_version_is_stable_and_changes_with_what_decides_the_fusion():
    key = {"method": "m", "block_dim": 64, "inputs": {"text": {"extractor": "e", "extractor_version": "1"}}}
    fit_set = fit_set_digest(np.array([1, 2]), ["a", "b"])
    version = fusion_version(key, ["text"], [64], {"text": fit_set})
    assert len(version) == 12 and version == fusion_version(key, ["text"], [64], {"text": fit_set})
    assert version != fusion_version(key, ["text"], [32], {"text": fit_set})
    assert version != fusion_version(key, ["text"], [64], {"text": fit_set_digest(np.array([1, 2]), ["a", "c"])})


def test_model_artifacts_live_in_the_artifacts_folder_whatever_the_lake(monkeypatch):
    # Every case calls fuse's models_dir: a URI lake (an object store cannot hold them: plain file writes,
    # atomic renames) and a local lake given a folder of its own both use that folder, a local lake alone
    # holds them itself. (The config refuses a URI lake without a folder: tests/test_config.py.)
    monkeypatch.delenv("MODALRANK_ARTIFACTS", raising=False)
    uri_lake = load_config(lake="s3a://bucket/lake", artifacts="/mnt/shared/modalrank")
    assert models_dir(uri_lake) == Path("/mnt/shared/modalrank/_models/fusion")
    local_lake_with_folder = load_config(lake="/data/lake", artifacts="/mnt/shared/modalrank")
    assert models_dir(local_lake_with_folder) == Path("/mnt/shared/modalrank/_models/fusion")
    assert models_dir(load_config(lake="/data/lake")) == Path("/data/lake/_models/fusion")


# ---------------------------------------------------------------------------------------------------
# Spark: the job

DS = dt.date(2026, 11, 25)
NOW = dt.datetime(2026, 11, 25, 3, 0, tzinfo=dt.UTC)
# Text: items 1-5 ok, 6 failed. Image: wildly different scales per dim, one constant dim; items 1, 2, 3
# and 5 ok, 4 and 6 without a poster. Item 7 is in the catalog only (extracted before it arrived).
TEXT = {
    1: [1.0, 0.0, 0.0, 0.0],
    2: [0.9, 0.1, 0.0, 0.0],
    3: [0.0, 1.0, 0.0, 0.0],
    4: [0.0, 0.2, 0.9, 0.1],
    5: [0.1, 0.0, 0.2, 0.9],
}
IMAGE = {1: [100.0, 0.01, 5.0], 2: [120.0, 0.02, 5.0], 3: [90.0, 0.05, 5.0], 5: [140.0, 0.03, 5.0]}
CATALOG_IDS = [1, 2, 3, 4, 5, 6, 7]


def _write_features(spark, config, modality: str, ok: dict[int, list[float]], other: dict[int, tuple[str, str]]):
    from jobs import lake
    from jobs.schemas import FEATURES_SCHEMA, features_table

    rows = [
        (i, f"{modality}-{i}", f"{modality}-model", "1", len(v), v, "ok", None, DS, NOW) for i, v in ok.items()
    ] + [
        (i, None, f"{modality}-model", "1", None, None, status, error, DS, NOW)
        for i, (status, error) in other.items()
    ]
    lake.ensure_table(spark, config, features_table(modality))
    spark.createDataFrame(rows, FEATURES_SCHEMA).write.format("delta").mode("append").save(
        config.table_path(f"features_{modality}")
    )


def _write_catalog(spark, config, item_ids: list[int]):
    from jobs import lake
    from jobs.schemas import CATALOG

    rows = [
        (
            i,
            f"Item {i}",
            None,
            None,
            ["Drama"],
            [],
            None,
            None,
            None,
            None,
            None,
            f"text-{i}",
            f"image-{i}",
            None,
            None,
            None,
            "generic",
            DS,
            DS,
            NOW,
            NOW,
        )
        for i in item_ids
    ]
    lake.ensure_table(spark, config, CATALOG)
    spark.createDataFrame(rows, CATALOG.schema).write.format("delta").mode("append").save(
        config.table_path("catalog")
    )


def _item_vectors(spark, config) -> dict[int, dict]:
    from jobs import lake
    from jobs.schemas import ITEM_VECTORS

    table = lake.read_table(spark, config, ITEM_VECTORS)
    return {row["item_id"]: row.asDict() for row in table.collect()}


def _without_fused_at(rows: dict[int, dict]) -> dict[int, dict]:
    return {item_id: {k: v for k, v in row.items() if k != "fused_at"} for item_id, row in rows.items()}


@pytest.mark.spark
def test_fuse_writes_one_row_per_catalog_item_and_reuses_its_fit(spark, lake_config):
    from jobs.fuse import run_fuse

    _write_catalog(spark, lake_config, CATALOG_IDS)
    _write_features(spark, lake_config, "text", TEXT, {6: ("failed", "empty text")})
    _write_features(spark, lake_config, "image", IMAGE, {4: ("missing", None), 6: ("missing", None)})

    report = run_fuse(spark, lake_config, DS, block_dim=2)
    rows = _item_vectors(spark, lake_config)
    assert sorted(rows) == CATALOG_IDS
    assert report.projections == "fitted"
    assert (report.layout, report.block_dims) == (["image", "text"], [2, 2])
    assert report.fit_items == {"image": 4, "text": 5}
    assert (report.catalog_items, report.items) == (7, 7)
    assert report.items_by_modality == {"image": 4, "text": 5}
    assert report.items_by_modality_count == {"0": 2, "1": 1, "2": 4}

    # The blocks are the pure projections fitted on the same ok vectors (sorted by item id).
    image = fit_projection(np.array([IMAGE[i] for i in sorted(IMAGE)]), 2)
    text = fit_projection(np.array([TEXT[i] for i in sorted(TEXT)]), 2)
    for item_id, row in rows.items():
        assert (row["layout"], row["block_dims"]) == (["image", "text"], [2, 2])
        assert row["fusion_version"] == report.fusion_version and row["fused_ds"] == DS
        assert row["mask"] == [item_id in IMAGE, item_id in TEXT]
        assert row["modalities"] == [m for m, has in zip(["image", "text"], row["mask"], strict=True) if has]
        vector = np.array(row["vector"])
        expected_image = image.apply(np.array([IMAGE[item_id]]))[0] if item_id in IMAGE else np.zeros(2)
        expected_text = text.apply(np.array([TEXT[item_id]]))[0] if item_id in TEXT else np.zeros(2)
        assert vector == pytest.approx(np.concatenate([expected_image, expected_text]), abs=1e-6)
        assert np.linalg.norm(vector[:2]) == pytest.approx(1.0 if item_id in IMAGE else 0.0, abs=1e-6)
        assert np.linalg.norm(vector[2:]) == pytest.approx(1.0 if item_id in TEXT else 0.0, abs=1e-6)
    assert rows[6]["vector"] == [0.0] * 4 and rows[7]["modalities"] == []

    artifact = models_dir(lake_config) / report.fusion_version
    meta = json.loads((artifact / "fusion.json").read_text())
    assert (meta["layout"], meta["block_dims"], meta["fitted_ds"]) == (["image", "text"], [2, 2], "2026-11-25")
    assert meta["modalities"]["text"]["extractor"] == "text-model"
    assert (artifact / "projections.safetensors").is_file()
    pointer = json.loads((models_dir(lake_config) / "current.json").read_text())
    assert pointer == {"fusion_version": report.fusion_version}
    written = json.loads((lake_config.reports_dir / "2026-11-25" / "fuse.json").read_text())
    assert written["fusion_version"] == report.fusion_version
    assert (lake_config.reports_dir / "2026-11-25" / "fuse.md").is_file()

    # A nightly rerun with nothing changed reuses the artifact and writes the same rows.
    again = run_fuse(spark, lake_config, DS, block_dim=2)
    assert (again.projections, again.fusion_version) == ("reused", report.fusion_version)
    assert _without_fused_at(_item_vectors(spark, lake_config)) == _without_fused_at(rows)

    # A refit on unchanged data fits the same projections.
    refit = run_fuse(spark, lake_config, DS, refit=True, block_dim=2)
    assert (refit.projections, refit.fusion_version) == ("refit", report.fusion_version)
    refit_rows = _item_vectors(spark, lake_config)
    for item_id, row in rows.items():
        assert refit_rows[item_id]["vector"] == pytest.approx(row["vector"], abs=1e-6)

    # Another selection of modalities does not match the current fit: a new one, on a hashed sample.
    text_only = run_fuse(spark, lake_config, DS, block_dim=2, max_fit_items=3, modalities=["text"])
    assert text_only.projections == "fitted" and text_only.fusion_version != report.fusion_version
    assert (text_only.layout, text_only.fit_items) == (["text"], {"text": 3})
    rows = _item_vectors(spark, lake_config)
    assert sorted(rows) == CATALOG_IDS
    assert {row["fusion_version"] for row in rows.values()} == {text_only.fusion_version}
    assert [item_id for item_id, row in sorted(rows.items()) if row["mask"] == [True]] == sorted(TEXT)
    with pytest.raises(ValueError, match="no feature table for audio"):
        run_fuse(spark, lake_config, DS, modalities=["audio"])
