"""Benchmarks: the pipeline's stages against a baseline measured in the same run. Never part of the tests.

`modalrank bench extract` compares, per modality, the Spark extraction job with a bare in-process
batched loop over the same items with the same extractor (the fastest a single Python process gets on
this machine), then times a no-change rerun, and samples the peak memory of the whole process tree
(driver, JVM, Python workers).

`modalrank bench text-batching` times the text extractor's two ways through MiniLM on the same texts:
one unpadded pass per text (the CPU default, exact whatever shares a call) against length-sorted padded
batches of 64, and prints the ratio and the largest difference between their vectors.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from jobs.config import REPO_ROOT, PipelineConfig, load_config

log = logging.getLogger("modalrank.bench")

SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
BENCH_DS = dt.date(2026, 11, 25)


class PeakMemory:
    """Peak resident memory of this process and all its children, sampled in a thread."""

    def __init__(self, every_seconds: float = 0.2, children: bool = True) -> None:
        self.every_seconds = every_seconds
        self.children = children
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for process in (me, *(me.children(recursive=True) if self.children else ())):
                try:
                    total += process.memory_info().rss
                except psutil.Error:
                    pass
            self.peak_bytes = max(self.peak_bytes, total)
            self._stop.wait(self.every_seconds)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_gib(self) -> float:
        return self.peak_bytes / 2**30


@dataclass
class ExtractBenchRow:
    dataset: str
    modality: str
    items: int
    bare_items_per_s: float
    spark_job_items_per_s: float
    spark_stage_items_per_s: float
    rerun_fraction: float
    rerun_inferences: int
    bare_peak_gib: float
    spark_peak_gib: float

    @property
    def ratio(self) -> float:
        return self.spark_job_items_per_s / self.bare_items_per_s if self.bare_items_per_s else 0.0


def _bare_inputs(config: PipelineConfig, modality: str) -> list[bytes | str]:
    """The same inputs the Spark job would extract, read without Spark (delta-rs)."""
    from deltalake import DeltaTable

    from jobs.config import delta_rs_uri
    from jobs.extract import MODALITY_INPUTS, extractor_inputs

    path_column = MODALITY_INPUTS[modality].path_column
    catalog = DeltaTable(delta_rs_uri(config.table_path("catalog"))).to_pandas().sort_values("item_id")
    if path_column is not None:
        catalog = catalog[catalog[path_column].notna()].rename(columns={path_column: "path"})
    inputs = extractor_inputs(modality, catalog)
    return [value for value in inputs if modality == "text" or isinstance(value, bytes)]


def bare_loop(modality: str, inputs: list[bytes | str]) -> float:
    """Items per second of one process running the extractor in batches, with every core for torch."""
    from features.models import limit_threads
    from features.registry import make_extractor
    from jobs.extract import MODALITY_INPUTS

    limit_threads(os.cpu_count() or 1)
    extractor = make_extractor(modality)
    if hasattr(extractor, "warm_up"):
        extractor.warm_up()
    extractor.extract_batch(inputs[:2])  # first-call costs (allocators, kernels) are not throughput
    batch = MODALITY_INPUTS[modality].batch_size
    started = time.monotonic()
    for start in range(0, len(inputs), batch):
        extractor.extract_batch(inputs[start : start + batch])
    return len(inputs) / (time.monotonic() - started)


def _prepare_lake(dataset: str, work: Path):
    """(config, spark session) for a fresh lake with the dataset's catalog ingested."""
    from infra.tools.demo_data import DemoDataConfig, generate_demo_data
    from jobs.ingest import IngestRequest, run_ingest
    from jobs.spark import start_spark

    config = load_config(lake=str(work / "lake"))
    spark = start_spark("modalrank-bench", config)
    if dataset == "demo":
        generate_demo_data(work / "demo", DemoDataConfig())
        request = IngestRequest(
            ds=BENCH_DS, catalog=work / "demo" / "catalog.csv", interactions=work / "demo" / "interactions.csv"
        )
    else:
        request = IngestRequest(
            ds=BENCH_DS,
            movielens=SHARED_DATA / "ml-latest-small",
            overviews=SHARED_DATA / "overviews" / "movies_with_overview.csv",
            posters=SHARED_DATA / "posters" / "images",
        )
    run_ingest(spark, config, request)
    return config, spark


