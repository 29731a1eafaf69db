"""Alerts reach their target, or the report folder when the target cannot take them; never nowhere.

The callbacks that send them (a failed night, a failed gate, a night past its deadline) run in a real
scheduler, DAG processor and triggerer in tests/test_deployment.py; here, the sending itself against a real
local HTTP receiver.
"""

from __future__ import annotations

import json

import pytest
from conftest import AlertReceiver

from jobs import alerts
from jobs.config import load_config


@pytest.fixture
def receiver():
    receiver = AlertReceiver()
    yield receiver
    receiver.close()


def _message(config):
    return alerts.alert_message(
        alerts.FAILED,
        "modalrank_nightly",
        "2026-11-26",
        "manual__1",
        ["publish"],
        ["publish: stopped by the quality gate, nothing written: min_coverage"],
        config.reports_dir / "2026-11-26" / "run.html",
    )


def test_an_alert_is_posted_to_the_target_as_json_with_a_readable_text(tmp_path, receiver):
    config = load_config(lake=str(tmp_path / "lake"), alert_target=receiver.url)
    assert alerts.send_alert(config, _message(config)) == receiver.url
    (posted,) = receiver.received
    assert posted["kind"] == "failed" and posted["ds"] == "2026-11-26" and posted["stages"] == ["publish"]
    assert posted["text"] == (
        "modalrank_nightly 2026-11-26 failed (run manual__1); stage: publish; reason: publish: stopped by the "
        f"quality gate, nothing written: min_coverage; run report: {config.reports_dir}/2026-11-26/run.html"
    )
    assert not (config.reports_dir / "2026-11-26").exists()


def test_an_alert_the_target_cannot_take_is_written_to_the_report_folder(tmp_path, receiver):
    receiver.close()  # nothing listens there any more
    config = load_config(lake=str(tmp_path / "lake"), alert_target=receiver.url)
    written = alerts.send_alert(config, _message(config))
    assert written == str(config.reports_dir / "2026-11-26" / "alert-failed.json")
    assert json.loads((config.reports_dir / "2026-11-26" / "alert-failed.json").read_text()) == _message(config)


def test_the_alert_target_must_be_an_http_url(tmp_path):
    with pytest.raises(ValueError, match="alert_target must be an http"):
        load_config(lake=str(tmp_path / "lake"), alert_target="file:///etc/passwd")
    with pytest.raises(ValueError, match="night_deadline_minutes must be a positive"):
        load_config(lake=str(tmp_path / "lake"), night_deadline_minutes=0)


def test_a_night_past_its_deadline_alerts_with_the_run_the_triggerer_names(tmp_path, receiver, monkeypatch):
    import asyncio

    monkeypatch.setenv("MODALRANK_ALERT_TARGET", receiver.url)
    # The context the triggerer passes: the run as the REST API's DAGRunResponse dumps it, and the deadline.
    run = {
        "dag_id": "modalrank_nightly",
        "dag_run_id": "scheduled__2026-11-26T00:00:00+00:00",
        "logical_date": "2026-11-26T00:00:00Z",
        "queued_at": "2026-11-27T00:00:05Z",
        "state": "running",
        "conf": {"lake": str(tmp_path / "lake")},
    }
    deadline = {"id": "1", "deadline_time": "2026-11-27T06:00:05Z"}
    asyncio.run(alerts.night_past_deadline(context={"dag_run": run, "deadline": deadline}))
    (posted,) = receiver.received
    assert posted["kind"] == "past_deadline" and posted["ds"] == "2026-11-26"
    assert posted["run_id"] == run["dag_run_id"] and posted["dag_id"] == "modalrank_nightly"
    assert "not finished by 2026-11-27T06:00:05Z" in posted["text"]
    assert posted["report"] == str(tmp_path / "lake" / "_reports" / "2026-11-26" / "run.html")
