"""`modalrank bench scale`: the nightly stages on ml-25m-shaped data at growing sizes, against Spark ALS.

For each fraction of the ml-25m shape (`infra.tools.scale_data`) it builds a fresh lake and runs, each as its
own process exactly as the DAG would (`modalrank <stage>`): generate → ingest → import the content
vectors → fuse → train → publish (top-K for every user), then the peer: Spark MLlib ALS (implicit, the
evaluation's settings) fit + `recommendForAllUsers(K)` on the same interactions, in the same run.

Per stage it prints wall time, rows/s and the peak resident memory of the stage's process tree, split
into the Python driver, the JVM (in local mode the driver and its executors share that JVM) and the
executors' Python workers; then, per stage, the growth exponent between the smallest and largest size
(time ∝ size^slope: 1.0 is linear) and publish / ALS ratios.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from infra.tools.bench import PeakMemory
from infra.tools.scale_data import LAST_EVENT, ScaleShape

log = logging.getLogger("modalrank.bench_scale")

SCALE_DS = LAST_EVENT.date()  # the run date: every generated event is on or before it
ALS_SETTINGS = dict(rank=64, maxIter=15, regParam=0.05, alpha=10.0, implicitPrefs=True, seed=0)


class TreeMemory(PeakMemory):
    """Peak RSS of another process's tree, by role: the root (Python driver), `java` (the JVM), other
    children (Spark's Python workers). Each role's peak is the peak of its sum over the sampled instants.
    The sampling thread and the context manager are `PeakMemory`'s."""

    def __init__(self, pid: int, every_seconds: float = 0.25) -> None:
        super().__init__(every_seconds)
        self.pid = pid
        self.peak = {"driver_python": 0, "jvm": 0, "python_workers": 0, "total": 0}

    def _sample(self) -> None:
        try:
            root = psutil.Process(self.pid)
        except psutil.Error:
            return
        while not self._stop.is_set():
            now = {"driver_python": 0, "jvm": 0, "python_workers": 0}
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.Error:
                break
            for process in tree:
                try:
                    rss = process.memory_info().rss
                    role = (
                        "driver_python"
                        if process.pid == self.pid
                        else "jvm"
                        if process.name() == "java"
                        else "python_workers"
                    )
                except psutil.Error:
                    continue
                now[role] += rss
            now["total"] = sum(now.values())
            for role, value in now.items():
                self.peak[role] = max(self.peak[role], value)
            self._stop.wait(self.every_seconds)

    def gib(self) -> dict[str, float]:
        return {role: round(value / 2**30, 2) for role, value in self.peak.items()}


@dataclass
class StageRun:
    fraction: float
    stage: str
    seconds: float
    rows: int
    rows_label: str
    memory_gib: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)  # the stage's own phases, where it reports them

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


def run_stage(argv: list[str], log_path: Path) -> tuple[float, dict[str, float]]:
    """`python -m jobs.cli ARGV` in its own process; wall seconds and peak memory. Fails loudly."""
    started = time.monotonic()
    with log_path.open("w") as out:
        process = subprocess.Popen([sys.executable, "-m", "jobs.cli", *argv], stdout=out, stderr=subprocess.STDOUT)
        with TreeMemory(process.pid) as memory:
            code = process.wait()
    seconds = round(time.monotonic() - started, 1)
    if code != 0:
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-30:])
        raise RuntimeError(f"`modalrank {' '.join(argv)}` failed ({code}); log {log_path}:\n{tail}")
    return seconds, memory.gib()


def _report(lake: Path, stage: str) -> dict:
    return json.loads((lake / "_reports" / SCALE_DS.isoformat() / f"{stage}.json").read_text())


def bench_fraction(fraction: float, work: Path, k: int, seed: int = 0) -> list[StageRun]:
    shape = ScaleShape(fraction, seed)
    folder = work / f"fraction-{fraction:g}"
    data, lake, logs = folder / "data", folder / "lake", folder / "logs"
    for path in (data, logs):
        path.mkdir(parents=True, exist_ok=True)
    ds = ["--lake", str(lake), "--ds", SCALE_DS.isoformat()]
    runs: list[StageRun] = []

    def stage(name: str, argv: list[str], rows_of) -> None:
        log.info("fraction %g: %s …", fraction, name)
        seconds, memory = run_stage(argv, logs / f"{name}.log")
        rows, label = rows_of()
        runs.append(StageRun(fraction, name, seconds, rows, label, memory))
        log.info("fraction %g: %s took %.1f s (%d %s, peak %s GiB)", fraction, name, seconds, rows, label, memory)

    summary_path = data / "summary.json"
    stage(
        "generate",
        ["scale-data", "--out", str(data), "--fraction", str(fraction), "--seed", str(seed)],
        lambda: (json.loads(summary_path.read_text())["interactions"], "interactions"),
    )
    interactions = runs[0].rows
    sources = ["--catalog", str(data / "catalog.parquet"), "--interactions", str(data / "interactions.parquet")]
    stage("ingest", ["ingest", *ds, *sources], lambda: (interactions, "interactions"))
    stage(
        "import_vectors",
        ["extract", *ds, "--modality", "content", "--vectors", str(data / "vectors.parquet")],
        lambda: (shape.items, "items"),
    )
    stage("fuse", ["fuse", *ds], lambda: (shape.items, "items"))
    stage("train", ["train", *ds], lambda: (interactions, "interactions"))
    stage("publish", ["publish", *ds, "--k", str(k)], lambda: (_report(lake, "publish")["rows"], "rows published"))
    als_out = logs / "als.json"
    stage(
        "als_fit_recommend",
        ["bench", "als-peer", *ds, "--k", str(k), "--out", str(als_out)],
        lambda: (json.loads(als_out.read_text())["rows"], "rows recommended"),
    )
    als = json.loads(als_out.read_text())
    runs[-1].timings = {"fit": als["fit_seconds"], "recommend": als["recommend_seconds"]}
    runs[-2].timings = _report(lake, "publish")["timings"]
    return runs


