"""Vectorised prompt text helpers shared by the per-exchange detectors: slot masking and weighted phrase scoring."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

#: Slot patterns replaced by a placeholder before a prompt's scaffold is fingerprinted, in order.
#: Rust regex (polars): no look-around, so quoted strings are bounded by length instead.
SLOT_MASKS: Final[tuple[tuple[str, str], ...]] = (
    (r"(?s)```.*?(?:```|$)", " qqcode "),
    (r"https?://\S+|www\.\S+", " qqurl "),
    (r"[\w.+-]+@[\w-]+\.[\w.-]+", " qqemail "),
    (r"\"[^\"\n]{0,400}\"|“[^”\n]{0,400}”|`[^`\n]{1,200}`", " qqstr "),
    (r"(?:^|\s)'[^'\n]{1,200}'", " qqstr "),
    (r"\b[A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)+\b", " qqid "),
    (r"\b[A-Za-z]*_[\w]*\b|\b[a-z]+[A-Z]\w*\b|\b[A-Za-z]+\d\w*\b", " qqid "),
    (r"[-+]?\d[\d,._:/]*", " qqnum "),
)


def mask_slots(texts: pl.Expr) -> pl.Expr:
    """Polars expression: lower-cased scaffold with slot values replaced and punctuation dropped."""
    expr = texts
    for pattern, placeholder in SLOT_MASKS:
        expr = expr.str.replace_all(pattern, placeholder)
    return (
        expr.str.to_lowercase()
        .str.replace_all(r"[^\w]+", " ")
        .str.replace_all(r"\s+", " ")
        .str.strip_chars()
    )


def distinct_arrow(values: pl.Series | pa.Array | pa.ChunkedArray) -> tuple[pa.Array, np.ndarray]:
    """``(uniq, index)`` with ``uniq.take(index) == values``: distinct strings (null is one of them), first-seen order.

    Prompts, scaffolds and addresses repeat heavily in API traffic, so per-value work done
    on ``uniq`` and gathered back by ``index`` costs what the vocabulary costs, not the log.
    """
    arr = values.to_arrow() if isinstance(values, pl.Series) else values
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    if not pa.types.is_large_string(arr.type):
        # large_string: one batch of long prompts can exceed the 2 GiB offsets of ``string``.
        arr = arr.cast(pa.large_string())
    encoded = pc.dictionary_encode(arr, null_encoding="encode")
    index: np.ndarray = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    return encoded.dictionary, index


def distinct(values: pl.Series | pa.Array | pa.ChunkedArray) -> tuple[pl.Series, np.ndarray]:
    """:func:`distinct_arrow` with the distinct values as a polars string Series."""
    uniq, index = distinct_arrow(values)
    return pl.Series(values=uniq).cast(pl.String), index


def hash_strings(values: pl.Series | pa.Array | pa.ChunkedArray) -> np.ndarray:
    """xxh64 of each string (null -> 0); hashes only distinct values, so cost follows vocabulary size."""
    arr = values.to_arrow() if isinstance(values, pl.Series) else values
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_large_string(arr.type) or pa.types.is_string_view(arr.type):
        arr = arr.cast(pa.string())
    encoded = pc.dictionary_encode(arr)
    codes = np.fromiter(
        (xxhash.xxh64_intdigest(v.encode("utf-8")) for v in encoded.dictionary.to_pylist()),
        dtype=np.uint64,
        count=len(encoded.dictionary),
    )
    if len(codes) == 0:
        return np.zeros(len(arr), dtype=np.uint64)
    idx = encoded.indices.fill_null(0).to_numpy(zero_copy_only=False)
    out: np.ndarray = np.where(
        encoded.indices.is_null().to_numpy(zero_copy_only=False), np.uint64(0), codes[idx]
    )
    return out.astype(np.uint64)


def phrase_score(texts: pl.Expr, phrases: Sequence[tuple[str, float]], bias: float) -> pl.Expr:
    """Log-odds: ``bias`` plus the weight of every matching regex phrase; ``texts`` must be lower-cased."""
    total: pl.Expr = pl.lit(bias)
    for pattern, weight in phrases:
        total = total + texts.str.contains(pattern).cast(pl.Float64) * weight
    return total


def sigmoid(x: pl.Expr) -> pl.Expr:
    """Logistic function as a polars expression."""
    return 1.0 / (1.0 + (-x).exp())


def splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on uint64 arrays: a fast, well-mixed, deterministic integer hash."""
    with np.errstate(over="ignore"):
        z = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))
