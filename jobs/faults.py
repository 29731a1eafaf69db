"""Crash points: named places where a fault-injection test can kill the running process with SIGKILL.

A data team's worst night is a process that dies between two writes: the OOM killer, a lost node, a
scheduler that kills a zombie attempt. `crash_point("train.weights_written")` marks such a place. When
the environment variable `MODALRANK_CRASH_AT` names it, the process kills itself there with SIGKILL (no
`finally`, no atexit, no flush: exactly what `kill -9` does), so a test can show that a rerun after a
crash at that point leaves the same tables and artifacts as an uninterrupted run.

`MODALRANK_CRASH_AT=name` crashes at the first time the point is reached; `name:N` at the N-th time in
this process (e.g. after the second extraction chunk). Unset (always, outside tests), a crash point
costs one dictionary lookup. Spark's Python workers inherit the variable, so a point inside a worker
kills that worker and fails the task, as a crashed executor would.
"""

from __future__ import annotations

import collections
import logging
import os
import signal

CRASH_AT = "MODALRANK_CRASH_AT"

log = logging.getLogger("modalrank.faults")
_hits: collections.Counter[str] = collections.Counter()


def crash_point(name: str) -> None:
    """SIGKILL this process here if `MODALRANK_CRASH_AT` names this point (and this is the N-th hit)."""
    wanted = os.environ.get(CRASH_AT)
    if not wanted:
        return
    point, _, nth = wanted.partition(":")
    if point != name:
        return
    _hits[name] += 1
    if _hits[name] == int(nth or 1):
        log.warning("crash point %s reached (hit %d): killing pid %d with SIGKILL", name, _hits[name], os.getpid())
        for handler in logging.getLogger().handlers:
            handler.flush()
        os.kill(os.getpid(), signal.SIGKILL)
