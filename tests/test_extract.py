"""Feature extraction as Spark jobs over Delta tables: one row per item per modality, incremental
reruns, bad media turned into failed rows and quarantine, and imported vector files."""

from __future__ import annotations

import csv
import datetime as dt
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import SMALL_DEMO

from features.registry import extractor_class
from infra.tools.demo_data import generate_demo_data
from jobs import lake
from jobs.extract import run_extract
from jobs.import_vectors import run_import
from jobs.ingest import IngestRequest, run_ingest
from jobs.schemas import QUARANTINE, features_table

pytestmark = pytest.mark.spark

DS = SMALL_DEMO.end_date
MODALITIES = ("text", "image", "audio", "video")
MEDIA_COLUMN = {"image": "poster_path", "audio": "audio_path", "video": "video_path"}


def features(spark, config, modality: str) -> dict[int, dict]:
    """Each item's newest row (an item whose content changed keeps a row per content version)."""
    table = lake.read_table(spark, config, features_table(modality)).orderBy("extracted_ds", "item_id")
    return {row["item_id"]: row.asDict() for row in table.collect()}


def read_catalog_csv(folder: Path) -> list[dict[str, str]]:
    with (folder / "catalog.csv").open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def demo_lake(spark, tmp_path_factory):
    """A small demo catalog, ingested once, with all four modalities extracted once."""
    from jobs.config import load_config

    root = tmp_path_factory.mktemp("extract")
    demo = root / "demo"
    generate_demo_data(demo, SMALL_DEMO)
    config = load_config(lake=str(root / "lake"), shuffle_partitions=2)
    run_ingest(
        spark, config, IngestRequest(ds=DS, catalog=demo / "catalog.csv", interactions=demo / "interactions.csv")
    )
    reports = {modality: run_extract(spark, config, modality, DS) for modality in MODALITIES}
    return demo, config, reports


@pytest.mark.parametrize("modality", MODALITIES)
def test_one_row_per_item_per_modality(spark, demo_lake, modality):
    demo, config, reports = demo_lake
    catalog = {int(row["item_id"]): row for row in read_catalog_csv(demo)}
    rows = features(spark, config, modality)
    assert set(rows) == set(catalog)
    extractor = extractor_class(modality)
    for item_id, row in rows.items():
        has_media = modality == "text" or bool(catalog[item_id][MEDIA_COLUMN.get(modality, "title")])
        assert row["status"] == ("ok" if has_media else "missing"), (item_id, row["error"])
        assert (row["extractor"], row["extractor_version"]) == (extractor.name, extractor.version)
        if has_media:
            assert row["dim"] == extractor.dim == len(row["vector"])
            assert np.all(np.isfinite(row["vector"]))
        else:
            assert row["vector"] is None and row["content_hash"] is None
    report = reports[modality]
    assert report.inferences == report.ok == sum(row["status"] == "ok" for row in rows.values())
    assert report.missing == SMALL_DEMO.items - report.ok
    assert (config.reports_dir / DS.isoformat() / f"extract_{modality}.md").is_file()


def test_text_vectors_are_unit_and_separate_the_hidden_clusters(spark, demo_lake):
    demo, config, _ = demo_lake
    with (demo / "truth" / "items.csv").open() as handle:
        cluster = {int(row["item_id"]): int(row["cluster"]) for row in csv.DictReader(handle)}
    rows = features(spark, config, "text")
    ids = sorted(rows)
    vectors = np.array([rows[i]["vector"] for i in ids])
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    similarity = vectors @ vectors.T
    same = np.equal.outer([cluster[i] for i in ids], [cluster[i] for i in ids])
    off_diagonal = ~np.eye(len(ids), dtype=bool)
    assert similarity[same & off_diagonal].mean() > similarity[~same].mean() + 0.1


def test_a_rerun_with_nothing_changed_runs_no_model(spark, demo_lake):
    _, config, _ = demo_lake
    before = {modality: features(spark, config, modality) for modality in MODALITIES}
    for modality in MODALITIES:
        report = run_extract(spark, config, modality, DS)
        assert (report.inferences, report.extracted, report.up_to_date) == (0, 0, SMALL_DEMO.items)
        assert features(spark, config, modality) == before[modality]


def test_a_changed_overview_re_extracts_only_that_items_text(spark, demo_lake, tmp_path):
    demo, config, _ = demo_lake
    catalog = read_catalog_csv(demo)
    catalog[7]["overview"] = "A lighthouse keeper befriends a storm."
    edited = demo / "catalog.csv"  # in place: media paths stay the same
    with edited.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(catalog[0]))
        writer.writeheader()
        writer.writerows(catalog)
    next_day = DS + dt.timedelta(days=1)
    before = features(spark, config, "text")
    run_ingest(spark, config, IngestRequest(ds=next_day, catalog=edited, interactions=demo / "interactions.csv"))

    text = run_extract(spark, config, "text", next_day)
    image = run_extract(spark, config, "image", next_day)
    assert (text.inferences, text.extracted, image.inferences) == (1, 1, 0)
    after = features(spark, config, "text")
    changed = [item_id for item_id in after if after[item_id]["vector"] != before[item_id]["vector"]]
    assert changed == [int(catalog[7]["item_id"])]
    assert after[int(catalog[7]["item_id"])]["extracted_ds"] == next_day


