"""The demo data keeps its file contract, is deterministic, and carries real, recoverable signal."""

from __future__ import annotations

import csv
import dataclasses
import datetime
import itertools
import re
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import pytest
import soundfile

from infra.tools.demo_data import DemoDataConfig, DemoDataSummary, generate_demo_data
from infra.tools.demo_media import SAMPLE_RATE, VIDEO_SIZE
from infra.tools.demo_styles import CLUSTER_STYLES

SMALL = DemoDataConfig(items=40, users=25, clusters=4, interactions_per_user=12, seed=11)
FAULT_ROWS = 4


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def item_clusters(out_dir: Path) -> dict[int, int]:
    return {int(row["item_id"]): int(row["cluster"]) for row in read_csv(out_dir / "truth" / "items.csv")}


def good_interactions(out_dir: Path, summary: DemoDataSummary) -> list[dict[str, str]]:
    rows = read_csv(out_dir / "interactions.csv")
    return rows[: summary.interactions]


def decode_video(path: Path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames


def media_files(out_dir: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(out_dir)): path.read_bytes()
        for folder in ("posters", "audio", "video")
        for path in sorted((out_dir / folder).iterdir())
    }


def cluster_index_with_motion(motion: str, clusters: int) -> int:
    return next(i for i, style in enumerate(CLUSTER_STYLES[:clusters]) if style.motion == motion)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DemoDataSummary]:
    out_dir = tmp_path_factory.mktemp("demo")
    return out_dir, generate_demo_data(out_dir, SMALL)


def test_counts_and_media_files_match_the_catalog(demo: tuple[Path, DemoDataSummary]) -> None:
    out_dir, summary = demo
    catalog = read_csv(out_dir / "catalog.csv")
    interactions = read_csv(out_dir / "interactions.csv")

    assert [int(row["item_id"]) for row in catalog] == list(range(1, SMALL.items + 1))
    assert summary.items == SMALL.items and summary.users == SMALL.users
    assert summary.bad_rows == FAULT_ROWS
    assert len(interactions) == summary.interactions + FAULT_ROWS
    assert len({row["title"] for row in catalog}) == SMALL.items

    for column, folder in (("poster_path", "posters"), ("audio_path", "audio"), ("video_path", "video")):
        referenced = [row[column] for row in catalog if row[column]]
        assert all((out_dir / path).is_file() for path in referenced), column
        assert len(list((out_dir / folder).iterdir())) == len(referenced), folder

    without_trailer = [row for row in catalog if not row["audio_path"]]
    without_poster = [row for row in catalog if not row["poster_path"]]
    assert without_trailer and without_poster, "the demo must exercise missing modalities"
    for row in without_trailer:
        assert row["video_path"] == ""
        assert not (out_dir / "audio" / f"{row['item_id']}.wav").exists()
        assert not (out_dir / "video" / f"{row['item_id']}.mp4").exists()
    for row in catalog:
        genres = row["genres"].split("|")
        assert 1 <= len(genres) <= 3 and all(genres)
        assert len([tag for tag in row["tags"].split("|") if tag]) <= 3
        assert 2 <= row["overview"].count(".") <= 3


def test_good_rows_are_well_formed_and_sorted(demo: tuple[Path, DemoDataSummary]) -> None:
    out_dir, summary = demo
    good = good_interactions(out_dir, summary)
    iso_utc = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
    first_day = SMALL.end_date - datetime.timedelta(days=SMALL.days - 1)

    for row in good:
        assert 1 <= int(row["user_id"]) <= SMALL.users
        assert 1 <= int(row["item_id"]) <= SMALL.items
        rating = float(row["rating"])
        assert 0.5 <= rating <= 5.0 and rating * 2 == int(rating * 2)
        assert iso_utc.match(row["event_time"]) and row["source"] == "demo"
        assert first_day.isoformat() <= row["event_time"][:10] <= SMALL.end_date.isoformat()
    keys = [(row["event_time"], int(row["user_id"])) for row in good]
    assert keys == sorted(keys)
    pairs = [(row["user_id"], row["item_id"]) for row in good]
    assert len(pairs) == len(set(pairs))


