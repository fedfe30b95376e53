"""Online peer-indicator matching: per request a few dictionary lookups against peers' indicators, bounded in memory.

The same rule as the batch detector (:mod:`distillguard.linking.peer_indicators`), kept
incrementally: per account and kind, ``s_k = kind_weight * confidence / 100 * min(1, coverage /
full_coverage)`` where coverage is the share of the account's exchanges so far on matched values
(1 for a matched payment instrument); the peer score ``1 - prod(1 - s_k)`` contributes ``weight *
score`` log-odds as the account's own (never cluster) evidence, so the policy cannot suspend on a
peer match alone.

Per request: the exit IP and payment fingerprint are HMAC'd under the group key (cached per
value), the /24 prefix, user agent and the signals stage's template id are looked up as they are.
AS numbers are not matched online (the check path does not resolve them; their kind weight is
small). Memory: at most ``max_online_values`` indicator values (highest confidence kept) and
``max_online_accounts`` accounts' match counts (least recently used evicted).

Validity: an indicator applies from the moment it is loaded until its ``valid_until``; its
``valid_from`` is when the *peer* first saw it, not when we may start using it.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import polars as pl
import pyarrow as pa

from distillguard.core.indicators import (
    KEYED_KINDS,
    GroupKey,
    PeerMatchSettings,
    local_template_params,
    read_indicator_store,
    store_rows_for_matching,
)

#: Online lookup kinds: the request field (``keys`` of the enforcer's observation) -> indicator kind.
KEY_KINDS: Final = {"ip": "ip", "prefix": "ip_prefix", "user_agent": "user_agent", "template": "template",
                    "payment": "payment"}  # fmt: skip
ACCOUNT_KINDS: Final = frozenset({"payment"})
EVIDENCE_INDICATORS: Final = 5
#: The evidence key the enforcer's reasons read (its feature name).
FEATURE: Final = "peer_indicator"


@dataclass(frozen=True)
class Entry:
    """One indicator value as the online path holds it (provenance for the reason)."""

    kind: str
    indicator_id: str
    peer: str
    confidence: int
    produced_at: str
    imported_at: str
    valid_until_ms: int | None


@dataclass
class _Account:
    matched: dict[str, int]  # indicator kind -> matched exchanges
    confidence: dict[str, int]  # indicator kind -> highest confidence seen
    seen: dict[str, Entry]  # indicator id -> entry (first EVIDENCE_INDICATORS)


def _iso(ts: datetime | None) -> str:
    return ts.isoformat().replace("+00:00", "Z") if ts is not None else ""


class PeerIndicatorMatcher:
    """Peers' indicators in dictionaries, with per-account match counts; one :meth:`contribution` per request."""

    def __init__(
        self,
        store: pa.Table,
        *,
        key: GroupKey | None = None,
        settings: PeerMatchSettings | None = None,
        template_params: Mapping[str, object] | None = None,
    ) -> None:
        self.settings = s = settings or PeerMatchSettings()
        self.key = key
        rows, self.skipped = store_rows_for_matching(store, key, None, template_params)
        rows = rows.filter(
            (pl.col("confidence") >= s.min_confidence)
            & pl.col("kind").is_in([*KEY_KINDS.values(), "template_key"])
        )
        # Highest confidence first, so the cap drops the least certain values.
        rows = rows.sort(
            ["confidence", "kind", "value", "indicator_id"], descending=[True, False, False, False]
        )
        self.truncated = max(0, rows.height - s.max_online_values)
        rows = rows.head(s.max_online_values)
        self.values: dict[tuple[str, str], Entry] = {}
        for r in rows.iter_rows(named=True):
            kind = "template" if r["kind"] == "template_key" else str(r["kind"])
            vu = r["valid_until"]
            entry = Entry(kind, str(r["indicator_id"]), str(r["peer"]), int(r["confidence"]), _iso(r["produced_at"]),
                          _iso(r["imported_at"]), int(vu.timestamp() * 1000) if vu is not None else None)  # fmt: skip
            self.values.setdefault((kind, str(r["value"])), entry)
        self.accounts: OrderedDict[str, _Account] = OrderedDict()
        self._digest = functools.lru_cache(maxsize=65_536)(self._hmac)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> PeerIndicatorMatcher | None:
        """A matcher over ``share.indicators.store``, or None when no store is configured."""
        settings = PeerMatchSettings.from_config(config)
        if not settings.enabled or settings.store is None:
            return None
        from distillguard.signals.exchange import template_params
        from distillguard.signals.template import MINHASH_SEED

        p = template_params(config)
        params = local_template_params(seed=MINHASH_SEED, num_perm=p.num_perm, bands=p.bands, shingle=p.shingle,
                                       head_words=p.head_words, tail_words=p.tail_words)  # fmt: skip
        return cls(read_indicator_store(settings.store), key=settings.group_key(), settings=settings,
                   template_params=params)  # fmt: skip

    def _hmac(self, kind: str, value: str) -> str | None:
        return self.key.digest(kind, value) if self.key is not None else None

    def _lookup(self, kind: str, raw: str) -> Entry | None:
        if kind in KEYED_KINDS:
            digest = self._digest(kind, raw)
            return self.values.get((kind, digest)) if digest is not None else None
        if kind == "template":
            try:
                raw = f"{int(raw):016x}"
            except ValueError:
                return None
        return self.values.get((kind, raw))

    def contribution(
        self,
        account: str,
        keys: Mapping[str, str | None],
        ts_ms: int,
        exchanges: float,
        evidence: MutableMapping[str, Any] | None = None,
    ) -> float:
        """Fold one request's matches into ``account`` and return its peer contribution (log-odds).

        ``keys`` are the request's plain values (``ip``, ``prefix``, ``user_agent``, ``template``
        id, ``payment``); ``exchanges`` the account's exchanges so far, this one included. When
        the contribution is positive, ``evidence[FEATURE]`` gets the provenance.
        """
        if not self.values:
            return 0.0
        s = self.settings
        state = self.accounts.get(account)
        for field, kind in KEY_KINDS.items():
            raw = keys.get(field)
            if not raw:
                continue
            entry = self._lookup(kind, str(raw))
            if entry is None or (
                entry.valid_until_ms is not None and ts_ms >= entry.valid_until_ms
            ):
                continue
            if state is None:
                state = _Account({}, {}, {})
                self.accounts[account] = state
                if len(self.accounts) > self.settings.max_online_accounts:
                    self.accounts.popitem(last=False)
            state.matched[kind] = state.matched.get(kind, 0) + 1
            state.confidence[kind] = max(state.confidence.get(kind, 0), entry.confidence)
            if len(state.seen) < EVIDENCE_INDICATORS:
                state.seen.setdefault(entry.indicator_id, entry)
        if state is None:
            return 0.0
        self.accounts.move_to_end(account)
        rest = 1.0
        terms: dict[str, dict[str, float | int]] = {}
        for kind, matched in state.matched.items():
            coverage = (
                1.0
                if kind in ACCOUNT_KINDS
                else min(1.0, matched / max(exchanges, float(s.min_exchanges)))
            )
            term = (
                float(s.kind_weights.get(kind, 0.0))
                * state.confidence[kind]
                / 100.0
                * min(1.0, coverage / s.full_coverage)
            )
            rest *= 1.0 - term
            terms[kind] = {
                "coverage": round(coverage, 4),
                "confidence": state.confidence[kind],
                "term": round(term, 4),
            }
        value = s.weight * (1.0 - rest)
        if evidence is not None and value > 0.0:
            evidence[FEATURE] = {
                "kinds": terms,
                "peers": sorted({e.peer for e in state.seen.values()}),
                "indicators": [
                    {
                        "kind": e.kind,
                        "indicator_id": e.indicator_id,
                        "peer": e.peer,
                        "confidence": e.confidence,
                        "produced_at": e.produced_at,
                        "imported_at": e.imported_at,
                    }
                    for e in state.seen.values()
                ],
            }
        return value


__all__ = ["FEATURE", "Entry", "PeerIndicatorMatcher"]
