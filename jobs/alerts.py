"""Alerts for the people on call: one notification for a failed night (a failed gate is one), and one for a
night still running past its deadline. Only DAG files import this module (it imports Airflow).

How a night's failure becomes one message, through Airflow's callbacks:
- every task's `on_failure_callback` (`record_task_failure`, in the task's own process, which has the
  exception) writes `_reports/<ds>/failures/<task>.json` with the run id and the error;
- the DAG's `on_failure_callback` (`NightFailed`, a notifier the DAG processor runs once per failed run)
  reads the failures of that run and sends one message: run date, failed stages, reasons, run report.
The deadline is a `DeadlineAlert` counted from when the run was queued; its callback (`night_past_deadline`)
runs in the triggerer while the night is still running.

Where a message goes: `MODALRANK_ALERT_TARGET` (jobs.config), an http(s) URL that receives the message
as a JSON POST (its `text` field reads as a chat message, e.g. a Slack or Mattermost incoming webhook);
without one, or when the POST fails, the message is written to `_reports/<ds>/alert-<kind>.json` and
logged as an error, so an alert is never lost silently.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import urllib.request
from pathlib import Path

from airflow.sdk import BaseNotifier

from jobs import artifacts
from jobs.config import PipelineConfig
from jobs.dag_common import run_config

log = logging.getLogger("modalrank.alerts")

FAILED = "failed"
PAST_DEADLINE = "past_deadline"


def _failures_dir(config: PipelineConfig, ds: str) -> Path:
    return config.reports_dir / ds / "failures"


def alert_message(
    kind: str, dag_id: str, ds: str, run_id: str, stages: list[str], reasons: list[str], report: Path
) -> dict:
    """The message: fields for machines, and `text`, one paragraph for people."""
    what = "failed" if kind == FAILED else "is still running past its deadline"
    text = f"{dag_id} {ds} {what} (run {run_id})"
    if stages:
        text += f"; stage{'s' if len(stages) > 1 else ''}: {', '.join(stages)}"
    if reasons:
        text += f"; reason: {' | '.join(reasons)}"
    text += f"; run report: {report}"
    return {
        "kind": kind,
        "dag_id": dag_id,
        "ds": ds,
        "run_id": run_id,
        "stages": stages,
        "reasons": reasons,
        "report": str(report),
        "text": text,
    }


def send_alert(config: PipelineConfig, message: dict, target: str | None = None) -> str:
    """POST the message to the target URL; without one, or when that fails, write it to the date's report
    folder. Returns where it went."""
    target = config.alert_target if target is None else target
    log.error("alert: %s", message["text"])
    if target:
        request = urllib.request.Request(
            target,
            data=json.dumps(message).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=15) as response:
                response.read()
            return target
        except OSError as error:  # URLError, HTTPError and timeouts are all OSErrors
            log.error("alert: could not POST to %s (%s); writing it to the report folder", target, error)
    path = config.reports_dir / message["ds"] / f"alert-{message['kind']}.json"
    artifacts.write_json(path, message)
    return str(path)


def record_task_failure(context) -> None:
    """A task's on_failure_callback (its final failure, after its retries): what the night's notifier reads."""
    ti, ds = context["ti"], context["ds"]
    config = run_config(context.get("params"))
    error = context.get("exception")
    reason = str(error).strip().splitlines()[0] if error and str(error).strip() else type(error).__name__
    artifacts.write_json(
        _failures_dir(config, ds) / f"{ti.task_id}.json",
        {"run_id": context["run_id"], "task_id": ti.task_id, "try_number": ti.try_number, "reason": reason},
    )


class NightFailed(BaseNotifier):
    """A modalrank DAG's on_failure_callback: one message per failed run, naming every stage that failed in
    it and why (from `record_task_failure`), with the path of the date's run report."""

    def notify(self, context) -> None:
        ds, run_id = context["ds"], context["run_id"]
        config = run_config(context.get("params"))
        failures = []
        for path in sorted(_failures_dir(config, ds).glob("*.json")):
            record = artifacts.read_json(path)
            if record and record.get("run_id") == run_id:  # not an earlier run's of the same date
                failures.append(record)
        stages = [record["task_id"] for record in failures]
        if not stages and context.get("ti") is not None:  # it failed before its callback could record it
            stages = [context["ti"].task_id]
        reasons = [f"{record['task_id']}: {record['reason']}" for record in failures]
        if not reasons and context.get("reason"):
            reasons = [str(context["reason"])]
        report = config.reports_dir / ds / "run.html"
        send_alert(config, alert_message(FAILED, context["dag"].dag_id, ds, run_id, stages, reasons, report))


async def night_past_deadline(context: dict, **_) -> None:
    """The DeadlineAlert's callback (the triggerer runs it): the run is still going past its deadline.
    `context["dag_run"]` is the run as the REST API shows it (DAGRunResponse's fields)."""
    run = context["dag_run"]
    ds = str(run.get("logical_date") or run.get("run_after") or "")[:10]
    config = run_config(run.get("conf"))
    deadline = context.get("deadline", {}).get("deadline_time")
    reason = f"not finished by {deadline} (queued at {run.get('queued_at')}, state {run.get('state')})"
    report = config.reports_dir / ds / "run.html"
    message = alert_message(
        PAST_DEADLINE, run.get("dag_id", ""), ds, run.get("dag_run_id", ""), [], [reason], report
    )
    await asyncio.to_thread(send_alert, config, message)


def night_deadline(config: PipelineConfig):
    """The nightly's DeadlineAlert: `night_deadline_minutes` after a run is queued."""
    from airflow.sdk import AsyncCallback, DeadlineAlert, DeadlineReference

    return DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT,
        interval=dt.timedelta(minutes=config.night_deadline_minutes),
        callback=AsyncCallback(night_past_deadline),
    )
