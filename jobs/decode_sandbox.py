"""The decode sandbox: untrusted media files are read and decoded in a child process, one at a time,
under a size cap, a wall-clock limit and a memory limit, so a hostile file costs one `failed` row and
never the Spark task, the worker or the night.

Why a child process per worker (and not a thread, or a process per item): a decoder that segfaults,
hangs in C code or is killed by the OOM killer takes its whole process with it, and only a process
boundary contains that; the models stay in the Spark Python worker (loaded once), and the child is
started once and reused, so an item costs a pipe round trip, not a model load. The child:

- starts as a fresh interpreter (`python -m jobs.decode_sandbox`) with a minimal environment
  (`child_environment`: the interpreter's path, locale, thread counts and caches, never the worker's
  cloud keys or `AIRFLOW_CONN_*`) that carries `OPENCV_IO_MAX_IMAGE_PIXELS` (= the configured pixel
  limit) from its first instruction, so OpenCV's own limit holds whatever the worker imported before;
- writes temporary files (a video's copy for FFmpeg) only in a folder of its own (`TMPDIR`), which the
  parent removes when the child ends, so a child killed mid-decode leaves nothing behind;
- reads a file only through `jobs.media_files.read_media_file` (regular files only, size cap checked
  with `stat` before reading, never more than the cap read);
- runs the extractor's `decode` (features/ stays pure: bytes in, arrays out) under `RLIMIT_AS` = its
  address space after start-up + `memory_mb`, so an allocation bomb fails in the child.

The pipe carries no pickles, in either direction: a request is the path's bytes; a reply is a JSON
header (status and reason, or the decoded value's numbers and each array's dtype and shape, at most
`HEADER_MAX_BYTES`) followed by one message of the arrays' raw bytes, at most `DecodeLimits.
max_reply_bytes` (what the child was allowed to allocate). The parent checks the header, reads exactly
the bytes it announced and rebuilds the arrays with `numpy.frombuffer`; the extractor's
`decoded_from_arrays` checks their dtypes and ranks. A reply that breaks any of this is "decoder reply
refused" and the child is replaced: whatever a hostile file makes the decoder do, the worker only ever
parses JSON and copies bytes.

The parent (`DecodeSandbox`, in the worker) waits at most `timeout_s` per item. What goes wrong becomes
a fixed phrase and the batch goes on: no answer in time -> the child is killed, "decode timed out";
the child died -> "decoder crashed (signal 11)" (or the exit code); memory refused -> "decoder out of
memory". A dead or killed child is restarted for the next item.

This is process management with operational limits from `PipelineConfig`, not feature math, so it
lives in jobs/ rather than features/; it never imports pyspark, and is tested without a cluster.

Test hook: `MODALRANK_DECODE_FAULTS="name=SIGSEGV,other=SIGSTOP"` makes the child send itself that
signal just before it decodes a file called `name`: a real segfault-style death or a real hang of the
real child, for tests that a crashing or hanging decoder costs one item; `name=PICKLE_REPLY` or
`name=OVERSIZED_REPLY` makes it answer as a compromised decoder might (`REPLY_FAULTS`). Unset outside
tests.
"""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection

import numpy as np

from jobs import media_files

log = logging.getLogger("modalrank.sandbox")

DECODE_TIMED_OUT = "decode timed out"
DECODER_OUT_OF_MEMORY = "decoder out of memory"
DECODE_ERROR = "decode error"
DECODER_CRASHED_PREFIX = "decoder crashed"
DECODER_REPLY_REFUSED = "decoder reply refused"
DECODE_FAULTS = "MODALRANK_DECODE_FAULTS"

# A reply's header: a status, a reason or a handful of numbers and array shapes. Far below this.
HEADER_MAX_BYTES = 64 * 1024
# Array types a decoded value may hold (frames and images are uint8, samples and descriptors float32).
REPLY_DTYPES = frozenset({"uint8", "float32", "float64"})
# The only variables a decode child inherits from its worker: how to run Python and find this code, the
# locale, and the numba cache librosa compiles into. Nothing else: a worker's environment holds cloud
# keys (AWS_*), Airflow connections (AIRFLOW_CONN_*) and tokens that a decoder run on hostile bytes must
# not be able to read. `child_environment` adds the limits' own variables and the child's TMPDIR.
CHILD_INHERITS = ("PATH", "HOME", "LANG", "LANGUAGE", "TZ", "PYTHONPATH", "LD_LIBRARY_PATH", "NUMBA_CACHE_DIR")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")

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
    # How much of one clip is decoded at most (features.video.DecodeBounds, features.audio.decode_audio).
    max_video_seconds: float = 600.0
    max_video_frames: int = 36_000
    max_video_pixels_per_second: int = 500_000_000
    max_audio_seconds: float = 60.0
    max_audio_sample_rate: int = 192_000

    @property
    def max_reply_bytes(self) -> int:
        """The most array bytes the parent accepts for one item: no more than the child may allocate."""
        return self.memory_mb * 1024 * 1024


