"""What one record of a quoted CSV is: pure Python, so the rule can be tested without Spark
(`jobs.sources.files` applies it to each file's lines on the workers)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jobs.config import PipelineConfig

UNTERMINATED_QUOTE = "malformed row: unterminated quote"
# How much of a record too long to read is kept in quarantine: enough to see what it was and which
# item it named, never the megabytes that made it too long.
QUARANTINED_PREFIX_CHARS = 1000
# The most physical lines one quoted CSV record may span (an overview with paragraphs): the bound on
# what an unterminated quote can ever be mistaken to swallow.
MAX_RECORD_LINES = 200


@dataclass(frozen=True)
class RecordLimits:
    """How much of an input a reader takes in (`PipelineConfig.max_record_chars` and
    `max_decompressed_bytes`): a record over the first costs that record, a compressed file that
    expands beyond the second costs that file; neither costs the job."""

    max_record_chars: int
    max_decompressed_bytes: int

    def __post_init__(self) -> None:
        if self.max_record_chars < 1 or self.max_decompressed_bytes < 1:
            raise ValueError(f"record limits must be positive: {self}")

    @classmethod
    def of(cls, config: PipelineConfig) -> RecordLimits:
        return cls(config.max_record_chars, config.max_decompressed_bytes)


def record_too_long(max_record_chars: int) -> str:
    """The quarantine reason of a record longer than the bound (one reason per configured bound)."""
    return f"malformed row: longer than {max_record_chars} characters"


def quarantined_prefix(text: str) -> str:
    """What quarantine keeps of a record too long to keep whole."""
    return text[:QUARANTINED_PREFIX_CHARS] + "…"


@dataclass
class CsvScan:
    """Where a CSV scanner stands after some text: inside a quoted field or not, and fields seen."""

    fields: int = 1
    in_quotes: bool = False
    quote_pending: bool = False  # a quote inside a quoted field: it closes the field unless another follows
    at_field_start: bool = True

    @property
    def open(self) -> bool:
        return self.in_quotes and not self.quote_pending

    def feed(self, text: str, separator: str = ",") -> CsvScan:
        """Scans `text` as RFC 4180 CSV with `"` quotes and `""` escapes, as Spark's parser reads it."""
        for char in text:
            if self.in_quotes:
                if self.quote_pending:
                    self.quote_pending = False
                    if char == '"':  # "" is a quote inside the field
                        continue
                    self.in_quotes = False  # the quote closed the field; this char is outside it
                elif char == '"':
                    self.quote_pending = True
                    continue
                else:
                    continue
            if char == separator:
                self.fields += 1
                self.at_field_start = True
            elif char == '"' and self.at_field_start:
                self.in_quotes, self.at_field_start = True, False
            else:
                # A quote inside an unquoted field is a literal character, as Spark reads it.
                self.at_field_start = False
        return self


@dataclass(frozen=True)
class CsvRecord:
    first_line: int  # index of its first physical line among the lines given
    lines: int  # non-blank physical lines it spans
    text: str
    malformed: str | None = None


def assemble_csv_records(
    lines: list[str], expected_fields: int, max_record_chars: int, max_record_lines: int = MAX_RECORD_LINES
) -> Iterator[CsvRecord]:
    """Physical lines (after the header) into CSV records, where a quoted field may hold line breaks.

    A line that leaves a quote open is joined with the lines after it until the quote closes, but only
    within `max_record_lines` and only when the joined record has `expected_fields` fields. Anything else
    is an unterminated quote: that one line is a malformed record and the next line starts afresh, so a
    stray quote costs its own line, never the good lines after it. Blank lines between records are not
    records (Spark's CSV reader skips them too); inside a quoted field they are part of the text.

    A record is at most `max_record_chars` characters: a longer line is a malformed record of its own
    (quarantine keeps its first `QUARANTINED_PREFIX_CHARS`), and a quote whose record would grow beyond
    the bound is not followed further: its opening line is that malformed record, and the next line
    starts afresh. A caller may cut a long line to `max_record_chars + 1` characters before handing it
    over; the verdict is the same.
    """
    too_long = record_too_long(max_record_chars)
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.strip() == "":
            index += 1
            continue
        if len(line) > max_record_chars:
            yield CsvRecord(index, 1, quarantined_prefix(line), too_long)
            index += 1
            continue
        scan = CsvScan().feed(line)
        end, length = index, len(line)
        while scan.open and end + 1 < len(lines) and end - index + 1 < max_record_lines:
            length += 1 + len(lines[end + 1])
            if length > max_record_chars:
                break
            end += 1
            scan.feed("\n" + lines[end])
        span = lines[index : end + 1]
        if not scan.open and (end == index or scan.fields == expected_fields):
            yield CsvRecord(index, sum(1 for part in span if part.strip()), "\n".join(span))
            index = end + 1
        else:
            reason = too_long if scan.open and length > max_record_chars else UNTERMINATED_QUOTE
            yield CsvRecord(index, 1, line, reason)
            index += 1
