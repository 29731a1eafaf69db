"""What became of every input's rows at ingest: the one account that `jobs.ingest` checks before it
writes and the run report (`jobs.run_report`) shows and checks again. Plain Python, no Spark, so the
report page can read it without loading Spark's modules."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

# The per-input table's columns, in the ingest report and in the run report alike.
INPUT_COLUMNS = ("input", "kind", "origin", "lines", "rows", "ingested", "deferred", "quarantined", "superseded")
# Where an input's rows came from: the file read this run, or the deferred table.
SOURCE, CARRIED = "source", "deferred"


@dataclass
class InputAccount:
    """What became of one input's rows: `rows` = ingested + deferred + quarantined + superseded."""

    input: str  # the file (or media folder) read, or for rows taken from `deferred`, the file they came from
    kind: str  # items | interactions | overview | tags | links | poster | audio | video
    origin: str  # "source": read from the file this run; "deferred": taken from the deferred table
    lines: int = 0  # physical records counted before parsing: non-blank lines after a CSV's header,
    #                 Parquet rows, media files, or due rows in the deferred table
    lines_in_rows: int = 0  # the physical records the parsed rows span
    rows: int = 0  # records parsed
    ingested: int = 0  # merged into the catalog or interactions (new, changed or already there unchanged)
    deferred: int = 0  # kept in `deferred` until the first run date they are due
    quarantined: int = 0  # in `quarantine` with a reason
    superseded: int = 0  # deferred rows whose key this run's source or a later deferral holds again

    @classmethod
    def from_record(cls, record: dict) -> InputAccount:
        """An account as a report's JSON holds it (missing counts are 0)."""
        counts = {f.name: int(record.get(f.name) or 0) for f in fields(cls) if f.type == "int"}
        return cls(str(record.get("input")), str(record.get("kind")), str(record.get("origin")), **counts)

    @property
    def settled(self) -> int:
        return self.ingested + self.deferred + self.quarantined + self.superseded

    def problems(self) -> list[str]:
        """Why the account does not add up (none when it does)."""
        found = []
        if self.lines != self.lines_in_rows:
            found.append(f"{self.lines} physical records but rows spanning {self.lines_in_rows}")
        if self.rows != self.settled:
            found.append(
                f"{self.rows} rows read but {self.settled} settled (ingested {self.ingested}, deferred "
                f"{self.deferred}, quarantined {self.quarantined}, superseded {self.superseded})"
            )
        return found


def input_row(account: InputAccount | dict) -> tuple:
    """One input's cells in INPUT_COLUMNS order."""
    values = asdict(account) if isinstance(account, InputAccount) else account
    return tuple(values.get(column, "") for column in INPUT_COLUMNS)


class IngestAccountingError(RuntimeError):
    """Some input's rows do not add up: a reader or a join lost or duplicated rows. Nothing was written."""


def account_inputs(tallies: list) -> list[InputAccount]:
    """InputAccounts from (kind, origin, input, measure, n) rows, sources first, then by kind and input."""
    accounts: dict[tuple[str, str, str], InputAccount] = {}
    for row in tallies:
        key = (row["origin"], row["kind"], row["input"])
        account = accounts.setdefault(key, InputAccount(row["input"], row["kind"], row["origin"]))
        setattr(account, row["measure"], getattr(account, row["measure"]) + int(row["n"] or 0))
    order = {SOURCE: 0, CARRIED: 1}
    return sorted(accounts.values(), key=lambda a: (order.get(a.origin, 2), a.kind, a.input))


def check_accounts(accounts: list[InputAccount]) -> None:
    """Raises IngestAccountingError naming every input whose rows do not add up."""
    problems = [f"{a.kind} {a.input} ({a.origin}): {p}" for a in accounts for p in a.problems()]
    if problems:
        raise IngestAccountingError(
            "ingest would lose or invent rows, so it wrote nothing: " + "; ".join(problems)
        )
