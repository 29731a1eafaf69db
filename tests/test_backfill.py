"""Backfill and train cadence: a range of dates gives one complete partition per date, each built only
from data up to its own date, with the model the cadence assigns to that date."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import BACKFILL_DATES, BACKFILL_K, SMALL_DEMO

from jobs import lake
from jobs.schemas import CATALOG, INTERACTIONS, RECOMMENDATIONS
from jobs.train import training_date

END = SMALL_DEMO.end_date  # 2026-11-25, a Wednesday
DATES = BACKFILL_DATES  # conftest's `backfilled_lake`: these three dates backfilled on a fresh lake
K = BACKFILL_K


@pytest.mark.parametrize(
    ("ds", "every_days", "expected"),
    [
        (dt.date(2026, 11, 25), 1, dt.date(2026, 11, 25)),  # daily: the date itself
        (dt.date(2026, 11, 25), 7, dt.date(2026, 11, 22)),  # weekly: the Sunday before
        (dt.date(2026, 11, 22), 7, dt.date(2026, 11, 22)),  # a Sunday is its own training date
        (dt.date(2026, 11, 28), 7, dt.date(2026, 11, 22)),  # Saturday: still the week's Sunday
        (dt.date(2026, 11, 29), 7, dt.date(2026, 11, 29)),
    ],
)
def test_training_date_is_the_latest_grid_date_on_or_before_the_run_date(ds, every_days, expected):
    assert training_date(ds, every_days) == expected
    assert expected.weekday() == 6 or every_days == 1


def test_a_cadence_below_one_day_is_refused():
    with pytest.raises(ValueError, match="at least 1"):
        training_date(END, 0)


def partitions(spark, config) -> pd.DataFrame:
    return lake.read_table(spark, config, RECOMMENDATIONS).select("ds", "user_id", "rank", "item_id").toPandas()


@pytest.mark.spark
def test_a_three_date_backfill_writes_three_complete_partitions(spark, backfilled_lake):
    config, results = backfilled_lake.config, backfilled_lake.results
    rows = partitions(spark, config)
    assert sorted(rows.ds.unique()) == DATES
    assert [result.ds for result in results] == [ds.isoformat() for ds in DATES]
    for ds, result in zip(DATES, results, strict=True):
        assert result.published_rows == (rows.ds == ds).sum()
        assert {"ingest", "extract_text", "fuse", "train", "publish", "report"} <= set(result.seconds)
        assert (config.reports_dir / ds.isoformat() / "run.html").is_file()


@pytest.mark.spark
def test_each_date_uses_only_data_up_to_its_date(spark, backfilled_lake):
    config = backfilled_lake.config
    rows = partitions(spark, config)
    events = lake.read_table(spark, config, INTERACTIONS).toPandas()
    catalog = lake.read_table(spark, config, CATALOG).toPandas()
    listed_users = []
    for ds in DATES:
        mine = rows[rows.ds == ds]
        known = events[events.event_time < pd.Timestamp(ds + dt.timedelta(days=1))]
        # Exactly the users with an interaction by the end of ds: none who only arrive later.
        assert set(mine.user_id) == set(known.user_id)
        listed_users.append(len(set(mine.user_id)))
        # Only items available by ds, and none the user had interacted with by then.
        available = set(catalog[catalog.available_from.isna() | (catalog.available_from <= ds)].item_id)
        assert set(mine.item_id) <= available
        seen = set(zip(known.user_id, known.item_id, strict=True))
        assert not seen & set(zip(mine.user_id, mine.item_id, strict=True))
        # Every list is complete: K items, or all the user may still get.
        per_user = mine.groupby("user_id").size()
        for user, count in per_user.items():
            unseen = available - set(known[known.user_id == user].item_id)
            assert count == min(K, len(unseen)), (ds, user)
    # The demo's cold items arrive in the last days: a later date can list items an earlier one could not.
    assert catalog.available_from.dropna().max() > DATES[0]
    assert listed_users == sorted(listed_users)


@pytest.mark.spark
def test_the_weekly_cadence_trains_one_model_on_data_up_to_the_sunday(spark, backfilled_lake):
    config, results = backfilled_lake.config, backfilled_lake.results
    ranker_dir = Path(config.lake) / "_models" / "ranker"
    sunday = training_date(END, 7)
    pointers = [json.loads((ranker_dir / "by_ds" / f"{ds.isoformat()}.json").read_text()) for ds in DATES]
    assert {p["trained_ds"] for p in pointers} == {sunday.isoformat()}
    assert len({p["version"] for p in pointers}) == 1 == len({r.model_version for r in results})
    card = json.loads((ranker_dir / pointers[0]["version"] / "ranker.json").read_text())
    assert card["trained_ds"] == sunday.isoformat()
    trains = [json.loads((config.reports_dir / ds.isoformat() / "train.json").read_text()) for ds in DATES]
    assert [t["reused"] for t in trains] == [False, True, True]
    assert json.loads((ranker_dir / "current.json").read_text())["ds"] == END.isoformat()
    published = lake.read_table(spark, config, RECOMMENDATIONS).select("model_version").distinct().toPandas()
    assert set(published.model_version) == {pointers[0]["version"]}


@pytest.mark.spark
def test_rerunning_an_older_date_changes_neither_its_partition_nor_the_current_model(
    spark, backfilled_lake, tmp_path
):
    from jobs.backfill import BackfillPlan, run_backfill

    config = backfilled_lake.copy_to(tmp_path)
    before = partitions(spark, config).sort_values(["ds", "user_id", "rank"], ignore_index=True)
    current = (Path(config.lake) / "_models" / "ranker" / "current.json").read_text()
    plan = BackfillPlan(DATES[1], DATES[1], None, stages=("train", "publish"), train_every_days=7, k=K)
    run_backfill(spark, config, plan)
    after = partitions(spark, config).sort_values(["ds", "user_id", "rank"], ignore_index=True)
    pd.testing.assert_frame_equal(after, before)
    assert (Path(config.lake) / "_models" / "ranker" / "current.json").read_text() == current


def test_a_backfill_with_the_end_before_the_start_is_refused():
    from jobs.backfill import BackfillPlan

    with pytest.raises(ValueError, match="before --start"):
        BackfillPlan(END, END - dt.timedelta(days=1), None)
