"""What the ranker stages share: the lake's data as of a date, and which saved ranker serves a date.

`train` fits the ranker on `load_ranking_data` of its training date and points run dates at the model
(`date_pointer`, `current_pointer`); `evaluate` scores every model on `load_ranking_data` of its date;
`publish` serves the model `date_pointer` names on `load_ranking_data` of its date. Kept here, not in
one of those jobs, so that no stage imports another stage's module.

Reads what the lake knew by the end of a date (`jobs.asof`) and hands it over as numpy; writes nothing.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs import lake
from jobs.asof import catalog_as_of, end_of_day, interactions_as_of
from jobs.config import PipelineConfig
from jobs.ranking.baselines import ItemSide
from jobs.ranking.data import IndexedData, index_interactions
from jobs.schemas import ITEM_VECTORS

# The name these lines were always logged under (they began in train), whichever stage loads the data.
log = logging.getLogger("modalrank.train")


@dataclass(frozen=True)
class RankingData:
    """What models train on: indexed interactions, the item side, and where it came from."""

    data: IndexedData
    items: ItemSide
    fusion_version: str
    facts: dict = field(default_factory=dict)
    # The catalog as of the date (item_id, genres, available_from), computed once: publish's eligibility
    # and gate read it too.
    catalog: DataFrame | None = None


def load_ranking_data(spark: SparkSession, config: PipelineConfig, ds: dt.date) -> RankingData:
    """What the lake knew by the end of `ds`, as numpy (`jobs.asof`): interactions up to then, genres of
    the catalog as of `ds`, and the fused vectors fuse wrote for `ds` (`item_vectors` rows of `fused_ds`
    = `ds`), never those of a later date."""
    catalog_as_of_ds = catalog_as_of(spark, config, ds).select("item_id", "genres", "available_from")
    catalog_as_of_ds = catalog_as_of_ds.localCheckpoint(eager=True)
    catalog = catalog_as_of_ds.select("item_id", "genres")
    # Each pair once, at its latest event, reduced in Spark; the driver receives three int64 columns
    # as Arrow (24 bytes a pair: 0.6 GB for ml-25m), never Python rows.
    interactions = (
        interactions_as_of(spark, config, ds, catalog)
        .groupBy("user_id", "item_id")
        .agg(F.max(F.unix_timestamp("event_time")).alias("seconds"))
        .toArrow()
        .to_pandas()
    )
    # Arrow, not Python rows: one fused vector per catalog item is 62k arrays at ml-25m's size.
    catalog = catalog.toArrow().to_pandas()
    vectors = (
        lake.read_table(spark, config, ITEM_VECTORS)
        .where(F.col("fused_ds") == F.lit(ds))
        .select("item_id", "vector", "layout", "block_dims", "fusion_version")
    )
    vectors = vectors.toArrow().to_pandas()
    if vectors.empty:
        raise ValueError(
            f"item_vectors has no rows for {ds}: run the fuse job for {ds} (or for a date whose training date it is)"
        )
    if interactions.empty:
        raise ValueError(f"no interactions up to {ds} in {config.lake}")
    end = end_of_day(ds)
    catalog = catalog.sort_values("item_id", ignore_index=True)
    data = index_interactions(
        interactions["user_id"].to_numpy(),
        interactions["item_id"].to_numpy(),
        interactions["seconds"].to_numpy(),
        catalog["item_id"].to_numpy(),
    )
    items = item_side(data, catalog, vectors)
    fusion_versions = sorted(vectors["fusion_version"].unique())
    facts = {
        "users": int(data.interactions.n_users),
        "items": int(data.interactions.n_items),
        "interactions (unique user-item pairs)": len(data.interactions),
        "items with interactions": int((data.interactions.item_counts() > 0).sum()),
        "modalities": ", ".join(items.modalities),
        "fusion version": ", ".join(fusion_versions),
        "events up to": end.isoformat(sep=" "),
    }
    log.info("ranking data as of %s: %s", ds, facts)
    return RankingData(data, items, fusion_versions[-1], facts, catalog_as_of_ds)


def item_side(data: IndexedData, catalog, vectors) -> ItemSide:
    """Per-modality blocks (zeros where an item lacks the modality or a vector) and a genre matrix."""
    layout = list(vectors["layout"].iloc[0])
    dims = [int(d) for d in vectors["block_dims"].iloc[0]]
    index = data.item_index()
    rows = np.array([index.get(int(item_id), -1) for item_id in vectors["item_id"]])
    known = rows >= 0
    matrix = np.zeros((len(data.item_ids), sum(dims)), dtype=np.float32)
    if known.any():
        matrix[rows[known]] = np.stack(vectors["vector"].to_numpy()[known]).astype(np.float32)
    offsets = np.concatenate([[0], np.cumsum(dims)])
    blocks = {m: matrix[:, offsets[i] : offsets[i + 1]] for i, m in enumerate(layout)}
    genre_names = sorted({g for genres in catalog["genres"] for g in genres if g})
    position = {g: i for i, g in enumerate(genre_names)}
    pairs = [(row, position[g]) for row, genres in enumerate(catalog["genres"]) for g in genres if g]
    genre_rows, genre_cols = zip(*pairs, strict=True) if pairs else ((), ())
    genres = sp.csr_matrix(
        (np.ones(len(pairs), dtype=np.float32), (genre_rows, genre_cols)),
        shape=(len(data.item_ids), max(1, len(genre_names))),
    )
    return ItemSide(blocks, genres)


# ---------------------------------------------------------------------------------------------------
# Which saved ranker serves a run date (`<models>/ranker/`)


def date_pointer(config: PipelineConfig, ds: dt.date) -> Path:
    """`_models/ranker/by_ds/<ds>.json`: which model serves run date `ds`."""
    return config.models_dir / "ranker" / "by_ds" / f"{ds.isoformat()}.json"


def current_pointer(config: PipelineConfig) -> Path:
    """`_models/ranker/current.json`: the model of the newest run date trained so far."""
    return config.models_dir / "ranker" / "current.json"
