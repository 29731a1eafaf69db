"""Which lake an artifacts folder serves: one lake per folder, one folder per lake.

The artifacts folder (`_models/`, `_reports/<ds>/`, `_locks/`, the ranker pointers) is keyed by run date
only. Two lakes sharing one folder would read and overwrite each other's pointers, rankers and reports (a
staging lake run with production's `MODALRANK_ARTIFACTS` would make production serve the staging ranker),
and one lake with two folders would take its leases in two places, so two runs of one date would no
longer exclude each other. So the pair is bound, once, by an identity record written in both places:

    <lake>/_lake_identity.json        {"lake_id", "lake", "artifacts", ...}   the lake's side
    <artifacts>/_lake_identity.json   the same record                          the folder's side

A local lake that keeps its own artifacts (the default) has one file, which is both sides. `bind` runs
before a job writes anything (`jobs.lease` calls it when a process takes its first lease, and the
readers of the artifacts call it too) and either returns the lake's id or raises `LakeMismatchError`,
one line that names both sides and what to do:

- the folder's record names another lake (another id, or the same id at another location: a copy of
  the lake still pointing at the original's folder) -> refused;
- the lake's record names another artifacts folder and this folder has no record -> refused (a second
  folder for one lake);
- neither side has a record (a new lake, or one from before identities) -> bound now, the lake's side
  first, so a crash between the two writes is finished by the next run (the lake names this folder);
- the lake's record was made for another location (the lake was copied or moved with its files) and
  this folder has no record -> the lake gets a new identity, bound to this folder.

A lake moved with a folder of its own elsewhere is refused like a copy would be; `rebind` (the CLI's
`modalrank lake-identity --adopt`) records the move once the operator has said so.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import uuid
from pathlib import Path

from jobs import artifacts
from jobs.config import PipelineConfig, delta_rs_uri, local_path

log = logging.getLogger("modalrank.lake_identity")

IDENTITY_FILE = "_lake_identity.json"
IDENTITY_FORMAT = 1


class LakeMismatchError(ValueError):
    """The lake and the artifacts folder of a run do not belong together. A ValueError, so `modalrank`
    prints it as one line; the job has written nothing."""


def serves_itself(config: PipelineConfig) -> bool:
    """True when the artifacts folder is the local lake's own folder (one identity file for both)."""
    lake_folder = local_path(config.lake)
    return lake_folder is not None and os.path.realpath(lake_folder) == os.path.realpath(config.artifacts_dir)


def same_lake(recorded: str, lake: str) -> bool:
    """Whether a record's lake is `lake`: a local folder however it is spelled (a path, file://, a link)."""
    recorded_folder, folder = local_path(recorded), local_path(lake)
    if recorded_folder is not None and folder is not None:
        return os.path.realpath(recorded_folder) == os.path.realpath(folder)
    return recorded.rstrip("/") == lake.rstrip("/")


def _same_folder(recorded: str, folder: Path) -> bool:
    return bool(recorded) and os.path.realpath(recorded) == os.path.realpath(folder)


def _artifacts_field(config: PipelineConfig) -> str:
    # "" for a lake that keeps its own artifacts: the record then stays true when the folder is copied.
    return "" if serves_itself(config) else str(config.artifacts_dir)


def new_record(config: PipelineConfig) -> dict:
    return {
        "format": IDENTITY_FORMAT,
        "lake_id": uuid.uuid4().hex,
        "lake": config.lake,
        "artifacts": _artifacts_field(config),
        "bound_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "bound_by": artifacts.writer_identity(),
    }


# ---------------------------------------------------------------------------------------------------
# The two sides: the artifacts folder is always a local (or mounted) folder; the lake may be a URI.


def read_artifacts_side(config: PipelineConfig) -> dict | None:
    return _parse(artifacts.read_json(config.artifacts_dir / IDENTITY_FILE), config.artifacts_dir)


def write_artifacts_side(config: PipelineConfig, record: dict, exclusive: bool) -> bool:
    return _write_local(config.artifacts_dir / IDENTITY_FILE, record, exclusive)


