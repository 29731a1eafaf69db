"""Consumers reading `recommendations`: the newest complete date, every reader agreeing, time travel.

A copy of the suite's built lake (conftest's `built_lake`, fused and trained) is published for two dates,
the earlier one first, so the table has three versions: 0 (created empty), 1 (only EARLIER), 2 (EARLIER
and DS). The readers in these tests are the ones the README shows; Spark's plain read of a partition
is the reference the others are compared with.
"""

from __future__ import annotations

import collections
import datetime as dt
import shutil

import pandas as pd
import pytest
from conftest import BUILT_DEMO

from jobs import lake
from jobs.consume import format_sample, latest_ds, latest_view, published_dates, read_date, read_latest
from jobs.schemas import RECOMMENDATIONS

DS = BUILT_DEMO.end_date
EARLIER = DS - dt.timedelta(days=3)
K = 5


@pytest.fixture(scope="module")
def published(spark, built_lake, tmp_path_factory):
    """(config, table path, version holding only EARLIER, version holding both dates)."""
    from jobs.fuse import run_fuse
    from jobs.publish import run_publish

    config = built_lake.copy_to(tmp_path_factory.mktemp("consume"))
    # EARLIER gets its own item vectors; the DS model is named (a cheap stand-in for a train of EARLIER).
    run_fuse(spark, config, EARLIER)
    earlier = run_publish(spark, config, EARLIER, k=K, model_version=built_lake.ranker_version)
    latest = run_publish(spark, config, DS, k=K)
    return config, config.table_path(RECOMMENDATIONS.name), earlier.table_version, latest.table_version


def spark_partition(spark, path, ds: dt.date, version: int | None = None) -> pd.DataFrame:
    """The reference: Spark's own read of one date, in (user_id, rank) order."""
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    rows = reader.load(path).where(f"ds = '{ds.isoformat()}'").toPandas()
    return rows.sort_values(["user_id", "rank"], ignore_index=True)


def lists(frame: pd.DataFrame) -> collections.Counter:
    """The multiset of (user_id, rank, item_id): what two readers must agree on."""
    return collections.Counter(
        (int(u), int(r), int(i)) for u, r, i in zip(frame["user_id"], frame["rank"], frame["item_id"], strict=True)
    )


@pytest.mark.spark
@pytest.mark.airflow
def test_a_run_of_the_consumer_dag_digests_the_newest_date(spark, published, airflow_db):
    """A real Airflow run (`dag.test()`) of the example consumer, started by hand with the lake as its
    param: its digest counts, per item, the users whose newest lists hold it, at their median rank."""
    from airflow.dag_processing.dagbag import DagBag
    from conftest import REPO_ROOT

    config, path, _, _ = published
    consumer = DagBag(dag_folder=str(REPO_ROOT / "dags")).dags["modalrank_consumer_example"]
    run = consumer.test(logical_date=dt.datetime.now(dt.UTC), run_conf={"lake": config.lake})
    assert run.state == "success"
    digest = pd.read_csv(config.artifacts_dir / "_exports" / DS.isoformat() / "recommendations_digest.csv")
    newest = spark_partition(spark, path, DS)
    by_item = newest.groupby("item_id")
    assert dict(zip(digest.item_id, digest.users, strict=True)) == by_item.user_id.nunique().to_dict()
    assert dict(zip(digest.item_id, digest.median_rank, strict=True)) == by_item["rank"].median().to_dict()
    assert digest.users.tolist() == sorted(digest.users, reverse=True)


@pytest.mark.spark
def test_latest_ds_is_the_newest_published_date(spark, published):
    _, path, earlier_version, latest_version = published
    assert latest_version == earlier_version + 1
    assert latest_ds(path) == DS
    assert latest_ds(path, version=earlier_version) == EARLIER
    assert latest_ds(path, version=0) is None  # the table as created, before any publish