def als_peer(lake: str, ds: dt.date, k: int, out: Path) -> dict:
    """Spark ALS fit + recommendForAllUsers(k) on the lake's interactions up to `ds`, timed separately."""
    from pyspark.ml.recommendation import ALS
    from pyspark.sql import functions as F

    from jobs import lake as lake_tables
    from jobs.config import load_config
    from jobs.schemas import INTERACTIONS
    from jobs.spark import spark_session

    config = load_config(lake=lake)
    end_of_day = dt.datetime.combine(ds + dt.timedelta(days=1), dt.time())
    with spark_session("modalrank-bench-als", config) as spark:
        started = time.monotonic()
        pairs = (
            lake_tables.read_table(spark, config, INTERACTIONS)
            .where(F.col("event_time") < F.lit(end_of_day))
            .select(F.col("user_id").cast("int").alias("user"), F.col("item_id").cast("int").alias("item"))
            .distinct()
            .withColumn("rating", F.lit(1.0).cast("float"))
            .cache()
        )
        n_pairs = pairs.count()
        model = ALS(userCol="user", itemCol="item", ratingCol="rating", **ALS_SETTINGS).fit(pairs)
        model.userFactors.count()  # the factors are computed lazily: force them inside the fit's time
        fit_seconds = time.monotonic() - started
        started = time.monotonic()
        recommended = model.recommendForAllUsers(k).select("user", F.explode("recommendations").alias("r"))
        rows = recommended.count()  # every user's top-k, exploded: the same rows publish writes
        recommend_seconds = time.monotonic() - started
    result = {
        "pairs": n_pairs,
        "rows": rows,
        "fit_seconds": round(fit_seconds, 1),
        "recommend_seconds": round(recommend_seconds, 1),
        "settings": ALS_SETTINGS,
    }
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def growth_exponent(sizes: list[float], seconds: list[float]) -> float:
    """Least-squares slope of log(seconds) on log(size): 1.0 is linear growth, below 1 sub-linear."""
    xs, ys = [math.log(s) for s in sizes], [math.log(max(t, 0.1)) for t in seconds]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    return (
        sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread if spread else float("nan")
    )


