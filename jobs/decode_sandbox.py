"""The decode sandbox: untrusted media files are read and decoded in a child process, one at a time,
under a size cap, a wall-clock limit and a memory limit, so a hostile file costs one `failed` row and
never the Spark task, the worker or the night.

Why a child process per worker (and not a thread, or a process per item): a decoder that segfaults,
hangs in C code or is killed by the OOM killer takes its whole process with it, and only a process
boundary contains that; the models stay in the Spark Python worker (loaded once), and the child is
started once and reused, so an item costs a pipe round trip, not a model load. The child:

- starts as a fresh interpreter (`python -m jobs.decode_sandbox`) whose environment carries
  `OPENCV_IO_MAX_IMAGE_PIXELS` (= the configured pixel limit) from its first instruction, so OpenCV's
  own limit holds whatever the worker imported before;
- reads a file only through `jobs.media_files.read_media_file` (regular files only, size cap checked
  with `stat` before reading, never more than the cap read);
- runs the extractor's `decode` (features/ stays pure: bytes in, arrays out) under `RLIMIT_AS` = its
  address space after start-up + `memory_mb`, so an allocation bomb fails in the child.

The parent (`DecodeSandbox`, in the worker) waits at most `timeout_s` per item. What goes wrong becomes
a fixed phrase and the batch goes on: no answer in time -> the child is killed, "decode timed out";
the child died -> "decoder crashed (signal 11)" (or the exit code); memory refused -> "decoder out of
memory". A dead or killed child is restarted for the next item.

This is process management with operational limits from `PipelineConfig`, not feature math, so it
lives in jobs/ rather than features/; it never imports pyspark, and is tested without a cluster.

Test hook: `MODALRANK_DECODE_FAULTS="name=SIGSEGV,other=SIGSTOP"` makes the child send itself that
signal just before it decodes a file called `name`: a real segfault-style death or a real hang of the
real child, for tests that a crashing or hanging decoder costs one item. Unset outside tests.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection

from jobs import media_files

log = logging.getLogger("modalrank.sandbox")

DECODE_TIMED_OUT = "decode timed out"
DECODER_OUT_OF_MEMORY = "decoder out of memory"
DECODE_ERROR = "decode error"
DECODER_CRASHED_PREFIX = "decoder crashed"
DECODE_FAULTS = "MODALRANK_DECODE_FAULTS"

# How long a child may take to start (imports, extractor set-up) before the worker gives up on it.
START_TIMEOUT_S = 300.0


def decoder_crashed(returncode: int) -> str:
    """The fixed phrase for a child that died: by signal when one killed it, else by exit code."""
    if returncode < 0:
        return f"{DECODER_CRASHED_PREFIX} (signal {-returncode})"
    return f"{DECODER_CRASHED_PREFIX} (exit {returncode})"


@dataclass(frozen=True)
class DecodeLimits:
    """What one item's read and decode may cost. From `PipelineConfig` (see `limits_from_config`)."""

    max_bytes: int
    timeout_s: float
    memory_mb: int
    max_image_pixels: int
    threads: int = 1


def limits_from_config(config, threads: int = 1) -> DecodeLimits:
    return DecodeLimits(
        max_bytes=config.max_media_bytes,
        timeout_s=config.decode_timeout_s,
        memory_mb=config.decode_memory_mb,
        max_image_pixels=config.max_image_pixels,
        threads=threads,
    )