@pytest.mark.spark
def test_read_latest_is_exactly_the_newest_partition(spark, published):
    _, path, _, _ = published
    ours, reference = read_latest(path), spark_partition(spark, path, DS)
    assert len(ours) == len(reference) > 0 and set(ours["ds"]) == {DS}
    assert list(ours.columns) == RECOMMENDATIONS.schema.fieldNames()
    for column in ("user_id", "rank", "item_id", "score", "model_version"):
        assert ours[column].tolist() == reference[column].tolist(), column
    assert [list(m) for m in ours["modalities"]] == [list(m) for m in reference["modalities"]]
    # delta-rs gives UTC-aware timestamps, Spark naive UTC ones: the same instants.
    assert ours["generated_at"].dt.tz_convert(None).tolist() == reference["generated_at"].tolist()
    assert read_latest(path, columns=["user_id", "rank"]).columns.tolist() == ["user_id", "rank"]


@pytest.mark.spark
def test_spark_pandas_pyarrow_delta_rs_and_duckdb_read_the_same_lists(spark, published):
    import duckdb
    from deltalake import DeltaTable

    _, path, _, _ = published
    reference = lists(spark_partition(spark, path, DS))

    # The README's examples, reader by reader.
    spark_sql = spark.sql(
        f"SELECT user_id, rank, item_id FROM delta.`{path}` WHERE ds = (SELECT MAX(ds) FROM delta.`{path}`)"
    ).toPandas()
    view = latest_view(spark, path).select("user_id", "rank", "item_id").toPandas()
    view_by_name = spark.sql("SELECT user_id, rank, item_id FROM recommendations_latest").toPandas()
    newest = latest_ds(path)
    assert max(partition["ds"] for partition in DeltaTable(path).partitions()) == newest.isoformat()
    arrow = DeltaTable(path).to_pyarrow_table(partitions=[("ds", "=", newest.isoformat())])
    delta_pandas = DeltaTable(path).to_pandas(partitions=[("ds", "=", newest.isoformat())])
    recommendations = DeltaTable(path).to_pyarrow_dataset()  # noqa: F841 (DuckDB finds it by its name)
    from_duckdb = duckdb.sql(
        "SELECT user_id, rank, item_id FROM recommendations WHERE ds = (SELECT MAX(ds) FROM recommendations)"
    ).df()

    readers = {
        "spark sql": spark_sql,
        "latest view": view,
        "latest view by name": view_by_name,
        "read_latest": read_latest(path),
        "pyarrow": arrow.to_pandas(),
        "delta-rs pandas": delta_pandas,
        "duckdb": from_duckdb,
    }
    for name, frame in readers.items():
        assert lists(frame) == reference, name


@pytest.mark.spark
def test_duckdb_top_items_query_matches_pandas(spark, published):
    import duckdb
    from deltalake import DeltaTable

    _, path, _, _ = published
    recommendations = DeltaTable(path).to_pyarrow_dataset()  # noqa: F841 (DuckDB finds it by its name)
    top = duckdb.sql(
        """
        SELECT item_id, COUNT(*) AS users, AVG(rank) AS mean_rank
        FROM recommendations
        WHERE ds = (SELECT MAX(ds) FROM recommendations) AND rank <= 3
        GROUP BY item_id ORDER BY users DESC, item_id LIMIT 10
        """
    ).df()
    latest = read_latest(path)
    by_hand = (
        latest[latest["rank"] <= 3]
        .groupby("item_id")["rank"]
        .agg(users="count", mean_rank="mean")
        .reset_index()
        .sort_values(["users", "item_id"], ascending=[False, True])
        .head(10)
    )
    assert top["item_id"].tolist() == by_hand["item_id"].tolist()
    assert top["users"].tolist() == by_hand["users"].tolist()
    assert top["mean_rank"].tolist() == pytest.approx(by_hand["mean_rank"].tolist())


