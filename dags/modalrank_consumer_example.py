"""An example downstream consumer: runs whenever the nightly DAG publishes recommendations.

Scheduled on the `modalrank_recommendations` Asset, which the nightly DAG's `announce_publish` task
updates only after the quality gate passed and the date's partition was committed, so this DAG never
sees a half-written or unchecked date. Each event's extra names the date, the lake and its artifacts
folder and the table version `publish` committed; the one task reads exactly that date in exactly
that version with delta-rs, so a later publish or a rerun of the same date cannot change what it reads
(no Spark: what a service or an analyst's notebook would do), and writes a per-date digest an analyst can open:
`<artifacts>/_exports/<ds>/recommendations_digest.csv` (the lake's own folder for a local lake) — how
many users each item is recommended to and at what median rank — plus a sample of lists in the task log. Copy it as the start of a real consumer.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, task

from jobs.config import load_config
from jobs.dag_common import default_args, lake_params, recommendations_asset

config = load_config()
# The Asset the nightly DAG's `announce_publish` task updates.
RECOMMENDATIONS_ASSET = recommendations_asset(config)


def write_digest(lake: str | None, artifacts: str | None, ds: str | None, table_version: int | None = None) -> str:
    """Per item of the date's lists: how many users get it, at what median and best rank; as CSV.

    `table_version` pins the snapshot read (Delta time travel): the version the event announced, so
    the digest is of the lists that passed the gate that night even if the date was republished since.
    """
    import datetime

    from jobs.artifacts import write_text
    from jobs.consume import format_sample, read_date, read_latest

    lake_config = load_config(lake=lake or None, artifacts=artifacts or None)
    table = lake_config.table_path("recommendations")
    lists = read_latest(table) if ds is None else read_date(table, datetime.date.fromisoformat(ds), table_version)
    ds = str(lists["ds"].iloc[0])
    print(format_sample(lists, users=3, per_user=5))
    digest = (
        lists.groupby("item_id")
        .agg(users=("user_id", "nunique"), median_rank=("rank", "median"), best_rank=("rank", "min"))
        .sort_values(["users", "median_rank", "item_id"], ascending=[False, True, True])
        .reset_index()
    )
    # Beside the reports, not in the lake: the lake may be an object store, the digest is a plain file.
    path = lake_config.artifacts_dir / "_exports" / ds / "recommendations_digest.csv"
    # Through the artifact store: a reader never sees a half-written file, two runs never share a temporary.
    write_text(path, digest.to_csv(index=False))
    return str(path)


@task
def export_digest(triggering_asset_events=None, params: dict | None = None) -> list[str]:
    """One digest per published date that triggered this run (a backfill may publish several before
    the consumer runs); a manual run digests the newest date of the `lake` param."""
    events = list(triggering_asset_events[RECOMMENDATIONS_ASSET]) if triggering_asset_events else []
    if not events:
        return [write_digest(params["lake"] or None, params["artifacts"] or None, None)]
    return digest_events([event.extra for event in events])


def digest_events(extras: list[dict]) -> list[str]:
    """One digest per event's extra (what `announce_publish` wrote), each of exactly the version it names.

    Events from before the artifacts folder existed name only the lake (a local one, holding its own).
    """
    return [
        write_digest(extra["lake"], extra.get("artifacts"), extra["ds"], extra.get("table_version"))
        for extra in extras
    ]


with DAG(
    dag_id="modalrank_consumer_example",
    description="Example consumer: a per-item digest of each newly published recommendations date",
    doc_md=__doc__,
    schedule=[RECOMMENDATIONS_ASSET],
    start_date=dt.datetime(2026, 11, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    tags=["modalrank", "consumer", "example"],
    default_args=default_args(retry_delay=dt.timedelta(minutes=1), execution_timeout=dt.timedelta(minutes=20)),
    params={
        **lake_params(config, "_exports/"),
    },
) as dag:
    export_digest()