def test_fault_rows_each_break_exactly_one_rule(demo: tuple[Path, DemoDataSummary]) -> None:
    out_dir, summary = demo
    rows = read_csv(out_dir / "interactions.csv")
    good, bad = rows[: summary.interactions], rows[summary.interactions :]
    unknown_item, bad_rating, duplicate, no_user = bad

    assert int(unknown_item["item_id"]) == SMALL.items + 1000
    assert float(bad_rating["rating"]) == 7.5
    assert (bad_rating["user_id"], bad_rating["item_id"]) not in {(r["user_id"], r["item_id"]) for r in good}
    assert duplicate in good
    assert no_user["user_id"] == "" and 1 <= int(no_user["item_id"]) <= SMALL.items


def test_without_faults_there_are_no_bad_rows(tmp_path: Path) -> None:
    config = DemoDataConfig(items=12, users=6, clusters=3, faults=False, audio_seconds=0.5, video_seconds=1.0)
    summary = generate_demo_data(tmp_path, config)
    assert summary.bad_rows == 0
    assert len(read_csv(tmp_path / "interactions.csv")) == summary.interactions


def test_no_interaction_precedes_availability_and_cold_items_are_late(
    demo: tuple[Path, DemoDataSummary],
) -> None:
    out_dir, summary = demo
    available = {int(row["item_id"]): row["available_from"] for row in read_csv(out_dir / "catalog.csv")}
    first_day = (SMALL.end_date - datetime.timedelta(days=SMALL.days - 1)).isoformat()
    last_window_start = (SMALL.end_date - datetime.timedelta(days=2)).isoformat()

    cold = {item for item, day in available.items() if day != first_day}
    assert len(cold) == summary.cold_items == round(SMALL.items * SMALL.cold_item_share)
    assert all(last_window_start <= available[item] <= SMALL.end_date.isoformat() for item in cold)
    good = good_interactions(out_dir, summary)
    for row in good:
        assert row["event_time"][:10] >= available[int(row["item_id"])]
        if int(row["item_id"]) in cold:
            assert row["event_time"][:10] >= last_window_start


def test_same_seed_is_byte_identical_and_another_seed_differs(
    demo: tuple[Path, DemoDataSummary], tmp_path: Path
) -> None:
    out_dir, _ = demo
    again = tmp_path / "again"
    generate_demo_data(again, SMALL)
    for name in ("catalog.csv", "interactions.csv", "truth/items.csv", "truth/users.csv"):
        assert (again / name).read_bytes() == (out_dir / name).read_bytes(), name
    # mp4v through the bundled FFmpeg is byte-deterministic for a given opencv wheel, so MP4s are
    # compared as bytes too; a different wheel may legitimately encode other bytes.
    assert media_files(again) == media_files(out_dir)

    other = tmp_path / "other"
    generate_demo_data(other, dataclasses.replace(SMALL, seed=SMALL.seed + 1))
    assert (other / "catalog.csv").read_bytes() != (out_dir / "catalog.csv").read_bytes()


def test_rerun_into_the_same_folder_leaves_no_stale_media(tmp_path: Path) -> None:
    small = DemoDataConfig(items=12, users=6, clusters=3, audio_seconds=0.5, video_seconds=1.0)
    generate_demo_data(tmp_path, dataclasses.replace(small, items=30))
    generate_demo_data(tmp_path, small)
    catalog = read_csv(tmp_path / "catalog.csv")
    referenced = {row[column] for row in catalog for column in ("poster_path", "audio_path", "video_path")}
    assert set(media_files(tmp_path)) == referenced - {""}


