"""As-of correctness: an older date re-run on a lake that already ran a newer one publishes what a fresh
lake that only ran the older date publishes (same rows, same model version), and its ingest leaves the
newer catalog content in place.

Lake 1 runs B (newer), whose catalog has changed one item's overview and added an item without an
`available_from`, then A (older) with the original catalog; lake 2 (conftest's `backfilled_lake`) ran A
first, on a fresh lake, before its later dates. A and B share one weekly training date (the Sunday before
both), so on lake 1 that date's fusion and ranker were first made while B ran, on what lake 1 knew then.
"""

from __future__ import annotations

import csv
import shutil

import pandas as pd
import pytest
from conftest import BACKFILL_DATES, BACKFILL_K, SMALL_DEMO

from jobs import lake
from jobs.schemas import CATALOG, CATALOG_HISTORY, RECOMMENDATIONS

pytestmark = pytest.mark.spark

NEWER = SMALL_DEMO.end_date  # 2026-11-25, a Wednesday
# Monday, the backfilled lake's first date: cold items available from it are listable, later ones not.
OLDER = BACKFILL_DATES[0]
K = BACKFILL_K
CHANGED_ITEM = 7
NEW_TEXT = "A lighthouse keeper befriends a storm that speaks."
LATE_ITEM = SMALL_DEMO.items + 1  # only in the newer catalog, with no available_from


def _newer_catalog(demo) -> None:
    """`catalog_newer.csv`: the demo catalog with one overview changed and one item added."""
    with (demo / "catalog.csv").open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        if int(row["item_id"]) == CHANGED_ITEM:
            row["overview"] = NEW_TEXT
    late = dict(rows[0], item_id=str(LATE_ITEM), title="Late Arrival", available_from="")
    late.update(poster_path="", audio_path="", video_path="")
    with (demo / "catalog_newer.csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows([*rows, late])


def _run(spark, config, demo, ds, catalog_file):
    from jobs.backfill import BackfillPlan, run_backfill
    from jobs.ingest import IngestRequest

    sources = IngestRequest(ds=ds, catalog=demo / catalog_file, interactions=demo / "interactions.csv")
    plan = BackfillPlan(
        ds,
        ds,
        sources,
        stages=("ingest", "extract", "fuse", "train", "publish"),
        train_every_days=7,
        k=K,
    )
    return run_backfill(spark, config, plan)[0]


@pytest.fixture(scope="module")
def two_lakes(spark, small_demo, tmp_path_factory, request):
    from jobs.config import load_config

    root = tmp_path_factory.mktemp("asof")
    demo = root / "demo"
    shutil.copytree(small_demo, demo)
    _newer_catalog(demo)
    newer_first = load_config(lake=str(root / "lake1"), shuffle_partitions=2)
    newer = _run(spark, newer_first, demo, NEWER, "catalog_newer.csv")
    newer_rows = _partition(spark, newer_first, NEWER)
    older = _run(spark, newer_first, demo, OLDER, "catalog.csv")
    # Lake 2: conftest's backfilled lake, whose first date is OLDER, run first on a fresh lake with the
    # original catalog and these settings (plus the run report, which publishes nothing). Asked for only
    # now: under pytest-xdist the other process may be building it meanwhile.
    fresh_lake = request.getfixturevalue("backfilled_lake")
    return newer_first, fresh_lake.config, newer, older, fresh_lake.results[0], newer_rows


def _partition(spark, config, ds) -> pd.DataFrame:
    rows = lake.read_table(spark, config, RECOMMENDATIONS).where(f"ds = '{ds.isoformat()}'").toPandas()
    rows["modalities"] = rows["modalities"].map(list)
    return rows.sort_values(["user_id", "rank"], ignore_index=True)


def test_an_older_date_rerun_on_a_newer_lake_publishes_what_a_fresh_lake_publishes(spark, two_lakes):
    newer_first, fresh, _, older, fresh_older, _ = two_lakes
    assert older.model_version == fresh_older.model_version
    mine, theirs = _partition(spark, newer_first, OLDER), _partition(spark, fresh, OLDER)
    assert len(mine) == older.published_rows > 0
    pd.testing.assert_frame_equal(mine, theirs)
    assert set(mine.model_version) == {fresh_older.model_version}


def test_an_older_ingest_leaves_newer_content_and_keeps_its_own_version(spark, two_lakes):
    from jobs.asof import catalog_as_of

    newer_first, _, _, _, _, _ = two_lakes
    current = lake.read_table(spark, newer_first, CATALOG).toPandas().set_index("item_id")
    assert current.loc[CHANGED_ITEM, "overview"] == NEW_TEXT
    assert current.loc[CHANGED_ITEM, "updated_ds"] == NEWER
    assert current.loc[CHANGED_ITEM, "first_seen_ds"] == OLDER  # the older run read it first
    versions = lake.read_table(spark, newer_first, CATALOG_HISTORY).where(f"item_id = {CHANGED_ITEM}").toPandas()
    assert sorted(versions.ingested_ds) == [OLDER, NEWER]
    as_of_older = catalog_as_of(spark, newer_first, OLDER).toPandas().set_index("item_id")
    assert as_of_older.loc[CHANGED_ITEM, "overview"] != NEW_TEXT
    assert LATE_ITEM not in as_of_older.index  # first ingested by the newer date, no available_from
    assert LATE_ITEM in set(catalog_as_of(spark, newer_first, NEWER).toPandas().item_id)
    assert (as_of_older.available_from.dropna() <= OLDER).all()


def test_the_newer_dates_partition_is_left_as_it_was(spark, two_lakes):
    newer_first, _, newer, _, _, newer_rows = two_lakes
    pd.testing.assert_frame_equal(_partition(spark, newer_first, NEWER), newer_rows)
    assert len(newer_rows) == newer.published_rows
