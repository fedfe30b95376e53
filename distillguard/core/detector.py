"""The one small interface every detector shares: a table in, scores plus the evidence behind them out."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, Protocol, runtime_checkable

import pyarrow as pa


class Level(StrEnum):
    """What one row of a detector's result is about; fixes the key columns of ``Detections.scores``."""

    EXCHANGE = "exchange"  # key: request_id
    ACCOUNT = "account"  # key: account_id
    END_USER = "end_user"  # key: account_id, end_user_id
    CLUSTER = "cluster"  # key: cluster_id


KEY_COLUMNS: Mapping[Level, tuple[str, ...]] = {
    Level.EXCHANGE: ("request_id",),
    Level.ACCOUNT: ("account_id",),
    Level.END_USER: ("account_id", "end_user_id"),
    Level.CLUSTER: ("cluster_id",),
}


class Status(StrEnum):
    """Maturity of a detector, as in Sigma rules: a stable one ships positives and near-miss negatives."""

    EXPERIMENTAL = "experimental"
    TEST = "test"
    STABLE = "stable"


@dataclass(frozen=True)
class DetectorInfo:
    """Metadata an analyst reads next to a hit: what it means, who else looks like it, how to verify."""

    id: str
    version: str
    level: Level
    status: Status
    description: str
    falsepositives: tuple[str, ...]
    runbook: str

    @property
    def ref(self) -> str:
        """``id@version``, recorded in every piece of evidence this detector produces."""
        return f"{self.id}@{self.version}"


@dataclass(frozen=True)
class Detections:
    """A detector's result.

    ``scores`` has the level's key columns, ``score`` (float64 in [0, 1], null when the
    detector abstains), ``value`` (the raw observed value, float64) and ``abstain_reason``
    (string, null unless abstaining). ``evidence`` maps a key (the first key column's
    value) to data an analyst can check: reference compared against, sample request ids.
    """

    detector: DetectorInfo
    scores: pa.Table
    evidence: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


@runtime_checkable
class Detector(Protocol):
    """Pure and columnar: no I/O, no wall clock, input never mutated, row order irrelevant."""

    info: ClassVar[DetectorInfo]

    def score(self, table: pa.Table) -> Detections: ...
