"""What one record of a quoted CSV is: pure Python, so the rule can be tested without Spark
(`jobs.sources.files` applies it to each file's lines on the workers)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

UNTERMINATED_QUOTE = "malformed row: unterminated quote"
# The most physical lines one quoted CSV record may span (an overview with paragraphs): the bound on
# what an unterminated quote can ever be mistaken to swallow.
MAX_RECORD_LINES = 200


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
    lines: list[str], expected_fields: int, max_record_lines: int = MAX_RECORD_LINES
) -> Iterator[CsvRecord]:
    """Physical lines (after the header) into CSV records, where a quoted field may hold line breaks.

    A line that leaves a quote open is joined with the lines after it until the quote closes, but only
    within `max_record_lines` and only when the joined record has `expected_fields` fields. Anything else
    is an unterminated quote: that one line is a malformed record and the next line starts afresh, so a
    stray quote costs its own line, never the good lines after it. Blank lines between records are not
    records (Spark's CSV reader skips them too); inside a quoted field they are part of the text.
    """
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.strip() == "":
            index += 1
            continue
        scan = CsvScan().feed(line)
        end = index
        while scan.open and end + 1 < len(lines) and end - index + 1 < max_record_lines:
            end += 1
            scan.feed("\n" + lines[end])
        span = lines[index : end + 1]
        if not scan.open and (end == index or scan.fields == expected_fields):
            yield CsvRecord(index, sum(1 for part in span if part.strip()), "\n".join(span))
            index = end + 1
        else:
            yield CsvRecord(index, 1, line, UNTERMINATED_QUOTE)
            index += 1
