"""Media files from the outside world, opened safely: the checks every media path passes before a byte
of it is read, and the fixed phrases for each way a path or file can be wrong.

Used by ingest (resolving catalog paths, listing media folders, hashing) and by the decode sandbox
(reading a file for its decoder). What it guarantees:

- Only regular files are read. A FIFO, a device, a socket or a folder is refused after `stat`, without
  being opened for reading (`open()` on a FIFO blocks until a writer comes), and a file that became
  something else between `stat` and `open` is caught by `fstat` on the descriptor, which is opened
  non-blocking.
- The size cap is checked before reading, and no more than the cap is ever read, when decoding and
  when hashing at ingest alike.
- A symlink in a media folder counts only when it resolves inside that folder; the item it stands for
  is named by the link's own entry, never by its target.
- No path or file problem raises: a NUL byte, a permission error, a symlink loop or any other `OSError`
  becomes one of the fixed phrases below, so quarantine rows group by reason.

Pure Python: never imports pyspark.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from dataclasses import dataclass

# Fixed phrases (quarantine rows and failed feature rows group by them).
FILE_NOT_FOUND = "file not found"
NOT_REGULAR = "not a regular file"
PERMISSION_DENIED = "permission denied"
UNREADABLE = "unreadable file"
FILE_TOO_LARGE = "file too large"
NUL_IN_PATH = "media path contains a NUL byte"
ESCAPES_ROOT = "media path escapes media root"
LINK_ESCAPES_FOLDER = "symlink escapes media folder"
# At extraction, the file is not what ingest checked and hashed: a link now stands somewhere on its path,
# or its bytes differ from the content hash ingest recorded (the next ingest records the new content).
PATH_CHANGED = "media path changed since ingest (a symlink on it)"
CONTENT_CHANGED = "content changed since ingest"

_CHUNK = 1 << 20


def has_nul(path: str | bytes) -> bool:
    return ("\x00" if isinstance(path, str) else b"\x00") in path


def _reason_for(error: OSError) -> str:
    if isinstance(error, FileNotFoundError | NotADirectoryError):
        return FILE_NOT_FOUND
    if isinstance(error, PermissionError) or error.errno in (errno.EACCES, errno.EPERM):
        return PERMISSION_DENIED
    return UNREADABLE  # ELOOP, EIO, ENAMETOOLONG, a stale NFS handle, ...


def check_regular_file(path: str, max_bytes: int | None = None) -> str | None:
    """None when `path` (symlinks followed) is a regular file within `max_bytes`, else why not.

    Only `stat`s the path: nothing is opened.
    """
    if has_nul(path):
        return NUL_IN_PATH
    try:
        info = os.stat(path)
    except OSError as error:
        return _reason_for(error)
    except ValueError:  # a path the OS cannot take (e.g. a lone surrogate that does not encode)
        return UNREADABLE
    if not stat.S_ISREG(info.st_mode):
        return NOT_REGULAR
    if max_bytes is not None and info.st_size > max_bytes:
        return FILE_TOO_LARGE
    return None


def _open_regular(
    path: str, max_bytes: int | None, follow_last_link: bool = True
) -> tuple[int, None] | tuple[None, str]:
    """(descriptor of a regular file within the cap, None) or (None, reason)."""
    problem = check_regular_file(path, max_bytes)
    if problem:
        return None, problem
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow_last_link else os.O_NOFOLLOW)
    try:
        # Non-blocking: if the path was swapped for a FIFO since the stat, open still returns at once.
        descriptor = os.open(path, flags)
    except OSError as error:
        if error.errno == errno.ELOOP and not follow_last_link:  # O_NOFOLLOW met a link
            return None, PATH_CHANGED
        return None, _reason_for(error)
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise _Refused(NOT_REGULAR)
        if max_bytes is not None and info.st_size > max_bytes:
            raise _Refused(FILE_TOO_LARGE)
        os.set_blocking(descriptor, True)
    except _Refused as refused:
        os.close(descriptor)
        return None, refused.reason
    except OSError as error:
        os.close(descriptor)
        return None, _reason_for(error)
    return descriptor, None


class _Refused(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def read_media_file(path: str, max_bytes: int, expected_sha256: str = "") -> bytes | str:
    """The file's bytes, or the fixed phrase that says why not; never more than `max_bytes` are read
    (a file that grows past the cap while being read is "file too large").

    `path` is what ingest recorded: a real path (symlinks resolved) that it checked lay inside its media
    folder or root. So the containment check is done again here without knowing the root: the path must
    still be its own real path (no component swapped for a link since), and its last component is opened
    with O_NOFOLLOW, so a link put there between the check and the open is refused too. With
    `expected_sha256` (ingest's content hash), bytes that hash otherwise are `CONTENT_CHANGED`: a file
    swapped after ingest is never extracted under the old hash.
    """
    if has_nul(path):
        return NUL_IN_PATH
    try:
        if os.path.realpath(path) != os.path.abspath(path):
            return PATH_CHANGED
    except (OSError, ValueError):
        return UNREADABLE
    descriptor, problem = _open_regular(path, max_bytes, follow_last_link=False)
    if problem:
        return problem
    try:
        with os.fdopen(descriptor, "rb") as handle:
            # What the file holds, not the cap: `read(max_bytes + 1)` would reserve a buffer of the whole
            # cap for every file, which a decode child's memory limit near the cap refuses for all of them.
            size = os.fstat(handle.fileno()).st_size
            data = handle.read(min(size, max_bytes) + 1)
            while len(data) <= max_bytes:  # the file grew since its stat: read on, never past the cap
                more = handle.read(min(_CHUNK, max_bytes + 1 - len(data)))
                if not more:
                    break
                data += more
    except OSError as error:
        return _reason_for(error)
    if len(data) > max_bytes:
        return FILE_TOO_LARGE
    if expected_sha256 and hashlib.sha256(data).hexdigest() != expected_sha256:
        return CONTENT_CHANGED
    return data


def sha256_of_media_file(path: str | None, max_bytes: int | None = None) -> tuple[str | None, str | None]:
    """(hex sha256 of a regular file's bytes, None), or (None, reason); streamed a chunk at a time.

    Within the same cap as decoding: a file over `max_bytes` is "file too large" from its `stat`, before
    a byte is read (a 30 GB sparse file is never read whole), and hashing stops as soon as a file that
    grows passes the cap."""
    if path is None:
        return None, None
    descriptor, problem = _open_regular(path, max_bytes)
    if problem:
        return None, problem
    digest, read = hashlib.sha256(), 0
    try:
        with os.fdopen(descriptor, "rb") as handle:
            for chunk in iter(lambda: handle.read(_CHUNK), b""):
                read += len(chunk)
                if max_bytes is not None and read > max_bytes:
                    return None, FILE_TOO_LARGE
                digest.update(chunk)
    except OSError as error:
        return None, _reason_for(error)
    return digest.hexdigest(), None


def resolve_under(root: str, path: str) -> tuple[str | None, str | None]:
    """(real path, None) when `path` (relative to `root`, symlinks followed) lands inside `root`, else
    (None, reason). Checks the path only; whether a file is there is `check_regular_file`'s question."""
    if has_nul(path) or has_nul(root):
        return None, NUL_IN_PATH
    try:
        real_root = os.path.realpath(root)
        candidate = os.path.realpath(os.path.join(real_root, path))
    except (OSError, ValueError):
        return None, UNREADABLE
    if not _inside(real_root, candidate):
        return None, ESCAPES_ROOT
    return candidate, None


def _inside(real_folder: str, real_path: str) -> bool:
    """Whether `real_path` is `real_folder` or below it (both already resolved by `os.path.realpath`)."""
    return os.path.commonpath([real_folder, real_path]) == real_folder


@dataclass(frozen=True)
class FolderEntry:
    """One file of a media folder: its item's name (from the entry itself), the path to read, or why not."""

    name: str  # the directory entry's own name, e.g. "42.jpg" for a link 42.jpg -> ../x/7.jpg
    path: str | None  # the real path to read (inside the folder), None when `reason` is set
    reason: str | None


def media_folder_entry(folder: str, name: str, max_bytes: int | None = None) -> FolderEntry:
    """What one directory entry of a media folder stands for.

    A symlink must resolve inside `folder` (a link to /etc/passwd or to another team's folder is
    refused); the target must be a regular file. The entry keeps its own name whatever the target's.
    """
    entry_path = os.path.join(folder, name)
    if has_nul(name):
        return FolderEntry(name, None, NUL_IN_PATH)
    try:
        is_link = stat.S_ISLNK(os.lstat(entry_path).st_mode)
    except OSError as error:
        return FolderEntry(name, None, _reason_for(error))
    real_folder = os.path.realpath(folder)
    try:
        real = os.path.realpath(entry_path)
    except OSError as error:
        return FolderEntry(name, None, _reason_for(error))
    if not _inside(real_folder, real):
        return FolderEntry(name, None, LINK_ESCAPES_FOLDER if is_link else ESCAPES_ROOT)
    problem = check_regular_file(real, max_bytes)
    return FolderEntry(name, None if problem else real, problem)
