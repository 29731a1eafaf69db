"""Hostile media and killed runs, end to end through Spark: one ingest + extraction of a poster folder
holding every kind of bad file next to good ones, and a `kill -9` in the middle of an extraction
followed by a rerun that must leave the same feature table as an uninterrupted run."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import REPO_ROOT, SHORT_LIVED_JVM, SMALL_DEMO
from test_media_safety import one_second_wav

from jobs import lake
from jobs.decode_sandbox import DECODE_FAULTS
from jobs.extract import run_extract
from jobs.ingest import IngestRequest, run_ingest
from jobs.schemas import QUARANTINE, features_table

pytestmark = pytest.mark.spark

DS = SMALL_DEMO.end_date


def poster(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    image = np.zeros((60, 40, 3), np.uint8)
    image[:] = rng.integers(0, 255, 3)
    cv2.circle(image, (20, 30), 12, tuple(int(c) for c in rng.integers(0, 255, 3)), -1)
    ok, data = cv2.imencode(".jpg", image)
    return data.tobytes()


def encoded(extension: str, height: int, width: int) -> bytes:
    ok, data = cv2.imencode(extension, np.full((height, width, 3), 90, np.uint8))
    assert ok
    return data.tobytes()


def feature_rows(spark, config, modality: str = "image") -> dict[int, dict]:
    table = lake.read_table(spark, config, features_table(modality))
    return {row["item_id"]: row.asDict() for row in table.collect()}


def write_catalog(folder: Path, item_ids, extra_rows: tuple[str, ...] = ()) -> Path:
    rows = [f"{i},Item {i},,Drama,," for i in item_ids] + list(extra_rows)
    (folder / "catalog.csv").write_text(
        "item_id,title,overview,genres,tags,poster_path\n" + "\n".join(rows) + "\n"
    )
    (folder / "events.csv").write_text("user_id,item_id,rating,event_time\n1,1,4,2026-11-20T00:00:00Z\n")
    return folder / "catalog.csv"


def test_hostile_posters_fail_one_by_one_while_good_ones_extract(spark, lake_config, tmp_path):
    root = tmp_path / "media"
    posters = root / "posters"
    (posters / "originals").mkdir(parents=True)
    good = {1: poster(1), 2: poster(2), 8: poster(8), 9: poster(9), 10: poster(10), 11: poster(11)}
    for item_id, data in good.items():
        (posters / f"{item_id}.jpg").write_bytes(data)
    (posters / "3.jpg").write_bytes(encoded(".png", 30, 20))  # a PNG called .jpg: typed by content, fine
    (posters / "4.jpg").write_bytes(one_second_wav())  # not an image at all
    (posters / "5.jpg").write_bytes(encoded(".tiff", 30, 20))  # an image OpenCV reads, but no header check
    (posters / "6.jpg").write_bytes(encoded(".png", 101, 100))  # 10,100 pixels, over the 10,000 limit
    (posters / "7.jpg").write_bytes(poster(7) + b"\x00" * 60_000)  # over the 50,000-byte cap: never hashed
    (posters / "originals" / "abc.jpg").write_bytes(poster(13))
    (posters / "13.jpg").symlink_to(posters / "originals" / "abc.jpg")  # inside: item 13, not "abc"
    (tmp_path / "secret.jpg").write_bytes(poster(12))
    (posters / "12.jpg").symlink_to(tmp_path / "secret.jpg")  # escapes the folder
    os.mkfifo(posters / "14.jpg")  # would block an open() for reading
    (posters / "16.jpg").symlink_to(posters / "16.jpg")  # a symlink loop: an OSError on every open
    catalog = write_catalog(root, range(1, 18), ("17b,broken,,Drama,,",))
    # Item 15's catalog path holds a NUL byte (the posters folder has no 15.jpg).
    catalog.write_text(catalog.read_text().replace("15,Item 15,,Drama,,", "15,Item 15,,Drama,,posters/15\x00.jpg"))

    config = dataclasses.replace(
        lake_config, max_media_bytes=50_000, max_image_pixels=10_000, decode_timeout_s=5, max_decode_attempts=2
    )
    run_ingest(
        spark,
        config,
        IngestRequest(ds=DS, catalog=catalog, interactions=root / "events.csv", posters=posters, media_root=root),
    )
    # Between ingest and extract, files change under the pipeline's feet: 8 becomes a FIFO, 9 a symlink
    # loop (unreadable); 10 and 11 stay good but their decoder crashes (SIGSEGV) or hangs (SIGSTOP).
    (posters / "8.jpg").unlink()
    os.mkfifo(posters / "8.jpg")
    (posters / "9.jpg").unlink()
    (posters / "9.jpg").symlink_to(posters / "9.jpg")
    environment = spark.sparkContext.environment  # what Spark hands the Python workers it starts
    environment[DECODE_FAULTS] = "10.jpg=SIGSEGV,11.jpg=SIGSTOP"
    try:
        report = run_extract(spark, config, "image", DS)
        rows = feature_rows(spark, config)
        # The next run retries only the transient failures (unreadable, timed out); the files are back,
        # but 11's decode outlives its limit again: its second attempt, of max_decode_attempts=2, is final.
        (posters / "8.jpg").unlink()
        (posters / "8.jpg").write_bytes(good[8])
        (posters / "9.jpg").unlink()
        (posters / "9.jpg").write_bytes(good[9])
        again = run_extract(spark, config, "image", DS)
    finally:
        del environment[DECODE_FAULTS]

    assert {item_id: (row["status"], row["error"]) for item_id, row in rows.items()} == {
        1: ("ok", None),
        2: ("ok", None),
        3: ("ok", None),
        4: ("failed", "undecodable image"),
        5: ("failed", "unsupported image format"),
        6: ("failed", "image too large"),
        7: ("missing", None),
        8: ("failed", "not a regular file"),
        9: ("failed", "unreadable file"),
        10: ("failed", "decoder crashed (signal 11)"),
        11: ("failed", "decode timed out"),
        12: ("missing", None),
        13: ("ok", None),
        14: ("missing", None),
        16: ("missing", None),
        17: ("missing", None),
    }
    assert rows[1]["dim"] == 1411 and all(np.isfinite(rows[1]["vector"]))
    assert (report.ok, report.failed, report.missing) == (4, 7, 5)
    quarantine = lake.read_table(spark, config, QUARANTINE).collect()
    by_stage = {(row["stage"], row["item_id"]): row["reason"] for row in quarantine}
    assert {key: reason for key, reason in by_stage.items() if key[0] == "ingest"} == {
        ("ingest", 7): "poster file too large",
        ("ingest", 12): "poster symlink escapes media folder",
        ("ingest", 14): "poster not a regular file",
        ("ingest", 15): "media path contains a NUL byte",
        ("ingest", 16): "poster unreadable file",
        ("ingest", None): "unparseable item id",
    }
    # Read after the second run, which replaced the date's extraction rows: 9 is no longer among them.
    assert {item_id for stage, item_id in by_stage if stage == "extract_image"} == set(range(4, 12)) - {7, 9}

    assert (again.extracted, again.ok, again.failed) == (2, 1, 1)
    after = feature_rows(spark, config)
    assert after[9]["status"] == "ok"
    assert (after[11]["status"], after[11]["error"]) == ("failed", "decode timed out, given up at attempt 2")
    assert after[8]["error"] == "not a regular file"  # permanent for this content: not retried
    assert after[10]["error"] == "decoder crashed (signal 11)"
    assert {item_id: row["vector"] for item_id, row in after.items() if item_id != 9} == {
        item_id: row["vector"] for item_id, row in rows.items() if item_id != 9
    }  # every good item of the first run kept as it was
    # A third night: nothing is stale, so the clip that timed out twice costs no decode at all.
    third = run_extract(spark, config, "image", DS)
    assert (third.up_to_date, third.extracted) == (16, 0)


def test_chunks_commit_by_time_as_well_as_by_count():
    from jobs.extract import next_chunk_size

    # Before a rate is known: one model batch per task slot (32 posters x 2 slots), within the count.
    assert next_chunk_size(1000, 300, 64, done=0, elapsed=0.0) == 64
    assert next_chunk_size(3, 300, 64, done=0, elapsed=0.0) == 3
    # Fast items: the count bounds the chunk. Slow ones (videos at 0.1 item/s): 300 s of them, 30 items.
    assert next_chunk_size(1000, 300, 64, done=64, elapsed=16.0) == 1000
    assert next_chunk_size(1000, 300, 16, done=16, elapsed=160.0) == 30
    # An item slower than the whole commit interval still makes progress, one item a commit.
    assert next_chunk_size(1000, 300, 16, done=1, elapsed=900.0) == 1


def test_kill_9_during_extraction_then_rerun_equals_an_uninterrupted_run(spark, tmp_path):
    from jobs.config import load_config

    root = tmp_path / "media"
    (root / "posters").mkdir(parents=True)
    for item_id in range(1, 11):
        (root / "posters" / f"{item_id}.jpg").write_bytes(poster(100 + item_id))
    catalog = write_catalog(root, range(1, 12))  # item 11 has no poster
    request = IngestRequest(ds=DS, catalog=catalog, interactions=root / "events.csv", posters=root / "posters")
    killed = load_config(lake=str(tmp_path / "killed"), shuffle_partitions=2, extract_chunk_items=3)
    clean = dataclasses.replace(killed, lake=str(tmp_path / "clean"))
    run_ingest(spark, killed, request)
    shutil.copytree(killed.lake, clean.lake)  # the same ingested tables (Delta logs hold relative paths)

    # A separate driver process, SIGKILLed right after its second chunk (of 4) is committed.
    environment = dict(
        os.environ,
        MODALRANK_CRASH_AT="extract.chunk_committed:2",
        MODALRANK_EXTRACT_CHUNK_ITEMS="3",
        **SHORT_LIVED_JVM,
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "jobs.extract",
            "--modality",
            "image",
            "--ds",
            DS.isoformat(),
            "--lake",
            killed.lake,
        ],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == -9, result.stderr[-3000:]
    kept = feature_rows(spark, killed)
    assert sorted(row["status"] for row in kept.values()) == ["missing"] + ["ok"] * 6

    resumed = run_extract(spark, killed, "image", DS)
    assert (resumed.up_to_date, resumed.extracted, resumed.ok) == (7, 4, 4)
    run_extract(spark, clean, "image", DS)

    def comparable(config) -> dict[int, tuple]:
        return {
            item_id: (row["content_hash"], row["status"], row["error"], row["extracted_ds"], row["dim"])
            for item_id, row in feature_rows(spark, config).items()
        }

    assert comparable(killed) == comparable(clean)
    killed_rows, clean_rows = feature_rows(spark, killed), feature_rows(spark, clean)
    for item_id in range(1, 11):
        # Bit for bit: every model batch is full and a poster's batch is fixed by its item id (jobs.extract).
        assert killed_rows[item_id]["vector"] == clean_rows[item_id]["vector"]
