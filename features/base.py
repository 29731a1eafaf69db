"""What every extractor is: a named, versioned function from a batch of inputs to vectors.

An extractor never raises for one bad input: it returns an `Extraction` with `error` set to a fixed
phrase (so quarantine rows group by reason), and the rest of the batch goes on. Nothing here imports
pyspark.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np


@dataclass(frozen=True)
class Extraction:
    """One input's result: a float32 vector of the extractor's `dim`, or an error phrase."""

    vector: np.ndarray | None
    error: str | None = None
    meta: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None

    @classmethod
    def failed(cls, reason: str) -> Extraction:
        return cls(vector=None, error=reason)


def expect_array(array: np.ndarray, dtype: type, ndim: int, what: str) -> np.ndarray:
    """`array` when it has `dtype` and `ndim` dimensions, else ValueError naming `what` (a decoded part
    from a decode child is checked before the model sees it)."""
    if array.dtype != np.dtype(dtype) or array.ndim != ndim:
        raise ValueError(f"{what}: expected {ndim}-d {np.dtype(dtype)}, got {array.ndim}-d {array.dtype}")
    return array


def in_input_order(results: dict[int, Extraction], n_inputs: int) -> list[Extraction]:
    """Results keyed by input position, as the list of inputs 0 … n_inputs - 1 (each must have one)."""
    return [results[position] for position in range(n_inputs)]


Decoded = TypeVar("Decoded")


class Extractor(ABC, Generic[Decoded]):
    """A pretrained model or signal-processing recipe turning one modality into vectors.

    `version` must change whenever the same input would give a different vector (new weights, new
    preprocessing, new layout): the pipeline re-extracts every item whose stored version differs.
    `Decoded` is what `decode` hands `extract_decoded`, for extractors split into those two halves.
    """

    modality: str
    name: str
    version: str
    dim: int

    def __init__(self, device: str | None = None) -> None:
        # `device`: where the model runs (None: the extractor's default). Every extractor takes it, so
        # `features.registry` builds them alike; each subclass resolves it for its own model.
        # Model forward passes run so far, counted per input: proves a no-change rerun ran none.
        self.inferences = 0

    @abstractmethod
    def extract_batch(self, inputs: Sequence[bytes | str]) -> list[Extraction]:
        """One result per input, in order."""

    def decode(self, data: object) -> Decoded | Extraction:
        """Everything the extractor does to an untrusted input before its model: parse and decode the
        bytes into arrays (or return a failed `Extraction`). Media extractors override it together with
        `extract_decoded`, so the pipeline can run this half in a sandboxed process (`jobs.decode_sandbox`)
        and the model half in the worker; the result must travel as `decoded_to_arrays` says."""
        raise NotImplementedError(f"{type(self).__name__} has no separate decoding step")

    def decoded_to_arrays(self, decoded: Decoded) -> tuple[dict[str, object], list[np.ndarray]]:
        """`decoded` as plain parts, for the sandbox's pipe: a small JSON-able dict of numbers and a list
        of arrays. The worker rebuilds it with `decoded_from_arrays`, so it never unpickles what a decode
        child (which ran on untrusted bytes) sent."""
        raise NotImplementedError(f"{type(self).__name__} has no separate decoding step")

    def decoded_from_arrays(self, fields: dict[str, object], arrays: list[np.ndarray]) -> Decoded:
        """The inverse of `decoded_to_arrays`; raises ValueError for parts that are not what `decode`
        makes (wrong count, dtype or rank), which the sandbox reports as a refused reply."""
        raise NotImplementedError(f"{type(self).__name__} has no separate decoding step")

    def extract_decoded(self, decoded: Sequence[Decoded]) -> list[Extraction]:
        """One result per output of `decode` that was not a failure, in order."""
        raise NotImplementedError(f"{type(self).__name__} has no separate decoding step")

    def decode_then_extract(
        self, inputs: Sequence[object], decode: Callable[[object], Decoded | Extraction] | None = None
    ) -> list[Extraction]:
        """`extract_batch` for an extractor split into `decode` and `extract_decoded`: each input decoded
        (by `decode`, default this extractor's own, in this process; the pipeline passes its sandbox's),
        then every decoded one through the model in one call, results in input order."""
        decode = decode or self.decode
        results: dict[int, Extraction] = {}
        decoded: dict[int, Decoded] = {}
        for index, value in enumerate(inputs):
            outcome = decode(value)
            if isinstance(outcome, Extraction):
                results[index] = outcome
            else:
                decoded[index] = outcome
        for index, result in zip(decoded, self.extract_decoded(list(decoded.values())), strict=True):
            results[index] = result
        return in_input_order(results, len(inputs))

    def _vector(self, values: np.ndarray, meta: dict[str, float] | None = None) -> Extraction:
        vector = np.asarray(values, dtype=np.float32).reshape(-1)
        if vector.shape != (self.dim,):
            raise AssertionError(f"{self.name} produced {vector.shape}, expected ({self.dim},)")
        if not np.all(np.isfinite(vector)):
            return Extraction.failed("non-finite features")
        return Extraction(vector=vector, meta=meta or {})
