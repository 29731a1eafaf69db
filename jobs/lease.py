"""Run leases: one writer at a time per (lake, run date) and per (lake, training date).

Two runs that would write the same partitions and artifacts — the nightly run and a backfill of the same
date, a zombie attempt beside its retry, two dates of one training week that share a ranker — must not
interleave. A job takes the lease of its run date (train also that of its training date) before it writes
anything; a second run of the same lease waits up to `PipelineConfig.lease_timeout_seconds`
(`--lease-timeout`) and then fails with `LeaseBusyError`, naming the holder and having changed nothing.
Runs of different dates take different leases and proceed side by side.

Mechanism: `fcntl.flock` on `<artifacts>/_locks/<key>.lock`. The kernel drops the lock when its holder
dies in any way, `kill -9` included, so a killed run's lease is free at once: no expiry to wait for, no
heartbeat to keep. The lock file also carries a holder record (job, host, pid, run id, since, command) that
the holder writes after taking the lock and the waiter reads for its message. Lock files are never deleted
(deleting a lock file that someone else has open and is about to lock would split the lease in two).

Shared mounts (the artifacts folder of an s3a:// or hdfs:// lake): on Linux, flock on NFS is emulated with
POSIX byte-range locks (since 2.6.12), which NFSv4 (in the protocol) and NFSv3 (through lockd/NLM and
statd) enforce across client machines. A killed process's lock is released by its own kernel at once, as
locally. When a whole client machine dies, NFSv4 frees its locks when that client's lease lapses (90 s by
default); NFSv3 frees them only when the machine comes back and statd tells the server, so a machine lost for
good can leave a lease held until an administrator clears its locks on the server. A mount with `-o nolock`
or `local_lock=flock|all` keeps locks on one machine: leases then guard runs on that machine only, so do not
mount the artifacts folder that way.

Leases are reentrant within a process (a backfill running train then publish for one date, or a job that
takes its lease both in its CLI entry and in its run function, holds it once).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import functools
import inspect
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from jobs import lake_identity
from jobs.artifacts import writer_identity
from jobs.config import PipelineConfig

log = logging.getLogger("modalrank.lease")

LOCKS_FOLDER = "_locks"
POLL_SECONDS = 0.2

_held: dict[str, list] = {}  # lock path -> [fd, depth]: this process's leases
_held_guard = threading.Lock()


class LeaseBusyError(ValueError):
    """Another run holds the lease; this run changed nothing. A ValueError, so `modalrank` prints it as
    one line."""


def lock_path(config: PipelineConfig, key: str) -> Path:
    return config.artifacts_dir / LOCKS_FOLDER / f"{key}.lock"


def date_key(ds: dt.date, table: str = "") -> str:
    """The lease of a run date: every job that writes partitions, reports or pointers for `ds`.

    A job that writes one table of its own (an extractor: `features_<modality>` and that modality's
    quarantine rows and report) names the table, so the DAG's extractors of one date, which never write
    the same thing, run side by side on a cluster while two runs of the same extractor still cannot."""
    if table and not re.fullmatch(r"[a-z][a-z0-9_]*", table):  # it becomes a file name under _locks/
        raise ValueError(f"table name {table!r} cannot name a lease: lowercase letters, digits and '_' only")
    return f"ds-{ds.isoformat()}" + (f"-{table}" if table else "")


def training_key(trained_ds: dt.date) -> str:
    """The lease of a training date: the runs of one training week that build and point at one ranker."""
    return f"train-{trained_ds.isoformat()}"


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as error:
        if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise


def read_holder(path: Path) -> dict:
    """The holder record in a lock file ({} when there is none or it is being rewritten)."""
    try:
        text = Path(path).read_text()
        return json.loads(text) if text.strip() else {}
    except (FileNotFoundError, ValueError):
        return {}


def describe_holder(holder: dict) -> str:
    if not holder:
        return "another run (its holder record is not written yet)"
    return (
        f"{holder.get('job', 'a job')} (pid {holder.get('pid')} on {holder.get('host')}, "
        f"run {holder.get('run') or 'without a run id'}, since {holder.get('since')}: {holder.get('command', '')})"
    )


def _write_holder(fd: int, job: str, config: PipelineConfig, key: str) -> None:
    identity = writer_identity()
    record = {
        "job": job,
        "key": key,
        "lake": config.lake,
        "host": identity["host"],
        "pid": identity["pid"],
        "run": identity["run"],
        "since": identity["at"],
        "command": " ".join(sys.argv)[:300],
    }
    data = (json.dumps(record, sort_keys=True) + "\n").encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    os.fsync(fd)


@contextlib.contextmanager
def lease(config: PipelineConfig, key: str, job: str, timeout: float | None = None) -> Iterator[Path]:
    """Hold the lease `key` of `config`'s lake for the block; wait at most `timeout` seconds
    (`config.lease_timeout_seconds` when None) for another holder, then raise `LeaseBusyError`."""
    path = lock_path(config, key)
    name = str(path)
    with _held_guard:
        if name in _held:
            _held[name][1] += 1
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield path
        finally:
            with _held_guard:
                _held[name][1] -= 1
        return

    # Before the first lock file: leases are only meaningful in the one folder that serves this lake.
    lake_identity.bind(config)
    limit = config.lease_timeout_seconds if timeout is None else timeout
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o664)
    try:
        deadline, announced = time.monotonic() + limit, False
        while not _try_flock(fd):
            holder = read_holder(path)
            if time.monotonic() >= deadline:
                raise LeaseBusyError(
                    f"lease {key} of lake {config.lake} is held by {describe_holder(holder)}; waited {limit:g} s. "
                    "This run changed nothing: rerun it when that run has finished (or give it a longer "
                    "--lease-timeout)"
                )
            if not announced:
                log.warning("waiting up to %g s for lease %s, held by %s", limit, key, describe_holder(holder))
                announced = True
            time.sleep(POLL_SECONDS)
        _write_holder(fd, job, config, key)
        log.info("lease %s taken by %s (pid %d)", key, job, os.getpid())
    except BaseException:
        os.close(fd)
        raise
    with _held_guard:
        _held[name] = [fd, 1]
    try:
        yield path
    finally:
        with _held_guard:
            del _held[name]
        try:
            os.ftruncate(fd, 0)  # a free lease names no holder
        finally:
            os.close(fd)  # closing drops the flock


@contextlib.contextmanager
def leases(config: PipelineConfig, keys: list[str], job: str, timeout: float | None = None) -> Iterator[None]:
    """Several leases, taken in the order given (callers keep one global order: date before training
    date, so two runs never wait on each other in a cycle)."""
    with contextlib.ExitStack() as stack:
        for key in keys:
            stack.enter_context(lease(config, key, job, timeout))
        yield


def holding(job: str, keys: Callable[..., list[str]]):
    """Decorator for a stage's run function `run_<stage>(spark, config, ...)`: every call holds the
    leases `keys(**arguments)` names (the call's arguments by name, defaults filled in) for its whole
    length, taken before the function's first line. So the CLI, spark-submit, the backfill runner and
    tests all take the same leases, whoever calls the stage.

        @lease.holding("publish", lambda ds, **_: [lease.date_key(ds)])
        def run_publish(spark, config, ds, k=50, ...): ...
    """

    def decorate(run: Callable) -> Callable:
        signature = inspect.signature(run)

        @functools.wraps(run)
        def leased(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            with leases(bound.arguments["config"], keys(**bound.arguments), job):
                return run(*args, **kwargs)

        return leased

    return decorate


def is_free(config: PipelineConfig, key: str) -> bool:
    """Whether nobody holds `key` at this instant (this process counts as a holder)."""
    path = lock_path(config, key)
    with _held_guard:
        if str(path) in _held:
            return False
    if not path.exists():
        return True
    fd = os.open(path, os.O_RDWR)
    try:
        if _try_flock(fd):
            fcntl.flock(fd, fcntl.LOCK_UN)
            return True
        return False
    finally:
        os.close(fd)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """A short exclusive lock on `path` (e.g. around a pointer's read-compare-write); blocks until free."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o664)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