def format_results(runs: list[StageRun]) -> str:
    lines = [
        "| fraction | stage | seconds | rows | rows/s | peak driver python GiB | peak JVM GiB | peak Python workers GiB |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        m = run.memory_gib
        lines.append(
            f"| {run.fraction:g} | {run.stage} | {run.seconds:.1f} | {run.rows:,} {run.rows_label} | "
            f"{run.rows_per_second:,.0f} | {m['driver_python']:.2f} | {m['jvm']:.2f} | {m['python_workers']:.2f} |"
        )
    fractions = sorted({run.fraction for run in runs})
    by = {(run.fraction, run.stage): run for run in runs}
    # The peer comparison. "publish" is the whole job (Spark start, loading, base-model fit, scoring, the
    # gate, the Delta write); its "score" phase is the part that does what recommendForAllUsers does.
    lines += [
        "",
        "| fraction | publish s | publish score phase s | ALS fit s | ALS recommendForAllUsers s "
        "| publish / recommend | score phase / recommend | publish / (fit + recommend) "
        "| (train + publish) / (fit + recommend) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for fraction in fractions:
        if (fraction, "als_fit_recommend") not in by:
            continue
        publish, train, als = (
            by[(fraction, "publish")],
            by[(fraction, "train")],
            by[(fraction, "als_fit_recommend")],
        )
        fit, recommend, score = als.timings["fit"], als.timings["recommend"], publish.timings.get("score", 0.0)
        lines.append(
            f"| {fraction:g} | {publish.seconds:.1f} | {score:.1f} | {fit:.1f} | {recommend:.1f} "
            f"| {publish.seconds / recommend:.2f} | {score / recommend:.2f} | {publish.seconds / (fit + recommend):.2f} "
            f"| {(train.seconds + publish.seconds) / (fit + recommend):.2f} |"
        )
    if len(fractions) > 1:
        lines += [
            "",
            "| stage | growth exponent (time ∝ size^e, 1 = linear) over fractions "
            + ", ".join(f"{f:g}" for f in fractions)
            + " |",
            "|---|---:|",
        ]
        for stage in dict.fromkeys(run.stage for run in runs):
            points = [by[(f, stage)] for f in fractions if (f, stage) in by]
            slope = growth_exponent([p.fraction for p in points], [p.seconds for p in points])
            lines.append(f"| {stage} | {slope:.2f} |")
    return "\n".join(lines)


def bench_scale(fractions: list[float], work: Path, k: int) -> list[StageRun]:
    runs: list[StageRun] = []
    for fraction in sorted(fractions):
        runs += bench_fraction(fraction, work, k)
        (work / "results.json").write_text(json.dumps([asdict(r) for r in runs], indent=2) + "\n")
        print(format_results(runs), flush=True)  # after each size, so a long run shows what it has
    return runs


def serving_probe(fraction: float, work: Path, blocks: int, seed: int = 0) -> dict:
    """Publish's two size-dependent parts, on the generated files without Spark, in this process:
    the driver's base-model fit (`fit_base_models`, the default `RankerSettings`) and the workers'
    candidates + features for `blocks` blocks of 256 users. For sizes where the whole bench does not fit
    the time at hand: it measures the driver's peak memory and the per-user scoring cost at that size."""
    import numpy as np
    import pyarrow.parquet as pq
    import scipy.sparse as sp

    from jobs.ranking.baselines import ItemSide, normalised_rows
    from jobs.ranking.candidates import candidates_and_features, fit_base_models
    from jobs.ranking.data import index_interactions
    from jobs.ranking.ranker import RankerSettings

    data_dir = work / f"fraction-{fraction:g}" / "data"
    if not (data_dir / "summary.json").is_file():
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        run_stage(
            ["scale-data", "--out", str(data_dir), "--fraction", str(fraction), "--seed", str(seed)],
            data_dir.parent / "generate.log",
        )
    result: dict = {"fraction": fraction}
    with PeakMemory(children=False) as memory:
        started = time.monotonic()
        events = pq.read_table(data_dir / "interactions.parquet").to_pandas()
        catalog = pq.read_table(data_dir / "catalog.parquet").to_pandas().sort_values("item_id")
        vectors = pq.read_table(data_dir / "vectors.parquet").to_pandas().sort_values("item_id")
        data = index_interactions(
            events["user_id"].to_numpy(),
            events["item_id"].to_numpy(),
            events["timestamp"].to_numpy(),
            catalog["item_id"].to_numpy(),
        )
        del events
        genre_names = sorted({g for genres in catalog["genres"] for g in genres.split("|")})
        position = {g: i for i, g in enumerate(genre_names)}
        pairs = [(row, position[g]) for row, genres in enumerate(catalog["genres"]) for g in genres.split("|")]
        rows, cols = zip(*pairs, strict=True)
        genres = sp.csr_matrix(
            (np.ones(len(pairs), np.float32), (rows, cols)), shape=(len(catalog), len(genre_names))
        )
        content = normalised_rows(np.stack(vectors["vector"].to_numpy()).astype(np.float32))
        items = ItemSide({"content": content}, genres)
        result["load_seconds"] = round(time.monotonic() - started, 1)
        result.update(users=int(data.interactions.n_users), pairs=len(data.interactions))
        log.info(
            "probe %g: loaded %d pairs of %d users in %.1f s",
            fraction,
            len(data.interactions),
            data.interactions.n_users,
            result["load_seconds"],
        )

        started = time.monotonic()
        settings = RankerSettings()
        base = fit_base_models(data.interactions, items, settings, items.modalities)
        result["fit_base_models_seconds"] = round(time.monotonic() - started, 1)
        log.info("probe %g: base models fitted in %.1f s", fraction, result["fit_base_models_seconds"])

        genre_rows = normalised_rows(items.genres.toarray().astype(np.float32))
        allowed = np.ones(data.interactions.n_items, dtype=bool)
        every = np.random.default_rng(seed).permutation(data.interactions.n_users)
        started, candidates = time.monotonic(), 0
        for block in range(blocks):
            users = np.sort(every[block * 256 : (block + 1) * 256])
            found = candidates_and_features(base, items, genre_rows, items.modalities, settings, users, allowed)
            candidates += len(found.users)
        per_block = (time.monotonic() - started) / blocks
    result.update(
        seconds_per_block_of_256=round(per_block, 2),
        candidates_per_user=round(candidates / (256 * blocks), 1),
        projected_scoring_seconds_2_tasks=round(math.ceil(data.interactions.n_users / 256) * per_block / 2, 0),
        peak_rss_gib=round(memory.peak_gib, 2),
    )
    log.info("probe %g: %s", fraction, result)
    return result


def default_work() -> Path:
    """Generated data and lakes: gigabytes at full size, so under $TMPDIR, not in the checkout."""
    return Path(os.environ.get("TMPDIR", "/tmp")) / "modalrank-scale"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fractions", nargs="+", type=float, default=[0.01, 0.1, 1.0])
    parser.add_argument("--work", type=Path, default=default_work())
    parser.add_argument("--k", type=int, default=50)
