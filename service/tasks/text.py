"""Text tasks: strings -> token ids + attention mask (HF `tokenizers`); outputs -> labels or vectors.

Texts of one request are padded to the longest of them with the tokenizer's pad id; the batcher pads
across requests (`pad_value` on the inputs). The server's policy wins over the tokenizer file's: a
tokenizer.json exported with fixed padding ("pad to 128") or its own truncation length has both
replaced by "pad to the longest, cut at the task's max_length". Segment ids (`token_type_ids`, which
BERT-family graphs take) come from the tokenizer: zeros for a single text. Tokenizers are loaded once
per file and truncation setting and kept in a small bounded cache.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from tokenizers import Tokenizer

from service.errors import InferenceFailed, InvalidInput, ModelLoadError, PayloadTooLarge
from service.types import FloatArray

MAX_TEXT_CHARS = 100_000
"""Longest text accepted, in characters, before tokenizing (truncation only applies after)."""
_PAD_TOKENS = ("[PAD]", "<pad>", "<|pad|>", "<PAD>")

IntArray = npt.NDArray[np.int64]


@dataclass(slots=True)
class EncodedTexts:
    """Token ids, mask and segment ids, all (B, L) int64, padded to the longest text; per-text facts."""

    ids: IntArray
    mask: IntArray
    type_ids: IntArray
    lengths: list[int]
    truncated: list[bool]


@dataclass(slots=True, frozen=True)
class LoadedTokenizer:
    tokenizer: Tokenizer
    pad_id: int


def load_tokenizer(path: Path, *, max_length: int, truncate: bool) -> LoadedTokenizer:
    """The tokenizer in `path`, set to truncate at `max_length` (or not), cached per file version."""
    try:
        mtime = path.stat().st_mtime_ns
    except OSError as exc:
        raise ModelLoadError(f"tokenizer file {path} is missing: {exc.strerror}") from exc
    return _load(str(path), mtime, max_length, truncate)


@functools.lru_cache(maxsize=32)
def _load(path: str, mtime_ns: int, max_length: int, truncate: bool) -> LoadedTokenizer:
    del mtime_ns  # part of the cache key only: a replaced file is read again
    try:
        tokenizer = Tokenizer.from_file(path)
    except Exception as exc:  # tokenizers raises a bare Exception on bad JSON
        raise ModelLoadError(f"tokenizer file {path} cannot be read: {exc}") from exc
    padding = tokenizer.padding
    pad_id = int(padding["pad_id"]) if padding else _find_pad_id(tokenizer)
    tokenizer.no_padding()  # we pad ourselves, to the longest text (a file's fixed padding is dropped)
    if truncate:
        tokenizer.enable_truncation(max_length)
    else:
        tokenizer.no_truncation()
    return LoadedTokenizer(tokenizer=tokenizer, pad_id=pad_id)


def _find_pad_id(tokenizer: Tokenizer) -> int:
    for token in _PAD_TOKENS:
        found = tokenizer.token_to_id(token)
        if found is not None:
            return int(found)
    return 0


def check_texts(texts: Sequence[str]) -> None:
    """Refuse empty, whitespace-only and oversized texts before any tokenizing."""
    if not texts:
        raise InvalidInput('no text given; send {"text": "..."} or {"texts": ["...", ...]}')
    for i, text in enumerate(texts):
        if not text.strip():
            raise InvalidInput(f"text {i} is empty or whitespace only; send some words")
        if len(text) > MAX_TEXT_CHARS:
            raise PayloadTooLarge(f"text {i} has {len(text)} characters; the limit is {MAX_TEXT_CHARS}")


def encode(
    texts: Sequence[str], tok: LoadedTokenizer, *, max_length: int, lowercase: bool, refuse_long: bool
) -> EncodedTexts:
    """Tokenize `texts` and pad them to the longest; long texts are cut (noted) or refused."""
    check_texts(texts)
    prepared = [t.lower() for t in texts] if lowercase else list(texts)
    encodings = tok.tokenizer.encode_batch(prepared)
    lengths = [len(e.ids) for e in encodings]
    for i, n in enumerate(lengths):
        if n == 0:
            raise InvalidInput(f"text {i} gives no tokens with this model's tokenizer; send words it knows")
        if refuse_long and n > max_length:
            raise InvalidInput(
                f"text {i} is {n} tokens long; this model takes at most {max_length} tokens "
                "and refuses longer texts (truncation: refuse): shorten it"
            )
    longest = max(lengths)
    ids = np.full((len(texts), longest), tok.pad_id, dtype=np.int64)
    mask = np.zeros((len(texts), longest), dtype=np.int64)
    type_ids = np.zeros((len(texts), longest), dtype=np.int64)
    for i, encoding in enumerate(encodings):
        ids[i, : lengths[i]] = encoding.ids
        mask[i, : lengths[i]] = 1
        type_ids[i, : lengths[i]] = encoding.type_ids
    truncated = [bool(e.overflowing) for e in encodings]
    return EncodedTexts(ids=ids, mask=mask, type_ids=type_ids, lengths=lengths, truncated=truncated)


def pool(
    output: npt.NDArray[np.floating], mask: IntArray, *, pooling: str, normalize: bool
) -> FloatArray:
    """Token states (B, L', D) -> one vector per text (B, D); `none` takes an already pooled (B, D).

    L' may exceed the request's L: the batcher padded this request's texts to a longer neighbour's.
    """
    if pooling == "none":
        if output.ndim != 2:
            raise InferenceFailed(
                f"embedding output has shape {list(output.shape)}; pooling none expects [batch, dim]"
            )
        vectors = output.astype(np.float32)
    else:
        if output.ndim != 3 or output.shape[1] < mask.shape[1]:
            raise InferenceFailed(
                f"embedding output has shape {list(output.shape)}; pooling {pooling} expects "
                f"[batch, >= {mask.shape[1]}, dim]"
            )
        if pooling == "cls":
            vectors = output[:, 0, :].astype(np.float32)  # (B, L, D) -> (B, D)
        else:
            weights = np.zeros(output.shape[:2], dtype=np.float32)
            weights[:, : mask.shape[1]] = mask
            summed = np.einsum("bld,bl->bd", output.astype(np.float32), weights)  # (B, L, D) -> (B, D)
            vectors = summed / np.maximum(weights.sum(axis=1, keepdims=True), 1.0)
    if normalize:
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = vectors / np.maximum(norms, 1e-12)
    return np.ascontiguousarray(vectors, dtype=np.float32)
