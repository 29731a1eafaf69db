"""`modalrank bench scale`: the nightly stages on ml-25m-shaped data at growing sizes, against Spark ALS.

For each fraction of the ml-25m shape (`jobs.scale_data`) it builds a fresh lake and runs, each as its
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
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from jobs.scale_data import LAST_EVENT, ScaleShape

log = logging.getLogger("modalrank.bench_scale")

SCALE_DS = LAST_EVENT.date()  # the run date: every generated event is on or before it
ALS_SETTINGS = dict(rank=64, maxIter=15, regParam=0.05, alpha=10.0, implicitPrefs=True, seed=0)


class TreeMemory:
    """Peak RSS of a process tree, by role: the root (Python driver), `java` (the JVM), other children
    (Spark's Python workers). Each role's peak is the peak of its sum over the sampled instants."""

    def __init__(self, pid: int, every_seconds: float = 0.25) -> None:
        self.pid = pid
        self.every_seconds = every_seconds
        self.peak = {"driver_python": 0, "jvm": 0, "python_workers": 0, "total": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

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
                        "driver_python" if process.pid == self.pid
                        else "jvm" if process.name() == "java" else "python_workers"
                    )  # fmt: skip
                except psutil.Error:
                    continue
                now[role] += rss
            now["total"] = sum(now.values())
            for role, value in now.items():
                self.peak[role] = max(self.peak[role], value)
            self._stop.wait(self.every_seconds)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join()

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
    runs[-1].memory_gib.update({"fit_seconds": als["fit_seconds"], "recommend_seconds": als["recommend_seconds"]})
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
    lines += [
        "",
        "| fraction | publish s | ALS fit s | ALS recommendForAllUsers s | publish / recommend | publish / (fit + recommend) | train + publish / (fit + recommend) |",
    ]
    lines.append("|---:|---:|---:|---:|---:|---:|---:|")
    for fraction in fractions:
        publish, train, als = (
            by[(fraction, "publish")],
            by[(fraction, "train")],
            by[(fraction, "als_fit_recommend")],
        )
        fit, recommend = als.memory_gib["fit_seconds"], als.memory_gib["recommend_seconds"]
        lines.append(
            f"| {fraction:g} | {publish.seconds:.1f} | {fit:.1f} | {recommend:.1f} | {publish.seconds / recommend:.2f} | "
            f"{publish.seconds / (fit + recommend):.2f} | {(train.seconds + publish.seconds) / (fit + recommend):.2f} |"
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fractions", nargs="+", type=float, default=[0.01, 0.1, 1.0])
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "modalrank-scale")
    parser.add_argument("--k", type=int, default=50)
