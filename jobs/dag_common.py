"""What the two DAG files share: the Asset the nightly DAG announces and its consumers schedule on, and the
task defaults every modalrank DAG starts from. Only DAG files import this module (it imports Airflow);
the Spark jobs never do.

Why here and not in dags/: Airflow's own advice for code shared by DAG files is a module in the DAG folder
listed in `.airflowignore`, imported from the folder as the root of `sys.path`. Airflow 3.3 puts the DAG
folder on `sys.path` only where it parses through a DAG bundle (the DAG processor, the task runner,
`airflow dags test`); a plain `DagBag(dag_folder=...)` (the tests, `airflow dags list` without
`--bundle-name`, a DAG looked up by its file) does not, and there the import fails. `jobs` is importable
wherever a DAG file is (infra/env.sh's PYTHONPATH, or the installed package), as the DAG files' other
imports from `jobs` already require.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Asset

from jobs.config import PipelineConfig


def recommendations_asset(config: PipelineConfig) -> Asset:
    """The `recommendations` table as an Asset: `announce_publish` updates it once a date's lists passed the
    gate and were committed, and consumer DAGs schedule on it. Both sides build it from their own config,
    so a DAG file parsed with another lake names that lake's table."""
    return Asset(name="modalrank_recommendations", uri=config.table_uri("recommendations"), group="modalrank")


def default_args(*, retry_delay: dt.timedelta, execution_timeout: dt.timedelta) -> dict:
    """Every modalrank task is owned, retried twice with a growing delay, and timed out; each DAG sets how long
    its tasks may take and how long to wait before a retry."""
    return {
        "owner": "modalrank",
        "retries": 2,
        "retry_delay": retry_delay,
        "retry_exponential_backoff": True,
        "execution_timeout": execution_timeout,
    }
