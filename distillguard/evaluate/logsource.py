"""The evaluation's view of a log directory: its exchanges (Arrow, for DuckDB) and its ground truth."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from distillguard.core.errors import DistillguardError
from distillguard.core.exchange_sql import ExchangeSource
from distillguard.evaluate.metrics import normalize_labels
from distillguard.ingest import load_log


@dataclass(frozen=True)
class LogView:
    """What evaluation reads from a log: exchanges and labels (``None`` without labels.csv)."""

    exchanges: ExchangeSource
    labels: pl.DataFrame | None


def open_log(logdir: Path, config: Mapping[str, Any] | None = None) -> LogView:
    """Open ``logdir`` through ``distillguard.ingest.load_log`` (the project's one reader)."""
    log = load_log(logdir, config)
    labels = None
    if log.labels is not None:
        frame = pl.from_arrow(log.labels)
        assert isinstance(frame, pl.DataFrame)
        labels = normalize_labels(frame)
    return LogView(exchanges=log.exchanges, labels=labels)


def require_labels(view: LogView, logdir: Path, purpose: str = "evaluation") -> pl.DataFrame:
    """The labels, or a clear error saying ``purpose`` needs them."""
    if view.labels is None:
        raise DistillguardError(
            f"{logdir} has no labels.csv: {purpose} needs ground truth "
            "(account_id,label,campaign,persona; see the data contract §1)"
        )
    return view.labels
