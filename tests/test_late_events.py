"""Late-arriving events: as of a date means what had happened by it *and* had been ingested by it.

One small lake (SMALL_DEMO's catalog, one imported modality standing in for the extractors, K = 5) runs
OLDER from ingest to publish with a source that lacks one good event dated OLDER: at that point it is a
fresh lake that only ran OLDER. Then NEWER ingests the whole demo file, the late event and the 4 bad rows
included. OLDER re-run on that lake with its own source must read, train on, gate against and publish
exactly what its own night did, while NEWER uses the late event. OLDER's source also sends one event
dated NEWER, which waits in `deferred`: it must land once, whichever run brings it. Last, a copy of the
lake re-ingests OLDER from a source that does hold the late event, which makes it known on OLDER.
"""

from __future__ import annotations

import csv
import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import SMALL_DEMO, copy_lake, write_vectors

from jobs import lake
from jobs.schemas import INTERACTIONS, RECOMMENDATIONS

pytestmark = pytest.mark.spark

NEWER = SMALL_DEMO.end_date  # 2026-11-25
OLDER = NEWER - dt.timedelta(days=1)
K = 5
BAD_ROWS = 4  # the demo's deliberately bad rows, last in its file (infra/tools/demo_data.py)


def _day(row: dict) -> dt.date:
    return dt.date.fromisoformat(row["event_time"][:10])


def _key(row: dict) -> tuple[int, int, dt.datetime]:
    """(user_id, item_id, event_time) as the lake holds them (event_time as naive UTC)."""
    event_time = dt.datetime.fromisoformat(row["event_time"].replace("Z", "+00:00")).replace(tzinfo=None)
    return int(row["user_id"]), int(row["item_id"]), event_time


def _key_of(row) -> tuple[int, int, dt.datetime]:
    """The same key of a row read back from the lake (a pandas row)."""
    return int(row.user_id), int(row.item_id), pd.Timestamp(row.event_time).to_pydatetime()


def _keys(frame: pd.DataFrame) -> list[tuple[int, int, dt.datetime]]:
    return sorted(_key_of(row) for row in frame.itertuples())


@dataclass(frozen=True)
class Sources:
    catalog: Path
    older: Path  # OLDER's interactions: good rows up to OLDER but the late one, plus `ahead`
    newer: Path  # NEWER's: the demo's whole file (every good row, the late one included, and the bad rows)
    good: list[dict]  # the demo's good rows: what `interactions` must hold once NEWER ran
    late: dict  # a good event dated OLDER that first arrives in NEWER's source
    ahead: dict  # a good event dated NEWER that OLDER's source already sends (OLDER defers it)