def child_environment(limits: DecodeLimits, temp_folder: str, parent: dict[str, str]) -> dict[str, str]:
    """The decode child's whole environment: `CHILD_INHERITS` and `LC_*` from `parent`, the test hook
    `MODALRANK_DECODE_FAULTS` when set, and the child's own limits, thread counts and TMPDIR."""
    environment = {
        name: value
        for name, value in parent.items()
        if name in CHILD_INHERITS or name.startswith("LC_") or name == DECODE_FAULTS
    }
    environment["TMPDIR"] = temp_folder
    environment["OPENCV_IO_MAX_IMAGE_PIXELS"] = str(limits.max_image_pixels)
    for variable in THREAD_VARIABLES:
        environment[variable] = str(limits.threads)
    return environment


def limits_from_config(config, threads: int = 1) -> DecodeLimits:
    return DecodeLimits(
        max_bytes=config.max_media_bytes,
        timeout_s=config.decode_timeout_s,
        memory_mb=config.decode_memory_mb,
        max_image_pixels=config.max_image_pixels,
        threads=threads,
        max_video_seconds=config.max_video_seconds,
        max_video_frames=config.max_video_frames,
        max_video_pixels_per_second=config.max_video_pixels_per_second,
        max_audio_seconds=config.max_audio_seconds,
        max_audio_sample_rate=config.max_audio_sample_rate,
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
        self.temp_folder: str | None = None
        self.restarts = 0
        self._extractor = None  # for `decoded_from_arrays` only: built without loading its model

    # -- lifecycle ---------------------------------------------------------------------------------

    def _start(self) -> None:
        self.temp_folder = tempfile.mkdtemp(prefix=f"modalrank-decode-{self.modality}-")
        child_reads, parent_writes = os.pipe()
        parent_reads, child_writes = os.pipe()
        environment = child_environment(self.limits, self.temp_folder, dict(os.environ))
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
            ready = json.loads(self._replies.recv_bytes(HEADER_MAX_BYTES))
        except (EOFError, OSError, ValueError):
            returncode = self.process.wait()
            self.close()
            raise RuntimeError(
                f"the {self.modality} decode child failed to start: {decoder_crashed(returncode)}"
            ) from None
        log.info("%s decode child pid %d ready (%s)", self.modality, self.process.pid, ready.get("ready"))

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
        if self.temp_folder is not None:  # whatever a killed child was writing there goes with it
            shutil.rmtree(self.temp_folder, ignore_errors=True)
            self.temp_folder = None

    def __enter__(self) -> DecodeSandbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- one item ----------------------------------------------------------------------------------

    def decode(self, path: str, expected_sha256: str = "") -> tuple[object | None, str | None]:
        """The decoded arrays of the file at `path`, or (None, why not). With `expected_sha256` (ingest's
        content hash), the child checks the bytes it read against it (`media_files.read_media_file`)."""
        if media_files.has_nul(path):  # cannot even travel as an argument; no need to bother the child
            return None, media_files.NUL_IN_PATH
        if self.process is None:
            self._start()
        started = time.monotonic()
        try:
            # A request: the expected hash (hex, or nothing), a NUL, the path's bytes (a path holds no NUL).
            self._requests.send_bytes(expected_sha256.encode("ascii") + b"\0" + os.fsencode(path))
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
            header = self._replies.recv_bytes(HEADER_MAX_BYTES)
        except EOFError:
            returncode = self.process.wait()
            reason = decoder_crashed(returncode)
            log.warning("%s decode child pid %d died on %s: %s", self.modality, self.process.pid, path, reason)
            self._restart()
            return None, reason
        except OSError:  # a header over HEADER_MAX_BYTES ("bad message length")
            return self._refuse(path, "a header over the size limit")
        try:
            return self._read_reply(header)
        except _Refused as refused:
            return self._refuse(path, str(refused))

    def _read_reply(self, header_bytes: bytes) -> tuple[object | None, str | None]:
        """A reply after its header: the decoded value rebuilt from plain arrays, or the child's reason."""
        try:
            header = json.loads(header_bytes)
        except ValueError:
            raise _Refused("a header that is not JSON") from None
        if not isinstance(header, dict):
            raise _Refused("a header that is not an object")
        if header.get("status") == "failed":
            reason = header.get("reason")
            if not isinstance(reason, str) or not 0 < len(reason) <= 200:
                raise _Refused("a failure without a short reason")
            return None, reason
        if header.get("status") != "ok" or not isinstance(header.get("fields"), dict):
            raise _Refused("an unknown status")
        specs = _array_specs(header.get("arrays"))
        total = sum(nbytes for _, _, nbytes in specs)
        if total > self.limits.max_reply_bytes:
            raise _Refused(f"{total} array bytes, over {self.limits.max_reply_bytes}")
        try:
            body = self._replies.recv_bytes(max(total, 1))
        except (EOFError, OSError):
            raise _Refused("array bytes longer than announced, or none") from None
        if len(body) != total:
            raise _Refused(f"{len(body)} array bytes where {total} were announced")
        arrays, offset = [], 0
        for dtype, shape, nbytes in specs:
            # A copy, so the arrays are writable and do not pin the message buffer.
            arrays.append(
                np.frombuffer(body, dtype=dtype, count=nbytes // dtype.itemsize, offset=offset)
                .reshape(shape)
                .copy()
            )
            offset += nbytes
        try:
            return self._decoded_from_arrays(header["fields"], arrays), None
        except (ValueError, KeyError, TypeError) as error:
            raise _Refused(f"parts that are not a decoded {self.modality}: {error}") from None

    def _decoded_from_arrays(self, fields: dict, arrays: list[np.ndarray]) -> object:
        if self._extractor is None:
            from features.registry import extractor_class

            options = _extractor_options(self.modality, self.limits)
            self._extractor = extractor_class(self.modality)(device="cpu", **options)
        return self._extractor.decoded_from_arrays(fields, arrays)

    def _refuse(self, path: str, what: str) -> tuple[None, str]:
        log.warning("%s decode child pid %d sent %s for %s: replaced", self.modality, self.process.pid, what, path)
        self._restart()
        return None, DECODER_REPLY_REFUSED

    def _restart(self) -> None:
        self.close()
        self.restarts += 1


class _Refused(Exception):
    """A reply the parent will not take; the message says what was wrong with it (for the log)."""


def _array_specs(raw: object) -> list[tuple[np.dtype, tuple[int, ...], int]]:
    """(dtype, shape, byte count) of each array a header announces, checked: known dtypes only, shapes
    of whole non-negative numbers."""
    if not isinstance(raw, list) or len(raw) > 1024:
        raise _Refused("an array list that is not a short list")
    specs = []
    for entry in raw:
        if not isinstance(entry, dict) or entry.get("dtype") not in REPLY_DTYPES:
            raise _Refused(f"an array of an unexpected type: {str(entry)[:80]}")
        shape = entry.get("shape")
        if (
            not isinstance(shape, list)
            or len(shape) > 4
            or not all(isinstance(side, int) and not isinstance(side, bool) and side >= 0 for side in shape)
        ):
            raise _Refused(f"an array of an unexpected shape: {str(shape)[:80]}")
        dtype = np.dtype(entry["dtype"]).newbyteorder("<")
        specs.append((dtype, tuple(shape), math.prod(shape) * dtype.itemsize))
    return specs


def _extractor_options(modality: str, limits: DecodeLimits) -> dict[str, float]:
    """The decoding bounds of `limits` as the modality's extractor takes them."""
    if modality == "image":
        return {"max_pixels": limits.max_image_pixels}
    if modality == "video":  # the pixel limit holds for video frames too (FFmpeg has none of its own)
        return {
            "max_pixels": limits.max_image_pixels,
            "max_seconds": limits.max_video_seconds,
            "max_decoded_frames": limits.max_video_frames,
            "max_pixels_per_second": limits.max_video_pixels_per_second,
        }
    if modality == "audio":
        return {"max_seconds": limits.max_audio_seconds, "max_sample_rate": limits.max_audio_sample_rate}
    return {}


# ---------------------------------------------------------------------------------------------------
# The child


def _address_space_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


# Replies a compromised decoder could send, for `MODALRANK_DECODE_FAULTS` (`name=PICKLE_REPLY`): a pickle
# that would create `<file>.unpickled` beside the file if anyone unpickled it, and a header announcing
# more array bytes than the parent takes.
REPLY_FAULTS = ("PICKLE_REPLY", "OVERSIZED_REPLY")


def _faults() -> dict[str, str]:
    wanted = os.environ.get(DECODE_FAULTS, "")
    faults = {}
    for item in filter(None, (part.strip() for part in wanted.split(","))):
        name, _, fault = item.partition("=")
        if fault not in REPLY_FAULTS:
            signal.Signals[fault]  # a KeyError at start-up for a name that is neither
        faults[name] = fault
    return faults


class _TouchWhenUnpickled:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _send_fault(replies: Connection, fault: str, path: str, limits: DecodeLimits) -> None:
    if fault == "PICKLE_REPLY":
        import pickle

        replies.send_bytes(pickle.dumps(("ok", _TouchWhenUnpickled(path + ".unpickled"))))
    else:
        shape = [limits.max_reply_bytes + 1]
        replies.send_bytes(
            json.dumps({"status": "ok", "fields": {}, "arrays": [{"dtype": "uint8", "shape": shape}]}).encode()
        )


def _failed(reason: str) -> tuple[dict, list[np.ndarray]]:
    return {"status": "failed", "reason": reason}, []


def _decode_one(
    extractor, path: str, limits: DecodeLimits, expected_sha256: str = ""
) -> tuple[dict, list[np.ndarray]]:
    """The reply for one path: (header, arrays)."""
    data = media_files.read_media_file(path, limits.max_bytes, expected_sha256)
    if isinstance(data, str):
        return _failed(data)
    try:
        decoded = extractor.decode(data)
    except MemoryError:
        return _failed(DECODER_OUT_OF_MEMORY)
    except Exception:
        log.exception("decoder raised on %s", path)
        return _failed(DECODE_ERROR)
    del data
    if getattr(decoded, "error", None) is not None:  # a failed Extraction: the decoder's own phrase
        return _failed(decoded.error)
    fields, arrays = extractor.decoded_to_arrays(decoded)
    arrays = [np.ascontiguousarray(array) for array in arrays]
    header = {
        "status": "ok",
        "fields": fields,
        "arrays": [{"dtype": array.dtype.name, "shape": list(array.shape)} for array in arrays],
    }
    return header, arrays


def _send_reply(replies: Connection, header: dict, arrays: list[np.ndarray]) -> None:
    # The body is built before the header goes, so a MemoryError here leaves the pipe clean for a
    # "failed" reply instead.
    body = b"".join(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes() for array in arrays)
    replies.send_bytes(json.dumps(header).encode())
    if header["status"] == "ok":
        replies.send_bytes(body)  # one message of every array's bytes, in order, little-endian


def serve(modality: str, limits: DecodeLimits, requests: Connection, replies: Connection) -> None:
    """The child's loop: a path's bytes in, a header (+ array bytes) out, until the worker hangs up."""
    import cv2  # after the parent put OPENCV_IO_MAX_IMAGE_PIXELS in this process's environment

    from features.registry import extractor_class

    cv2.setNumThreads(max(1, limits.threads))  # not features.models.limit_threads: that would load torch
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crashing decoder leaves no core file behind
    extractor = extractor_class(modality)(device="cpu", **_extractor_options(modality, limits))
    faults = _faults()
    # After the imports: the limit is what decoding may add on top of a started child.
    ceiling = _address_space_bytes() + limits.memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (ceiling, ceiling))
    replies.send_bytes(
        json.dumps({"ready": f"pid {os.getpid()}, address space capped at {ceiling >> 20} MiB"}).encode()
    )
    while True:
        try:
            expected, _, raw_path = requests.recv_bytes().partition(b"\0")
            path, expected_sha256 = os.fsdecode(raw_path), expected.decode("ascii", "replace")
        except EOFError:  # the worker is gone or done
            return
        fault = faults.get(os.path.basename(path))
        if fault in REPLY_FAULTS:
            log.warning("decode fault injection: pid %d sends a %s for %s", os.getpid(), fault, path)
            _send_fault(replies, fault, path, limits)
            continue
        if fault is not None:
            log.warning("decode fault injection: pid %d sends itself %s on %s", os.getpid(), fault, path)
            os.kill(os.getpid(), signal.Signals[fault])
        try:
            header, arrays = _decode_one(extractor, path, limits, expected_sha256)
            _send_reply(replies, header, arrays)
        except MemoryError:  # the decoded arrays did not fit through the pipe
            _send_reply(replies, *_failed(DECODER_OUT_OF_MEMORY))


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
