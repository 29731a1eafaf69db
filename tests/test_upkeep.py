"""Lake upkeep (jobs/upkeep.py) on a copy of the backfilled lake (three published dates): what it removes is
exactly what no retained date needs, every retained date still reads, and time travel still works."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import time

import pandas as pd
import pytest
from conftest import BACKFILL_DATES

from jobs import artifacts, lake
from jobs.schemas import EVAL_LISTS, RECOMMENDATIONS
from jobs.upkeep import run_upkeep

pytestmark = pytest.mark.spark

END = BACKFILL_DATES[-1]
OLD_EVALUATION = END - dt.timedelta(days=40)


def _eval_rows(spark, config, ds: dt.date, users: int) -> None:
    rows = pd.DataFrame(
        {
            "ds": ds,
            "dataset": "demo",
            "protocol": "random_75_25",
            "model": "popularity",
            "user_id": range(users),
            "item_id": 7,
            "rank": 1,
            "score": 0.5,
        }
    )
    lake.replace_where(spark, config, EVAL_LISTS, spark.createDataFrame(rows), lake.rows_of(ds=ds))


def _age(path, hours: float) -> None:
    then = time.time() - hours * 3600
    for item in [path, *path.rglob("*")]:
        os.utime(item, (then, then))


def _recommendations(spark, config, **options) -> pd.DataFrame:
    reader = spark.read.format("delta")
    for key, value in options.items():
        reader = reader.option(key, value)
    rows = reader.load(config.table_path(RECOMMENDATIONS.name)).toPandas()
    rows["modalities"] = rows["modalities"].map(list)
    return rows.sort_values(["ds", "user_id", "rank"], ignore_index=True)


def test_upkeep_removes_only_what_no_retained_date_needs(spark, backfilled_lake, tmp_path):
    config = backfilled_lake.copy_to(tmp_path)
    _eval_rows(spark, config, OLD_EVALUATION, users=5)
    _eval_rows(spark, config, END, users=3)
    rankers = config.models_dir / "ranker"
    served = {json.loads((rankers / "by_ds" / f"{ds}.json").read_text())["version"] for ds in BACKFILL_DATES}
    # A ranker nothing points at any more (a day old), and a publish run's serving folder left by a crash.
    orphan = rankers / "ranker-000000000000"
    shutil.copytree(rankers / sorted(served)[0], orphan)
    _age(orphan, hours=30)
    dead_serving = config.models_dir / "serving" / BACKFILL_DATES[0].isoformat() / "20261123T000000-1-dead"
    dead_serving.mkdir(parents=True)
    (dead_serving / "ids.safetensors").write_bytes(b"x" * 1000)
    _age(dead_serving, hours=30)
    before = _recommendations(spark, config)
    version_before = spark.sql(f"DESCRIBE HISTORY {lake.delta_identifier(config.table_path('recommendations'))}")
    version_before = int(version_before.agg({"version": "max"}).first()[0])

    # Keep one day of reports and pointers: the first date's go, the last two dates' stay.
    dry = run_upkeep(spark, config, END, time_travel_days=7, eval_days=28, keep_days=1, dry_run=True)
    assert orphan.is_dir() and (config.reports_dir / BACKFILL_DATES[0].isoformat()).is_dir()
    report = run_upkeep(spark, config, END, time_travel_days=7, eval_days=28, keep_days=1)
    assert (dry.reports_removed, dry.pointers_removed, dry.artifacts_removed) == (
        report.reports_removed,
        report.pointers_removed,
        report.artifacts_removed,
    )

    # Evaluation lists: the old run date's rows are gone, the current one's stay.
    evaluation = lake.read_table(spark, config, EVAL_LISTS).toPandas()
    assert sorted(set(evaluation.ds)) == [END] and len(evaluation) == 3
    (eval_entry,) = [t for t in report.tables if t["table"] == "eval_lists"]
    assert eval_entry["rows_deleted"] == 5

    # Every published date reads as before, and time travel reaches the version before upkeep.
    pd.testing.assert_frame_equal(_recommendations(spark, config), before)
    pd.testing.assert_frame_equal(_recommendations(spark, config, versionAsOf=version_before), before)
    (recommendations,) = [t for t in report.tables if t["table"] == "recommendations"]
    assert recommendations["files_after"] <= recommendations["files_before"]
    assert sum(t["files_before"] - t["files_after"] for t in report.tables) > 0  # OPTIMIZE compacted

    # Reports and pointers of the first date went; nothing a kept pointer names was removed.
    assert report.reports_removed == [f"_reports/{BACKFILL_DATES[0]}"]
    assert report.pointers_removed == [f"_models/ranker/by_ds/{BACKFILL_DATES[0]}.json"]
    assert sorted(report.artifacts_removed) == sorted(
        [f"_models/ranker/{orphan.name}", str(dead_serving.relative_to(config.artifacts_dir))]
    )
    assert not orphan.exists() and not dead_serving.exists()
    for ds in BACKFILL_DATES[1:]:
        pointer = json.loads((rankers / "by_ds" / f"{ds}.json").read_text())
        assert artifacts.is_verified(rankers / pointer["version"], "test")
        assert (config.reports_dir / ds.isoformat() / "publish.json").is_file()
    fusion = json.loads((config.models_dir / "fusion" / "current.json").read_text())["fusion_version"]
    assert artifacts.is_verified(config.models_dir / "fusion" / fusion, "test")
    assert report.bytes_freed_files > 1000
    assert "ranker-000000000000" in (config.reports_dir / END.isoformat() / "upkeep.md").read_text()
    assert "ranker-000000000000" in (config.reports_dir / END.isoformat() / "upkeep-dry-run.md").read_text()

    # Again (what a dry run plans, which is what a real run would do, without compacting every table a
    # second time): nothing more to remove or delete.
    again = run_upkeep(spark, config, END, time_travel_days=7, eval_days=28, keep_days=1, dry_run=True)
    assert (again.reports_removed, again.pointers_removed, again.artifacts_removed) == ([], [], [])
    assert sum(t["rows_deleted"] for t in again.tables) == 0


def test_upkeep_refuses_a_time_travel_window_readers_cannot_live_with(spark, tmp_path):
    from jobs.config import load_config

    with pytest.raises(ValueError, match="--time-travel-days must be at least 1"):
        run_upkeep(spark, load_config(lake=str(tmp_path / "lake")), END, time_travel_days=0)
