"""Ingestion on real Spark and real Delta tables: demo data, every bad-row reason, the legacy
MovieLens layouts, incremental reruns and the as-of cutoff."""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import itertools
import json
from collections import Counter
from pathlib import Path

import deltalake
import pytest
from conftest import SMALL_DEMO

from infra.tools.demo_data import generate_demo_data
from jobs import cli, lake
from jobs.config import load_config
from jobs.ingest import IngestReport, IngestRequest, run_ingest
from jobs.schemas import CATALOG, DEFERRED, INTERACTIONS, QUARANTINE

pytestmark = pytest.mark.spark

END = SMALL_DEMO.end_date
FIRST_DAY = END - dt.timedelta(days=SMALL_DEMO.days - 1)


def ingest(spark, config, **request) -> IngestReport:
    return run_ingest(spark, config, IngestRequest(**request))


def rows(spark, config, spec) -> list[dict]:
    return [row.asDict() for row in lake.read_table(spark, config, spec).collect()]


def quarantine_reasons(spark, config, ds: dt.date) -> Counter:
    return Counter(row["reason"] for row in rows(spark, config, QUARANTINE) if row["ds"] == ds)


def assert_nothing_dropped(report: IngestReport) -> None:
    assert report.items_read == (
        report.items_ingested + report.items_deferred + report.items_quarantined + report.items_superseded
    )
    assert report.interactions_read == (
        report.interactions_ingested
        + report.interactions_deferred
        + report.interactions_quarantined
        + report.interactions_superseded
    )
    for account in report.inputs:
        assert account.problems() == [], account


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def demo_request(folder: Path, ds: dt.date = END) -> dict:
    return {"ds": ds, "catalog": folder / "catalog.csv", "interactions": folder / "interactions.csv"}


# ---------------------------------------------------------------------------------------------------
# Demo data


def test_demo_data_lands_whole_and_a_rerun_changes_nothing(spark, lake_config, small_demo, capsys):
    catalog_csv = read_csv(small_demo / "catalog.csv")
    good_events = len(read_csv(small_demo / "interactions.csv")) - 4  # the generator's 4 bad rows

    first = ingest(spark, lake_config, **demo_request(small_demo))
    assert_nothing_dropped(first)
    assert (first.items_new, first.items_deferred, first.items_quarantined) == (SMALL_DEMO.items, 0, 0)
    assert (first.interactions_new, first.interactions_quarantined) == (good_events, 4)
    assert quarantine_reasons(spark, lake_config, END) == Counter(
        {"unknown item id": 1, "rating out of range [0, 5]": 1, "duplicate interaction": 1, "missing user id": 1}
    )

    catalog = {row["item_id"]: row for row in rows(spark, lake_config, CATALOG)}
    assert len(catalog) == SMALL_DEMO.items
    for source_row in catalog_csv:
        item = catalog[int(source_row["item_id"])]
        assert item["title"] == source_row["title"]
        assert item["genres"] == source_row["genres"].split("|")
        assert item["first_seen_ds"] == item["updated_ds"] == END
        for kind in ("poster", "audio", "video"):
            given = source_row[f"{kind}_path"]
            # Media paths become absolute files under the demo folder, each with its content hash.
            assert item[f"{kind}_path"] == (str((small_demo / given).resolve()) if given else None)
            assert (item[f"{kind}_hash"] is None) == (not given)
    assert len(rows(spark, lake_config, INTERACTIONS)) == good_events

    before = sorted(rows(spark, lake_config, CATALOG), key=lambda row: row["item_id"])
    second = ingest(spark, lake_config, **demo_request(small_demo))
    assert (second.items_new, second.items_changed, second.items_unchanged) == (0, 0, SMALL_DEMO.items)
    assert (second.interactions_new, second.interactions_changed) == (0, 0)
    assert sorted(rows(spark, lake_config, CATALOG), key=lambda row: row["item_id"]) == before
    assert len(rows(spark, lake_config, INTERACTIONS)) == good_events
    # The date's quarantine rows are replaced, not appended.
    assert sum(quarantine_reasons(spark, lake_config, END).values()) == 4

    report = lake_config.reports_dir / END.isoformat() / "ingest.md"
    assert "| items | 40 | 0 | 0 | 40 | 0 | 0 | 0 |" in report.read_text()

    # `modalrank tables` reads the same tables through delta-rs, without Spark.
    assert cli.main(["tables", "--lake", lake_config.lake]) == 0
    listing = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert " 40 rows " in listing["catalog"]
    assert f" {good_events:,} rows " in listing["interactions"]
    assert " 4 rows " in listing["quarantine"]


