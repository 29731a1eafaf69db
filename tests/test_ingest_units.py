"""Pure parts of ingestion and configuration: no Spark."""

from __future__ import annotations

import os

import pytest

from jobs import cli
from jobs.catalog_media import resolve_media_path
from jobs.config import PipelineConfig, load_config
from jobs.ingest import optional_path
from jobs.sources import SourceError, detect_movielens_layout
from jobs.spark import DELTA_EXTENSION, MissingJarsError, spark_jars, spark_settings


class TestResolveMediaPath:
    def test_relative_path_inside_root_becomes_absolute(self, tmp_path):
        assert resolve_media_path(str(tmp_path), "posters/1.jpg") == (str(tmp_path / "posters" / "1.jpg"), None)

    def test_absolute_path_inside_root_is_kept(self, tmp_path):
        inside = str(tmp_path / "a" / "b.wav")
        assert resolve_media_path(str(tmp_path), inside) == (inside, None)

    @pytest.mark.parametrize("path", ["../secret.jpg", "posters/../../x.jpg", "/etc/passwd"])
    def test_paths_leaving_the_root_are_refused(self, tmp_path, path):
        assert resolve_media_path(str(tmp_path / "media"), path) == (None, "media path escapes media root")

    def test_a_sibling_folder_sharing_the_prefix_is_outside(self, tmp_path):
        # /x/media-other starts with /x/media as a string but is not inside it.
        assert resolve_media_path(str(tmp_path / "media"), str(tmp_path / "media-other" / "1.jpg"))[0] is None

    @pytest.mark.parametrize("path", [None, "", "   "])
    def test_no_path_means_no_media(self, tmp_path, path):
        assert resolve_media_path(str(tmp_path), path) == (None, None)


@pytest.mark.parametrize(
    ("files", "layout"),
    [
        (["movies.csv", "ratings.csv"], "movielens-csv"),
        (["u.data", "u.item"], "movielens-100k"),
        (["movies.dat", "ratings.dat"], "movielens-1m"),
    ],
)
def test_movielens_layout_is_detected_from_its_files(tmp_path, files, layout):
    for name in files:
        (tmp_path / name).write_text("")
    assert detect_movielens_layout(tmp_path) == layout


def test_an_unknown_folder_is_a_clear_error(tmp_path):
    with pytest.raises(SourceError, match="not a MovieLens folder"):
        detect_movielens_layout(tmp_path)


def test_empty_path_arguments_mean_not_given():
    assert optional_path("") is None
    assert optional_path("  ") is None
    assert str(optional_path("data/x.csv")) == "data/x.csv"


def test_config_precedence_is_defaults_then_environment_then_overrides(monkeypatch):
    monkeypatch.setenv("MODALRANK_LAKE", "/env/lake")
    monkeypatch.setenv("MODALRANK_SHUFFLE_PARTITIONS", "16")
    monkeypatch.setenv("MODALRANK_SPARK_UI", "true")
    config = load_config(lake="/cli/lake", spark_master=None)
    assert config.lake == "/cli/lake"
    assert config.shuffle_partitions == 16
    assert config.spark_ui is True
    assert config.spark_master == PipelineConfig().spark_master
    assert config.table_path("catalog") == "/cli/lake/catalog"


def test_spark_settings_enable_delta_and_utc():
    settings = spark_settings(PipelineConfig(shuffle_partitions=3, spark_conf={"spark.executor.memory": "2g"}))
    assert settings["spark.sql.extensions"] == DELTA_EXTENSION
    assert settings["spark.sql.session.timeZone"] == "UTC"
    assert settings["spark.sql.shuffle.partitions"] == "3"
    assert settings["spark.executor.memory"] == "2g"


def test_spark_jars_come_from_the_local_cache():
    jars = spark_jars(load_config())
    names = {os.path.basename(jar).rsplit("-", 1)[0] for jar in jars}
    assert {"delta-spark_4.2_2.13", "delta-storage", "openlineage-spark_2.13"} <= names


def test_missing_jars_name_the_set_up_command(tmp_path):
    with pytest.raises(MissingJarsError, match="infra/setup.sh"):
        spark_jars(PipelineConfig(jars_dir=str(tmp_path)))