@pytest.mark.spark
def test_time_travel_reads_the_table_before_the_newer_date(spark, published):
    from deltalake import DeltaTable

    _, path, earlier_version, _ = published
    # Before DS was published, the table held EARLIER alone, in delta-rs and in Spark.
    before = DeltaTable(path, version=earlier_version)
    assert published_dates(before) == [EARLIER]
    assert set(before.to_pandas(columns=["ds"])["ds"]) == {EARLIER}
    spark_before = spark.read.format("delta").option("versionAsOf", earlier_version).load(path)
    assert {row.ds for row in spark_before.select("ds").distinct().collect()} == {EARLIER}
    sql_before = spark.sql(f"SELECT DISTINCT ds FROM delta.`{path}` VERSION AS OF {earlier_version}").collect()
    assert [row.ds for row in sql_before] == [EARLIER]
    # Both histories list the versions, newest first: the two publishes are WRITE commits.
    history = spark.sql(f"DESCRIBE HISTORY delta.`{path}`").select("version", "operation").collect()
    assert [(row.version, row.operation) for row in history][:2] == [
        (earlier_version + 1, "WRITE"),
        (earlier_version, "WRITE"),
    ]
    assert [entry["version"] for entry in DeltaTable(path).history()][:2] == [earlier_version + 1, earlier_version]
    travelled = read_date(path, EARLIER, version=earlier_version)
    assert lists(travelled) == lists(spark_partition(spark, path, EARLIER, version=earlier_version))
    # Publishing DS left EARLIER's partition as it was.
    assert lists(read_date(path, EARLIER)) == lists(travelled) and len(travelled) > 0
    with pytest.raises(ValueError, match=f"run date {DS} is not published in version {earlier_version}"):
        read_date(path, DS, version=earlier_version)
    assert published_dates(DeltaTable(path)) == [EARLIER, DS]


@pytest.mark.spark
def test_latest_view_finds_a_newer_date_without_registering_again(spark, published, tmp_path):
    from pyspark.sql import functions as F

    config, path, _, _ = published
    copy = str(tmp_path / "recommendations")
    shutil.copytree(path, copy)  # a Delta table's log holds relative paths: the copy is a table too
    view = latest_view(spark, copy, name="copy_latest")
    assert {row.ds for row in view.select("ds").distinct().collect()} == {DS}

    later = DS + dt.timedelta(days=1)
    rows = spark.read.format("delta").load(copy).where(f"ds = '{DS.isoformat()}'")
    rows.withColumn("ds", F.date_add("ds", 1)).write.format("delta").mode("overwrite").option(
        "replaceWhere", f"ds = '{later.isoformat()}'"
    ).save(copy)

    again = spark.sql("SELECT ds, user_id, rank, item_id FROM copy_latest").toPandas()
    assert set(again["ds"]) == {later} and latest_ds(copy) == later
    assert lists(again) == lists(spark_partition(spark, path, DS))


@pytest.mark.spark
def test_an_unpublished_table_has_no_latest_date(spark, lake_config):
    path = lake_config.table_path(RECOMMENDATIONS.name)
    with pytest.raises(FileNotFoundError, match="run publish first"):
        latest_ds(path)
    with pytest.raises(FileNotFoundError, match="run publish first"):
        latest_view(spark, path)
    lake.ensure_table(spark, lake_config, RECOMMENDATIONS)  # created empty, as a reader of the lake may do
    assert latest_ds(path) is None
    with pytest.raises(ValueError, match="no run date is published"):
        read_latest(path)


@pytest.mark.spark
def test_format_sample_shows_the_first_users_top_items(spark, published):
    _, path, _, _ = published
    latest = read_latest(path)
    text = format_sample(latest, users=2, per_user=3)
    first_two = sorted(latest["user_id"].unique())[:2]
    lines = text.splitlines()
    assert lines[0].startswith(f"recommendations for {DS} (model ranker-")
    assert [line for line in lines if line.startswith("user ")] == [f"user {user}" for user in first_two]
    first = latest[latest["user_id"] == first_two[0]]
    items = first.sort_values("rank")["item_id"].head(3).tolist()
    assert [line.split()[2] for line in lines[2:5]] == [str(item) for item in items]
    assert [line.split()[0] for line in lines[2:5]] == ["1.", "2.", "3."]


def test_format_sample_text_with_titles():
    frame = pd.DataFrame(
        {
            "ds": [DS] * 5,
            "user_id": [7, 7, 7, 3, 3],
            "rank": [2, 1, 3, 1, 2],
            "item_id": [11, 10, 12, 20, 21],
            "score": [0.5, 0.75, 0.25, 2.0, 1.0],
            "model_version": ["ranker-abc"] * 5,
        }
    )
    text = format_sample(frame, users=1, per_user=2, titles={20: "Heat (1995)"})
    assert text.splitlines() == [
        f"recommendations for {DS} (model ranker-abc): 2 users, 5 rows; showing 1 users, top 2 each",
        "user 3",
        "    1. item 20       score   2.0000  Heat (1995)",
        "    2. item 21       score   1.0000",
    ]
    assert format_sample(frame.iloc[:0]) == "no recommendations to show"
