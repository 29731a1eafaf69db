"""Which files of an input folder a reader reads, and why it reads none of the others.

Spark reads a folder by listing it and quietly skips every name that starts with `_` or `.`, and it
parses every file with the columns of one of them: a CSV whose header differs, or a Parquet file with
other columns, would be read under the wrong names or with nulls. So a folder is listed here first, and
each file is either read or refused with its reason (the caller turns a refusal into a quarantine row),
so nothing in an input is ignored in silence. Pure Python: no Spark.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HIDDEN_NAME = "input file not used: a hidden name (Spark skips names starting with '_' or '.')"


@dataclass(frozen=True)
class InputFiles:
    read: list[Path]  # the files the reader reads, in name order
    refused: list[tuple[Path, str]]  # every other file, with the reason it is not read


def input_files(path: Path, columns_of: Callable[[Path], list[str]], compare_as_set: bool = False) -> InputFiles:
    """The files of input `path` (itself, for a file) split into those a reader reads and the refused.

    A hidden name anywhere below the folder is refused; so is a file whose columns (`columns_of`: a CSV's
    header, a Parquet file's schema) differ from the first file's, or that cannot be read for them.
    `compare_as_set`: only which columns, not their order (Parquet matches columns by name).
    """
    if not path.is_dir():
        return InputFiles([path], [])
    read: list[Path] = []
    refused: list[tuple[Path, str]] = []
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        if any(part.startswith(("_", ".")) for part in file.relative_to(path).parts):
            refused.append((file, HIDDEN_NAME))
        else:
            read.append(file)
    kept: list[Path] = []
    expected: list[str] | None = None
    for file in read:
        try:
            columns = columns_of(file)
        except (OSError, ValueError) as error:
            refused.append((file, f"input refused: its columns cannot be read ({_first_line(error)})"))
            continue
        if expected is None:
            expected, first = columns, file
        elif (set(columns) != set(expected)) if compare_as_set else (columns != expected):
            refused.append((file, f"input refused: its columns {columns} differ from {expected} of {first.name}"))
            continue
        kept.append(file)
    return InputFiles(kept, refused)


def csv_header(path: Path, max_chars: int) -> list[str]:
    """A CSV file's column names: its first line (decompressed for .gz and .bz2, as Spark reads them),
    read without reading more than `max_chars` of it."""
    import bz2
    import gzip

    opener = {".gz": gzip.open, ".bz2": bz2.open}.get(path.suffix.lower(), open)
    with opener(path, "rt", encoding="utf-8", errors="replace", newline="") as text:
        line = text.readline(max_chars + 1)
    if len(line) > max_chars:
        raise ValueError(f"a header longer than {max_chars} characters")
    return next(csv.reader([line.rstrip("\r\n")]), [])


def parquet_columns(path: Path) -> list[str]:
    """A Parquet file's column names, from its footer."""
    import pyarrow.parquet as pq

    return list(pq.read_schema(path).names)


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
