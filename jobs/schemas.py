"""The lake's tables: every table's schema is written here once, and only here.

Each stage reads and writes these tables; the README documents them for downstream consumers. A
change to a schema is a change to a contract: add nullable columns, never repurpose one.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql.types import (
    ArrayType,
    BooleanType,
    DateType,
    DoubleType,
    FloatType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)


@dataclass(frozen=True)
class TableSpec:
    name: str
    schema: StructType
    partition_by: tuple[str, ...] = ()
    description: str = ""


def _field(name: str, kind, nullable: bool = True, comment: str = "") -> StructField:
    return StructField(name, kind, nullable, metadata={"comment": comment} if comment else {})


# The media kinds an item may carry. Each has a path column and a content-hash column in `catalog`.
MEDIA_KINDS = ("poster", "audio", "video")

CATALOG = TableSpec(
    name="catalog",
    description="One row per item: text fields, media paths and a content hash per modality.",
    schema=StructType(
        [
            _field("item_id", LongType(), False, "the source's item id (MovieLens movieId)"),
            _field("title", StringType(), False),
            _field("year", IntegerType(), comment="release year when the source gives one"),
            _field("overview", StringType(), comment="plot text; null when the source has none"),
            _field("genres", ArrayType(StringType()), False, "sorted as the source lists them"),
            _field("tags", ArrayType(StringType()), False, "distinct user tags, lower-cased, sorted"),
            _field("imdb_id", StringType()),
            _field("tmdb_id", LongType()),
            _field("poster_path", StringType(), comment="absolute path of the poster image"),
            _field("audio_path", StringType(), comment="absolute path of the trailer audio track"),
            _field("video_path", StringType(), comment="absolute path of the trailer video"),
            _field("text_hash", StringType(), False, "sha256 of title, overview, genres and tags"),
            _field("poster_hash", StringType(), comment="sha256 of the poster file's bytes"),
            _field("audio_hash", StringType(), comment="sha256 of the audio file's bytes"),
            _field("video_hash", StringType(), comment="sha256 of the video file's bytes"),
            _field("available_from", DateType(), comment="first date the item may be recommended"),
            _field("source", StringType(), False, "which reader produced the row"),
            _field("first_seen_ds", DateType(), False, "run date that first ingested the item"),
            _field("updated_ds", DateType(), False, "run date that last changed its content"),
            _field("first_seen_at", TimestampType(), False),
            _field("updated_at", TimestampType(), False),
        ]
    ),
)

# Every content version of every item, so the catalog as of any run date can be recovered
# (`jobs.asof.catalog_as_of`): one row per (item_id, ingested_ds) whose content differs from the version
# in effect on that date. `catalog` holds only the newest version.
CATALOG_HISTORY = TableSpec(
    name="catalog_history",
    description="Every content version of every item, keyed by (item_id, ingested_ds): the catalog as of any date.",
    schema=StructType(
        [
            *(
                f
                for f in CATALOG.schema.fields
                if f.name not in {"first_seen_ds", "updated_ds", "first_seen_at", "updated_at"}
            ),
            _field("ingested_ds", DateType(), False, "run date of the ingest that read this content"),
            _field("ingested_at", TimestampType(), False),
        ]
    ),
)

INTERACTIONS = TableSpec(
    name="interactions",
    description="One row per (user, item, event time, source): explicit ratings or implicit events.",
    schema=StructType(
        [
            _field("user_id", LongType(), False),
            _field("item_id", LongType(), False),
            _field("rating", FloatType(), comment="explicit rating; null for implicit events"),
            _field("weight", FloatType(), False, "implicit-feedback weight; 1.0 unless the source says"),
            _field("event_time", TimestampType(), False, "UTC"),
            _field("source", StringType(), False),
            _field("ingested_ds", DateType(), False, "run date that first ingested the row"),
        ]
    ),
)

QUARANTINE = TableSpec(
    name="quarantine",
    description="Every row or item a stage could not use, with the reason. Partitioned by run date.",
    partition_by=("ds",),
    schema=StructType(
        [
            _field("ds", DateType(), False, "run date"),
            _field("stage", StringType(), False, "the stage that rejected it, e.g. ingest"),
            _field("source_file", StringType(), comment="the file the row came from"),
            _field("item_id", LongType(), comment="the item, when the row names a readable one"),
            _field("user_id", LongType()),
            _field("record", StringType(), False, "the rejected row as read (raw line or JSON)"),
            _field("reason", StringType(), False, "a fixed phrase, so rows group by reason"),
            _field("quarantined_at", TimestampType(), False),
        ]
    ),
)

DEFERRED = TableSpec(
    name="deferred",
    description=(
        "Rows ingest read but may not ingest yet (an event after the run date, an item not yet available), "
        "kept until the first run date they are due. Partitioned by the run date that deferred them."
    ),
    partition_by=("deferred_ds",),
    schema=StructType(
        [
            _field("deferred_ds", DateType(), False, "run date whose ingest read and deferred the row"),
            _field("kind", StringType(), False, "items | interactions"),
            _field("item_id", LongType(), False),
            _field("user_id", LongType(), comment="the event's user; null for an item"),
            _field("row_key", StringType(), False, "the row's identity: the item id, or the interaction's key"),
            _field("due_ds", DateType(), False, "the first run date that ingests the row"),
            _field("reason", StringType(), False, "why it waits, a fixed phrase"),
            _field("input", StringType(), False, "the file the row was read from"),
            _field("record", StringType(), False, "the validated row as JSON, as it will be merged"),
            _field("deferred_at", TimestampType(), False),
        ]
    ),
)

# Feature tables: one per modality, all with this schema (`features_text`, `features_image`, …,
# `features_<name>` for imported vectors).
FEATURE_STATUSES = ("ok", "failed", "missing")
FEATURES_SCHEMA = StructType(
    [
        _field("item_id", LongType(), False),
        _field("content_hash", StringType(), comment="the catalog hash this row was extracted from"),
        _field("extractor", StringType(), False, "extractor name, e.g. all-minilm-l6-v2-meanpool"),
        _field("extractor_version", StringType(), False, "changes whenever the same input would change"),
        _field("dim", IntegerType(), comment="vector length; null unless status is ok"),
        _field("vector", ArrayType(FloatType()), comment="float32 features; null unless status is ok"),
        _field("status", StringType(), False, "ok | failed | missing (the item has no such media)"),
        _field("error", StringType(), comment="why extraction failed, a fixed phrase"),
        _field("extracted_ds", DateType(), False, "run date of the extraction"),
        _field("extracted_at", TimestampType(), False),
    ]
)


def features_table(modality: str) -> TableSpec:
    return TableSpec(
        name=f"features_{modality}",
        description=f"One row per catalog item: its {modality} feature vector, or why there is none.",
        schema=FEATURES_SCHEMA,
    )


ITEM_VECTORS = TableSpec(
    name="item_vectors",
    description="One fused vector per item of the catalog as of each fused run date (fused_ds).",
    partition_by=("fused_ds",),
    schema=StructType(
        [
            _field("item_id", LongType(), False),
            _field("vector", ArrayType(FloatType()), False, "the blocks of `layout` concatenated, in order"),
            _field("layout", ArrayType(StringType()), False, "the modality of each block, in order"),
            _field("block_dims", ArrayType(IntegerType()), False, "each block's length, in layout order"),
            _field("mask", ArrayType(BooleanType()), False, "true where the item has that modality"),
            _field("modalities", ArrayType(StringType()), False, "the modalities the item has"),
            _field(
                "fusion_version", StringType(), False, "changes whenever the same features would fuse differently"
            ),
            _field("fused_ds", DateType(), False, "run date whose catalog (as of its end) these rows fuse"),
            _field("fused_at", TimestampType(), False),
        ]
    ),
)

# Evaluation: every number in `metrics` can be recomputed from `eval_truth` and `eval_lists`.
METRICS = TableSpec(
    name="metrics",
    description="Offline evaluation: one row per run date, dataset, protocol, model, metric and k.",
    partition_by=("ds",),
    schema=StructType(
        [
            _field("ds", DateType(), False, "run date"),
            _field("dataset", StringType(), False, "e.g. demo, ml-latest-small"),
            _field("protocol", StringType(), False, "random_75_25 | chrono_80_20 | item_cold_20"),
            _field("model", StringType(), False, "e.g. ranker, ease, als, popularity"),
            _field("metric", StringType(), False, "ndcg | precision | recall | map | coverage"),
            _field("k", IntegerType(), False, "list length the metric is computed at"),
            _field("value", DoubleType(), False, "mean over evaluated users (coverage: share of items)"),
            _field("users", IntegerType(), False, "users evaluated"),
            _field("model_version", StringType(), comment="the trained artifact's version, when there is one"),
            _field("evaluated_at", TimestampType(), False),
        ]
    ),
)

EVAL_TRUTH = TableSpec(
    name="eval_truth",
    description="The held-out interactions each protocol scored against: one row per (user, item).",
    partition_by=("ds",),
    schema=StructType(
        [
            _field("ds", DateType(), False, "run date"),
            _field("dataset", StringType(), False),
            _field("protocol", StringType(), False),
            _field("user_id", LongType(), False),
            _field("item_id", LongType(), False),
        ]
    ),
)

EVAL_LISTS = TableSpec(
    name="eval_lists",
    description="The top-k list every model produced for every evaluated user, per protocol.",
    partition_by=("ds",),
    schema=StructType(
        [
            _field("ds", DateType(), False, "run date"),
            _field("dataset", StringType(), False),
            _field("protocol", StringType(), False),
            _field("model", StringType(), False),
            _field("user_id", LongType(), False),
            _field("item_id", LongType(), False),
            _field("rank", IntegerType(), False, "1 = first"),
            _field("score", DoubleType(), comment="the model's score; higher ranks first"),
        ]
    ),
)

# What the pipeline publishes: each eligible user's top-K for a run date, checked before it is written.
RECOMMENDATIONS = TableSpec(
    name="recommendations",
    description="Each user's top-K items for a run date, from the current ranker. Partitioned by run date.",
    partition_by=("ds",),
    schema=StructType(
        [
            _field("ds", DateType(), False, "run date: lists use interactions up to the end of it"),
            _field("user_id", LongType(), False, "every user with an interaction up to the end of ds"),
            _field("rank", IntegerType(), False, "1 = first; 1..n without gaps"),
            _field("item_id", LongType(), False, "an available catalog item the user has not interacted with"),
            _field("score", DoubleType(), False, "the ranker's score; non-increasing by rank"),
            _field("model_version", StringType(), False, "the ranker artifact that scored the list"),
            _field("generated_at", TimestampType(), False, "end of the run date (ds + 1 day, 00:00 UTC)"),
            _field("modalities", ArrayType(StringType()), False, "the modalities the item has (item_vectors)"),
        ]
    ),
)

ALL_TABLES = (
    CATALOG,
    CATALOG_HISTORY,
    INTERACTIONS,
    QUARANTINE,
    DEFERRED,
    ITEM_VECTORS,
    METRICS,
    EVAL_TRUTH,
    EVAL_LISTS,
    RECOMMENDATIONS,
)


def column_names(spec: TableSpec) -> list[str]:
    return [field.name for field in spec.schema.fields]
