"""DataFrame habits ingest's modules share: settle a frame (computed once, its plan cut) and union
many frames by column name."""

from __future__ import annotations

from pyspark.sql import DataFrame


def settled(frame: DataFrame) -> DataFrame:
    """`frame` computed now and kept, its plan cut to a scan of the result.

    Every later step (the counts, the merges, the quarantine and deferred writes) reads these frames;
    with the whole validation plan under each, Spark spends minutes planning the count of every input.
    Computed before any write, they also stay as they were read while the run changes the tables.
    """
    return frame.localCheckpoint(eager=True)


def union_by_name(*frames: DataFrame) -> DataFrame:
    result = frames[0]
    for frame in frames[1:]:
        result = result.unionByName(frame)
    return result
