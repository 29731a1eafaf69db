"""The artifact store: the one way files under `<artifacts>/_models` and `<artifacts>/_reports` are written.

Delta gives the tables atomic commits; the plain files beside them (fusion projections, rankers, the
serving artifact, pointers, reports) get the same promise here — a reader sees the old file or the new
one, never half of either, and a crash at any instant leaves nothing that a later run would mistake for
a finished artifact:

- `write_file` / `write_text` / `write_json`: a temporary file with a unique name (host, pid, random)
  in the target's own folder, written, flushed and fsynced, renamed over the target, and the folder
  fsynced so the rename survives a power cut. Two writers never share a temporary file.
- `build_artifact`: an artifact is a folder of files plus `manifest.json` (every file's sha256 and size,
  and who wrote it), written LAST. The folder is built under a fresh temporary name beside the target and
  renamed into place whole, so the target path only ever holds a complete artifact; a folder already there
  that does not verify (a partial or foreign artifact, left by older code or a hand) is moved aside and
  replaced, never edited in place while a reader may load it.
- `verify`: every file against the manifest (no missing, extra, resized or changed file). Jobs reuse an
  artifact only when it verifies; otherwise they log why and build it again.
- `update_pointer`: a read-compare-write of a pointer (`current.json`) under a lock, so two runs cannot
  both read the old value and the older of them write last.

This module never knows what an artifact means; the jobs decide names and contents.
"""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import json
import logging
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from jobs.faults import crash_point

log = logging.getLogger("modalrank.artifacts")

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
# Temporary files and folders left by a killed writer are removed by the next writer of the same
# target once they are this old (or at once when their writer's pid is gone on this host).
STALE_TEMPORARY_SECONDS = 6 * 3600


class ArtifactError(ValueError):
    """An artifact that does not verify, where the caller needs a verified one."""


def run_id() -> str:
    """The run this process belongs to: Airflow's DAG run id, else `MODALRANK_RUN_ID`, else ""."""
    return os.environ.get("AIRFLOW_CTX_DAG_RUN_ID", "") or os.environ.get("MODALRANK_RUN_ID", "")


def writer_identity() -> dict:
    """Who is writing: recorded in manifests and lease records, so a stray file can be traced."""
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "run": run_id(),
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def _host() -> str:
    return socket.gethostname().replace(".", "-")  # dots would break the parsing of temporary names


