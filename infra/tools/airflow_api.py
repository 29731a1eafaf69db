"""A small client of Airflow's REST API (v2) for the production-shaped deployment of infra/airflow.sh:
trigger a run of a DAG for a date, follow it to its end, print what each task did.

Standard library only, so that it works from any Python that can reach the API server. Authentication is
the simple auth manager's: a JWT from `POST /auth/token` for a user of its passwords file.

    python -m infra.tools.airflow_api trigger --date 2026-11-25 [--conf '{"k": 10}'] [--wait]
    python -m infra.tools.airflow_api wait --run-id RUN_ID
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

NIGHTLY = "modalrank_nightly"
FINISHED = ("success", "failed")


class AirflowApiError(RuntimeError):
    """The API answered with an error status; the message carries its status and detail."""


@dataclass
class AirflowApi:
    base_url: str  # e.g. http://127.0.0.1:8080
    username: str
    password: str
    _token: str | None = None

    @classmethod
    def from_deployment(cls, deployment: Path, base_url: str, username: str = "modalrank") -> AirflowApi:
        """The client of infra/airflow.sh's deployment: its admin user's password from the passwords file."""
        passwords = json.loads((deployment / "passwords.json").read_text())
        return cls(base_url.rstrip("/"), username, passwords[username])

    def _call(self, method: str, path: str, body: dict | None = None, token: str | None = None) -> dict:
        request = urllib.request.Request(
            self.base_url + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={
                "Content-Type": "application/json",
                **({"Authorization": f"Bearer {token}"} if token else {}),
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                text = response.read().decode()
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")[:2000]
            raise AirflowApiError(f"{method} {path}: HTTP {error.code}: {detail}") from None
        return json.loads(text) if text else {}

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        if self._token is None:
            answer = self._call("POST", "/auth/token", {"username": self.username, "password": self.password})
            self._token = answer["access_token"]
        return self._call(method, path, body, self._token)

    def health(self) -> dict:
        return self._call("GET", "/api/v2/monitor/health")

    def trigger(self, dag_id: str, ds: dt.date, conf: dict) -> dict:
        """A manual run with the date as its logical date (so its `ds` is the date) and the conf as its params;
        Airflow validates the conf against the DAG's Params and refuses the run when one is wrong."""
        logical_date = dt.datetime.combine(ds, dt.time(), tzinfo=dt.UTC).isoformat()
        return self.call("POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": logical_date, "conf": conf})

    def run(self, dag_id: str, run_id: str) -> dict:
        return self.call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        answer = self.call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=100")
        return answer["task_instances"]

    def wait(self, dag_id: str, run_id: str, timeout: float, poll: float = 5.0, echo=print) -> dict:
        """Poll the run until it finishes (or `timeout` seconds pass: an error), echoing each task's change."""
        deadline, seen = time.monotonic() + timeout, {}
        while True:
            run = self.run(dag_id, run_id)
            for task in self.task_instances(dag_id, run_id):
                state = (task["state"], task["try_number"])
                if seen.get(task["task_id"]) != state:
                    seen[task["task_id"]] = state
                    echo(f"  {task['task_id']}: {task['state'] or 'no status'} (try {task['try_number']})")
            if run["state"] in FINISHED:
                return run
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} of {dag_id} is still {run['state']} after {timeout:.0f} s")
            time.sleep(poll)


def summary(api: AirflowApi, dag_id: str, run_id: str) -> str:
    """One line per task: its state, tries and seconds; what an operator reads after a night."""
    lines = []
    for task in sorted(api.task_instances(dag_id, run_id), key=lambda t: t["start_date"] or "~"):
        seconds = f"{task['duration']:.0f} s" if task.get("duration") is not None else "-"
        lines.append(
            f"  {task['task_id']:<20} {task['state'] or 'no status':<16} try {task['try_number']}  {seconds}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deployment", type=Path, default=Path(os.environ.get("AIRFLOW_HOME", ".")))
    parser.add_argument("--url", default=os.environ.get("AIRFLOW__API__BASE_URL", "http://127.0.0.1:8080"))
    parser.add_argument("--dag", default=NIGHTLY)
    commands = parser.add_subparsers(dest="command", required=True)
    trigger = commands.add_parser("trigger", help="start a run for a date (its logical date)")
    trigger.add_argument("--date", required=True, type=dt.date.fromisoformat)
    trigger.add_argument("--conf", default="{}", type=json.loads, help="the run's params, as JSON")
    trigger.add_argument("--wait", action="store_true", help="follow the run to its end; fail unless it succeeds")
    trigger.add_argument("--timeout", type=float, default=4 * 3600)
    wait = commands.add_parser("wait", help="follow a run to its end")
    wait.add_argument("--run-id", required=True)
    wait.add_argument("--timeout", type=float, default=4 * 3600)
    args = parser.parse_args(argv)

    api = AirflowApi.from_deployment(args.deployment, args.url)
    try:
        if args.command == "trigger":
            run_id = api.trigger(args.dag, args.date, args.conf)["dag_run_id"]
            print(f"triggered {args.dag} for {args.date}: run {run_id}")
            if not args.wait:
                return 0
        else:
            run_id = args.run_id
        run = api.wait(args.dag, run_id, args.timeout)
    except (AirflowApiError, TimeoutError) as error:
        print(f"airflow_api: {error}", file=sys.stderr)
        return 1
    print(f"run {run_id}: {run['state']}\n{summary(api, args.dag, run_id)}")
    return 0 if run["state"] == "success" else 1


if __name__ == "__main__":
    raise SystemExit(main())
