"""Validation of every value a person or a scheduler hands the pipeline, where it enters.

Each rule is defined once and read twice: as an argparse `type=` for the CLI and the spark-submit
jobs, and as the JSON-schema keywords of the DAG's `Param`s (Airflow checks them when a run is
triggered, before any task starts). A bad value is refused there with one line that names the value
and the rule, before any table or file changes.

Why this matters: labels and names end up in Delta predicates, in table names (`features_<name>`) and
in report file names (`evaluate_<dataset>.html`); paths end up in Delta table identifiers and in the
Asset the nightly DAG announces. Predicates are also built from Column expressions (`jobs.lake`), so a
value never becomes SQL; these rules make sure it is a sensible label or path in the first place.

The patterns are written in the common subset of Python's `re` and ECMA-262 (what the Airflow UI's
form validator uses): anchors, classes, bounded repeats and a negative lookahead, nothing else.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path

# The longest path accepted anywhere: Linux's PATH_MAX.
MAX_PATH_LENGTH = 4096
# Control characters (NUL included) have no place in a label or a path: they truncate C strings, split
# log lines and hide a path's real name in a listing.
_NO_CONTROL = r"[^\x00-\x1f\x7f]"
# A `..` component anywhere: `..`, `../x`, `x/..`, `x/../y`.
_NO_PARENT = r"(?!(.*/)?\.\.(/.*)?$)"


class InvalidValue(argparse.ArgumentTypeError, ValueError):
    """A value that breaks its rule. argparse prints its message as it is (a plain ValueError would
    become "invalid <type> value"); code that is not argparse catches it as a ValueError."""


@dataclass(frozen=True)
class Rule:
    """One kind of value: a regex it must match in full, and what it is, for the error message."""

    name: str
    pattern: str  # anchored with ^ and $
    what: str  # "a dataset label: lowercase letters, ...", ends the error message
    max_length: int

    def check(self, text: str) -> str:
        """`text` itself when it is valid, else InvalidValue naming the value (shortened) and the rule."""
        if not isinstance(text, str):
            raise InvalidValue(f"{self.name} must be text, not {type(text).__name__}")
        if len(text) > self.max_length:
            raise InvalidValue(
                f"{self.name} is {len(text)} characters long, more than {self.max_length}: {self.what}"
            )
        if re.fullmatch(self.pattern, text) is None:
            raise InvalidValue(f"{self.name} {_shown(text)} is not valid: {self.what}")
        return text

    def param_schema(self) -> dict:
        """JSON-schema keywords for an Airflow `Param(type="string", ...)` holding this value."""
        return {"pattern": self.pattern, "maxLength": self.max_length}

    def optional_param_schema(self) -> dict:
        """As `param_schema`, for a Param whose empty value means "not given"."""
        return {"pattern": f"^$|{self.pattern}", "maxLength": self.max_length}


def _shown(text: str) -> str:
    """The value as it may appear in one line of a log: escaped, at most 60 characters of it, and with
    any credentials of a URI (`scheme://user:secret@host`) blanked out."""
    text = redact_credentials(text)
    return repr(text if len(text) <= 60 else text[:60] + "…")


def redact_credentials(text: str) -> str:
    """`text` with the user information of every URI in it replaced by `***`."""
    return re.sub(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]*@", r"\1***@", text)


DATASET = Rule(
    "dataset label",
    r"^[a-z0-9][a-z0-9._-]{0,63}$",
    "lowercase letters, digits, '.', '_' or '-', starting with a letter or digit, at most 64 "
    "(e.g. demo, ml-latest-small)",
    64,
)
# Years 1970 to 2999: a run date outside them is a typo, and the day after 9999-12-31 (the end of a run
# date's day, `jobs.asof.end_of_day`) does not exist.
RUN_DATE = Rule(
    "run date", r"^(19[7-9][0-9]|2[0-9]{3})-[0-9]{2}-[0-9]{2}$", "a date as YYYY-MM-DD, from 1970 to 2999", 10
)
MODEL_VERSION = Rule(
    "model version", r"^ranker-[0-9a-f]{12}$", "'ranker-' and 12 hexadecimal digits, as train names them", 19
)
# A modality's name is part of a table's name (`features_<name>`) and a task id (`import_<name>`).
MODALITY_NAME = Rule(
    "modality name",
    r"^[a-z][a-z0-9_]{0,39}$",
    "a lowercase letter, then lowercase letters, digits or '_', at most 40 (e.g. mmtf_avf)",
    40,
)
# Files and folders the pipeline only reads. `..` is allowed: a relative path such as
# ../shared/data/ml-latest-small is the documented way to name them.
INPUT_PATH = Rule(
    "path",
    rf"^{_NO_CONTROL}{{1,{MAX_PATH_LENGTH}}}$",
    f"a file or folder name without control characters, at most {MAX_PATH_LENGTH} characters",
    MAX_PATH_LENGTH,
)
# Where tables, models and reports are written, and what the Asset event names: a plain local folder or
# a URI with one of the schemes Spark and delta-rs both read. No `..` (a lake is named as what it is),
# no quotes or backticks (the path is a Delta table identifier, delta.`<path>`, and an Asset URI).
LAKE_SCHEMES = ("file", "s3a", "s3", "hdfs", "abfss", "gs")
# A URI with credentials in it (s3a://KEY:SECRET@bucket) is refused: the lake's name is printed in logs,
# lease records and Asset events. Credentials come from the standard providers (AWS_* variables, the
# instance's role, spark.hadoop.fs.s3a.* settings).
LAKE = Rule(
    "lake",
    rf"^{_NO_PARENT}(({'|'.join(LAKE_SCHEMES)})://(?![^/]*@)|(?![A-Za-z0-9+.-]*://))[^\x00-\x1f\x7f'\"`]{{1,{MAX_PATH_LENGTH - 8}}}$",
    f"a local folder or a {'/'.join(LAKE_SCHEMES)}:// URI, without control characters, quotes, "
    f"backticks, '..' components or credentials (user:secret@: use the standard credential providers), "
    f"at most {MAX_PATH_LENGTH} characters",
    MAX_PATH_LENGTH,
)
ARTIFACTS = Rule(
    "artifacts folder",
    rf"^{_NO_PARENT}(?![A-Za-z0-9+.-]*://)[^\x00-\x1f\x7f'\"`]{{1,{MAX_PATH_LENGTH}}}$",
    f"a local or mounted folder (not a URI), without control characters, quotes, backticks or '..' "
    f"components, at most {MAX_PATH_LENGTH} characters",
    MAX_PATH_LENGTH,
)


def run_date(text: str) -> dt.date:
    """argparse type: a run date, strictly YYYY-MM-DD (Python also reads 20261125 and 2026-W48-3)."""
    RUN_DATE.check(text)
    try:
        return dt.date.fromisoformat(text)
    except ValueError as error:
        raise InvalidValue(f"run date {text!r} is not a date: {error}") from None


def dataset_label(text: str) -> str:
    return DATASET.check(text)


def modality_name(text: str) -> str:
    return MODALITY_NAME.check(text)


def input_path(text: str) -> Path:
    return Path(INPUT_PATH.check(text))


# The optional_* types read an empty value as "not given": Airflow passes every flag, some empty.
def optional_lake(text: str) -> str | None:
    return LAKE.check(text) if text else None


def optional_artifacts(text: str) -> str | None:
    return ARTIFACTS.check(text) if text else None


def optional_model_version(text: str) -> str | None:
    return MODEL_VERSION.check(text) if text else None


def optional_input_path(text: str) -> Path | None:
    return input_path(text) if text.strip() else None


# What reads as "yes" in a boolean flag's value or a boolean `MODALRANK_*` variable, in any case and with
# spaces around it; anything else is "no".
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})


def boolean(text: str) -> bool:
    return text.strip().lower() in TRUE_WORDS


def add_boolean_flag(parser: argparse.ArgumentParser, name: str, help: str) -> None:
    """`--name` alone, or `--name true|false`: a scheduler passes a flag value on every run."""
    parser.add_argument(name, nargs="?", const=True, default=False, type=boolean, help=help)


@dataclass(frozen=True)
class IntRange:
    """A whole number within [low, high]: an argparse `type=`, and the `minimum`/`maximum` of a DAG Param.

    Every count a person hands the pipeline has an upper bound too: a cadence of 10**6 days or a list of
    a billion items is a typo that would otherwise end in a traceback or an exhausted machine."""

    name: str
    low: int
    high: int

    def __call__(self, text: str | int) -> int:
        try:
            value = int(text)
        except (TypeError, ValueError):
            raise InvalidValue(f"{self.name} {_shown(str(text))} is not a whole number") from None
        if not self.low <= value <= self.high:
            raise InvalidValue(f"{self.name} {value} is out of range: {self.low} to {self.high}")
        return value

    def param_schema(self) -> dict:
        return {"minimum": self.low, "maximum": self.high}


TRAIN_EVERY_DAYS = IntRange("training cadence in days", 1, 366)
LIST_LENGTH = IntRange("list length k", 1, 1000)
RETENTION_DAYS = IntRange("days kept", 1, 3650)
RANDOM_SEED = IntRange("seed", 0, 2**32 - 1)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise InvalidValue(f"{value} is not a positive whole number")
    return value


def share(text: str) -> float:
    """argparse type: a share between 0 and 1 inclusive."""
    value = float(text)
    if not 0.0 <= value <= 1.0:  # also false for nan
        raise InvalidValue(f"{text} is not a share between 0 and 1")
    return value
