"""Readers that map each supported input layout onto one canonical, all-string shape.

Readers only know file layouts (separators, encodings, column orders). They never judge a value:
every field stays a string, and a row whose layout is broken keeps its raw text and a
`malformed` reason. Validation, typing and quarantine happen once, in `jobs.ingest` (`jobs.ingest_rules`), for all formats.

Canonical frames (every column a string unless noted):
- items:        ITEM_FIELDS + META_FIELDS
- interactions: INTERACTION_FIELDS + META_FIELDS
- extras:       item_id + the extra's value columns + META_FIELDS

META_FIELDS say where each row came from, so ingest can account for every physical record it read:
`input` is the file (or media folder) the row is counted against, `lines` how many physical records
the row spans (non-blank lines of a CSV, 1 for a Parquet row or a media file) and `input_lines` how
many physical records the whole input holds, counted before any record is parsed. For every input,
`input_lines` = the sum of `lines` over its rows: a reader never swallows a line into another row
without saying so.

A malformed CSV line costs that line only. Quoted fields may span lines only where a layout needs it
(catalogs and overviews, `multiline=True`); there a record is re-joined from physical lines only while a
quote is open, for at most `MAX_RECORD_LINES` lines, and only when the result has the header's number of
fields. Otherwise the opening line alone is quarantined ("unterminated quote") and the next line starts
a record of its own.

No record costs more than itself (`RecordLimits`, from `PipelineConfig`): a line over `max_record_chars`
is quarantined as "longer than N characters" with its first characters kept, before any pattern or
parser reads it; the quote check never recurses, whatever a line holds; a compressed input that expands
beyond `max_decompressed_bytes` is one quarantined row ("input refused: ...") for the whole file.

One module per source family: `movielens` (its three layouts), `generic` (catalog + interactions files,
overviews), `media_folders` (posters, audio, video); beside them `canonical` (the shape and result types),
`files` (reading files as physical records in Spark) and `csv_records` (what one CSV record is, pure).
Import from `jobs.sources`: the names below are its interface.
"""

from jobs.sources.canonical import INTERACTION_FIELDS, ITEM_FIELDS, META_FIELDS, Extra, RawSource, SourceError
from jobs.sources.csv_records import (
    MAX_RECORD_LINES,
    UNTERMINATED_QUOTE,
    CsvRecord,
    CsvScan,
    RecordLimits,
    assemble_csv_records,
    record_too_long,
)
from jobs.sources.files import read_csv_with_header, read_delimited, read_table_file, read_text_lines
from jobs.sources.generic import read_generic, read_overviews
from jobs.sources.media_folders import (
    AUDIO_EXTENSIONS,
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    file_hashes,
    read_media_folder,
)
from jobs.sources.movielens import ML100K_GENRES, detect_movielens_layout, read_movielens

__all__ = [
    "AUDIO_EXTENSIONS",
    "IMAGE_EXTENSIONS",
    "INTERACTION_FIELDS",
    "ITEM_FIELDS",
    "MAX_RECORD_LINES",
    "META_FIELDS",
    "ML100K_GENRES",
    "UNTERMINATED_QUOTE",
    "VIDEO_EXTENSIONS",
    "CsvRecord",
    "CsvScan",
    "RecordLimits",
    "Extra",
    "RawSource",
    "SourceError",
    "assemble_csv_records",
    "detect_movielens_layout",
    "file_hashes",
    "read_csv_with_header",
    "read_delimited",
    "read_generic",
    "read_media_folder",
    "read_movielens",
    "read_overviews",
    "read_table_file",
    "read_text_lines",
    "record_too_long",
]