def bench_extract(datasets: list[str], modalities: list[str]) -> list[ExtractBenchRow]:
    from jobs.extract import run_extract

    rows = []
    for dataset in datasets:
        if dataset == "ml-latest-small" and not (SHARED_DATA / "ml-latest-small").exists():
            log.warning("skipping ml-latest-small: %s is absent", SHARED_DATA / "ml-latest-small")
            continue
        wanted = [m for m in modalities if dataset == "demo" or m in ("text", "image")]
        with tempfile.TemporaryDirectory(prefix=f"modalrank-bench-{dataset}-") as tmp:
            config, spark = _prepare_lake(dataset, Path(tmp))
            try:
                for modality in wanted:
                    inputs = _bare_inputs(config, modality)
                    log.info("bench %s %s: bare loop over %d items", dataset, modality, len(inputs))
                    # This process alone: the Spark JVM beside it is idle and not part of the loop.
                    with PeakMemory(children=False) as bare_memory:
                        bare = bare_loop(modality, inputs)
                    log.info("bench %s %s: Spark job", dataset, modality)
                    with PeakMemory() as spark_memory:
                        full = run_extract(spark, config, modality, BENCH_DS, force=True)
                    rerun = run_extract(spark, config, modality, BENCH_DS)
                    rows.append(
                        ExtractBenchRow(
                            dataset=dataset,
                            modality=modality,
                            items=full.inferences,
                            bare_items_per_s=bare,
                            spark_job_items_per_s=full.inferences / full.seconds if full.seconds else 0.0,
                            spark_stage_items_per_s=full.items_per_second,
                            rerun_fraction=rerun.seconds / full.seconds if full.seconds else 0.0,
                            rerun_inferences=rerun.inferences,
                            bare_peak_gib=bare_memory.peak_gib,
                            spark_peak_gib=spark_memory.peak_gib,
                        )
                    )
                    print(format_table(rows[-1:], header=False), flush=True)
            finally:
                spark.stop()
    return rows


def bench_texts(limit: int) -> tuple[str, list[str]]:
    """(where they came from, up to `limit` texts): ml-latest-small's overviews when ../shared is there,
    else the demo generator's catalog (titles, genres, tags and overviews composed as extraction does)."""
    import csv

    from features.text import compose_item_text

    overviews = SHARED_DATA / "overviews" / "movies_with_overview.csv"
    if overviews.exists():
        with overviews.open(encoding="utf-8", newline="") as handle:
            texts = [row["overview"] for row in csv.DictReader(handle) if (row.get("overview") or "").strip()]
        return str(overviews), texts[:limit]
    from infra.tools.demo_data import DemoDataConfig, generate_demo_data

    with tempfile.TemporaryDirectory(prefix="modalrank-bench-text-") as tmp:
        generate_demo_data(Path(tmp), DemoDataConfig())
        with (Path(tmp) / "catalog.csv").open(encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle))
    texts = [
        compose_item_text(r["title"], r["overview"], r["genres"].split("|"), r["tags"].split("|")) for r in rows
    ]
    return "the demo catalog", texts[:limit]


def bench_text_batching(texts: list[str], threads: int) -> dict[str, float]:
    """Seconds for the texts one at a time and in batches of 64, both after a warm-up, on `threads`."""
    import numpy as np

    from features.models import limit_threads
    from features.text import TextExtractor

    limit_threads(threads)
    single, batched = TextExtractor(device="cpu"), TextExtractor(device="cpu", batch_size=64)
    timings, vectors = {}, {}
    for name, extractor in (("single", single), ("batched", batched)):
        extractor.extract_batch(texts[:64])  # weights, allocators and kernels: first-call costs
        started = time.monotonic()
        results = extractor.extract_batch(texts)
        timings[name] = time.monotonic() - started
        vectors[name] = np.stack([result.vector for result in results if result.ok])
    return {
        "texts": float(len(texts)),
        "single_s": timings["single"],
        "batched_s": timings["batched"],
        "ratio": timings["single"] / timings["batched"],
        "max_abs_diff": float(np.abs(vectors["single"] - vectors["batched"]).max()),
    }


def format_table(rows: list[ExtractBenchRow], header: bool = True) -> str:
    lines = []
    if header:
        lines += [
            "| dataset | modality | items | bare loop items/s | Spark job items/s | ratio | Spark extract stage "
            "items/s | no-change rerun / full | rerun inferences | peak mem bare GiB | peak mem Spark GiB |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
    for r in rows:
        lines.append(
            f"| {r.dataset} | {r.modality} | {r.items} | {r.bare_items_per_s:.1f} | {r.spark_job_items_per_s:.1f} | "
            f"{r.ratio:.2f} | {r.spark_stage_items_per_s:.1f} | {r.rerun_fraction:.0%} | {r.rerun_inferences} | "
            f"{r.bare_peak_gib:.2f} | {r.spark_peak_gib:.2f} |"
        )
    return "\n".join(lines)