def test_a_changed_overview_changes_only_that_item(spark, lake_config, tmp_path):
    # Its own copy of the demo, edited in place: media paths are part of an item's row, so a copy
    # in another folder would (rightly) count every item as changed.
    edited = tmp_path / "demo"
    generate_demo_data(edited, SMALL_DEMO)
    ingest(spark, lake_config, **demo_request(edited, ds=END - dt.timedelta(days=1)))
    before = {row["item_id"]: row for row in rows(spark, lake_config, CATALOG)}

    catalog = read_csv(edited / "catalog.csv")
    catalog[4]["overview"] = "A brand new plot summary."
    with (edited / "catalog.csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(catalog[0]))
        writer.writeheader()
        writer.writerows(catalog)
    changed_id = int(catalog[4]["item_id"])

    report = ingest(spark, lake_config, **demo_request(edited))
    assert report.items_changed == 1
    after = {row["item_id"]: row for row in rows(spark, lake_config, CATALOG)}
    changed = [
        item_id for item_id in after if before.get(item_id, {}).get("text_hash") != after[item_id]["text_hash"]
    ]
    new_items = set(after) - set(before)
    assert [item_id for item_id in changed if item_id not in new_items] == [changed_id]
    item = after[changed_id]
    assert item["overview"] == "A brand new plot summary."
    assert item["poster_hash"] == before[changed_id]["poster_hash"]  # same file, same hash
    assert (item["first_seen_ds"], item["updated_ds"]) == (END - dt.timedelta(days=1), END)


def test_the_run_date_is_an_as_of_cutoff(spark, lake_config, small_demo):
    catalog_csv = read_csv(small_demo / "catalog.csv")
    available = {int(r["item_id"]) for r in catalog_csv if dt.date.fromisoformat(r["available_from"]) <= FIRST_DAY}
    report = ingest(spark, lake_config, **demo_request(small_demo, ds=FIRST_DAY))
    assert_nothing_dropped(report)
    assert report.items_deferred == SMALL_DEMO.items - len(available) > 0
    assert {row["item_id"] for row in rows(spark, lake_config, CATALOG)} == available
    events = rows(spark, lake_config, INTERACTIONS)
    assert report.interactions_deferred > 0
    assert max(row["event_time"] for row in events).date() == FIRST_DAY


# ---------------------------------------------------------------------------------------------------
# Bad rows: each reason lands in quarantine, the rest is ingested


def write_bad_inputs(folder: Path) -> dict:
    media = folder / "media"
    (media / "posters").mkdir(parents=True)
    (media / "posters" / "1.jpg").write_bytes(b"\xff\xd8 one poster")
    (folder / "outside.jpg").write_bytes(b"outside the media root")
    catalog = (
        b"item_id,title,overview,genres,tags,poster_path,available_from\n"
        b'1,Good One (1999),"Plot, with a comma",Drama|Comedy,Fun|fun,posters/1.jpg,\n'
        b"2,Missing Poster,,Drama,,posters/2.jpg,\n"
        b"3,Escapes,,Drama,,../outside.jpg,\n"
        b"1,Duplicate Of One,,,,,\n"
        b",No Id,,,,,\n"
        b"x7,Bad Id,,,,,\n"
        b"4,,no title,,,,\n"
        b"5,Caf\xe9 in Latin-1,,,,,\n"
        b"6,Extra Field,,,,,,surplus\n"
        b"7,Bad Date,,,,,soon\n"
        b"8,Not Yet Available,,,,,2030-01-01\n"
    )
    (media / "catalog.csv").write_bytes(catalog)
    (folder / "interactions.csv").write_text(
        "user_id,item_id,rating,weight,event_time,source\n"
        "1,1,4.0,,2026-11-20T10:00:00Z,demo\n"
        "1,1,4.0,,2026-11-20T10:00:00Z,demo\n"
        ",1,4.0,,2026-11-20T10:00:00Z,demo\n"
        "abc,1,4.0,,2026-11-20T10:00:00Z,demo\n"
        "2,,4.0,,2026-11-20T10:00:00Z,demo\n"
        "2,zz,4.0,,2026-11-20T10:00:00Z,demo\n"
        "2,1,high,,2026-11-20T10:00:00Z,demo\n"
        "2,1,6.0,,2026-11-20T10:00:00Z,demo\n"
        "2,999,3.0,,2026-11-20T10:00:00Z,demo\n"
        "3,1,3.0,,,demo\n"
        "3,1,3.0,,yesterday,demo\n"
        "4,1,3.0,-1,2026-11-20T10:00:00Z,demo\n"
        "4,2,,2.5,1763632800,click\n"
        "5,2,3.0,,2026-12-24T10:00:00Z,demo\n"
    )
    (folder / "overviews.csv").write_text("item_id,overview\n2,Overview from a side file\n999,For nobody\n")
    (folder / "extra_posters").mkdir()
    (folder / "extra_posters" / "2.jpg").write_bytes(b"poster two")
    (folder / "extra_posters" / "cover.jpg").write_bytes(b"not named by id")
    # Entries the poster reader does not take: each is reported, none ignored in silence.
    (folder / "extra_posters" / "2.tiff").write_bytes(b"another format")
    (folder / "extra_posters" / ".DS_Store").write_bytes(b"a desktop's hidden file")
    (folder / "extra_posters" / "_2.jpg").write_bytes(b"a hidden poster")
    return {
        "catalog": media / "catalog.csv",
        "interactions": folder / "interactions.csv",
        "overviews": folder / "overviews.csv",
        "posters": folder / "extra_posters",
    }


def test_every_bad_row_is_quarantined_with_its_reason(spark, lake_config, tmp_path):
    ds = dt.date(2026, 11, 25)
    report = ingest(spark, lake_config, ds=ds, **write_bad_inputs(tmp_path))
    assert_nothing_dropped(report)
    assert quarantine_reasons(spark, lake_config, ds) == Counter(
        {
            # items (and an item-id problem in an interaction: one each)
            "missing item id": 2,
            "unparseable item id": 2,
            "media path escapes media root": 1,
            "duplicate item id": 1,
            "missing title": 1,
            "undecodable text (not valid UTF-8)": 1,
            "malformed row: more fields than the header": 1,
            "unparseable available_from": 1,
            # the catalog names posters/2.jpg, which does not exist (the poster folder has one)
            "poster file not found": 1,
            # an overview for item 999, an interaction with item 999, a poster not named by an id
            "unknown item id": 2,
            "file name is not an item id": 1,
            "poster file not used: .tiff is not one of jpg, jpeg, png, webp": 1,
            "poster file not used: a hidden name (starts with '.')": 1,
            "poster file not used: a hidden name (starts with '_')": 1,
            # interactions
            "duplicate interaction": 1,
            "missing user id": 1,
            "unparseable user id": 1,
            "unparseable rating": 1,
            "rating out of range [0, 5]": 1,
            "missing event time": 1,
            "unparseable event time": 1,
            "unparseable or negative weight": 1,
        }
    )
    assert (report.items_new, report.items_deferred, report.items_quarantined) == (2, 1, 8)
    assert (report.interactions_new, report.interactions_deferred, report.interactions_quarantined) == (2, 1, 11)

    catalog = {row["item_id"]: row for row in rows(spark, lake_config, CATALOG)}
    assert set(catalog) == {1, 2}
    assert catalog[1]["tags"] == ["fun"]
    assert catalog[1]["overview"] == "Plot, with a comma"
    # Item 2's catalog poster is missing, but the poster folder has one: the folder wins.
    assert catalog[2]["overview"] == "Overview from a side file"
    assert catalog[2]["poster_path"].endswith("extra_posters/2.jpg") and catalog[2]["poster_hash"]

    events = {(row["user_id"], row["item_id"]): row for row in rows(spark, lake_config, INTERACTIONS)}
    assert set(events) == {(1, 1), (4, 2)}
    assert events[(4, 2)]["rating"] is None and events[(4, 2)]["weight"] == 2.5
    assert events[(4, 2)]["event_time"] == dt.datetime(2025, 11, 20, 10, 0)

    quarantined = [
        row for row in rows(spark, lake_config, QUARANTINE) if row["reason"] == "media path escapes media root"
    ]
    assert quarantined[0]["item_id"] == 3 and quarantined[0]["source_file"].endswith("media/catalog.csv")


def test_a_missing_media_file_costs_the_modality_not_the_item(spark, lake_config, tmp_path):
    inputs = write_bad_inputs(tmp_path)
    ingest(
        spark,
        lake_config,
        ds=dt.date(2026, 11, 25),
        catalog=inputs["catalog"],
        interactions=inputs["interactions"],
    )
    catalog = {row["item_id"]: row for row in rows(spark, lake_config, CATALOG)}
    assert catalog[2]["poster_path"] is None and catalog[2]["poster_hash"] is None
    reasons = quarantine_reasons(spark, lake_config, dt.date(2026, 11, 25))
    assert reasons["poster file not found"] == 1


# ---------------------------------------------------------------------------------------------------
# Legacy MovieLens layouts, written by the tests in their real encodings


ML100K_ITEMS = [
    "1|Toy Story (1995)|01-Jan-1995||http://us.imdb.com/M/title-exact?Toy%20Story%20(1995)|0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0",
    "2|Café au lait (1993)|01-Jan-1993||http://us.imdb.com/M/title-exact?Caf|0|0|0|0|0|1|0|0|1|0|0|0|0|0|1|0|0|0|0",
    "3|Broken line (1990)|01-Jan-1990",
]


def test_ml100k_layout(spark, lake_config, tmp_path):
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    (folder / "u.item").write_bytes(("\n".join(ML100K_ITEMS) + "\n").encode("latin-1"))
    (folder / "u.data").write_text("196\t1\t3\t881250949\n186\t2\t5\t891717742\n22\t1\t6\t878887116\n244\t2\n")
    report = ingest(spark, lake_config, ds=dt.date(2026, 11, 25), movielens=folder)
    assert report.source == "movielens-100k"
    assert_nothing_dropped(report)
    catalog = {row["item_id"]: row for row in rows(spark, lake_config, CATALOG)}
    assert catalog[1]["genres"] == ["Animation", "Children's", "Comedy"]
    assert catalog[2]["title"] == "Café au lait (1993)"  # decoded as Latin-1, not mangled
    assert catalog[2]["genres"] == ["Comedy", "Drama", "Romance"]
    assert catalog[2]["year"] == 1993
    assert set(catalog) == {1, 2}
    events = rows(spark, lake_config, INTERACTIONS)
    assert sorted((row["user_id"], row["item_id"], row["rating"]) for row in events) == [
        (186, 2, 5.0),
        (196, 1, 3.0),
    ]
    assert events[0]["event_time"].year in (1997, 1998)
    assert quarantine_reasons(spark, lake_config, dt.date(2026, 11, 25)) == Counter(
        {
            "malformed row: expected 24 fields, found 3": 1,
            "rating out of range [1, 5]": 1,
            "malformed row: expected 4 fields, found 2": 1,
        }
    )


def test_ml1m_layout(spark, lake_config, tmp_path):
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    (folder / "movies.dat").write_bytes(
        "1::Toy Story (1995)::Animation|Children's|Comedy\n2::Misérables, Les (1995)::Drama|Musical\n".encode(
            "latin-1"
        )
    )
    (folder / "ratings.dat").write_text("1::1::5::978300760\n1::2::3::978302109\n2::3::4::978301968\n")
    report = ingest(spark, lake_config, ds=dt.date(2026, 11, 25), movielens=folder)
    assert report.source == "movielens-1m"
    catalog = {row["item_id"]: row for row in rows(spark, lake_config, CATALOG)}
    assert catalog[2]["title"] == "Misérables, Les (1995)"
    assert catalog[2]["genres"] == ["Drama", "Musical"]
    assert report.interactions_new == 2
    assert quarantine_reasons(spark, lake_config, dt.date(2026, 11, 25)) == Counter({"unknown item id": 1})


# ---------------------------------------------------------------------------------------------------
# Real data: ml-latest-small with overviews and posters from ../shared/data


@pytest.mark.shared_data
def test_ml_latest_small_with_overviews_and_posters(spark, lake_config):
    from conftest import shared_path

    movielens = shared_path("ml-latest-small")
    request = {
        "ds": dt.date(2026, 11, 25),
        "movielens": movielens,
        "overviews": shared_path("overviews", "movies_with_overview.csv"),
        "posters": shared_path("posters", "images"),
    }
    first = ingest(spark, lake_config, **request)
    assert (first.items_new, first.interactions_new, first.items_quarantined, first.interactions_quarantined) == (
        9742,
        100836,
        0,
        0,
    )
    # 3,872 posters, 2,947 of them for ml-latest-small movies: the other 925 are quarantined, not lost.
    assert quarantine_reasons(spark, lake_config, request["ds"]) == Counter({"unknown item id": 925})

    catalog = lake.read_table(spark, lake_config, CATALOG)
    interactions = lake.read_table(spark, lake_config, INTERACTIONS)
    assert interactions.select("user_id").distinct().count() == 610
    assert catalog.where("overview IS NOT NULL").count() == 9403
    assert catalog.where("poster_hash IS NOT NULL").count() == 2947
    assert catalog.where("size(tags) > 0").count() == 1572  # distinct movieIds in tags.csv
    toy_story = catalog.where("item_id = 1").first()
    assert (toy_story["title"], toy_story["year"], toy_story["imdb_id"], toy_story["tmdb_id"]) == (
        "Toy Story (1995)",
        1995,
        "0114709",
        862,
    )
    assert toy_story["tags"] == ["fun", "pixar"]

    second = ingest(spark, lake_config, **request)
    assert (second.items_new, second.items_changed, second.items_unchanged) == (0, 0, 9742)
    assert (second.interactions_new, second.interactions_changed, second.interactions_unchanged) == (0, 0, 100836)
    assert catalog.exceptAll(lake.read_table(spark, lake_config, CATALOG)).count() == 0

    # Readers outside Spark see the same tables: delta-rs, and pandas through pyarrow.
    assert deltalake.DeltaTable(lake_config.table_path("catalog")).to_pyarrow_table().num_rows == 9742
    ratings = deltalake.DeltaTable(lake_config.table_path("interactions")).to_pandas()
    assert len(ratings) == 100836 and ratings["rating"].between(0.5, 5.0).all()


# ---------------------------------------------------------------------------------------------------
# Nothing vanishes: every input's rows add up, a stray quote costs one line, deferred rows wait in the lake


def accounts(report: IngestReport) -> dict[tuple[str, str], tuple]:
    """{(file name, origin): (lines, rows, ingested, deferred, quarantined, superseded)}."""
    return {
        (Path(a.input).name, a.origin): (a.lines, a.rows, a.ingested, a.deferred, a.quarantined, a.superseded)
        for a in report.inputs
    }


def test_a_long_quoted_field_is_one_well_formed_record(spark, tmp_path):
    """An imported vector file's embedding: thousands of characters between two quotes (MMTF-14K's
    lines are ~2 kB). The quote check must not take a stack frame per character."""
    from jobs.sources import RecordLimits
    from jobs.sources.files import read_csv_with_header

    vector = ",".join(f"{i / 7:.12f}" for i in range(4_000))  # ~60 kB
    path = tmp_path / "vectors.csv"
    path.write_text(f'item_id,embedding\n1,"{vector}"\n2,"a ""quoted"" word"\n3,"open\n', encoding="utf-8")
    rows = read_csv_with_header(spark, path, RecordLimits.of(load_config())).orderBy("row_order").toPandas()
    assert rows["item_id"].tolist() == ["1", "2", "3"]
    assert rows["embedding"].tolist()[:2] == [vector, 'a "quoted" word']
    assert rows["malformed"].tolist() == [None, None, "malformed row: unterminated quote"]


def test_an_unterminated_quote_costs_its_line_and_every_file_adds_up(spark, lake_config, tmp_path):
    from jobs.run_report import write_run_report

    ds = dt.date(2026, 11, 25)
    (tmp_path / "catalog.csv").write_text(
        "item_id,title,overview,genres,available_from\n"
        '1,First,"A plot\nover two lines",Drama,\n'
        '2,"Broken title,no closing quote,Drama,\n'
        "3,Third,Plain,Comedy,\n"
        '4,Fourth,"Quoted ""word""",Drama,\n'
    )
    (tmp_path / "interactions.csv").write_text(
        "user_id,item_id,rating,weight,event_time,source\n"
        "1,1,4.0,,2026-11-20T10:00:00Z,demo\n"
        '2,3,"3.5,,2026-11-20T10:00:00Z,demo\n'
        "3,3,5.0,,2026-11-20T11:00:00Z,demo\n"
        "\n"
        "4,4,2.0,,2026-11-20T12:00:00Z,demo\n"
    )
    report = ingest(
        spark, lake_config, ds=ds, catalog=tmp_path / "catalog.csv", interactions=tmp_path / "interactions.csv"
    )
    assert_nothing_dropped(report)
    # lines (non-blank, after the header), rows, ingested, deferred, quarantined, superseded
    assert accounts(report) == {
        ("catalog.csv", "source"): (5, 4, 3, 0, 1, 0),
        ("interactions.csv", "source"): (4, 4, 3, 0, 1, 0),
    }
    catalog = {row["item_id"]: row for row in rows(spark, lake_config, CATALOG)}
    assert set(catalog) == {1, 3, 4}
    assert catalog[1]["overview"] == "A plot\nover two lines"
    assert catalog[4]["overview"] == 'Quoted "word"'
    assert {(r["user_id"], r["item_id"]) for r in rows(spark, lake_config, INTERACTIONS)} == {
        (1, 1),
        (3, 3),
        (4, 4),
    }
    quarantined = sorted((r["record"], r["reason"]) for r in rows(spark, lake_config, QUARANTINE))
    assert quarantined == [
        ('2,"Broken title,no closing quote,Drama,', "malformed row: unterminated quote"),
        ('2,3,"3.5,,2026-11-20T10:00:00Z,demo', "malformed row: unterminated quote"),
    ]

    # The per-file table is in the ingest report (JSON and Markdown) and in the run report.
    folder = lake_config.reports_dir / ds.isoformat()
    payload = json.loads((folder / "ingest.json").read_text())
    by_name = {Path(row["input"]).name: row for row in payload["inputs"]}
    assert (by_name["catalog.csv"]["rows"], by_name["catalog.csv"]["quarantined"]) == (4, 1)
    assert "| items | source | 5 | 4 | 3 | 0 | 1 | 0 |" in (folder / "ingest.md").read_text()
    run = write_run_report(lake_config, ds)
    assert [row["rows"] for row in run.ingest_inputs] == [4, 4]
    assert "| interactions | source | 4 | 4 | 3 | 0 | 1 | 0 |" in (folder / "run.md").read_text()


# ---------------------------------------------------------------------------------------------------
# No line kills ingest: pathological quoting, length and compression cost their record or file


def test_the_spark_quote_check_agrees_with_the_scanner(spark):
    """Every line of up to 7 characters from `a`, `,` and `"`: the Spark check and `CsvScan` agree on
    which leave a quote open (3,280 lines, every arrangement of escapes, closes and stray quotes)."""
    from jobs.sources import CsvScan
    from jobs.sources.files import leaves_quote_open

    lines = ["".join(chars) for n in range(1, 8) for chars in itertools.product('a,"', repeat=n)]
    checked = spark.createDataFrame([(line,) for line in lines], "line STRING")
    spark_open = {
        row["line"]: row["open"]
        for row in checked.select("line", leaves_quote_open(checked["line"]).alias("open")).collect()
    }
    assert {line: CsvScan().feed(line).open for line in lines} == spark_open
    assert spark_open['a,"a'] and spark_open['""",a'] and not spark_open['"a""a"'] and not spark_open['a"a,a']


ESCAPES = '""' * 20_000  # one field of 20,000 escaped quotes: the old check's StackOverflowError
LONG = "x" * 150_000  # over the tests' bound of 100,000 characters


def bounded_config(lake_config):
    return lake_config.with_overrides(max_record_chars=100_000, max_decompressed_bytes=1_000_000)


def quarantined_records(spark, config) -> list[tuple]:
    return sorted(
        (Path(r["source_file"]).name, r["item_id"], r["user_id"], r["reason"], r["record"][:40], len(r["record"]))
        for r in rows(spark, config, QUARANTINE)
    )


def test_no_line_kills_ingest_of_a_generic_catalog_gzipped_events_and_a_gzip_bomb(spark, lake_config, tmp_path):
    config = bounded_config(lake_config)
    ds = dt.date(2026, 11, 25)
    catalog = (  # read with quoted line breaks (the multiline path)
        "item_id,title,overview,genres,available_from\n"
        "1,First,Plain,Drama,\n"
        f'2,"Quotes {ESCAPES}",Plain,Drama,\n'
        f"3,Long,{LONG},Drama,\n"
        f'4,"Never closed {ESCAPES},Plain,Drama,\n'
        '5,Fifth,"Two\nlines",Comedy,\n'
    )
    (tmp_path / "catalog.csv").write_text(catalog)
    unclosed_item, unclosed_event = (
        f'4,"Never closed {ESCAPES},Plain,Drama,',
        f'3,1,4.0,,2026-11-20T10:00:00Z,"{ESCAPES}',
    )
    events = (  # gzipped, within the bound (~190 kB decompressed); read line by line
        "user_id,item_id,rating,weight,event_time,source\n"
        "1,1,4.0,,2026-11-20T10:00:00Z,demo\n"
        f'2,2,4.0,,2026-11-20T10:00:00Z,"{ESCAPES}"\n'
        f'3,1,4.0,,2026-11-20T10:00:00Z,"{ESCAPES}\n'
        f"4,1,4.0,,2026-11-20T10:00:00Z,{LONG}\n"
        "5,5,3.0,,2026-11-20T11:00:00Z,demo\n"
    )
    (tmp_path / "interactions.csv.gz").write_bytes(gzip.compress(events.encode()))
    # 2.4 MB of overviews in 3 kB: over the 1 MB bound, so the file is refused before Spark reads it.
    bomb = "item_id,overview\n" + "1,A bombing overview\n" * 120_000
    (tmp_path / "overviews.csv.gz").write_bytes(gzip.compress(bomb.encode()))

    report = run_ingest(
        spark,
        config,
        IngestRequest(
            ds=ds,
            catalog=tmp_path / "catalog.csv",
            interactions=tmp_path / "interactions.csv.gz",
            overviews=tmp_path / "overviews.csv.gz",
        ),
    )
    assert_nothing_dropped(report)
    # lines, rows, ingested, deferred, quarantined, superseded
    assert accounts(report) == {
        ("catalog.csv", "source"): (6, 5, 3, 0, 2, 0),
        ("interactions.csv.gz", "source"): (5, 5, 3, 0, 2, 0),
        ("overviews.csv.gz", "source"): (1, 1, 0, 0, 1, 0),
    }
    catalog_rows = {row["item_id"]: row for row in rows(spark, config, CATALOG)}
    assert set(catalog_rows) == {1, 2, 5}
    assert catalog_rows[2]["title"] == "Quotes " + '"' * 20_000
    assert catalog_rows[5]["overview"] == "Two\nlines" and catalog_rows[1]["overview"] == "Plain"
    events_in = {(r["user_id"], r["item_id"]): r for r in rows(spark, config, INTERACTIONS)}
    assert set(events_in) == {(1, 1), (2, 2), (5, 5)}
    assert events_in[(2, 2)]["source"] == '"' * 20_000
    too_long = "malformed row: longer than 100000 characters"
    assert quarantined_records(spark, config) == [
        ("catalog.csv", 3, None, too_long, "3,Long," + "x" * 33, 1001),
        ("catalog.csv", 4, None, "malformed row: unterminated quote", unclosed_item[:40], len(unclosed_item)),
        (
            "interactions.csv.gz",
            1,
            3,
            "malformed row: unterminated quote",
            unclosed_event[:40],
            len(unclosed_event),
        ),
        ("interactions.csv.gz", 1, 4, too_long, "4,1,4.0,,2026-11-20T10:00:00Z,xxxxxxxxxx", 1001),
        (
            "overviews.csv.gz",
            None,
            None,
            "input refused: overviews.csv.gz is larger than 1000000 bytes decompressed",
            str(tmp_path / "overviews.csv.gz")[:40],
            len(str(tmp_path / "overviews.csv.gz")),
        ),
    ]


def test_no_line_kills_ingest_of_movielens_csv_files(spark, lake_config, tmp_path):
    config = bounded_config(lake_config)
    ds = dt.date(2026, 11, 25)
    folder = tmp_path / "ml-latest"
    folder.mkdir()
    (folder / "movies.csv").write_text(
        "movieId,title,genres\n"
        "1,Toy Story (1995),Animation\n"
        f'2,"{ESCAPES}",Drama\n'
        f"3,{LONG},Drama\n"
        f'4,"{ESCAPES},Drama\n'
        "5,Heat (1995),Action\n"
    )
    (folder / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n"
        "1,1,4.0,964982703\n"
        f'2,1,"4.0{ESCAPES},964982703\n'
        f"3,1,4.0,{LONG}\n"
        "4,5,3.5,964982703\n"
    )
    (folder / "tags.csv").write_text(
        "userId,movieId,tag,timestamp\n"
        "1,1,pixar,964982703\n"
        f'2,5,"said ""{ESCAPES}""",964982703\n'
        f'3,1,"{ESCAPES},964982703\n'
        f"4,1,{LONG},964982703\n"
    )
    (folder / "links.csv").write_text(f'movieId,imdbId,tmdbId\n1,0114709,862\n2,"{ESCAPES},1\n5,0113277,{LONG}\n')
    report = ingest(spark, config, ds=ds, movielens=folder)
    assert_nothing_dropped(report)
    assert accounts(report) == {
        ("movies.csv", "source"): (5, 5, 3, 0, 2, 0),
        ("ratings.csv", "source"): (4, 4, 2, 0, 2, 0),
        ("tags.csv", "source"): (4, 4, 2, 0, 2, 0),
        ("links.csv", "source"): (3, 3, 1, 0, 2, 0),
    }
    catalog_rows = {row["item_id"]: row for row in rows(spark, config, CATALOG)}
    assert set(catalog_rows) == {1, 2, 5}
    assert catalog_rows[2]["title"] == '"' * 20_000
    assert catalog_rows[1]["imdb_id"] == "0114709" and catalog_rows[1]["tmdb_id"] == 862
    assert catalog_rows[5]["tags"] == ["said " + '"' * 20_002]
    assert catalog_rows[1]["tags"] == ["pixar"] and catalog_rows[5]["imdb_id"] is None
    assert {(r["user_id"], r["item_id"]) for r in rows(spark, config, INTERACTIONS)} == {(1, 1), (4, 5)}
    assert Counter((Path(r["source_file"]).name, r["reason"]) for r in rows(spark, config, QUARANTINE)) == Counter(
        {
            (name, reason): 1
            for name in ("movies.csv", "ratings.csv", "tags.csv", "links.csv")
            for reason in ("malformed row: unterminated quote", "malformed row: longer than 100000 characters")
        }
    )


def test_no_line_kills_ingest_of_header_less_delimited_files(spark, lake_config, tmp_path):
    config = bounded_config(lake_config)
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    (folder / "movies.dat").write_bytes(
        f"1::Toy Story (1995)::Animation\n2::{LONG}::Drama\n3::Heat {ESCAPES} (1995)::Action\n".encode("latin-1")
    )
    (folder / "ratings.dat").write_text(f"1::1::5::978300760\n2::1::{LONG}::978300760\n3::3::4::978301968\n")
    report = ingest(spark, config, ds=dt.date(2026, 11, 25), movielens=folder)
    assert_nothing_dropped(report)
    catalog_rows = {row["item_id"]: row for row in rows(spark, config, CATALOG)}
    assert set(catalog_rows) == {1, 3}  # unquoted files: "" is two characters of text
    assert catalog_rows[3]["title"] == f"Heat {ESCAPES} (1995)"
    assert {(r["user_id"], r["item_id"]) for r in rows(spark, config, INTERACTIONS)} == {(1, 1), (3, 3)}
    assert quarantined_records(spark, config) == [
        ("movies.dat", 2, None, "malformed row: longer than 100000 characters", "2::" + "x" * 37, 1001),
        ("ratings.dat", 1, 2, "malformed row: longer than 100000 characters", "2::1::" + "x" * 34, 1001),
    ]


def test_deferred_rows_arrive_on_their_date_without_the_source_being_sent_again(spark, lake_config, tmp_path):
    day1, day2, day3 = dt.date(2026, 11, 20), dt.date(2026, 11, 21), dt.date(2026, 11, 22)
    header = "user_id,item_id,rating,weight,event_time,source\n"

    def sources(day: dt.date, catalog: str, events: str) -> dict:
        folder = tmp_path / day.isoformat()
        folder.mkdir(exist_ok=True)
        (folder / "catalog.csv").write_text("item_id,title,available_from\n" + catalog)
        (folder / "interactions.csv").write_text(header + events)
        return {"ds": day, "catalog": folder / "catalog.csv", "interactions": folder / "interactions.csv"}

    first = ingest(
        spark,
        lake_config,
        **sources(
            day1,
            "1,Now,2026-11-01\n2,Later,2026-11-22\n",
            "10,1,4.0,,2026-11-20T09:00:00Z,demo\n"  # due: ingested
            "10,1,3.0,,2026-11-21T09:00:00Z,demo\n"  # tomorrow's event
            "11,2,5.0,,2026-11-20T10:00:00Z,demo\n"  # today's event, but its item is not out until day 3
            "12,1,2.0,,2026-11-23T10:00:00Z,demo\n",  # after the last run here: still waiting at the end
        ),
    )
    assert_nothing_dropped(first)
    assert accounts(first) == {
        ("catalog.csv", "source"): (2, 2, 1, 1, 0, 0),
        ("interactions.csv", "source"): (4, 4, 1, 3, 0, 0),
    }
    waiting = {(r["kind"], r["row_key"]): r for r in rows(spark, lake_config, DEFERRED)}
    assert sorted((kind, str(r["due_ds"]), r["reason"]) for (kind, _), r in waiting.items()) == [
        ("interactions", "2026-11-21", "event after the run date"),
        ("interactions", "2026-11-22", "item not yet available"),
        ("interactions", "2026-11-23", "event after the run date"),
        ("items", "2026-11-22", "available_from after the run date"),
    ]

    # Day 2: no catalog rows; the interactions file re-sends tomorrow's event and adds one. The deferred
    # copy is superseded by the source's (one row, not two); the rest keep waiting.
    second_sources = sources(
        day2, "", "10,1,3.0,,2026-11-21T09:00:00Z,demo\n13,1,1.0,,2026-11-21T12:00:00Z,demo\n"
    )
    second = ingest(spark, lake_config, **second_sources)
    assert_nothing_dropped(second)
    assert accounts(second) == {
        ("interactions.csv", "source"): (2, 2, 2, 0, 0, 0),
        ("interactions.csv", "deferred"): (1, 1, 0, 0, 0, 1),
    }
    assert len(rows(spark, lake_config, INTERACTIONS)) == 3
    assert {r["item_id"] for r in rows(spark, lake_config, CATALOG)} == {1}

    # Day 3: nothing sent at all. Item 2 and its event come out of `deferred` into the lake.
    third = ingest(spark, lake_config, **sources(day3, "", ""))
    assert_nothing_dropped(third)
    assert accounts(third) == {
        ("catalog.csv", "deferred"): (1, 1, 1, 0, 0, 0),
        ("interactions.csv", "deferred"): (1, 1, 1, 0, 0, 0),
    }
    catalog = {r["item_id"]: r for r in rows(spark, lake_config, CATALOG)}
    assert set(catalog) == {1, 2} and catalog[2]["title"] == "Later" and catalog[2]["first_seen_ds"] == day3
    events = {(r["user_id"], r["item_id"], r["event_time"]): r for r in rows(spark, lake_config, INTERACTIONS)}
    assert len(events) == 4
    assert events[(11, 2, dt.datetime(2026, 11, 20, 10, 0))]["ingested_ds"] == day3
    assert [str(r["due_ds"]) for r in rows(spark, lake_config, DEFERRED)] == ["2026-11-23"]

    # Day 2 again, after day 3: it takes in nothing from `deferred` (nothing is due by day 2 that day 3
    # did not already take), and leaves the lake and the waiting row as they were.
    again = ingest(spark, lake_config, **second_sources)
    assert accounts(again) == {("interactions.csv", "source"): (2, 2, 2, 0, 0, 0)}
    assert (again.interactions_new, again.interactions_unchanged) == (0, 2)
    assert len(rows(spark, lake_config, INTERACTIONS)) == 4
    assert [str(r["due_ds"]) for r in rows(spark, lake_config, DEFERRED)] == ["2026-11-23"]


def test_every_file_of_an_input_folder_is_read_or_reported(spark, lake_config, tmp_path):
    """Spark skips `_`/`.` names in a folder and reads every file with one file's columns: here each file
    is read or quarantined with its reason, and the good files' rows all arrive."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    catalog = tmp_path / "catalog"  # a Parquet folder, as Spark or pandas writes one
    catalog.mkdir()
    pq.write_table(pa.table({"item_id": [1, 2], "title": ["One", "Two"]}), catalog / "part-0.parquet")
    pq.write_table(pa.table({"title": ["Three"], "item_id": [3]}), catalog / "part-1.parquet")  # same columns
    pq.write_table(pa.table({"item_id": [4], "name": ["Four"]}), catalog / "part-2.parquet")  # no title
    (catalog / "_SUCCESS").write_bytes(b"")
    pq.write_table(pa.table({"item_id": [5], "title": ["Five"]}), catalog / ".part-3.parquet")
    (tmp_path / "interactions.csv").write_text("user_id,item_id,rating,timestamp\n1,1,4.0,2026-11-20T10:00:00Z\n")
    overviews = tmp_path / "overviews"
    overviews.mkdir()
    (overviews / "a.csv").write_text("item_id,overview\n1,About one\n")
    (overviews / "b.csv").write_text("item_id,overview\n2,About two\n")
    (overviews / "c.csv").write_text("overview,item_id\nAbout three,3\n")  # the same columns, another order
    (overviews / "_d.csv").write_text("item_id,overview\n3,Hidden\n")

    ds = dt.date(2026, 11, 25)
    report = ingest(
        spark, lake_config, ds=ds, catalog=catalog, interactions=tmp_path / "interactions.csv", overviews=overviews
    )
    assert_nothing_dropped(report)
    catalog_rows = {row["item_id"]: row for row in rows(spark, lake_config, CATALOG)}
    assert {item: row["title"] for item, row in catalog_rows.items()} == {1: "One", 2: "Two", 3: "Three"}
    assert {item: row["overview"] for item, row in catalog_rows.items()} == {
        1: "About one",
        2: "About two",
        3: None,
    }
    refused = {
        Path(row["source_file"].removeprefix("file://")).name: row["reason"]
        for row in rows(spark, lake_config, QUARANTINE)
        if row["ds"] == ds and row["reason"].startswith("input")
    }
    hidden = "input file not used: a hidden name (Spark skips names starting with '_' or '.')"
    assert refused == {
        "part-2.parquet": "input refused: its columns ['item_id', 'name'] differ from ['item_id', 'title'] of part-0.parquet",
        "_SUCCESS": hidden,
        ".part-3.parquet": hidden,
        "c.csv": "input refused: its columns ['overview', 'item_id'] differ from ['item_id', 'overview'] of a.csv",
        "_d.csv": hidden,
    }
