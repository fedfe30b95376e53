"""Prompt-template fingerprint: slot-masked scaffold -> MinHash (rensa) -> LSH banding -> a stable ``template_id``.

A distillation operation sends the same scaffold ("You are an expert... solve the
following and show every step: {item}") thousands of times with different slot
values, often paraphrased per account. We mask slot values (code blocks, URLs,
quoted strings, identifiers, numbers), keep the scaffold's head and tail words
(the payload in the middle is a long-tail slot), MinHash its word shingles and
band the signature. Each distinct scaffold takes the smallest per-scaffold seed
among the scaffolds it shares any LSH band with (one hop, not transitive, so one
bridging prompt cannot chain unrelated templates together); the id therefore does
not depend on row order.

:class:`TemplateIndex` carries components seen more than once across batches
(``anchors``: band key -> id), so a template keeps its id from batch to batch; singletons are not
remembered, which bounds memory by the number of *repeated* templates.

:func:`fingerprints` is everything that depends on a prompt alone (hashes, band keys), so
callers may compute it once per distinct prompt and cache it; :meth:`TemplateIndex.assign_fingerprints`
then labels a batch given how many exchanges each distinct prompt stands for.

``scaffold_hash`` is the cheap exact alternative: xxh64 of the first
``scaffold_chars`` characters of the masked scaffold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

import numpy as np
import polars as pl
import rensa

from distillguard.core.errors import ConfigError
from distillguard.signals.text import distinct, hash_strings, mask_slots, splitmix64

MINHASH_SEED: Final = 20260601


@dataclass(frozen=True)
class TemplateParams:
    """Fingerprint parameters; signatures and ids are only comparable under equal parameters."""

    num_perm: int = 60
    bands: int = 20
    head_words: int = 24
    tail_words: int = 0
    shingle: int = 2
    scaffold_chars: int = 64

    def __post_init__(self) -> None:
        if self.num_perm <= 0 or self.bands <= 0 or self.num_perm % self.bands:
            raise ConfigError(
                f"signals.template: num_perm ({self.num_perm}) must be a positive multiple of "
                f"bands ({self.bands}); e.g. num_perm: 32, bands: 8"
            )
        if self.shingle not in (1, 2, 3):
            raise ConfigError(f"signals.template.shingle must be 1, 2 or 3, got {self.shingle}")
        if self.head_words < 1 or self.tail_words < 0 or self.scaffold_chars < 1:
            raise ConfigError(
                "signals.template: head_words and scaffold_chars must be >= 1, tail_words >= 0"
            )

    @property
    def rows_per_band(self) -> int:
        return self.num_perm // self.bands


@dataclass(frozen=True)
class Scaffolds:
    """Per-row scaffold fingerprints of one batch (null where the prompt has no scaffold words)."""

    scaffold_hash: np.ndarray  # uint64, 0 = none
    full_hash: np.ndarray  # uint64 of the whole masked scaffold, 0 = none


def scaffolds(prompts: pl.Series, params: TemplateParams) -> tuple[pl.DataFrame, Scaffolds]:
    """Masked scaffold words per row (``words`` list column) plus exact hashes."""
    head, tail = params.head_words, params.tail_words
    # The scaffold lives in the opening words; masking only that much keeps long prompts cheap.
    head_chars = max(params.scaffold_chars, params.head_words * 16)
    opening = pl.col("p").str.slice(0, head_chars)
    if tail:
        opening = opening + pl.lit(" ") + pl.col("p").str.slice(-tail * 16)
    frame = pl.DataFrame({"p": prompts}).select(masked=mask_slots(opening))
    # Masked text is stripped with single spaces, so splitting yields no empty words except for "".
    words = pl.when(pl.col("masked") == "").then(pl.lit([], dtype=pl.List(pl.String))).otherwise(
        pl.col("masked").str.split(" "))  # fmt: skip
    if tail:
        words = pl.when(words.list.len() > head + tail).then(
            pl.concat_list(words.list.head(head), words.list.tail(tail))).otherwise(words)  # fmt: skip
    else:
        words = words.list.head(head)
    frame = frame.with_columns(words=words)
    scaffold_text = frame["words"].list.join(" ")
    has_words = (frame["words"].list.len() > 0).to_numpy()
    full = np.where(has_words, hash_strings(scaffold_text), np.uint64(0)).astype(np.uint64)
    short = np.where(
        has_words, hash_strings(frame["masked"].str.slice(0, params.scaffold_chars)), np.uint64(0)
    ).astype(np.uint64)
    return frame.select("words"), Scaffolds(scaffold_hash=short, full_hash=full)


def band_keys(words: pl.Series, params: TemplateParams) -> np.ndarray:
    """LSH band keys (rows x bands, uint64) of each row's word-shingle MinHash; rows must be non-empty."""
    n = len(words)
    lengths = words.list.len().to_numpy().astype(np.int64)
    flat = words.explode().drop_nulls()
    tok = hash_strings(flat)
    row = np.repeat(np.arange(n, dtype=np.int64), lengths)
    keep = np.ones(len(tok), dtype=bool)
    shingles = tok.copy()
    with np.errstate(over="ignore"):
        for k in range(1, params.shingle):
            nxt = np.zeros_like(tok)
            nxt[:-k] = tok[k:]
            same = np.zeros(len(tok), dtype=bool)
            same[:-k] = row[k:] == row[:-k]
            shingles = np.where(
                same, splitmix64(shingles ^ (nxt * np.uint64(0x100000001B3 + k))), shingles
            )
            # A position that cannot start a full shingle is kept only when it opens a short row.
            starts = np.zeros(len(tok), dtype=bool)
            starts[np.concatenate(([0], np.cumsum(lengths)[:-1]))[lengths > 0]] = True
            keep &= same | (starts & (lengths[row] <= k))
    kept_rows = row[keep]
    offsets = np.zeros(n + 1, dtype=np.uint64)
    offsets[1:] = np.cumsum(np.bincount(kept_rows, minlength=n))
    matrix = rensa.RMinHash.digest_matrix_from_flat_token_hashes(
        np.ascontiguousarray(shingles[keep]), offsets, params.num_perm, MINHASH_SEED
    )
    sig = np.array(matrix.to_rows(), dtype=np.uint64).reshape(n, params.num_perm)
    r = params.rows_per_band
    keys = np.zeros((n, params.bands), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for b in range(params.bands):
            acc = np.full(n, np.uint64(b + 1) * np.uint64(0x9E3779B97F4A7C15), dtype=np.uint64)
            for j in range(r):
                acc = splitmix64(acc ^ sig[:, b * r + j])
            keys[:, b] = acc
    return keys


def fingerprints(
    prompts: pl.Series, params: TemplateParams
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(full_hash, scaffold_hash, band_keys)`` per prompt: everything about a template that depends on the prompt alone.

    Hashes are 0 and key rows 0 where the prompt has no scaffold words; ``band_keys`` is rows x bands.
    """
    words, exact = scaffolds(prompts, params)
    valid = exact.full_hash != 0
    keys = np.zeros((len(prompts), params.bands), dtype=np.uint64)
    if valid.any():
        # Distinct scaffolds only: paraphrased prompts of one template often share the scaffold.
        _, first, inverse = np.unique(
            exact.full_hash[valid], return_index=True, return_inverse=True
        )
        valid_idx = np.flatnonzero(valid)
        keys[valid] = band_keys(words["words"].gather(valid_idx[first]), params)[inverse.ravel()]
    return exact.full_hash, exact.scaffold_hash, keys


@dataclass
class TemplateIndex:
    """Template ids stable across batches: remembers LSH band keys of templates seen more than once."""

    params: TemplateParams = field(default_factory=TemplateParams)
    anchor_keys: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint64))
    anchor_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint64))

    def assign(
        self, prompts: pl.Series, weights: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(template_id, scaffold_hash, valid)`` per row; ids/hashes are 0 where ``valid`` is False.

        ``weights`` (default 1 each) is how many exchanges each row stands for: passing the
        distinct prompts of a batch with their counts gives exactly the ids of the full batch.
        """
        uniq, index = distinct(prompts)
        rows = np.bincount(index, weights=weights, minlength=len(uniq))
        tid, shash, valid = self._assign_distinct(uniq, rows)
        return tid[index], shash[index], valid[index]

    def _assign_distinct(
        self, prompts: pl.Series, rows: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`assign` over distinct prompts, ``rows`` exchanges each."""
        full, short, keys = fingerprints(prompts, self.params)
        return self.assign_fingerprints(full, short, keys, rows)

    def assign_fingerprints(
        self, full_hash: np.ndarray, scaffold_hash: np.ndarray, keys: np.ndarray, rows: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`assign` from :func:`fingerprints` of distinct prompts standing for ``rows`` exchanges each.

        Templates with more than one exchange become anchors, so later batches reuse their ids.
        """
        valid = full_hash != 0
        template = np.zeros(len(full_hash), dtype=np.uint64)
        if not valid.any():
            return template, scaffold_hash, valid
        _, first, inverse = np.unique(full_hash[valid], return_index=True, return_inverse=True)
        counts = np.bincount(inverse.ravel(), weights=rows[valid])
        ids = self._components(keys[np.flatnonzero(valid)[first]], counts)
        template[valid] = ids[inverse]
        return template, scaffold_hash, valid

    def _components(self, keys: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """One-hop LSH labelling: a scaffold takes the smallest seed among scaffolds sharing any band.

        Deliberately not transitive: connected components chain unrelated scaffolds
        through one bridging prompt into a giant cluster; one hop keeps paraphrase
        families (which are pairwise similar) together without that.
        """
        m, bands = keys.shape
        flat = keys.ravel()
        _, bucket = np.unique(flat, return_inverse=True)
        bucket = bucket.reshape(m, bands)
        seeds = keys.min(axis=1)
        none = np.iinfo(np.uint64).max
        bucket_min = np.full(int(bucket.max()) + 1, none, dtype=np.uint64)
        np.minimum.at(bucket_min, bucket.ravel(), np.repeat(seeds, bands))
        if len(self.anchor_keys):
            pos = np.minimum(np.searchsorted(self.anchor_keys, flat), len(self.anchor_keys) - 1)
            hit = self.anchor_keys[pos] == flat
            if hit.any():
                np.minimum.at(bucket_min, bucket.ravel()[hit], self.anchor_ids[pos[hit]])
        result: np.ndarray = bucket_min[bucket].min(axis=1)
        _, tid_inverse = np.unique(result, return_inverse=True)
        rows_per_tid = np.bincount(tid_inverse, weights=counts)
        repeated = rows_per_tid[tid_inverse] > 1
        if repeated.any():
            new_keys = keys[repeated].ravel()
            new_ids = np.repeat(result[repeated], bands)
            all_keys = np.concatenate([self.anchor_keys, new_keys])
            all_ids = np.concatenate([self.anchor_ids, new_ids])
            # Existing anchors sort first among equal keys (stable), so they keep their older ids;
            # among new ones the smallest id wins, independent of row order.
            order = np.lexsort(
                (
                    all_ids,
                    np.concatenate(
                        [
                            np.zeros(len(self.anchor_keys), dtype=np.int8),
                            np.ones(len(new_keys), dtype=np.int8),
                        ]
                    ),
                    all_keys,
                )
            )
            all_keys, all_ids = all_keys[order], all_ids[order]
            keep = np.ones(len(all_keys), dtype=bool)
            keep[1:] = all_keys[1:] != all_keys[:-1]
            self.anchor_keys, self.anchor_ids = all_keys[keep], all_ids[keep]
        return result