def read_lake_side(config: PipelineConfig) -> dict | None:
    folder = local_path(config.lake)
    if folder is not None:
        return _parse(artifacts.read_json(Path(folder) / IDENTITY_FILE), folder)
    filesystem, path = _remote(config)
    try:
        with filesystem.open_input_stream(path) as stream:
            return _parse(json.loads(stream.read().decode()), config.lake)
    except FileNotFoundError:
        return None
    except OSError as error:  # no credentials, no such bucket: one line, not a traceback
        raise LakeMismatchError(f"cannot read {config.lake}/{IDENTITY_FILE}: {error}") from error


def write_lake_side(config: PipelineConfig, record: dict, exclusive: bool) -> bool:
    """Write the lake's record; with `exclusive`, only when there is none (False when one appeared)."""
    folder = local_path(config.lake)
    if folder is not None:
        return _write_local(Path(folder) / IDENTITY_FILE, record, exclusive)
    filesystem, path = _remote(config)
    # An object store has no exclusive create here: the window is one first run racing another.
    if exclusive and filesystem.get_file_info(path).type.name != "NotFound":
        return False
    with filesystem.open_output_stream(path) as stream:  # one PUT: readers see all of it or nothing
        stream.write((json.dumps(record, indent=2, sort_keys=True) + "\n").encode())
    return True


def _remote(config: PipelineConfig):
    # Through pyarrow's filesystems, with the credentials delta-rs uses (the standard AWS variables).
    from pyarrow import fs  # type: ignore[import-untyped]  # pyarrow ships no type information

    uri = delta_rs_uri(config.lake).rstrip("/") + "/" + IDENTITY_FILE
    try:
        return fs.FileSystem.from_uri(uri)
    except (OSError, ValueError) as error:
        raise _LakeSideUnreachable(f"{uri}: {str(error).strip().splitlines()[0]}") from error


class _LakeSideUnreachable(Exception):
    """pyarrow cannot open the lake's storage here (an hdfs:// lake without libhdfs)."""


def lake_side_reachable(config: PipelineConfig) -> bool:
    if local_path(config.lake) is not None:
        return True
    try:
        _remote(config)
    except _LakeSideUnreachable as error:
        log.warning(
            "the lake's side of its identity cannot be kept here (%s): only the artifacts folder's side is "
            "checked, which refuses another lake but not a second folder for this one",
            error,
        )
        return False
    return True


def _write_local(path: Path, record: dict, exclusive: bool) -> bool:
    if not exclusive:
        artifacts.write_json(path, record)
        return True
    # Written whole under a temporary name, then linked into place: a link fails when the name exists,
    # so of two first runs exactly one binds, and no reader sees half a record.
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        artifacts.write_json(temporary, record)
        try:
            os.link(temporary, path)
        except FileExistsError:
            return False
    finally:
        temporary.unlink(missing_ok=True)
    artifacts.fsync_folder(path.parent)
    return True


def _parse(payload: dict | None, where: object) -> dict | None:
    if payload is None:
        return None
    if not isinstance(payload, dict) or not isinstance(payload.get("lake_id"), str):
        raise LakeMismatchError(f"{where}/{IDENTITY_FILE} is not a lake identity record; restore it or remove it")
    return payload


# ---------------------------------------------------------------------------------------------------
# The binding


_bound: dict[tuple[str, str], str] = {}  # (lake, artifacts) -> lake_id: checked once per process


def bind(config: PipelineConfig) -> str:
    """The lake's id, once the lake and the artifacts folder are known to belong together (binding them
    when neither has a record yet); `LakeMismatchError` when they do not."""
    from jobs.lease import file_lock  # jobs.lease binds before its first lease: imported here, not above

    key = (config.lake, str(config.artifacts_dir))
    if key not in _bound:
        # Runs that share this folder decide one at a time (two first runs would otherwise both bind).
        with file_lock(config.artifacts_dir / "_locks" / "lake-identity.lock"):
            _bound[key] = _bind(config)
    return _bound[key]


