"""Progress of long Spark work, logged from the driver while the job runs.

Python workers cannot see the whole job, and accumulators only report when a task ends, so a driver
thread polls Spark's status tracker and logs finished tasks with an items estimate and a rate.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager

log = logging.getLogger("modalrank.progress")


@contextmanager
def stage_progress(spark, label: str, total_items: int, every_seconds: float = 15.0):
    """Log `label: tasks done/total (~items done/total items, items/s)` every `every_seconds`."""
    tracker = spark.sparkContext.statusTracker()
    stop = threading.Event()
    started = time.monotonic()

    def report() -> None:
        while not stop.wait(every_seconds):
            done = total = 0
            for stage_id in tracker.getActiveStageIds():
                info = tracker.getStageInfo(stage_id)
                if info is not None:
                    done += info.numCompletedTasks
                    total += info.numTasks
            if total:
                items = int(total_items * done / total)
                elapsed = time.monotonic() - started
                log.info(
                    "%s: %d/%d tasks done (~%d/%d items, %.1f items/s)",
                    label,
                    done,
                    total,
                    items,
                    total_items,
                    items / elapsed if elapsed else 0.0,
                )

    thread = threading.Thread(target=report, name=f"progress-{label}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=1)
