"""Item text to vectors: all-MiniLM-L6-v2 sentence embeddings of an item's title, metadata and overview.

`compose_item_text` builds the one string an item is embedded from; `TextExtractor` turns such strings
into 384-d unit vectors (mean of the token embeddings over the attention mask, then L2 normalised, as
sentence-transformers does for this model), so a dot product is a cosine similarity.

Never loads weights from anywhere but site-packages (`features.models`), never imports pyspark, and
never raises for one bad input: undecodable or empty text comes back as a failed `Extraction`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from features import models
from features.base import Extraction, Extractor, in_input_order

log = logging.getLogger("modalrank.text")

UNDECODABLE = "undecodable text (not valid UTF-8)"
EMPTY = "empty text"
NOT_TEXT = "not text"


def compose_item_text(title: str, overview: str | None, genres: Sequence[str], tags: Sequence[str]) -> str:
    """The text an item is embedded from, e.g. "Toy Story (1995). Genres: Adventure, Animation. Tags: pixar,
    fun. A cowboy doll is ...".

    Title, genres and tags come before the overview: the model reads at most 256 tokens, and cutting the
    end of a long overview loses less than cutting the metadata. Whitespace runs collapse to one space,
    blank entries and repeated tags (case-insensitively) are dropped, and genres and tags keep the
    caller's order, so the same arguments always give the same string.
    """
    parts = []
    title = _squash(title)
    if title:
        parts.append(title if title.endswith((".", "!", "?")) else f"{title}.")
    genre_list = _unique(genres)
    if genre_list:
        parts.append(f"Genres: {', '.join(genre_list)}.")
    tag_list = _unique(tags)
    if tag_list:
        parts.append(f"Tags: {', '.join(tag_list)}.")
    overview = _squash(overview)
    if overview:
        parts.append(overview)
    return " ".join(parts)


def _squash(text: object) -> str:
    # pandas hands a null string column over as None or NaN: both mean "no text".
    return " ".join(text.split()) if isinstance(text, str) else ""


def _unique(values: Sequence[str] | None) -> list[str]:
    seen, out = set(), []
    for value in values or ():
        value = _squash(value)
        if value and value.casefold() not in seen:
            seen.add(value.casefold())
            out.append(value)
    return out


def minilm_max_tokens(tokenizer) -> int:
    """The sequence length all-MiniLM-L6-v2 was trained at (256), including [CLS] and [SEP].

    The tokenizer's own `model_max_length` says 512 (BERT's position table), but the model was trained
    on 256 tokens and sentence-transformers cuts there; sentence_bert_config.json records that.
    """
    try:
        config = json.loads((models.minilm_path() / "sentence_bert_config.json").read_text())
        return int(config["max_seq_length"])
    except (OSError, KeyError, TypeError, ValueError):
        log.warning("no max_seq_length in sentence_bert_config.json; using the tokenizer's limit")
        return int(tokenizer.model_max_length)


class TextExtractor(Extractor):
    """all-MiniLM-L6-v2, mean pooled and L2 normalised: one 384-d unit vector per text.

    Inputs are `str`, or UTF-8 `bytes`. Meta per result: `tokens` (how many the model read, [CLS] and
    [SEP] included, so at most 256) and `truncated` (1 when the text had more and its tail was cut).

    On the CPU each text is its own forward pass at its own length (`batch_size` 1): no padding, so a
    text's vector is a function of the text alone, bit for bit, whatever else was extracted with it (a
    padded batch rounds differently with its width and row count, which made an item's vector depend on
    which partition it landed in). Measured on 384 movie overviews, one at a time is as fast as length-
    sorted batches of 64 (`modalrank bench text-batching`). On a GPU, batches of 64 keep it busy.
    """

    modality = "text"
    name = "all-minilm-l6-v2-meanpool"
    version = "2"  # 2: unpadded single-text passes on the CPU (1 padded batches; differs by ~1e-7)
    dim = 384

    def __init__(self, device: str | None = None, batch_size: int | None = None) -> None:
        super().__init__()
        self.device = device or models.default_device()
        if batch_size is None:
            batch_size = 1 if self.device == "cpu" else 64
        self.batch_size = max(1, int(batch_size))
        self._loaded: tuple[Any, Any, int] | None = None  # (tokenizer, model, max tokens), once loaded

    def warm_up(self) -> None:
        """Load the tokenizer and weights now rather than on the first batch."""
        self._model()

    def _model(self):
        if self._loaded is None:
            tokenizer, model = models.load_minilm(self.device)
            self._loaded = tokenizer, model, minilm_max_tokens(tokenizer)
        return self._loaded

    def extract_batch(self, inputs: Sequence[bytes | str]) -> list[Extraction]:
        results: dict[int, Extraction] = {}
        texts, positions = [], []
        for index, value in enumerate(inputs):
            text = _as_text(value)
            if isinstance(text, Extraction):
                results[index] = text
            else:
                texts.append(text)
                positions.append(index)
        if texts:
            for index, result in zip(positions, self._embed(texts), strict=True):
                results[index] = result
        return in_input_order(results, len(inputs))

    def _embed(self, texts: list[str]) -> list[Extraction]:
        tokenizer, model, max_tokens = self._model()
        # One token past the limit: anything that comes back longer than the limit was cut, which
        # gives `truncated` without a second, untruncated pass over every text.
        encoded = tokenizer(texts, truncation=True, max_length=max_tokens + 1, add_special_tokens=True)[
            "input_ids"
        ]
        specials = tokenizer.num_special_tokens_to_add(pair=False)
        results: dict[int, Extraction] = {}
        sequences, truncated, positions = [], [], []
        for index, ids in enumerate(encoded):
            if len(ids) <= specials:  # e.g. only zero-width or control characters: nothing to read
                results[index] = Extraction.failed(EMPTY)
                continue
            cut = len(ids) > max_tokens
            sequences.append(ids[: max_tokens - 1] + [tokenizer.sep_token_id] if cut else ids)
            truncated.append(cut)
            positions.append(index)

        # Similar lengths share a batch, so little of each batch is padding. Ties break on the tokens, so
        # the batches (and thus the float rounding) do not depend on the order the inputs came in.
        order = sorted(range(len(sequences)), key=lambda i: (len(sequences[i]), sequences[i]))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            vectors = self._forward([sequences[i] for i in chunk], tokenizer.pad_token_id, model)
            self.inferences += len(chunk)
            for i, vector in zip(chunk, vectors, strict=True):
                meta = {"tokens": float(len(sequences[i])), "truncated": float(truncated[i])}
                results[positions[i]] = self._vector(vector, meta)
        return in_input_order(results, len(texts))

    @torch.inference_mode()
    def _forward(self, sequences: list[list[int]], pad_id: int, model) -> np.ndarray:
        width = max(len(ids) for ids in sequences)
        input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, ids in enumerate(sequences):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[row, : len(ids)] = 1
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        hidden = model(input_ids=input_ids, attention_mask=mask).last_hidden_state.float()
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2, dim=1).cpu().numpy().astype(np.float32)


def _as_text(value: object) -> str | Extraction:
    """The input as a non-blank str, or the failed result that explains why it is not one."""
    if value is None:
        return Extraction.failed(EMPTY)
    if isinstance(value, bytes | bytearray | memoryview):
        try:
            # utf-8-sig: a leading byte-order mark is encoding noise, not text to embed.
            value = bytes(value).decode("utf-8-sig")
        except UnicodeDecodeError:
            return Extraction.failed(UNDECODABLE)
    if not isinstance(value, str):
        return Extraction.failed(NOT_TEXT)
    if not value.strip():
        return Extraction.failed(EMPTY)
    return value