def _bind(config: PipelineConfig) -> str:
    for _ in range(5):  # each turn either decides or loses a race to another first run and looks again
        folder_side = read_artifacts_side(config)
        if serves_itself(config):
            if folder_side is not None and same_lake(folder_side["lake"], config.lake):
                if folder_side["artifacts"]:
                    raise LakeMismatchError(
                        f"the lake {config.lake} keeps its artifacts in {folder_side['artifacts']}, not in its own "
                        "folder (a second folder would split its leases and pointers): run with --artifacts "
                        f"{folder_side['artifacts']}, or run `modalrank lake-identity --adopt` without it"
                    )
                return folder_side["lake_id"]
            if folder_side is not None:
                log.info(
                    "lake %s was copied or moved from %s: it gets an identity of its own",
                    config.lake,
                    folder_side["lake"],
                )
            record = new_record(config)
            if write_artifacts_side(config, record, exclusive=folder_side is None):
                return record["lake_id"]
            continue
        if not lake_side_reachable(config):
            if folder_side is None:
                record = new_record(config)
                if write_artifacts_side(config, record, exclusive=True):
                    return record["lake_id"]
                continue
            if same_lake(folder_side["lake"], config.lake):
                return folder_side["lake_id"]
            return _check_pair(config, None, folder_side)  # refused, naming the folder's lake
        lake_side = read_lake_side(config)
        if folder_side is not None:
            return _check_pair(config, lake_side, folder_side)
        if lake_side is not None and same_lake(lake_side["lake"], config.lake):
            if not _same_folder(lake_side["artifacts"], config.artifacts_dir):
                raise LakeMismatchError(
                    f"the lake {config.lake} keeps its artifacts in {lake_side['artifacts'] or 'its own folder'}, "
                    f"not in {config.artifacts_dir} (a second folder would split its leases and pointers): "
                    "run with that folder, or move it here and run `modalrank lake-identity --adopt`"
                )
            # The lake names this folder: a binding whose second write did not happen (a crash between).
            write_artifacts_side(config, lake_side, exclusive=True)
            continue
        record = new_record(config)
        if lake_side is not None:
            log.info(
                "lake %s was copied or moved from %s: it gets an identity of its own",
                config.lake,
                lake_side["lake"],
            )
        if write_lake_side(config, record, exclusive=lake_side is None) and write_artifacts_side(
            config, record, exclusive=True
        ):
            log.info(
                "bound lake %s (id %s) to the artifacts folder %s",
                config.lake,
                record["lake_id"],
                config.artifacts_dir,
            )
            return record["lake_id"]
    raise LakeMismatchError(
        f"could not bind lake {config.lake} to {config.artifacts_dir}: its identity keeps changing"
    )


def _check_pair(config: PipelineConfig, lake_side: dict | None, folder_side: dict) -> str:
    if (
        lake_side is not None
        and lake_side["lake_id"] == folder_side["lake_id"]
        and same_lake(folder_side["lake"], config.lake)
        and same_lake(lake_side["lake"], config.lake)
    ):
        if not _same_folder(lake_side["artifacts"], config.artifacts_dir):
            # The folder was moved (a new mount point) and brought its record: the lake follows it.
            write_lake_side(config, {**lake_side, "artifacts": str(config.artifacts_dir)}, exclusive=False)
        return lake_side["lake_id"]
    this_lake = (
        f"this lake ({config.lake}) has id {lake_side['lake_id']}"
        if lake_side is not None and same_lake(lake_side["lake"], config.lake)
        else f"this lake ({config.lake}) has no identity of its own yet"
    )
    raise LakeMismatchError(
        f"the artifacts folder {config.artifacts_dir} belongs to the lake {folder_side['lake']} "
        f"(id {folder_side['lake_id']}) and {this_lake}: give each lake its own artifacts folder "
        "(--artifacts, MODALRANK_ARTIFACTS or the DAG param `artifacts`); if this lake was moved from there, "
        "run `modalrank lake-identity --adopt`"
    )


def adopt(config: PipelineConfig) -> dict:
    """Record that the lake at `config.lake` is the one the artifacts folder serves (after a move of the
    lake, or of the folder without its record). The folder's id stays; the lake takes it."""
    folder_side = read_artifacts_side(config)
    record = {
        **(folder_side or new_record(config)),
        "lake": config.lake,
        "artifacts": _artifacts_field(config),
        "adopted_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    if not serves_itself(config):
        write_lake_side(config, record, exclusive=False)
    write_artifacts_side(config, record, exclusive=False)
    _bound.pop((config.lake, str(config.artifacts_dir)), None)
    return record
