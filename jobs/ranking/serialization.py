"""A trained ranker and the serving statistics on disk: safetensors for arrays, JSON for the rest.

Nothing is ever pickled: a ranker is its network's weights, feature columns and normalisation
(`ranker.safetensors`) and its settings, feature names and training log (`ranker.json`); the base
models and the item side that publish's Spark workers score with are their arrays plus a JSON layout.
Every write goes through `jobs.artifacts`, so a reader never sees half of one.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import scipy.sparse as sp
import torch

from jobs.ranking.baselines import EaseScorer, ItemKnnScorer, ItemSide, UserKnnScorer, fitted
from jobs.ranking.candidates import BaseModels
from jobs.ranking.data import Interactions
from jobs.ranking.ranker import HybridRanker, RankerSettings
from jobs.ranking.training import RankerNet


def save_ranker(ranker: HybridRanker, folder: Path, metadata: dict, crash_prefix: str = "ranker") -> Path:
    """Write `ranker.safetensors` and `ranker.json` as one artifact folder (`jobs.artifacts`): built aside,
    manifest last, renamed into place whole, so `folder` never holds half a ranker."""
    from safetensors.torch import save_file

    from jobs.artifacts import build_artifact

    net = fitted(ranker.net, ranker)
    tensors = {f"net.{name}": value.contiguous() for name, value in net.state_dict().items()}
    tensors |= {
        "columns": torch.from_numpy(fitted(ranker.columns, ranker).astype(np.int64)),
        "feature_mean": torch.from_numpy(fitted(ranker.mean, ranker)),
        "feature_std": torch.from_numpy(fitted(ranker.std, ranker)),
    }
    description = {
        "name": ranker.name,
        "settings": dataclasses.asdict(ranker.settings),
        "all_modalities": fitted(ranker.items, ranker).modalities,
        "feature_names": ranker.feature_names,
        "training": dataclasses.asdict(ranker.log),
    } | metadata

    def write(temporary: Path) -> None:
        save_file(tensors, str(temporary / "ranker.safetensors"))
        (temporary / "ranker.json").write_text(json.dumps(description, indent=2, sort_keys=True) + "\n")

    meta = {"kind": "ranker", "version": metadata.get("version", folder.name)}
    return build_artifact(folder, write, meta, crash_prefix=crash_prefix)


def load_ranker(folder: Path, items: ItemSide, base: BaseModels | None) -> HybridRanker:
    """A saved ranker, ready to score against `base` (refit from the lake for the date being served; None:
    only its settings and network are wanted, e.g. to check its modalities before fitting the base)."""
    from safetensors.torch import load_file

    description = json.loads((folder / "ranker.json").read_text())
    if description["all_modalities"] != items.modalities:
        raise ValueError(
            f"ranker in {folder} was trained on modalities {description['all_modalities']}, "
            f"but the item vectors have {items.modalities}: retrain it"
        )
    settings = dict(description["settings"])
    settings["modalities"] = tuple(settings["modalities"]) if settings["modalities"] is not None else None
    ranker = HybridRanker(RankerSettings(**settings), description["name"])
    tensors = load_file(str(folder / "ranker.safetensors"))
    ranker.items, ranker.base = items, base
    ranker.columns = tensors["columns"].numpy()
    ranker.mean, ranker.std = tensors["feature_mean"].numpy(), tensors["feature_std"].numpy()
    ranker.net = RankerNet(len(ranker.columns), ranker.settings.hidden, ranker.settings.dropout)
    ranker.net.load_state_dict(
        {name.removeprefix("net."): v for name, v in tensors.items() if name.startswith("net.")}
    )
    ranker.net.eval()
    return ranker


# ---------------------------------------------------------------------------------------------------
# Serving artifacts: base models and item side as plain arrays (safetensors) plus a JSON layout, so the
# Python workers that score users in Spark load what the driver fitted instead of refitting it, and
# nothing is ever unpickled. Sparse matrices are stored as their CSR arrays (data, indices, indptr)
# with the shape in the JSON. The layout walks the dataclasses' fields, so a field added to
# `BaseModels` is saved without touching this code (arrays, CSR matrices, dicts and scalars only).

_SERVABLE_CLASSES: dict[str, Callable[..., object]] = {
    cls.__name__: cls for cls in (BaseModels, Interactions, EaseScorer, ItemKnnScorer, UserKnnScorer, ItemSide)
}
_SERVING_FORMAT = 1


def _flatten(value: object, key: str, arrays: dict[str, np.ndarray]) -> dict:
    """The JSON layout of `value`; its arrays go into `arrays` under keys that start with `key`."""
    if value is None:
        return {"kind": "none"}
    if isinstance(value, np.ndarray):
        arrays[key] = np.ascontiguousarray(value)
        return {"kind": "array"}
    if sp.issparse(value):
        csr = sp.csr_matrix(value)
        for part in ("data", "indices", "indptr"):
            arrays[f"{key}.{part}"] = np.ascontiguousarray(getattr(csr, part))
        return {"kind": "csr", "shape": [int(n) for n in csr.shape]}
    if isinstance(value, dict):
        # A list, not a JSON object: the order is meaningful (ItemSide.blocks is the modality order).
        return {"kind": "dict", "entries": [[str(k), _flatten(v, f"{key}.{k}", arrays)] for k, v in value.items()]}
    if dataclasses.is_dataclass(value) and type(value).__name__ in _SERVABLE_CLASSES:
        fields = {
            f.name: _flatten(getattr(value, f.name), f"{key}.{f.name}", arrays) for f in dataclasses.fields(value)
        }
        return {"kind": "object", "class": type(value).__name__, "fields": fields}
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (bool, int, float, str)):
        return {"kind": "value", "value": value}
    raise TypeError(f"cannot save {key} of type {type(value).__name__} as a serving artifact")


def _unflatten(layout: dict, key: str, arrays: dict[str, np.ndarray]) -> object:
    kind = layout["kind"]
    if kind == "none":
        return None
    if kind == "array":
        return arrays[key]
    if kind == "csr":
        parts = (arrays[f"{key}.data"], arrays[f"{key}.indices"], arrays[f"{key}.indptr"])
        return sp.csr_matrix(parts, shape=tuple(layout["shape"]))
    if kind == "dict":
        return {k: _unflatten(v, f"{key}.{k}", arrays) for k, v in layout["entries"]}
    if kind == "object":
        cls = _SERVABLE_CLASSES[layout["class"]]  # only known classes: the JSON never names code to run
        return cls(**{name: _unflatten(v, f"{key}.{name}", arrays) for name, v in layout["fields"].items()})
    if kind == "value":
        return layout["value"]
    raise ValueError(f"unknown serving artifact entry {kind!r} at {key}")


def _save_servable(value: object, path: Path) -> Path:
    """`path` (.safetensors) and its .json layout, each written whole, then renamed (`jobs.artifacts`;
    publish writes them into an artifact folder that is itself built aside and renamed whole)."""
    from safetensors.numpy import save_file

    from jobs.artifacts import write_file, write_text

    arrays: dict[str, np.ndarray] = {}
    layout = {"format": _SERVING_FORMAT, "root": _flatten(value, "root", arrays)}
    write_file(path, lambda temporary: save_file(arrays, str(temporary)))
    write_text(path.with_suffix(".json"), json.dumps(layout, indent=1) + "\n")
    return path


Servable = TypeVar("Servable")


def _load_servable(path: Path, expected: type[Servable]) -> Servable:
    from safetensors.numpy import load_file

    layout = json.loads(path.with_suffix(".json").read_text())
    if layout.get("format") != _SERVING_FORMAT:
        raise ValueError(f"{path} has serving format {layout.get('format')}, this code reads {_SERVING_FORMAT}")
    value = _unflatten(layout["root"], "root", load_file(str(path)))
    if not isinstance(value, expected):
        raise ValueError(f"{path} holds a {type(value).__name__}, not a {expected.__name__}")
    return value


def save_base_models(base: BaseModels, path: Path) -> Path:
    """Write `base` to `path` (e.g. `base.safetensors`) and `base.json` beside it."""
    return _save_servable(base, path)


def load_base_models(path: Path) -> BaseModels:
    """The `BaseModels` that `save_base_models` wrote, array for array."""
    return _load_servable(path, BaseModels)


def save_item_side(items: ItemSide, path: Path) -> Path:
    """Write the item side (modality blocks in order, genres) to `path` and a .json beside it."""
    return _save_servable(items, path)


def load_item_side(path: Path) -> ItemSide:
    return _load_servable(path, ItemSide)
