"""The built-in extractors by modality, importable without loading any model.

`extractor_class(modality)` gives the class (its `name`, `version` and `dim` are class attributes, so
the Spark driver can decide what is stale without touching weights); `make_extractor` builds one,
which loads its model.
"""

from __future__ import annotations

import importlib

from features.base import Extractor

BUILT_IN = {
    "text": "features.text:TextExtractor",
    "image": "features.image:ImageExtractor",
    "audio": "features.audio:AudioExtractor",
    "video": "features.video:VideoExtractor",
}


def extractor_class(modality: str) -> type[Extractor]:
    try:
        module_name, class_name = BUILT_IN[modality].split(":")
    except KeyError:
        raise ValueError(
            f"no built-in extractor for modality {modality!r}; known: {', '.join(BUILT_IN)}"
        ) from None
    return getattr(importlib.import_module(module_name), class_name)


def make_extractor(modality: str, device: str | None = None) -> Extractor:
    return extractor_class(modality)(device=device)
