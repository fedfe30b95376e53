"""Known campaigns from the latest batch ``detect``: member accounts and shared indicators, reloaded as they change.

Reads ``campaigns.json`` (``{"campaigns": [{id, members, shared_indicators: [{kind, key,
key_weight, ...}], confidence, ...}]}``) and ``verdicts.jsonl`` from a results directory. An
indicator key of the time-windowed kinds (``ip``, ``prefix``) is stored by detect as
``value|bucket``; the bucket is dropped so that a *new* account arriving later from the same
address or prefix still links. Only indicators of :data:`LINK_KINDS` with ``key_weight`` at
least ``min_key_weight`` are used: weight already encodes rarity and how unusual the sharing is,
so a campus NAT or a corporate egress never becomes a link.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distillguard.core.errors import InvalidInputError, Problem
from distillguard.core.verdict import ACTIONS
from distillguard.enforce.settings import LINK_KINDS

_WINDOWED = ("ip", "prefix")


@dataclass(frozen=True)
class KnownCampaigns:
    """An immutable snapshot: account -> (cluster, action rank) and (kind, key) -> cluster."""

    members: Mapping[str, tuple[str, int]] = field(default_factory=dict)
    indicators: Mapping[tuple[str, str], str] = field(default_factory=dict)
    source: str | None = None
    n_campaigns: int = 0

    @classmethod
    def from_documents(
        cls,
        campaigns: Mapping[str, Any],
        verdicts: list[Mapping[str, Any]],
        min_key_weight: float,
        source: str | None = None,
    ) -> KnownCampaigns:
        """Build from parsed ``campaigns.json`` and ``verdicts.jsonl`` lines."""
        ranks = {a: i for i, a in enumerate(ACTIONS)}
        verdict_rank = {str(v["account_id"]): ranks.get(str(v.get("action")), 0) for v in verdicts}
        members: dict[str, tuple[str, int]] = {}
        indicators: dict[tuple[str, str], str] = {}
        items = campaigns.get("campaigns", []) if isinstance(campaigns, Mapping) else campaigns
        for camp in items:
            cid = str(camp["id"])
            for acc in camp.get("members", []):
                members[str(acc)] = (cid, verdict_rank.get(str(acc), 0))
            for ind in camp.get("shared_indicators", []) or []:
                kind = str(ind.get("kind"))
                if kind not in LINK_KINDS or float(ind.get("key_weight") or 0.0) < min_key_weight:
                    continue
                key = str(ind.get("key"))
                if kind in _WINDOWED:
                    key = key.split("|", 1)[0]
                indicators.setdefault((kind, key), cid)
        return cls(members, indicators, source, len(items))

    def link(self, keys: Mapping[str, str | None]) -> list[tuple[str, str, str]]:
        """``(kind, key, campaign id)`` for each of an exchange's keys that a known campaign shares."""
        out = []
        for kind, key in keys.items():
            if key is None:
                continue
            cid = self.indicators.get((kind, key))
            if cid is not None:
                out.append((kind, key, cid))
        return out


def read_known(results_dir: Path, min_key_weight: float) -> KnownCampaigns:
    """Parse a detect results directory; a missing campaigns.json means no known campaigns."""
    cpath = results_dir / "campaigns.json"
    vpath = results_dir / "verdicts.jsonl"
    if not cpath.is_file():
        return KnownCampaigns(source=str(results_dir))
    try:
        doc = json.loads(cpath.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InvalidInputError(
            [Problem(str(cpath), exc.lineno, None, f"not valid JSON: {exc.msg}")]
        ) from exc
    verdicts: list[Mapping[str, Any]] = []
    if vpath.is_file():
        for i, line in enumerate(vpath.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                verdicts.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise InvalidInputError(
                    [Problem(str(vpath), i, None, f"not valid JSON: {exc.msg}")]
                ) from exc
    try:
        return KnownCampaigns.from_documents(doc, verdicts, min_key_weight, str(results_dir))
    except (KeyError, TypeError, AttributeError) as exc:
        raise InvalidInputError(
            [Problem(str(cpath), None, None, f"campaign entries need id and members: {exc}")]
        ) from exc


class CampaignWatcher:
    """Holds the current :class:`KnownCampaigns` and reloads it when the files' mtimes change."""

    def __init__(
        self, results_dir: Path | None, min_key_weight: float, reload_seconds: float = 30.0
    ) -> None:
        self.results_dir = results_dir
        self.min_key_weight = min_key_weight
        self.reload_seconds = reload_seconds
        self._stamp: tuple[float, ...] | None = None
        self._checked = 0.0
        self._lock = threading.Lock()
        self.current = KnownCampaigns()
        if results_dir is not None:
            self.maybe_reload(force=True)

    def set(self, known: KnownCampaigns) -> None:
        """Replace the snapshot (replay's periodic re-detection hands results in directly)."""
        self.current = known

    def _mtimes(self) -> tuple[float, ...]:
        assert self.results_dir is not None
        return tuple(
            p.stat().st_mtime if p.is_file() else 0.0
            for p in (self.results_dir / "campaigns.json", self.results_dir / "verdicts.jsonl")
        )

    def maybe_reload(self, force: bool = False) -> KnownCampaigns:
        """Reload if ``reload_seconds`` passed and the files changed; returns the current snapshot."""
        if self.results_dir is None:
            return self.current
        now = time.monotonic()
        if not force and now - self._checked < self.reload_seconds:
            return self.current
        with self._lock:
            self._checked = now
            stamp = self._mtimes()
            if force or stamp != self._stamp:
                self.current = read_known(self.results_dir, self.min_key_weight)
                self._stamp = stamp
        return self.current