def test_force_recomputes_every_item(spark, demo_lake):
    _, config, _ = demo_lake
    report = run_extract(spark, config, "text", DS, force=True)
    assert (report.inferences, report.up_to_date) == (SMALL_DEMO.items, 0)


def test_bad_media_gives_failed_rows_and_quarantine(spark, lake_config, tmp_path):
    media = tmp_path / "media"
    (media / "posters").mkdir(parents=True)
    import cv2

    ok, jpeg = cv2.imencode(".jpg", np.full((64, 48, 3), (40, 90, 200), np.uint8))
    assert ok
    (media / "posters" / "1.jpg").write_bytes(jpeg.tobytes())
    (media / "posters" / "2.jpg").write_bytes(b"")
    (media / "posters" / "3.jpg").write_bytes(jpeg.tobytes()[: len(jpeg) // 2])
    (media / "posters" / "4.jpg").write_bytes(Path(__file__).read_bytes())  # not an image at all
    (media / "posters" / "5.jpg").write_bytes(jpeg.tobytes())
    rows = [f"{i},Item {i},,Drama,,posters/{i}.jpg" for i in range(1, 6)] + ["6,No Poster,,Drama,,"]
    (media / "catalog.csv").write_text("item_id,title,overview,genres,tags,poster_path\n" + "\n".join(rows) + "\n")
    (tmp_path / "events.csv").write_text("user_id,item_id,rating,event_time\n1,1,4,2026-11-20T00:00:00Z\n")
    run_ingest(
        spark,
        lake_config,
        IngestRequest(ds=DS, catalog=media / "catalog.csv", interactions=tmp_path / "events.csv"),
    )
    (media / "posters" / "5.jpg").unlink()  # gone between ingestion and extraction

    report = run_extract(spark, lake_config, "image", DS)
    rows = features(spark, lake_config, "image")
    assert {item_id: (row["status"], row["error"]) for item_id, row in rows.items()} == {
        1: ("ok", None),
        2: ("failed", "empty file"),
        3: ("failed", "undecodable image"),
        4: ("failed", "undecodable image"),
        5: ("failed", "file not found"),
        6: ("missing", None),
    }
    assert (report.ok, report.failed, report.missing) == (1, 4, 1)
    quarantine = lake.read_table(spark, lake_config, QUARANTINE).where("stage = 'extract_image'").collect()
    assert Counter(row["reason"] for row in quarantine) == Counter(
        {"empty file": 1, "undecodable image": 2, "file not found": 1}
    )
    assert {row["item_id"] for row in quarantine} == {2, 3, 4, 5}


def test_imported_vectors_become_a_modality(spark, lake_config, tmp_path):
    demo = tmp_path / "demo"
    generate_demo_data(demo, SMALL_DEMO)
    run_ingest(
        spark,
        lake_config,
        IngestRequest(ds=DS, catalog=demo / "catalog.csv", interactions=demo / "interactions.csv"),
    )
    vectors = tmp_path / "vectors.csv"
    vectors.write_text(
        "itemId,title,genres,embedding\n"
        '1,A,Drama,"0.5,1.5,-2.0"\n'
        '2,B,Drama,"1,2,3"\n'
        '2,B again,Drama,"9,9,9"\n'
        '3,C,Drama,"1,NaN,3"\n'
        '4,D,Drama,"1,2"\n'
        '5,E,Drama,"1,x,3"\n'
        '999,Z,Drama,"1,2,3"\n'
        'abc,Q,Drama,"1,2,3"\n'
    )
    report = run_import(spark, lake_config, "demo_vectors", vectors, DS)
    rows = features(spark, lake_config, "demo_vectors")
    assert len(rows) == SMALL_DEMO.items
    assert rows[1]["vector"] == [0.5, 1.5, -2.0] and rows[1]["dim"] == 3 and rows[1]["status"] == "ok"
    assert rows[2]["vector"] == [1.0, 2.0, 3.0]  # the first of a duplicated id wins
    assert {item_id for item_id, row in rows.items() if row["status"] == "ok"} == {1, 2}
    assert rows[1]["extractor"] == "imported:vectors.csv"
    assert report.failed_by_reason == {
        "duplicate item id": 1,
        "non-finite vector": 1,
        "vector length differs from the file's (3)": 1,
        "unparseable vector": 1,
        "unknown item id": 1,
        "unparseable item id": 1,
    }
    again = run_import(spark, lake_config, "demo_vectors", vectors, DS)
    assert (again.ok, again.missing, again.up_to_date) == (0, 0, SMALL_DEMO.items)
    assert features(spark, lake_config, "demo_vectors") == rows


def test_imported_names_cannot_shadow_built_in_modalities(spark, lake_config, tmp_path):
    with pytest.raises(ValueError, match="not a built-in one"):
        run_import(spark, lake_config, "image", tmp_path / "v.csv", DS)
