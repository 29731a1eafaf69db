"""Built-in demo data: a deterministic, offline, synthetic multimodal catalog with hidden taste clusters.

Why it exists: the pipeline must be runnable end to end on a laptop without licences, downloads or a
real catalog, and the demo must have *learnable* signal. So every item belongs to one hidden taste
cluster, and that cluster drives every modality at once: the words of its title/overview/tags, its
genres, the palette and shapes of its poster, the pitch/tempo/timbre of its trailer audio, the motion
and colours of its trailer video, and which users interact with it. Feature extraction (sentence
embeddings, image embeddings, librosa, OpenCV) and the ranker can therefore recover real structure
from content, and `truth/` lets the evaluation check whether they did.

Everything is a pure function of `DemoDataConfig` (seed included): no network, no Spark, no clock,
no global state. Running twice into the same folder gives byte-identical CSVs and media files.

Files written under `out_dir` (the contract the ingestion job reads):

- `catalog.csv`: `item_id,title,overview,genres,tags,poster_path,audio_path,video_path,available_from`.
  UTF-8, header row, csv-module quoting (QUOTE_MINIMAL), `\\n` line endings. `genres` and `tags` are
  pipe-separated. Media paths are relative to `out_dir`; an empty path means the modality is missing
  (about 3% of items have no trailer, i.e. neither audio nor video; about 2% have no poster).
  `available_from` is `YYYY-MM-DD`: the first day of the span for most items, a day within the last
  3 days of the span for cold items.
- `interactions.csv`: `user_id,item_id,rating,event_time,source`. rating is 0.5..5.0 in steps of
  0.5, event_time is ISO-8601 UTC (`2026-11-03T14:22:05Z`) and never before the item's
  `available_from`, source is `demo`. Good rows are sorted by event_time, user_id, item_id and never
  repeat a (user_id, item_id) pair. With `faults=True` exactly 4 deliberately bad rows follow them,
  in this order: unknown item_id (`items + 1000`), rating 7.5, an exact copy of an earlier good row,
  an empty user_id. Each bad row has exactly one fault, so quarantine rules can be checked one by one.
- `posters/<id>.jpg`: 120x180 (w x h) BGR JPEG, quality 90.
- `audio/<id>.wav`: mono 16-bit PCM, 22,050 Hz, `audio_seconds` long, peak amplitude 0.5.
- `video/<id>.mp4`: `round(video_seconds * video_fps)` frames of 96x64, fourcc `mp4v`.
- `truth/items.csv` (`item_id,cluster`) and `truth/users.csv` (`user_id,favourite_clusters`,
  pipe-separated ints): the hidden truth, for evaluation only; never feed it to the ranker.

`posters/`, `audio/` and `video/` are deleted and recreated on every run so a smaller run never
leaves stale files from a larger one.

Knobs (`DemoDataConfig`):

- `items`, `users`: catalog and user counts; item_id is 1..items, user_id is 1..users.
- `clusters`: number of hidden taste clusters, 1..len(CLUSTER_STYLES) (8). Items are spread evenly
  over clusters, in random order.
- `days`, `end_date`: interaction history covers the `days` days ending on `end_date` (inclusive).
- `cold_item_share`: share of items that only become available in the last 3 days of the span
  (at least one item always stays non-cold, so every user can always be served).
- `interactions_per_user`: mean interactions per user; actual counts are lognormal (sigma 0.5),
  at least 5, and at most the number of non-cold items.
- `taste_purity`: probability that an interaction is drawn from one of the user's 1-2 favourite
  clusters (item chosen by popularity within that cluster); otherwise it is drawn from overall
  popularity. Item popularity follows a power law (rank ** -POPULARITY_EXPONENT).
- `faults`: append the 4 bad interaction rows described above.
- `seed`: the only source of randomness. Every medium of every item uses its own random stream
  (seed, medium, item_id), so changing e.g. the video renderer does not change posters or audio.
- `audio_seconds`: trailer audio length.
- `video_seconds`, `video_fps`: trailer video length and frame rate.

Fixed choices, in the part that uses them: NO_TRAILER_SHARE (0.03) and NO_POSTER_SHARE (0.02),
rounded up so even a tiny demo has a missing modality, COLD_WINDOW_DAYS (3) and POPULARITY_EXPONENT
(0.9) in `demo_catalog`; the media sizes and codec in `demo_media`.

The parts: `demo_styles` (the clusters; their words in `demo_vocabulary.json`), `demo_config` (the
knobs and records), `demo_catalog`, `demo_interactions`, `demo_media`; this module writes the CSVs
and runs them all.
"""