def _temporary_name(target: Path) -> Path:
    # Host, pid and randomness: unique across processes and machines that share the folder; the
    # leading dot keeps it out of listings and out of `verify`'s idea of the artifact's files.
    return target.with_name(f".{target.name}.{_host()}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def fsync_folder(folder: Path) -> None:
    """Make renames and creations in `folder` durable (a no-op where folders cannot be opened)."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass  # some file systems refuse fsync on a folder; the rename is still atomic
    finally:
        os.close(handle)


def _fsync_file(path: Path) -> None:
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def write_file(path: Path, write: Callable[[Path], object]) -> Path:
    """`write(temporary_path)` writes the content (e.g. safetensors' `save_file`); then fsync, rename over
    `path`, fsync the folder. A crash leaves `path` as it was, plus at most a dotted temporary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary_name(path)
    try:
        write(temporary)
        _fsync_file(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    fsync_folder(path.parent)
    return path


def write_bytes(path: Path, data: bytes) -> Path:
    return write_file(path, lambda temporary: temporary.write_bytes(data))


def write_text(path: Path, text: str) -> Path:
    return write_file(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def write_json(path: Path, payload: object, indent: int | None = 2) -> Path:
    return write_text(path, json.dumps(payload, indent=indent, sort_keys=True, default=str) + "\n")


# ---------------------------------------------------------------------------------------------------
# Artifact folders: files + manifest.json, built aside and renamed into place whole


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _artifact_files(folder: Path) -> list[Path]:
    """The entries that belong to an artifact: everything but the manifest and dotted temporaries."""
    return sorted(p for p in folder.iterdir() if p.name != MANIFEST and not p.name.startswith("."))


def write_manifest(folder: Path, meta: dict | None = None) -> dict:
    """Checksum every file in `folder` (fsyncing each) and write `manifest.json` last, atomically."""
    files = {}
    for path in _artifact_files(folder):
        if not path.is_file():
            raise ArtifactError(f"{path} is not a plain file: artifact folders hold files only")
        _fsync_file(path)
        files[path.name] = {"sha256": file_digest(path), "size": path.stat().st_size}
    manifest = {"format": MANIFEST_FORMAT, "files": files, "written_by": writer_identity(), "meta": meta or {}}
    write_json(folder / MANIFEST, manifest)
    return manifest


def verify(folder: Path) -> list[str]:
    """What is wrong with the artifact in `folder`: [] when every file matches its manifest exactly."""
    folder = Path(folder)
    if not folder.is_dir():
        return [f"{folder} does not exist"]
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        listed = manifest["files"]
    except FileNotFoundError:
        return [f"no {MANIFEST} (a partial artifact, or one not written by this store)"]
    except (ValueError, KeyError, TypeError) as error:
        return [f"unreadable {MANIFEST}: {error}"]
    problems = []
    present = {path.name: path for path in _artifact_files(folder)}
    for name in sorted(set(present) - set(listed)):
        problems.append(f"{name} is not in the manifest (a foreign file)")
    for name, expected in sorted(listed.items()):
        path = present.get(name)
        if path is None or not path.is_file():
            problems.append(f"{name} is missing")
        elif path.stat().st_size != expected["size"]:
            problems.append(f"{name} has {path.stat().st_size} bytes, the manifest says {expected['size']}")
        elif file_digest(path) != expected["sha256"]:
            problems.append(f"{name} does not match its sha256 in the manifest")
    return problems


def is_verified(folder: Path, purpose: str = "reuse") -> bool:
    """True when `folder` verifies; otherwise logs why (when it exists at all) and returns False."""
    problems = verify(folder)
    if problems and Path(folder).exists():
        log.warning("artifact %s cannot be used for %s: %s", folder, purpose, "; ".join(problems))
    return not problems


def require_verified(folder: Path, remedy: str = "") -> Path:
    """`folder`, or an `ArtifactError` that says what is wrong with it (and `remedy`, what to do about
    it): for readers that must not rebuild."""
    problems = verify(folder)
    if problems:
        raise ArtifactError(
            f"artifact {folder} does not verify ({'; '.join(problems)})" + (f": {remedy}" if remedy else "")
        )
    return Path(folder)


def manifest_checksums(folder: Path) -> dict[str, str]:
    """{file name: sha256} as the manifest records them."""
    return {
        name: entry["sha256"] for name, entry in json.loads((Path(folder) / MANIFEST).read_text())["files"].items()
    }


def build_artifact(
    folder: Path,
    write: Callable[[Path], object],
    meta: dict | None = None,
    crash_prefix: str = "artifact",
) -> Path:
    """Build the artifact `folder` through `write(temporary_folder)`, then publish it whole.

    `write` puts plain files into an empty temporary folder beside `folder`; the manifest goes in last,
    then one rename makes the artifact appear. When a verified artifact already sits at `folder` (another
    writer of the same artifact got there first), it is kept and this build is dropped: an artifact's name
    says what it holds. A folder there that does not verify is moved aside and replaced.
    Crash points `<crash_prefix>.files_written` (before the manifest) and `<crash_prefix>.manifest_written`
    (before the rename) let tests kill the writer at the two interesting instants.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(folder)
    temporary = _temporary_name(folder)
    temporary.mkdir()
    try:
        write(temporary)
        crash_point(f"{crash_prefix}.files_written")
        write_manifest(temporary, meta)
        fsync_folder(temporary)
        crash_point(f"{crash_prefix}.manifest_written")
        _publish_folder(temporary, folder)
    finally:
        if temporary.exists():
            shutil.rmtree(temporary, ignore_errors=True)
    return folder


def _publish_folder(temporary: Path, folder: Path) -> None:
    for _ in range(10):  # each turn either publishes, finds a verified artifact, or removes a broken one
        try:
            os.rename(temporary, folder)  # fails when `folder` exists and is not empty
            fsync_folder(folder.parent)
            log.info("artifact %s written", folder)
            return
        except OSError as error:
            if error.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                raise
        if is_verified(folder, "keeping it"):
            log.info("artifact %s was written meanwhile by another run and verifies: keeping that one", folder)
            return
        aside = _temporary_name(folder).with_suffix(".broken")
        try:
            os.rename(folder, aside)
        except FileNotFoundError:
            continue  # another writer moved it aside first
        log.warning("moved the unverified artifact %s aside to %s; replacing it", folder, aside.name)
        shutil.rmtree(aside, ignore_errors=True)
    raise ArtifactError(f"could not publish {folder}: it keeps reappearing unverified")


def clean_stale_temporaries(target: Path) -> int:
    """Remove dotted temporaries of `target` left by writers that died: their pid is gone on this host,
    or they are older than `STALE_TEMPORARY_SECONDS` (a writer on another host)."""
    target = Path(target)
    if not target.parent.is_dir():
        return 0
    host, removed = _host(), 0
    for path in target.parent.glob(f".{target.name}.*"):
        parts = path.name[len(target.name) + 2 :].split(".")
        if len(parts) < 3:
            continue
        same_host_dead = parts[0] == host and parts[1].isdigit() and not pid_alive(int(parts[1]))
        try:
            old = time.time() - path.lstat().st_mtime > STALE_TEMPORARY_SECONDS
        except FileNotFoundError:
            continue
        if same_host_dead or old or path.suffix == ".broken":
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed += 1
    if removed:
        log.info("removed %d temporaries of %s left by writers that died", removed, target)
    return removed


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---------------------------------------------------------------------------------------------------
# Pointers


def read_json(path: Path) -> dict | None:
    """A pointer's payload, or None when there is none."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None


def update_pointer(path: Path, payload: dict, replaces: Callable[[dict | None], bool] | None = None) -> bool:
    """Write the pointer `path` when `replaces(current payload)` says so (always when not given); the
    read, the comparison and the write happen under one lock. Returns whether it was written."""
    from jobs.lease import file_lock

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path.with_name(f".{path.name}.lock")):
        if replaces is not None and not replaces(read_json(path)):
            return False
        write_json(path, payload, indent=None)
        return True