class TestCliErrors:
    def test_ingest_without_a_source_is_one_line_and_exit_2(self, capsys):
        assert cli.main(["ingest", "--ds", "2026-11-25"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0
        assert err.startswith("modalrank ingest: error: give either --movielens")

    def test_both_sources_at_once_are_refused(self, capsys, tmp_path):
        code = cli.main(
            [
                "ingest",
                "--ds",
                "2026-11-25",
                "--movielens",
                str(tmp_path),
                "--catalog",
                "c.csv",
                "--interactions",
                "i.csv",
            ]
        )
        assert code == 2
        assert "give either" in capsys.readouterr().err

    def test_missing_jars_are_one_line(self, capsys, tmp_path, monkeypatch):
        monkeypatch.setenv("MODALRANK_JARS_DIR", str(tmp_path))
        assert cli.main(["ingest", "--ds", "2026-11-25", "--movielens", str(tmp_path)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "no Delta Lake jars" in err

    def test_a_bad_run_date_is_refused_by_the_parser(self, capsys):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["ingest", "--ds", "25/11/2026", "--movielens", "x"])
        assert exit_info.value.code == 2
        assert "run date '25/11/2026' is not valid: a date as YYYY-MM-DD" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------
# What one CSV record is: a stray quote costs its own line, never the lines after it


def test_quoted_line_breaks_join_lines_into_one_record():
    from jobs.sources import assemble_csv_records

    lines = ['1,First,"A plot', "", 'over lines",Drama', "2,Second,Plain,Comedy"]
    records = list(assemble_csv_records(lines, expected_fields=4, max_record_chars=1000))
    assert [(r.first_line, r.lines, r.malformed) for r in records] == [(0, 2, None), (3, 1, None)]
    assert records[0].text == '1,First,"A plot\n\nover lines",Drama'


def test_an_unterminated_quote_costs_only_its_line():
    from jobs.sources import UNTERMINATED_QUOTE, assemble_csv_records

    lines = ["1,Good,x,y", '2,"Broken,x,y', "3,Good,x,y", '4,Fourth,"Quoted ""word""",y', "5,Good,x,y"]
    records = list(assemble_csv_records(lines, expected_fields=4, max_record_chars=1000))
    assert [(r.first_line, r.lines, r.malformed) for r in records] == [
        (0, 1, None),
        (1, 1, UNTERMINATED_QUOTE),
        (2, 1, None),
        (3, 1, None),
        (4, 1, None),
    ]
    assert records[1].text == '2,"Broken,x,y'


def test_a_quote_left_open_to_the_end_of_the_file_or_the_record_limit_is_one_bad_line():
    from jobs.sources import UNTERMINATED_QUOTE, assemble_csv_records

    lines = ['1,"never closed,x,y'] + [f"{i},Good,x,y" for i in range(2, 12)]
    for limit in (3, 200):
        records = list(
            assemble_csv_records(lines, expected_fields=4, max_record_chars=1000, max_record_lines=limit)
        )
        assert len(records) == 11 and records[0].malformed == UNTERMINATED_QUOTE
        assert all(r.malformed is None and r.lines == 1 for r in records[1:])


def test_a_literal_quote_inside_an_unquoted_field_is_text():
    from jobs.sources import CsvScan

    assert not CsvScan().feed('6,x"y,z').open
    assert CsvScan().feed('6,"x').open
    assert CsvScan().feed('6,"x""y",z').fields == 3


def test_a_record_over_the_bound_costs_only_itself():
    from jobs.sources import assemble_csv_records

    long_line = "3,Long," + "x" * 95 + ",y"  # 104 characters, bound 100
    lines = ["1,Good,x,y", long_line, '4,"opens here,x,y', "x" * 60, "x" * 60 + '",y', "5,Good,x,y"]
    records = list(assemble_csv_records(lines, expected_fields=4, max_record_chars=100))
    assert [(r.first_line, r.lines, r.malformed) for r in records] == [
        (0, 1, None),
        (1, 1, "malformed row: longer than 100 characters"),
        # item 4's quote would need 17 + 1 + 60 + 1 + 63 = 142 characters to close: not followed that far
        (2, 1, "malformed row: longer than 100 characters"),
        (3, 1, None),  # the lines it would have swallowed are records of their own (the rules judge them)
        (4, 1, None),
        (5, 1, None),
    ]
    assert records[1].text == long_line + "…"  # shorter than the 1000-character prefix: whole, marked cut
    assert records[2].text == '4,"opens here,x,y'


def test_twenty_thousand_escapes_are_one_field_not_a_stack_overflow():
    from jobs.sources import UNTERMINATED_QUOTE, CsvScan, assemble_csv_records

    escapes = '""' * 20_000
    closed, unclosed = f'1,"{escapes}",y,z', f'2,"{escapes},y,z'
    assert CsvScan().feed(closed).fields == 4 and not CsvScan().feed(closed).open
    records = list(assemble_csv_records([closed, unclosed, "3,a,b,c"], expected_fields=4, max_record_chars=50_000))
    assert [(r.first_line, r.malformed) for r in records] == [(0, None), (1, UNTERMINATED_QUOTE), (2, None)]


@pytest.mark.parametrize(("name", "value"), [("max_record_chars", 0), ("max_decompressed_bytes", -1)])
def test_record_limits_must_be_positive(name, value):
    with pytest.raises(ValueError, match=name):
        PipelineConfig(**{name: value})


def test_record_limits_come_from_the_environment(monkeypatch):
    from jobs.sources import RecordLimits

    monkeypatch.setenv("MODALRANK_MAX_RECORD_CHARS", "5000")
    monkeypatch.setenv("MODALRANK_MAX_DECOMPRESSED_BYTES", "123456")
    assert RecordLimits.of(load_config()) == RecordLimits(5000, 123456)


def test_accounts_that_do_not_add_up_stop_the_run():
    from jobs.input_accounts import IngestAccountingError, InputAccount, check_accounts

    balanced = InputAccount("a.csv", "items", "source", 5, 5, 4, ingested=2, deferred=1, quarantined=1)
    check_accounts([balanced])
    lost = InputAccount("b.csv", "interactions", "source", 6, 6, 6, ingested=4, quarantined=1)
    swallowed = InputAccount("c.csv", "items", "source", 6, 4, 4, ingested=4)
    with pytest.raises(IngestAccountingError) as error:
        check_accounts([balanced, lost, swallowed])
    message = str(error.value)
    assert "b.csv" in message and "6 rows read but 5 settled" in message
    assert "c.csv" in message and "6 physical records but rows spanning 4" in message
    assert "a.csv" not in message


def test_input_files_of_a_folder_are_read_or_refused_with_a_reason(tmp_path):
    from jobs.sources.input_files import HIDDEN_NAME, csv_header, input_files

    assert input_files(tmp_path / "one.csv", csv_header).read == [tmp_path / "one.csv"]  # a file is itself
    folder = tmp_path / "events"
    (folder / "day=1").mkdir(parents=True)
    (folder / "day=1" / "a.csv").write_text("user_id,item_id\n1,2\n")
    (folder / "day=1" / "b.csv").write_text("user_id,item_id\n3,4\n")
    (folder / "swapped.csv").write_text("item_id,user_id\n5,6\n")
    (folder / ".d.csv").write_text("user_id,item_id\n7,8\n")
    (folder / "_tmp").mkdir()
    (folder / "_tmp" / "e.csv").write_text("user_id,item_id\n9,9\n")
    (folder / "f.csv").write_text("x" * 50 + "\n")  # a header over the bound below
    files = input_files(folder, lambda path: csv_header(path, 40))
    assert files.read == [folder / "day=1" / "a.csv", folder / "day=1" / "b.csv"]
    assert dict(files.refused) == {
        folder / ".d.csv": HIDDEN_NAME,
        folder / "_tmp" / "e.csv": HIDDEN_NAME,
        folder
        / "swapped.csv": "input refused: its columns ['item_id', 'user_id'] differ from ['user_id', 'item_id'] of a.csv",
        folder / "f.csv": "input refused: its columns cannot be read (a header longer than 40 characters)",
    }
    as_sets = input_files(folder, lambda path: csv_header(path, 40), compare_as_set=True)
    assert folder / "swapped.csv" in as_sets.read