def test_interactions_follow_hidden_tastes(demo: tuple[Path, DemoDataSummary]) -> None:
    out_dir, summary = demo
    clusters = item_clusters(out_dir)
    favourites = {
        int(row["user_id"]): {int(c) for c in row["favourite_clusters"].split("|")}
        for row in read_csv(out_dir / "truth" / "users.csv")
    }
    in_taste, ratings = defaultdict(list), defaultdict(list)
    for row in good_interactions(out_dir, summary):
        user = int(row["user_id"])
        hit = clusters[int(row["item_id"])] in favourites[user]
        in_taste[user].append(hit)
        ratings[hit].append(float(row["rating"]))

    share = np.mean([np.mean(hits) for hits in in_taste.values()])
    chance = np.mean([len(f) / SMALL.clusters for f in favourites.values()])
    assert share > 0.6 and share > chance + 0.3, (share, chance)
    assert np.mean(ratings[True]) > np.mean(ratings[False]) + 0.8


def test_posters_differ_more_between_clusters_than_within(demo: tuple[Path, DemoDataSummary]) -> None:
    out_dir, _ = demo
    clusters = item_clusters(out_dir)
    mean_bgr = defaultdict(list)
    for path in (out_dir / "posters").iterdir():
        image = cv2.imread(str(path))
        assert image.shape == (180, 120, 3)
        mean_bgr[clusters[int(path.stem)]].append(image.reshape(-1, 3).mean(axis=0))

    centroids = {c: np.mean(values, axis=0) for c, values in mean_bgr.items()}
    within = np.mean([np.linalg.norm(v - centroids[c]) for c, values in mean_bgr.items() for v in values])
    between = min(np.linalg.norm(centroids[a] - centroids[b]) for a in centroids for b in centroids if a < b)
    assert len(centroids) == SMALL.clusters
    assert between > 2 * within, (between, within)


def test_audio_decodes_and_its_pitch_separates_clusters(demo: tuple[Path, DemoDataSummary]) -> None:
    out_dir, _ = demo
    clusters = item_clusters(out_dir)
    peaks = defaultdict(list)
    for path in (out_dir / "audio").iterdir():
        audio, sample_rate = soundfile.read(str(path))
        assert sample_rate == SAMPLE_RATE and audio.ndim == 1
        assert len(audio) == round(SMALL.audio_seconds * SAMPLE_RATE)
        assert 0.45 < np.abs(audio).max() <= 0.5 + 1e-4
        spectrum = np.abs(np.fft.rfft(audio))
        frequencies = np.fft.rfftfreq(len(audio), 1 / sample_rate)
        peaks[clusters[int(path.stem)]].append(frequencies[spectrum.argmax()])

    # Ranges of dominant frequency, ordered by their lowest value, must not overlap.
    ranges = sorted((min(values), max(values)) for values in peaks.values())
    assert len(ranges) == SMALL.clusters
    for (_, upper), (lower, _) in itertools.pairwise(ranges):
        assert upper < lower, ranges


def test_video_decodes_and_motion_level_follows_cluster(demo: tuple[Path, DemoDataSummary]) -> None:
    out_dir, _ = demo
    clusters = item_clusters(out_dir)
    width, height = VIDEO_SIZE
    motion = defaultdict(list)
    for path in (out_dir / "video").iterdir():
        frames = decode_video(path)
        assert len(frames) == round(SMALL.video_seconds * SMALL.video_fps)
        assert all(frame.shape == (height, width, 3) for frame in frames)
        stack = np.stack(frames).astype(np.float64)
        motion[clusters[int(path.stem)]].append(np.abs(np.diff(stack, axis=0)).mean())

    fast = np.mean(motion[cluster_index_with_motion("fast", SMALL.clusters)])
    static = np.mean(motion[cluster_index_with_motion("static", SMALL.clusters)])
    assert fast > 3 * static, (fast, static)


def test_rejects_more_clusters_than_styles() -> None:
    with pytest.raises(ValueError):
        DemoDataConfig(clusters=len(CLUSTER_STYLES) + 1)
