"""Extraction on Spark's Python workers: the mapInPandas function `jobs.extract` ships, and what each
worker process keeps between tasks (its extractor, built once, and its decode sandbox, started once).

Workers find these by reference to this module, so the caches below are module-level here and live as
long as the worker process; never define them in the job's module, which may run as `__main__`."""

from __future__ import annotations

import atexit
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from jobs.config import configure_logging
from jobs.decode_sandbox import DecodeLimits, DecodeSandbox
from jobs.modality_inputs import extractor_inputs

log = logging.getLogger("modalrank.extract")


_worker_extractors: dict[str, object] = {}


def _worker_extractor(modality: str, threads: int):
    """The modality's extractor, built once per Python worker process and reused by every task."""
    from features.models import limit_threads
    from features.registry import make_extractor

    limit_threads(threads)
    if modality not in _worker_extractors:
        extractor = make_extractor(modality)
        if hasattr(extractor, "warm_up"):
            with _one_warm_up_at_a_time():
                extractor.warm_up()
        _worker_extractors[modality] = extractor
    return _worker_extractors[modality]


@contextmanager
def _one_warm_up_at_a_time() -> Iterator[None]:
    """An exclusive lock shared by every worker process on this machine.

    librosa's first call JIT-compiles with numba and writes numba's on-disk cache; two workers
    compiling the same function at once can leave an index that points at the other's machine code,
    after which every process that loads it crashes (seen here: a segfault in `localmax`). Warming
    up one process at a time means the first compiles and writes, the others then only read.
    """
    import fcntl
    import tempfile

    with open(Path(tempfile.gettempdir()) / "modalrank-warm-up.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


_worker_sandboxes: dict[str, DecodeSandbox] = {}


def _worker_sandbox(modality: str, limits: DecodeLimits) -> DecodeSandbox:
    """The modality's decode child of this Python worker, started once and reused by every task."""
    sandbox = _worker_sandboxes.get(modality)
    if sandbox is None or sandbox.limits != limits:
        if sandbox is not None:
            sandbox.close()
        if not _worker_sandboxes:
            atexit.register(_close_sandboxes)
        sandbox = _worker_sandboxes[modality] = DecodeSandbox(modality, limits)
    return sandbox


def _close_sandboxes() -> None:
    for sandbox in _worker_sandboxes.values():
        sandbox.close()


def _decode_in(sandbox: DecodeSandbox, content_hashes: dict[str, str]):
    """The sandbox's decode as an extractor's `decode`: decoded arrays, or a failed `Extraction`. Each
    file's bytes are checked against the content hash ingest recorded for its path."""
    from features.base import Extraction

    def decode(path: str) -> object:
        decoded, reason = sandbox.decode(path, content_hashes.get(path) or "")
        return Extraction.failed(reason) if reason is not None else decoded

    return decode


def extract_partition(modality: str, threads: int, limits: DecodeLimits):
    """The mapInPandas function: work rows in, one result row per item out."""

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        # Workers are separate processes: their log lines reach the executor's stderr only if asked.
        configure_logging()
        extractor = _worker_extractor(modality, threads)
        sandbox = None if modality == "text" else _worker_sandbox(modality, limits)
        started, done = time.monotonic(), 0
        for batch in batches:
            if sandbox is None:
                results = extractor.extract_batch(extractor_inputs(modality, batch))
            else:
                hashes = dict(zip(batch["path"], batch["content_hash"], strict=True))
                results = extractor.decode_then_extract(list(batch["path"]), decode=_decode_in(sandbox, hashes))
            rows = []
            for item_id, result in zip(batch["item_id"], results, strict=True):
                if result.ok:
                    rows.append((item_id, result.vector, len(result.vector), "ok", None, 1))
                else:  # unreadable, refused by the sandbox's limits, or by the extractor's checks
                    rows.append((item_id, None, None, "failed", result.error, 0))
            done += len(rows)
            log.info("%s worker: %d items (%.1f items/s)", modality, done, done / (time.monotonic() - started))
            yield pd.DataFrame(rows, columns=["item_id", "vector", "dim", "status", "error", "inferences"])

    return run