from __future__ import annotations

import csv
import datetime
import logging
import time
from collections.abc import Sequence
from pathlib import Path

from infra.tools.demo_catalog import build_catalog
from infra.tools.demo_config import CatalogItem, DemoDataConfig, DemoDataSummary, DemoUser, Interaction
from infra.tools.demo_interactions import build_users, make_fault_rows, simulate_interactions
from infra.tools.demo_media import write_media

log = logging.getLogger("modalrank.demo_data")

SOURCE = "demo"
CATALOG_COLUMNS = (
    "item_id",
    "title",
    "overview",
    "genres",
    "tags",
    "poster_path",
    "audio_path",
    "video_path",
    "available_from",
)
INTERACTION_COLUMNS = ("user_id", "item_id", "rating", "event_time", "source")
DEFAULT_CONFIG = DemoDataConfig()


def _iso_utc(config: DemoDataConfig, event_second: int) -> str:
    start = datetime.datetime.combine(config.start_date, datetime.time(), tzinfo=datetime.UTC)
    return (start + datetime.timedelta(seconds=event_second)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def write_catalog_csv(path: Path, catalog: Sequence[CatalogItem]) -> None:
    _write_csv(
        path,
        CATALOG_COLUMNS,
        [
            [
                item.item_id,
                item.title,
                item.overview,
                "|".join(item.genres),
                "|".join(item.tags),
                item.poster_path,
                item.audio_path,
                item.video_path,
                item.available_from.isoformat(),
            ]
            for item in catalog
        ],
    )


def write_interactions_csv(path: Path, config: DemoDataConfig, rows: Sequence[Interaction]) -> None:
    _write_csv(
        path,
        INTERACTION_COLUMNS,
        [
            [
                "" if row.user_id is None else row.user_id,
                row.item_id,
                f"{row.rating:.1f}",
                _iso_utc(config, row.event_second),
                SOURCE,
            ]
            for row in rows
        ],
    )


def write_truth(truth_dir: Path, catalog: Sequence[CatalogItem], users: Sequence[DemoUser]) -> None:
    truth_dir.mkdir(parents=True, exist_ok=True)
    _write_csv(truth_dir / "items.csv", ["item_id", "cluster"], [[item.item_id, item.cluster] for item in catalog])
    _write_csv(
        truth_dir / "users.csv",
        ["user_id", "favourite_clusters"],
        [[user.user_id, "|".join(str(c) for c in user.favourite_clusters)] for user in users],
    )


def generate_demo_data(out_dir: Path | str, config: DemoDataConfig = DEFAULT_CONFIG) -> DemoDataSummary:
    """Write the demo catalog, interactions, media and hidden truth under `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    log.info(
        "demo data: %d items, %d users, %d clusters, seed %d -> %s",
        config.items,
        config.users,
        config.clusters,
        config.seed,
        out_dir,
    )

    catalog = build_catalog(config)
    users = build_users(config)
    good_rows = simulate_interactions(config, catalog, users)
    bad_rows = make_fault_rows(config, catalog, good_rows) if config.faults and good_rows else []
    write_catalog_csv(out_dir / "catalog.csv", catalog)
    write_interactions_csv(out_dir / "interactions.csv", config, [*good_rows, *bad_rows])
    write_truth(out_dir / "truth", catalog, users)
    log.info("interactions: %d good rows + %d bad rows", len(good_rows), len(bad_rows))

    write_media(out_dir, config, catalog)
    summary = DemoDataSummary(
        out_dir=out_dir,
        items=len(catalog),
        users=len(users),
        interactions=len(good_rows),
        bad_rows=len(bad_rows),
        cold_items=sum(item.available_from != config.start_date for item in catalog),
    )
    log.info("demo data written in %.1f s: %s", time.perf_counter() - started, summary)
    return summary
