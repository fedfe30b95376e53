"""Robust standardisation of per-account signals against a cohort baseline (median / scaled MAD).

The baseline is fitted with ``protect_anomaly`` (river's rule): accounts already linked into a
cluster are excluded, so "normal" is never learned from the traffic under suspicion. The cohort is
the benign-looking remainder of the same window, which is both current (no drift between fit and
score) and disjoint from every account whose cluster evidence can justify an action.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

_MAD_TO_SIGMA = 1.4826


def column_values(table: pa.Table, name: str) -> np.ndarray:
    """``table[name]`` as float64 with NaN for nulls (all-NaN when the column is absent)."""
    if name not in table.column_names:
        return np.full(table.num_rows, np.nan)
    col = table[name]
    if pa.types.is_boolean(col.type):
        col = col.cast(pa.float64())
    return np.asarray(col.cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)


@dataclass
class RobustBaseline:
    """``fit`` learns per-column median_ and scale_; ``transform`` returns robust z-scores.

    ``min_scale`` floors each column's scale so a near-constant cohort (e.g. everyone at 0)
    does not turn a tiny deviation into an enormous z.
    """

    columns: Sequence[str]
    min_scale: float = 1e-3
    median_: dict[str, float] = field(default_factory=dict)
    scale_: dict[str, float] = field(default_factory=dict)
    n_fit_: int = 0

    def __post_init__(self) -> None:
        if self.min_scale <= 0:
            raise ValueError(f"min_scale must be > 0, got {self.min_scale}; use e.g. 1e-3")

    def fit(self, table: pa.Table, exclude: np.ndarray | None = None) -> RobustBaseline:
        """Fit on the rows of ``table`` not marked in ``exclude`` (boolean mask)."""
        keep = np.ones(table.num_rows, dtype=bool) if exclude is None else ~exclude
        self.n_fit_ = int(keep.sum())
        for name in self.columns:
            values = column_values(table, name)[keep]
            values = values[~np.isnan(values)]
            if values.size == 0:
                continue
            median = float(np.median(values))
            mad = float(np.median(np.abs(values - median))) * _MAD_TO_SIGMA
            if mad <= 0.0:
                # Fall back to the mean absolute deviation when over half the cohort is tied.
                mad = float(np.mean(np.abs(values - median))) * 1.2533
            self.median_[name] = median
            self.scale_[name] = max(mad, self.min_scale, abs(median) * 0.01)
        return self

    def transform(self, table: pa.Table) -> dict[str, np.ndarray]:
        """Robust z per fitted column (NaN where the value or the fit is missing)."""
        out: dict[str, np.ndarray] = {}
        for name in self.columns:
            values = column_values(table, name)
            if name not in self.median_:
                out[name] = np.full(table.num_rows, np.nan)
                continue
            out[name] = (values - self.median_[name]) / self.scale_[name]
        return out
