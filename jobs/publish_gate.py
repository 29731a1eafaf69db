"""The publish quality gate: what the lists must satisfy before anything reaches `recommendations`.

The checks are one table, `CHECKS`, read by one loop (`check_lists`): a few Spark aggregations measure
the materialised lists once (`_measure`: one pass per question, counts by name), then each row of the
table says whether its measures pass, the sentence a person can act on, the numbers it reports and,
for a failed check only, which offending rows to show (up to three). The drift checks compare against
limits that are off by default (`DEFAULT_MAX_CHANGED_SHARE`, `DEFAULT_MIN_COVERAGE`).

Writes nothing and reads no table: `jobs.publish` hands in the lists and what it read from the lake,
records the checks in its report and raises `PublishGateError` when one failed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field

from pyspark.sql import Column, DataFrame, Row, Window
from pyspark.sql import functions as F

from jobs.spark import FailWithoutRetry

# The drift limits: a share of users whose list changed since the previous published date above which
# the gate fails (1.0: never), and a share of available items listed below which it fails (0: never).
DEFAULT_MAX_CHANGED_SHARE = 1.0
DEFAULT_MIN_COVERAGE = 0.0
# The checks whose numbers the publish report also keeps as its drift.
DRIFT_CHECKS = ("changed_share", "coverage")


class PublishGateError(FailWithoutRetry, ValueError):
    """The lists failed the quality gate; nothing was written. A finding about the data, not a crash:
    `modalrank` prints it as one line, and the job exits with EXIT_FAIL_WITHOUT_RETRY so the DAG fails
    the task without rescoring the same lists on each retry."""


@dataclass(frozen=True)
class Check:
    """One gate check: its name, whether it passed, a sentence a person can act on, and its numbers."""

    name: str
    passed: bool
    detail: str
    numbers: dict = field(default_factory=dict)


@dataclass(frozen=True)
class MeasuredFrames:
    """The frames the measures came from, where a failed check finds its offending rows."""

    lists: DataFrame  # (user_id, rank, item_id, score)
    flagged: DataFrame  # the lists' rows with seen, known, early, rising, not_finite
    users: DataFrame  # per user: listed, first, last, ranks, distinct_items, expected, wrong_rows, bad_ranks


@dataclass(frozen=True)
class Examples:
    """Up to three offending rows of a failed check: queried only when the measure `count` is not zero."""

    count: str
    rows: Callable[[MeasuredFrames], DataFrame]
    describe: Callable[[Row], str]
    order: tuple[str, ...]


@dataclass(frozen=True)
class GateCheck:
    """One row of the gate's table.

    `passes` reads the measures and the limits; `detail` is a `str.format` template over both; `numbers`
    maps each number of the report to the measure it shows. A check with `without_previous` compares
    with the previous published date: with none, it passes with that sentence and no numbers.
    """

    name: str
    passes: Callable[[dict], bool]
    detail: str
    numbers: dict[str, str]
    examples: Examples | None = None
    without_previous: str | None = None


def _none_of(*counts: str) -> Callable[[dict], bool]:
    return lambda values: all(values[count] == 0 for count in counts)


def _at_most(measure: str, limit: str) -> Callable[[dict], bool]:
    return lambda values: values[measure] <= values[limit]


def _at_least(measure: str, limit: str) -> Callable[[dict], bool]:
    return lambda values: values[measure] >= values[limit]


def _item(row: Row) -> str:
    return f"item {row.item_id}"


CHECKS = (
    GateCheck(
        "rows_per_user",
        _none_of("wrong_count"),
        "{wrong_count} of {eligible_users} eligible users do not have min(K, their eligible items) rows",
        {"users_wrong": "wrong_count", "eligible_users": "eligible_users"},
        Examples(
            "wrong_count",
            lambda f: f.users.where(F.col("wrong_rows")),
            lambda r: f"user {r.user_id}: {r.listed or 0} rows, expected {r.expected or 0}",
            ("user_id",),
        ),
    ),
    GateCheck(
        "no_duplicates",
        _none_of("repeats"),
        "{repeats} rows repeat a (user, item) pair listed before",
        {"repeated_rows": "repeats"},
        Examples(
            "repeats",
            lambda f: f.lists.groupBy("user_id", "item_id").count().where(F.col("count") > 1),
            lambda r: f"user {r.user_id} item {r.item_id} ×{r['count']}",
            ("user_id", "item_id"),
        ),
    ),
    GateCheck(
        "no_seen_items",
        _none_of("seen"),
        "{seen} rows list an item the user already interacted with",
        {"seen_rows": "seen"},
        Examples(
            "seen",
            lambda f: f.flagged.where(F.col("seen")),
            lambda r: f"user {r.user_id} item {r.item_id}",
            ("user_id", "item_id"),
        ),
    ),
    GateCheck(
        "known_items",
        _none_of("unknown"),
        "{unknown} rows list items that are not in the catalog",
        {"unknown_rows": "unknown"},
        Examples(
            "unknown",
            lambda f: f.flagged.where(F.col("known").isNull()).select("item_id").distinct(),
            _item,
            ("item_id",),
        ),
    ),
    GateCheck(
        "available_items",
        _none_of("early"),
        "{early} rows list items whose available_from is after {ds}",
        {"unavailable_rows": "early"},
        Examples(
            "early", lambda f: f.flagged.where(F.col("early")).select("item_id").distinct(), _item, ("item_id",)
        ),
    ),
    GateCheck(
        "finite_scores",
        _none_of("not_finite"),
        "{not_finite} rows have a null, NaN or infinite score",
        {"non_finite_rows": "not_finite"},
    ),
    GateCheck(
        "ranks_and_order",
        _none_of("gaps", "rising_users"),
        "{gaps} users whose ranks are not exactly 1..n, {rising_users} whose scores rise with rank",
        {"users_bad_ranks": "gaps", "users_rising_scores": "rising_users"},
        Examples(
            "gaps",
            lambda f: f.users.where(F.col("bad_ranks")),
            lambda r: f"user {r.user_id}: ranks {r.first}..{r['last']} for {r.listed} rows",
            ("user_id",),
        ),
    ),
    GateCheck(
        "changed_share",
        _at_most("changed_share", "max_changed_share"),
        "{changed} of {compared} users listed on both dates have a different list ({changed_share:.1%}, limit "
        "{max_changed_share:.0%}); on average {mean_kept:.1%} of a list's items stayed; {new_users} users are new",
        {
            "changed_share": "changed_share",
            "users_compared": "compared",
            "users_changed": "changed",
            "mean_items_kept": "mean_kept",
            "new_users": "new_users",
        },
        without_previous="no earlier published date to compare with",
    ),
    GateCheck(
        "coverage",
        _at_least("coverage", "min_coverage"),
        "{items_listed} of {available} available items are in some list ({coverage:.1%}, minimum {min_coverage:.0%})",
        {"coverage": "coverage", "items_listed": "items_listed", "items_available": "available"},
    ),
)


def check_lists(
    lists: DataFrame,
    expected: DataFrame,
    seen: DataFrame,
    catalog: DataFrame,
    ds: dt.date,
    previous: DataFrame | None = None,
    max_changed_share: float = DEFAULT_MAX_CHANGED_SHARE,
    min_coverage: float = DEFAULT_MIN_COVERAGE,
) -> list[Check]:
    """The quality gate, as a few Spark aggregations over the lists; writes nothing.

    `lists`: (user_id, rank, item_id, score). `expected`: (user_id, rows) for every eligible user, rows
    = min(K, the user's eligible items). `seen`: (user_id, item_id) interactions up to `ds`. `catalog`:
    (item_id, available_from). `previous`: (user_id, rank, item_id) of the previous published date, or
    None. Drift fails only beyond `max_changed_share` (share of users listed on both dates whose list
    changed; 1.0: never) and below `min_coverage` (distinct listed items / items available on `ds`;
    0: never). Counts come from one pass per question; examples are queried only for a failed check.
    """
    measures, frames = _measure(lists, expected, seen, catalog, ds, previous)
    values = {**measures, "max_changed_share": max_changed_share, "min_coverage": min_coverage}
    checks = []
    for check in CHECKS:
        if check.without_previous is not None and previous is None:
            checks.append(Check(check.name, True, check.without_previous, {}))
            continue
        detail = check.detail.format(**values)
        if check.examples is not None:
            detail += _examples(check.examples, measures, frames)
        numbers = {number: _reported(measures[measure]) for number, measure in check.numbers.items()}
        checks.append(Check(check.name, check.passes(values), detail, numbers))
    return checks


def _reported(value):
    """A measure as the report keeps it: ratios (the only floats; counts are ints) to four decimals."""
    return round(value, 4) if isinstance(value, float) else value


def _examples(examples: Examples, measures: dict, frames: MeasuredFrames) -> str:
    """Up to three offending rows, as "; e.g. …"; queried only when there are any."""
    if not measures[examples.count]:
        return ""
    offending = examples.rows(frames).orderBy(*examples.order).limit(3).collect()
    return "; e.g. " + ", ".join(examples.describe(row) for row in offending)


def _count(condition) -> Column:
    return F.count(F.when(condition, True))


def _measure(
    lists: DataFrame,
    expected: DataFrame,
    seen: DataFrame,
    catalog: DataFrame,
    ds: dt.date,
    previous: DataFrame | None,
) -> tuple[dict, MeasuredFrames]:
    """Every measure the checks read, by name, and the frames they came from."""
    lists = lists.select("user_id", "rank", "item_id", "score")
    seen = seen.select("user_id", "item_id").distinct().withColumn("seen", F.lit(True))
    items = catalog.select(
        "item_id", F.lit(True).alias("known"), (F.col("available_from") > F.lit(ds)).alias("early")
    )
    score_before = F.lag("score").over(Window.partitionBy("user_id").orderBy("rank", "item_id"))
    infinite = F.col("score").isin(float("inf"), float("-inf"))
    flagged = (
        lists.join(seen, ["user_id", "item_id"], "left")
        .join(items, "item_id", "left")
        .withColumn("rising", F.col("score") > score_before)
        .withColumn("not_finite", F.col("score").isNull() | F.isnan("score") | infinite)
    )
    rows = flagged.agg(
        _count(F.col("seen")).alias("seen"),
        _count(F.col("known").isNull()).alias("unknown"),
        _count(F.col("early")).alias("early"),
        _count(F.col("not_finite")).alias("not_finite"),
        F.countDistinct(F.when(F.col("rising"), F.col("user_id"))).alias("rising_users"),
        F.countDistinct("item_id").alias("items_listed"),
    ).first()

    per_user = lists.groupBy("user_id").agg(
        F.count("*").alias("listed"),
        F.min("rank").alias("first"),
        F.max("rank").alias("last"),
        F.countDistinct("rank").alias("ranks"),
        F.countDistinct("item_id").alias("distinct_items"),
    )
    wrong_rows = F.coalesce("listed", F.lit(0)) != F.coalesce("expected", F.lit(0))
    bad_ranks = (F.col("first") != 1) | (F.col("last") != F.col("listed")) | (F.col("ranks") != F.col("listed"))
    users = (
        per_user.join(expected.select("user_id", F.col("rows").alias("expected")), "user_id", "full_outer")
        .withColumn("wrong_rows", wrong_rows)
        .withColumn("bad_ranks", bad_ranks)
    )
    totals = users.agg(
        F.count("expected").alias("eligible_users"),
        _count(F.col("wrong_rows")).alias("wrong_count"),
        _count(F.col("bad_ranks")).alias("gaps"),
        F.coalesce(F.sum(F.col("listed") - F.col("distinct_items")), F.lit(0)).alias("repeats"),
    ).first()

    measures = {"ds": ds, **rows.asDict(), **totals.asDict()}
    if previous is not None:
        measures |= _drift(lists, previous)
    measures |= _coverage(catalog, ds, measures["items_listed"])
    return measures, MeasuredFrames(lists, flagged, users)


def _ordered_items(lists: DataFrame) -> DataFrame:
    """(user_id, items): each user's items in rank order."""
    ranked = F.sort_array(F.collect_list(F.struct("rank", "item_id")))
    return (
        lists.groupBy("user_id")
        .agg(ranked.alias("ranked"))
        .select("user_id", F.col("ranked.item_id").alias("items"))
    )


def _drift(lists: DataFrame, previous: DataFrame) -> dict:
    """How the lists changed since the previous published date, for users listed on both."""
    today, before = _ordered_items(lists).alias("t"), _ordered_items(previous).alias("p")
    both = F.col("p.items").isNotNull()
    kept = F.size(F.array_intersect("t.items", "p.items")) / F.greatest(F.size("t.items"), F.lit(1))
    drift = (
        today.join(before, "user_id", "left")
        .agg(
            _count(both).alias("compared"),
            _count(both & (F.col("t.items") != F.col("p.items"))).alias("changed"),
            F.avg(F.when(both, kept)).alias("kept"),
            _count(~both).alias("new_users"),
        )
        .first()
    )
    return {
        "compared": drift["compared"],
        "changed": drift["changed"],
        "new_users": drift["new_users"],
        "changed_share": drift["changed"] / drift["compared"] if drift["compared"] else 0.0,
        "mean_kept": float(drift["kept"]) if drift["kept"] is not None else 0.0,
    }


def _coverage(catalog: DataFrame, ds: dt.date, items_listed: int) -> dict:
    """The share of the items available on `ds` that some list holds."""
    available = catalog.agg(
        _count(F.col("available_from").isNull() | (F.col("available_from") <= F.lit(ds)))
    ).first()[0]
    return {"available": available, "coverage": items_listed / available if available else 0.0}
