"""Shareable prompt-template sketches: LSH band keys of the signals stage's scaffold MinHash, with their parameters.

A sketch is computed by the very function the signals stage uses to join paraphrased scaffolds
(:func:`distillguard.signals.template.band_keys` over slot-masked head words), so a peer's sketch
and our own traffic's fingerprints are comparable whenever the parameters are equal. Like
datasketch's ``LeanMinHash`` it carries its parameters and no raw text: only ``bands`` keyed
64-bit band hashes of the masked scaffold's MinHash. Two sketches with different parameters
refuse to compare (:class:`SketchParameterError`) instead of returning a meaningless number.

Similarity: the share of equal bands estimates ``J ** rows_per_band`` (``J`` the Jaccard
similarity of the scaffolds' shingle sets); :meth:`TemplateSketch.jaccard` inverts that. The
matching rule is the signals stage's: *any* equal band puts two scaffolds in one template.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import polars as pl

from distillguard.core.errors import ConfigError
from distillguard.core.indicators import TEMPLATE_SKETCH_ALGORITHM, template_params_id
from distillguard.signals.template import MINHASH_SEED, TemplateParams, band_keys, scaffolds

ALGORITHM: Final = TEMPLATE_SKETCH_ALGORITHM
_HEX16 = re.compile(r"^[0-9a-f]{16}$")


class SketchParameterError(ConfigError):
    """Two sketches made with different parameters were compared."""


@dataclass(frozen=True)
class SketchParams:
    """Everything that changes a sketch's bytes; equal params ⇔ comparable sketches."""

    algorithm: str = ALGORITHM
    seed: int = MINHASH_SEED
    num_perm: int = TemplateParams.num_perm
    bands: int = TemplateParams.bands
    shingle: int = TemplateParams.shingle
    head_words: int = TemplateParams.head_words
    tail_words: int = TemplateParams.tail_words

    def __post_init__(self) -> None:
        if self.algorithm != ALGORITHM:
            raise ConfigError(
                f"unknown sketch algorithm {self.algorithm!r}; this build makes {ALGORITHM!r}"
            )
        if self.seed != MINHASH_SEED:
            raise ConfigError(
                f"sketch seed {self.seed} differs from the signals stage's MinHash seed {MINHASH_SEED}; "
                "sketches can only be computed with the signals stage's seed"
            )
        # TemplateParams validates the rest with its own messages.
        self.template_params()

    def template_params(self) -> TemplateParams:
        return TemplateParams(
            num_perm=self.num_perm, bands=self.bands, head_words=self.head_words,
            tail_words=self.tail_words, shingle=self.shingle,
        )  # fmt: skip

    @property
    def rows_per_band(self) -> int:
        return self.num_perm // self.bands

    def as_dict(self) -> dict[str, Any]:
        return {
            "algorithm": self.algorithm, "seed": self.seed, "num_perm": self.num_perm, "bands": self.bands,
            "shingle": self.shingle, "head_words": self.head_words, "tail_words": self.tail_words,
        }  # fmt: skip

    @property
    def id(self) -> str:
        """Canonical JSON of the parameters (the store's ``params`` column)."""
        return template_params_id(self.as_dict())

    @classmethod
    def from_template_params(cls, p: TemplateParams) -> SketchParams:
        return cls(num_perm=p.num_perm, bands=p.bands, shingle=p.shingle, head_words=p.head_words,
                   tail_words=p.tail_words)  # fmt: skip

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any]) -> SketchParams:
        """Parameters from a peer's object; raises ConfigError naming what is wrong."""
        fields = ("algorithm", "seed", "num_perm", "bands", "shingle", "head_words", "tail_words")
        missing = [f for f in fields if f not in m]
        if missing:
            raise ConfigError(f"sketch parameters missing: {', '.join(missing)}")
        for f in fields[1:]:
            if not isinstance(m[f], int) or isinstance(m[f], bool):
                raise ConfigError(f"sketch parameter {f} must be an integer, got {m[f]!r}")
        return cls(**{f: m[f] for f in fields})


@dataclass(frozen=True)
class TemplateSketch:
    """One scaffold's LSH band keys (``bands`` × uint64) plus the parameters that made them."""

    params: SketchParams
    keys: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.keys) != self.params.bands:
            raise ConfigError(
                f"sketch has {len(self.keys)} band keys; its parameters say bands={self.params.bands}"
            )

    def hex_keys(self) -> list[str]:
        return [f"{k:016x}" for k in self.keys]

    @classmethod
    def from_hex(cls, params: SketchParams, keys: list[str]) -> TemplateSketch:
        bad = [k for k in keys if not isinstance(k, str) or not _HEX16.match(k)]
        if bad:
            raise ConfigError(f"band keys must be 16 lowercase hex digits, got {bad[0]!r}")
        return cls(params, tuple(int(k, 16) for k in keys))

    def _check(self, other: TemplateSketch) -> None:
        if self.params != other.params:
            raise SketchParameterError(
                f"cannot compare template sketches made with different parameters: {self.params.id} vs "
                f"{other.params.id}; recompute one side with the other's parameters"
            )

    def band_agreement(self, other: TemplateSketch) -> float:
        """Share of equal bands (0–1)."""
        self._check(other)
        return float(
            np.mean(np.array(self.keys, dtype=np.uint64) == np.array(other.keys, dtype=np.uint64))
        )

    def jaccard(self, other: TemplateSketch) -> float:
        """Estimated Jaccard similarity of the two scaffolds' shingle sets."""
        return float(self.band_agreement(other) ** (1.0 / self.params.rows_per_band))

    def matches(self, other: TemplateSketch) -> bool:
        """The signals stage's rule: one equal band puts two scaffolds in the same template."""
        return self.band_agreement(other) > 0.0


def sketch_prompts(
    prompts: list[str] | pl.Series, params: SketchParams | None = None
) -> list[TemplateSketch | None]:
    """A sketch per prompt (``None`` where the masked prompt leaves no scaffold words)."""
    p = params or SketchParams()
    series = prompts if isinstance(prompts, pl.Series) else pl.Series("p", prompts, dtype=pl.String)
    words, exact = scaffolds(series, p.template_params())
    valid = exact.full_hash != 0
    out: list[TemplateSketch | None] = [None] * len(series)
    if valid.any():
        idx = np.flatnonzero(valid)
        keys = band_keys(words["words"].gather(idx), p.template_params())
        for row, k in zip(idx.tolist(), keys, strict=True):
            out[row] = TemplateSketch(p, tuple(int(x) for x in k))
    return out