class DecodeSandbox:
    """A decode child for one modality, started on first use and restarted after it dies or hangs.

    `decode(path)` returns `(decoded, None)` (what the extractor's `decode` returned) or
    `(None, reason)`. Not thread-safe: one item at a time, as a Spark task runs them.
    """

    def __init__(self, modality: str, limits: DecodeLimits) -> None:
        self.modality = modality
        self.limits = limits
        self.process: subprocess.Popen | None = None
        self._requests: Connection | None = None
        self._replies: Connection | None = None
        self.restarts = 0

    # -- lifecycle ---------------------------------------------------------------------------------

    def _start(self) -> None:
        child_reads, parent_writes = os.pipe()
        parent_reads, child_writes = os.pipe()
        environment = dict(os.environ)
        environment["OPENCV_IO_MAX_IMAGE_PIXELS"] = str(self.limits.max_image_pixels)
        for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            environment[variable] = str(self.limits.threads)
        spec = json.dumps({"modality": self.modality, "limits": asdict(self.limits)})
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "jobs.decode_sandbox", spec, str(child_reads), str(child_writes)],
                pass_fds=(child_reads, child_writes),
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=sys.stderr,  # the worker's stdout may be a protocol channel; the child only logs
            )
        finally:
            os.close(child_reads)
            os.close(child_writes)
        self._requests = Connection(parent_writes, readable=False)
        self._replies = Connection(parent_reads, writable=False)
        if not self._replies.poll(START_TIMEOUT_S):
            self.close()
            raise RuntimeError(f"the {self.modality} decode child did not start within {START_TIMEOUT_S:.0f} s")
        try:
            ready = self._replies.recv()
        except (EOFError, OSError):
            returncode = self.process.wait()
            self.close()
            raise RuntimeError(
                f"the {self.modality} decode child failed to start: {decoder_crashed(returncode)}"
            ) from None
        log.info("%s decode child pid %d ready (%s)", self.modality, self.process.pid, ready)

    def close(self) -> None:
        """Kill the child (if any) and forget it; the next `decode` starts a fresh one."""
        for connection in (self._requests, self._replies):
            if connection is not None:
                connection.close()
        self._requests = self._replies = None
        if self.process is not None:
            if self.process.poll() is None:
                self.process.kill()  # SIGKILL: works on a stopped (SIGSTOP) or wedged child too
            self.process.wait()
            self.process = None

    def __enter__(self) -> DecodeSandbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- one item ----------------------------------------------------------------------------------

    def decode(self, path: str) -> tuple[object | None, str | None]:
        if media_files.has_nul(path):  # cannot even travel as an argument; no need to bother the child
            return None, media_files.NUL_IN_PATH
        if self.process is None:
            self._start()
        started = time.monotonic()
        try:
            self._requests.send(path)
            answered = self._replies.poll(self.limits.timeout_s)
        except OSError:  # the child is gone (broken pipe)
            answered = True
        if not answered:
            log.warning(
                "%s decode child pid %d gave no answer for %s in %.0f s: killed",
                self.modality,
                self.process.pid,
                path,
                time.monotonic() - started,
            )
            self._restart()
            return None, DECODE_TIMED_OUT
        try:
            status, payload = self._replies.recv()
        except (EOFError, OSError):
            returncode = self.process.wait()
            reason = decoder_crashed(returncode)
            log.warning("%s decode child pid %d died on %s: %s", self.modality, self.process.pid, path, reason)
            self._restart()
            return None, reason
        return (payload, None) if status == "ok" else (None, payload)

    def _restart(self) -> None:
        self.close()
        self.restarts += 1


# ---------------------------------------------------------------------------------------------------
# The child


def _address_space_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _faults() -> dict[str, signal.Signals]:
    wanted = os.environ.get(DECODE_FAULTS, "")
    faults = {}
    for item in filter(None, (part.strip() for part in wanted.split(","))):
        name, _, signal_name = item.partition("=")
        faults[name] = signal.Signals[signal_name]
    return faults


def _decode_one(extractor, path: str, limits: DecodeLimits) -> tuple[str, object]:
    data = media_files.read_media_file(path, limits.max_bytes)
    if isinstance(data, str):
        return "failed", data
    try:
        decoded = extractor.decode(data)
    except MemoryError:
        return "failed", DECODER_OUT_OF_MEMORY
    except Exception:
        log.exception("decoder raised on %s", path)
        return "failed", DECODE_ERROR
    if getattr(decoded, "error", None) is not None:  # a failed Extraction: the decoder's own phrase
        return "failed", decoded.error
    return "ok", decoded


def serve(modality: str, limits: DecodeLimits, requests: Connection, replies: Connection) -> None:
    """The child's loop: a path in, ("ok", decoded) or ("failed", reason) out, until the worker hangs up."""
    import cv2  # after the parent put OPENCV_IO_MAX_IMAGE_PIXELS in this process's environment

    from features.registry import extractor_class

    cv2.setNumThreads(max(1, limits.threads))  # not features.models.limit_threads: that would load torch
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crashing decoder leaves no core file behind
    # The pixel limit holds for video frames too (FFmpeg has none of its own).
    options = {"max_pixels": limits.max_image_pixels} if modality in ("image", "video") else {}
    extractor = extractor_class(modality)(device="cpu", **options)
    faults = _faults()
    # After the imports: the limit is what decoding may add on top of a started child.
    ceiling = _address_space_bytes() + limits.memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (ceiling, ceiling))
    replies.send(f"pid {os.getpid()}, address space capped at {ceiling >> 20} MiB")
    while True:
        try:
            path = requests.recv()
        except EOFError:  # the worker is gone or done
            return
        fault = faults.get(os.path.basename(path))
        if fault is not None:
            log.warning("decode fault injection: pid %d sends itself %s on %s", os.getpid(), fault.name, path)
            os.kill(os.getpid(), fault)
        try:
            reply = _decode_one(extractor, path, limits)
            replies.send(reply)
        except MemoryError:  # the decoded arrays did not fit through the pipe
            replies.send(("failed", DECODER_OUT_OF_MEMORY))


def main(argv: list[str]) -> int:
    from jobs.config import configure_logging

    configure_logging()
    spec = json.loads(argv[0])
    requests = Connection(int(argv[1]), writable=False)
    replies = Connection(int(argv[2]), readable=False)
    serve(spec["modality"], DecodeLimits(**spec["limits"]), requests, replies)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
