"""Actions, reasons, evidence and verdicts: what every judging stage produces and the outputs serialise."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Action(StrEnum):
    """Graduated enforcement actions, mildest first (the order is meaningful)."""

    ALLOW = "allow"
    MONITOR = "monitor"
    THROTTLE = "throttle"
    CHALLENGE = "challenge"
    SUSPEND = "suspend"

    @property
    def rank(self) -> int:
        return _ACTION_ORDER.index(self)

    @property
    def is_flagged(self) -> bool:
        """The contract: flagged means throttle, challenge or suspend."""
        return self.rank >= Action.THROTTLE.rank

    @property
    def is_served(self) -> bool:
        """The contract: an exchange is served while its account is allow, monitor or throttle."""
        return self.rank <= Action.THROTTLE.rank


_ACTION_ORDER = (Action.ALLOW, Action.MONITOR, Action.THROTTLE, Action.CHALLENGE, Action.SUSPEND)
ACTIONS: tuple[str, ...] = tuple(a.value for a in _ACTION_ORDER)
FLAGGED_ACTIONS: frozenset[str] = frozenset(a.value for a in _ACTION_ORDER if a.is_flagged)
SERVED_ACTIONS: frozenset[str] = frozenset(a.value for a in _ACTION_ORDER if a.is_served)


@dataclass(frozen=True)
class Reason:
    """One checkable reason behind a verdict (contract §2: ``{signal, value, detail}``).

    ``detail`` holds the evidence as data: detector@version, the reference the value
    was compared with, its contribution to the score and sample request ids.
    """

    signal: str
    value: float | int | str | None
    detail: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"signal": self.signal, "value": self.value, "detail": dict(self.detail)}


@dataclass(frozen=True)
class Verdict:
    """An account's action with its score, cluster and reasons (one line of verdicts.jsonl)."""

    account_id: str
    action: Action
    score: float
    cluster_id: str | None
    reasons: tuple[Reason, ...]

    def __post_init__(self) -> None:
        if not 0.0 <= self.score <= 1.0:
            raise ValueError(f"score must be in [0, 1], got {self.score}")
        if self.action is not Action.ALLOW and not self.reasons:
            raise ValueError(
                f"action {self.action.value} for {self.account_id} needs at least one reason"
            )

    def to_json(self) -> dict[str, Any]:
        return {
            "account_id": self.account_id,
            "action": self.action.value,
            "score": self.score,
            "cluster_id": self.cluster_id,
            "reasons": [r.to_json() for r in self.reasons],
        }