def _write_sources(demo: Path, folder: Path) -> Sources:
    with (demo / "interactions.csv").open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    good = rows[:-BAD_ROWS]
    late = next(row for row in good if _day(row) == OLDER)
    ahead = next(row for row in good if _day(row) == NEWER)
    older_rows = [row for row in good if row is ahead or (row is not late and _day(row) <= OLDER)]
    paths = []
    for name, chosen in (("older.csv", older_rows), ("newer.csv", rows)):
        with (folder / name).open("w", encoding="utf-8", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(chosen)
        paths.append(folder / name)
    return Sources(demo / "catalog.csv", *paths, good, late, ahead)


@dataclass(frozen=True)
class DateReads:
    """What a date's stages read of `interactions` (through `jobs.asof`) and what it published."""

    interactions: pd.DataFrame  # interactions_as_of: what training and evaluation load
    seen: pd.DataFrame  # publish's seen_pairs: the gate's "no seen item" check
    ranking: dict[str, np.ndarray]  # load_ranking_data as ids: the pairs train fits and evaluate scores
    model_version: str
    published: pd.DataFrame


def _interactions_as_of(spark, config, ds: dt.date) -> pd.DataFrame:
    from jobs.asof import catalog_as_of, interactions_as_of

    rows = interactions_as_of(spark, config, ds, catalog_as_of(spark, config, ds)).toPandas()
    return rows.sort_values(["user_id", "item_id", "event_time"], ignore_index=True)


def _seen(spark, config, ds: dt.date) -> pd.DataFrame:
    from jobs.publish import seen_pairs

    return seen_pairs(spark, config, ds).toPandas().sort_values(["user_id", "item_id"], ignore_index=True)


def _partition(spark, config, ds: dt.date) -> pd.DataFrame:
    rows = lake.read_table(spark, config, RECOMMENDATIONS).where(f"ds = '{ds.isoformat()}'").toPandas()
    rows["modalities"] = rows["modalities"].map(list)
    return rows.sort_values(["user_id", "rank"], ignore_index=True)


def _run_date(spark, config, sources: Sources, interactions: Path, ds: dt.date) -> DateReads:
    """Ingest, fuse, train and publish `ds` from `interactions`, then what the date read and wrote."""
    from jobs.fuse import run_fuse
    from jobs.ingest import IngestRequest, run_ingest
    from jobs.publish import run_publish
    from jobs.ranker_inputs import load_ranking_data
    from jobs.train import run_train

    run_ingest(spark, config, IngestRequest(ds=ds, catalog=sources.catalog, interactions=interactions))
    run_fuse(spark, config, ds)
    trained = run_train(spark, config, ds)
    run_publish(spark, config, ds, k=K)
    data = load_ranking_data(spark, config, ds).data
    pairs = data.interactions
    ranking = {
        "user_id": data.user_ids[pairs.users],
        "item_id": data.item_ids[pairs.items],
        "seconds": pairs.times,
        "catalog": data.item_ids,
    }
    return DateReads(
        _interactions_as_of(spark, config, ds),
        _seen(spark, config, ds),
        ranking,
        trained.version,
        _partition(spark, config, ds),
    )


@dataclass(frozen=True)
class LateLake:
    config: Any  # jobs.config.PipelineConfig
    sources: Sources
    own_night: DateReads  # OLDER on the fresh lake, before NEWER ran
    newer_ingest: Any  # NEWER's jobs.ingest_report.IngestReport
    rows_after_newer: pd.DataFrame  # `interactions` once NEWER ingested
    rerun: DateReads  # OLDER re-run after NEWER, from OLDER's own source
    rows_after_rerun: pd.DataFrame


def _table(spark, config) -> pd.DataFrame:
    rows = lake.read_table(spark, config, INTERACTIONS).toPandas()
    return rows.sort_values(["user_id", "item_id", "event_time"], ignore_index=True)


@pytest.fixture(scope="module")
def late_lake(spark, small_demo, tmp_path_factory) -> LateLake:
    from jobs.config import load_config
    from jobs.import_vectors import run_import
    from jobs.ingest import IngestRequest, run_ingest

    root = tmp_path_factory.mktemp("late-events")
    sources = _write_sources(small_demo, root)
    config = load_config(lake=str(root / "lake"), shuffle_partitions=2)
    run_ingest(spark, config, IngestRequest(ds=OLDER, catalog=sources.catalog, interactions=sources.older))
    # Imported vectors are not dated (one row per item), so one import serves every date here.
    rng = np.random.default_rng(0)
    item_ids = sorted({int(row["item_id"]) for row in csv.DictReader(sources.catalog.open(encoding="utf-8"))})
    vectors = write_vectors(root / "taste.csv", {item: rng.normal(size=8) for item in item_ids})
    run_import(spark, config, "taste", vectors, OLDER)
    own_night = _run_date(spark, config, sources, sources.older, OLDER)
    newer_ingest = run_ingest(
        spark, config, IngestRequest(ds=NEWER, catalog=sources.catalog, interactions=sources.newer)
    )
    rows_after_newer = _table(spark, config)
    rerun = _run_date(spark, config, sources, sources.older, OLDER)
    return LateLake(config, sources, own_night, newer_ingest, rows_after_newer, rerun, _table(spark, config))


def _has(frame: pd.DataFrame, row: dict) -> bool:
    user_id, item_id, event_time = _key(row)
    match = (frame.user_id == user_id) & (frame.item_id == item_id)
    if "event_time" in frame:
        match &= frame.event_time == pd.Timestamp(event_time)
    return bool(match.any())


def test_an_older_date_rerun_after_a_late_event_publishes_what_its_own_night_published(spark, late_lake):
    own, rerun = late_lake.own_night, late_lake.rerun
    late = late_lake.sources.late
    # The late event is in the lake, dated OLDER, yet no reader of OLDER sees it.
    assert _has(late_lake.rows_after_rerun, late)
    assert not _has(own.interactions, late) and not _has(rerun.interactions, late)
    assert not _has(rerun.seen, late)
    pd.testing.assert_frame_equal(rerun.interactions, own.interactions)
    pd.testing.assert_frame_equal(rerun.seen, own.seen)
    assert rerun.ranking.keys() == own.ranking.keys()
    for name, values in own.ranking.items():
        np.testing.assert_array_equal(rerun.ranking[name], values, err_msg=name)
    # Exactly OLDER's good rows but the late one, each once (the pairs never repeat in the demo).
    expected = sorted(_key(row) for row in late_lake.sources.good if _day(row) <= OLDER and row is not late)
    assert _keys(own.interactions) == expected
    assert len(own.ranking["user_id"]) == len(expected)
    # Same training data, so the same ranker (its version hashes the pairs), and the same lists.
    assert rerun.model_version == own.model_version
    assert len(own.published) > 0
    pd.testing.assert_frame_equal(rerun.published, own.published)


def test_the_date_a_late_event_arrives_uses_it_and_nothing_of_its_batch_is_lost(spark, late_lake):
    sources, report = late_lake.sources, late_lake.newer_ingest
    newer_rows = len(sources.good) + BAD_ROWS
    # Every row NEWER read is accounted for: the good ones ingested, the bad ones quarantined, and the
    # deferred copy of `ahead` superseded by the source's own row.
    assert report.interactions_read == newer_rows + 1
    assert (report.interactions_quarantined, report.interactions_superseded, report.interactions_deferred) == (
        BAD_ROWS,
        1,
        0,
    )
    assert report.interactions_ingested == len(sources.good)
    # New to the lake: the late event and NEWER's events (`ahead` among them: OLDER only deferred it).
    assert report.interactions_new == 1 + sum(_day(row) == NEWER for row in sources.good)
    table = late_lake.rows_after_newer
    assert _keys(table) == sorted(_key(row) for row in sources.good)
    ingested_ds = {_key_of(row): row.ingested_ds for row in table.itertuples()}
    assert ingested_ds[_key(sources.late)] == NEWER
    assert ingested_ds[_key(sources.ahead)] == NEWER
    assert sum(ds == OLDER for ds in ingested_ds.values()) == sum(
        _day(row) <= OLDER and row is not sources.late for row in sources.good
    )
    # NEWER's readers see the late event.
    assert _has(_interactions_as_of(spark, late_lake.config, NEWER), sources.late)
    assert _has(_seen(spark, late_lake.config, NEWER), sources.late)
    # The rerun of OLDER changed no row: it defers `ahead` again, and the MERGE keeps one copy.
    pd.testing.assert_frame_equal(late_lake.rows_after_rerun, late_lake.rows_after_newer)


def test_an_older_source_that_holds_the_late_event_makes_it_known_on_that_date(spark, late_lake, tmp_path):
    from jobs.ingest import IngestRequest, run_ingest

    config = copy_lake(late_lake.config.lake, tmp_path)
    sources = late_lake.sources
    # OLDER re-ingested from the whole file: the late event is in its source now, so OLDER may know it.
    run_ingest(spark, config, IngestRequest(ds=OLDER, catalog=sources.catalog, interactions=sources.newer))
    table = _table(spark, config)
    ingested_ds = {_key_of(row): row.ingested_ds for row in table.itertuples()}
    assert ingested_ds[_key(sources.late)] == OLDER
    assert ingested_ds[_key(sources.ahead)] == NEWER  # after OLDER: deferred again, its row keeps NEWER
    assert _has(_interactions_as_of(spark, config, OLDER), sources.late)
    # NEWER re-run afterwards never moves a row's date forward, and takes `ahead`'s deferred copy in
    # without a second row.
    run_ingest(spark, config, IngestRequest(ds=NEWER, catalog=sources.catalog, interactions=sources.newer))
    again = _table(spark, config)
    pd.testing.assert_frame_equal(again, table)
    assert len(again) == len(sources.good)
