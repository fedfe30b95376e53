"""The policy: configuration (not code) maps scores to actions, with rules no score can override.

Thresholds on the [0, 1] score give the base action. Two rules then cap it:

* ``flag_requires_non_volume_reason`` — throttle and above need at least one non-volume reason
  above ``min_reason_contribution``; otherwise the action is capped at ``monitor``.
* ``suspend_requires_cluster`` — suspend needs cluster evidence of at least
  ``min_cluster_contribution`` (log-odds) *and* a non-volume reason; otherwise it is capped at
  ``challenge``. So no volume signal alone can ever justify suspend.
* ``min_evidence_kinds`` — throttle and above need that many *independent* kinds of evidence.
  A cluster brings as many kinds as its indicator families (``cluster.indicator_diversity``'s
  value: an IP and its prefix are one family, payment another, sign-up wave another, ...);
  signals derived from the same edges (``edge_derived_signals``: linkage, synchrony) add
  nothing more; every other non-volume reason (own behaviour, capability focus) adds one.
  A group of people behind one residential IP has one kind, however strong; otherwise capped
  at ``monitor``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from distillguard.core.errors import ConfigError
from distillguard.core.verdict import Action
from distillguard.scoring.combine import Scored

_THRESHOLD_ACTIONS = (Action.MONITOR, Action.THROTTLE, Action.CHALLENGE, Action.SUSPEND)


@dataclass(frozen=True)
class Policy:
    """Thresholds and rules, validated at construction."""

    thresholds: Mapping[Action, float]
    suspend_requires_cluster: bool
    min_cluster_contribution: float
    flag_requires_non_volume_reason: bool
    min_reason_contribution: float
    min_evidence_kinds: int = 0
    evidence_count_signal: str = "cluster.indicator_diversity"
    edge_derived_signals: frozenset[str] = frozenset()

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Policy:
        pcfg = config["policy"]
        raw = pcfg["thresholds"]
        try:
            thresholds = {a: float(raw[a.value]) for a in _THRESHOLD_ACTIONS}
        except KeyError as exc:
            raise ConfigError(f"policy.thresholds needs a value for {exc.args[0]!r}") from exc
        values = [thresholds[a] for a in _THRESHOLD_ACTIONS]
        if any(not 0.0 < v <= 1.0 for v in values) or values != sorted(values):
            raise ConfigError(
                "policy.thresholds must be in (0, 1] and non-decreasing monitor ≤ throttle ≤ "
                f"challenge ≤ suspend; got {dict(raw)}"
            )
        return cls(
            thresholds=thresholds,
            suspend_requires_cluster=bool(pcfg["suspend_requires_cluster"]),
            min_cluster_contribution=float(pcfg["min_cluster_contribution"]),
            flag_requires_non_volume_reason=bool(pcfg["flag_requires_non_volume_reason"]),
            min_reason_contribution=float(config["scoring"]["min_reason_contribution"]),
            min_evidence_kinds=int(pcfg.get("min_evidence_kinds", 0)),
            evidence_count_signal=str(
                pcfg.get("evidence_count_signal", "cluster.indicator_diversity")
            ),
            edge_derived_signals=frozenset(pcfg.get("edge_derived_signals", ())),
        )

    def evidence_kinds(self, scored: Scored) -> np.ndarray:
        """Independent kinds of evidence behind each account's score (see module docstring)."""
        c = scored.contributions
        kinds = np.zeros(c.shape[0], dtype=np.int64)
        for j, spec in enumerate(scored.specs):
            present = c[:, j] >= self.min_reason_contribution
            if spec.volume or spec.detector.split("@")[0] in self.edge_derived_signals:
                continue
            if spec.detector.split("@")[0] == self.evidence_count_signal:
                n = np.nan_to_num(scored.values[:, j]).astype(np.int64)
                kinds += np.where(present, n, 0)
            else:
                kinds += present.astype(np.int64)
        return kinds

    def decide(self, scored: Scored) -> np.ndarray:
        """Action rank per account (aligned with ``scored.accounts``), as int array."""
        score = np.asarray(scored.accounts["score"].to_numpy(zero_copy_only=False), dtype=float)
        rank = np.zeros(score.shape[0], dtype=np.int64)
        for action in _THRESHOLD_ACTIONS:
            rank = np.where(score >= self.thresholds[action], action.rank, rank)
        volume = np.array([s.volume for s in scored.specs], dtype=bool)
        cluster = np.array([s.cluster for s in scored.specs], dtype=bool)
        c = scored.contributions
        if c.shape[1] == 0:
            return np.minimum(rank, Action.MONITOR.rank)
        non_volume = (
            (c[:, ~volume] >= self.min_reason_contribution).any(axis=1)
            if (~volume).any()
            else np.zeros(c.shape[0], dtype=bool)
        )
        cluster_total = (
            c[:, cluster & ~volume].sum(axis=1)
            if (cluster & ~volume).any()
            else np.zeros(c.shape[0])
        )
        if self.flag_requires_non_volume_reason:
            rank = np.where(~non_volume, np.minimum(rank, Action.MONITOR.rank), rank)
        if self.min_evidence_kinds > 0:
            enough = self.evidence_kinds(scored) >= self.min_evidence_kinds
            rank = np.where(~enough, np.minimum(rank, Action.MONITOR.rank), rank)
        suspend_ok = non_volume
        if self.suspend_requires_cluster:
            suspend_ok = suspend_ok & (cluster_total >= self.min_cluster_contribution)
        rank = np.where(~suspend_ok, np.minimum(rank, Action.CHALLENGE.rank), rank)
        return rank


ACTIONS_BY_RANK: tuple[Action, ...] = (
    Action.ALLOW,
    Action.MONITOR,
    Action.THROTTLE,
    Action.CHALLENGE,
    Action.SUSPEND,
)
