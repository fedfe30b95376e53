"""Peer indicators as one more account signal: our accounts' traffic and identifiers matched against what peers shared.

Why it indicates extraction: a peer provider attributed these exit addresses, prefixes, AS
numbers, user agents, payment / e-mail identifiers (keyed HMACs) and prompt-scaffold sketches to
a distillation campaign it detected; an account of ours that sends much of its traffic through
them, or pays with the same instrument, is likely run by the same operator.

Who looks like it (near misses): customers of a cloud or VPN provider whose prefix an operator
also rented; users of an SDK whose user agent the operator copied; someone using a prompt
template from a public tutorial the operator also used. So the score is weighted per kind
(infrastructure says little, an exact identifier more), by the peer's confidence and by the
share of the account's own traffic on matched values — one request through a flagged prefix
is not a campaign — and it is never cluster evidence: the policy cannot suspend on it alone.

How to verify a hit: the evidence names each matched indicator with its peer, the peer's
confidence, when the peer produced it and when we imported it, and request ids of ours that
matched; pull those from the raw log and check whether the account's own behaviour and
linking agree.

The store is a plain data artefact (:mod:`distillguard.core.indicators`) written by ``share``;
matching is columnar (polars joins over distinct values; keyed kinds hash distinct values only).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, ClassVar, Final

import polars as pl
import pyarrow as pa
import pyarrow.dataset as pads

from distillguard.core.detector import Detections, DetectorInfo, Level, Status
from distillguard.core.indicators import (
    GroupKey,
    PeerMatchSettings,
    local_template_params,
    match_observations,
    read_indicator_store,
)
from distillguard.core.verdict import Reason

PEER_DETECTOR_ID: Final = "linking.peer_indicators"
#: The reason's ``signal`` name in verdicts.
PEER_SIGNAL: Final = "peer_indicator"
EVIDENCE_SAMPLE: Final = 3
EVIDENCE_INDICATORS: Final = 5

#: Signals column -> observation kind, for the per-exchange kinds.
_EXCHANGE_KINDS: Final = {"client_ip": "ip", "ip_prefix": "ip_prefix", "asn": "asn", "user_agent": "user_agent",
                          "template_id": "template_key"}  # fmt: skip
#: Accounts column -> observation kind (account attributes: they cover all of the account's traffic).
_ACCOUNT_KINDS: Final = {
    "payment_fingerprint": "payment",
    "email": "email",
    "email_domain": "email_domain",
}
_SIGNAL_COLUMNS: Final = ("account_id", "request_id", "ts", *_EXCHANGE_KINDS)
_TS = pl.Datetime("ms", "UTC")


def _indicator_kind(kind: pl.Expr) -> pl.Expr:
    return (
        pl.when(kind.is_in(["template_key", "template_band"]))
        .then(pl.lit("template"))
        .otherwise(kind)
    )


def _frame(signals: pa.Table | pads.Dataset | pl.DataFrame) -> pl.DataFrame:
    """The columns matching reads, whatever form the signals come in (columnar throughout)."""
    if isinstance(signals, pl.DataFrame):
        return signals.select([c for c in _SIGNAL_COLUMNS if c in signals.columns])
    names = signals.schema.names
    cols = [c for c in _SIGNAL_COLUMNS if c in names]
    table = (
        signals.select(cols) if isinstance(signals, pa.Table) else signals.to_table(columns=cols)
    )
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    return frame


def observations(signals: pl.DataFrame, accounts: pl.DataFrame | None) -> pl.DataFrame:
    """Per (account, kind, value): exchanges and first use — :data:`~distillguard.core.indicators.OBSERVATION_SCHEMA`."""
    parts: list[pl.DataFrame] = []
    ts = pl.col("ts").cast(_TS) if "ts" in signals.columns else pl.lit(None, _TS)
    for column, kind in _EXCHANGE_KINDS.items():
        if column not in signals.columns:
            continue
        grouped = (
            signals.filter(pl.col(column).is_not_null())
            .group_by("account_id", column)
            .agg(n=pl.len().cast(pl.Int64), first_ts=ts.min())
        )
        if column == "template_id":
            # Few distinct template ids: format them once, then join.
            ids = grouped.select(pl.col(column).cast(pl.UInt64)).unique()
            hexes = ids.with_columns(
                value=pl.Series([f"{int(v):016x}" for v in ids[column].to_list()], dtype=pl.String)
            )
            grouped = (
                grouped.with_columns(pl.col(column).cast(pl.UInt64))
                .join(hexes, on=column)
                .drop(column)
            )
        else:
            grouped = grouped.with_columns(value=pl.col(column).cast(pl.String)).drop(column)
        parts.append(grouped.filter(pl.col("value") != "").with_columns(kind=pl.lit(kind)))
    if accounts is not None and accounts.height:
        totals = signals.group_by("account_id").agg(n=pl.len().cast(pl.Int64), first_ts=ts.min())
        for column, kind in _ACCOUNT_KINDS.items():
            if column not in accounts.columns:
                continue
            attr = accounts.select("account_id", value=pl.col(column).cast(pl.String)).filter(
                pl.col("value").is_not_null() & (pl.col("value") != "")
            )
            parts.append(attr.join(totals, on="account_id").with_columns(kind=pl.lit(kind)))
    cols = ["account_id", "kind", "value", "n", "first_ts"]
    if not parts:
        return pl.DataFrame(schema={"account_id": pl.String, "kind": pl.String, "value": pl.String, "n": pl.Int64,
                                    "first_ts": _TS})  # fmt: skip
    return pl.concat([p.select(cols) for p in parts], how="vertical_relaxed")


class PeerIndicatorDetector:
    """Account score from peer indicators (see the module docstring); abstains without a store or columns."""

    info: ClassVar[DetectorInfo] = DetectorInfo(
        id=PEER_DETECTOR_ID,
        version="1.0.0",
        level=Level.ACCOUNT,
        status=Status.EXPERIMENTAL,
        description=(
            "traffic and identifiers on indicators a peer provider attributed to a distillation campaign "
            "(per kind: kind weight x peer confidence x share of the account's exchanges on matched values)"
        ),
        falsepositives=(
            "customers of a cloud or VPN provider whose prefix an operator also rented",
            "users of an SDK whose user agent an operator copied",
            "a prompt template from a public tutorial an operator also used",
        ),
        runbook=(
            "Read the matched indicators (peer, confidence, produced/imported) in the evidence; pull the sample "
            "request ids; check that the account's own behaviour and linking agree. A peer match alone never "
            "suspends; ask the peer through the sharing group before acting on it alone."
        ),
    )

    def __init__(
        self,
        store: pa.Table | None = None,
        *,
        key: GroupKey | None = None,
        settings: PeerMatchSettings | None = None,
        accounts: pa.Table | None = None,
        template_params: Mapping[str, object] | None = None,
        at: datetime | None = None,
    ) -> None:
        self.store = store
        self.key = key
        self.settings = settings or PeerMatchSettings()
        self.accounts = accounts
        self.template_params = template_params
        self.at = at

    def score(self, table: pa.Table | pads.Dataset | pl.DataFrame) -> Detections:
        """Score every account present in the signals ``table``."""
        signals = _frame(table)
        if "account_id" not in signals.columns:
            raise ValueError("peer indicator matching needs the signals table's account_id column")
        totals = (
            signals.group_by("account_id").agg(total=pl.len().cast(pl.Int64)).sort("account_id")
        )
        accounts = None
        if self.accounts is not None:
            frame = pl.from_arrow(self.accounts)
            assert isinstance(frame, pl.DataFrame)
            accounts = frame
        present = [c for c in _EXCHANGE_KINDS if c in signals.columns] + [
            c for c in _ACCOUNT_KINDS if accounts is not None and c in accounts.columns
        ]
        if self.store is None or self.store.num_rows == 0:
            return self._abstain(totals, "abstain: no peer indicators loaded")
        if not present:
            return self._abstain(
                totals,
                "abstain: no matchable columns (ip, prefix, asn, user agent, template, payment)",
            )
        obs = observations(signals, accounts)
        hits = match_observations(
            self.store, obs, key=self.key, at=self.at, template_params=self.template_params
        )
        hits = hits.filter(pl.col("confidence") >= self.settings.min_confidence).with_columns(
            ikind=_indicator_kind(pl.col("kind"))
        )
        per_value = hits.group_by("account_id", "kind", "value", "ikind").agg(
            n=pl.col("n").max(), confidence=pl.col("confidence").max()
        )
        account_level = pl.col("ikind").is_in(list(_ACCOUNT_KINDS.values()))
        weights = pl.DataFrame(
            {
                "ikind": list(self.settings.kind_weights),
                "kind_weight": [float(v) for v in self.settings.kind_weights.values()],
            }
        )
        per_kind = (
            per_value.join(totals, on="account_id")
            .group_by("account_id", "ikind")
            .agg(
                matched=pl.col("n").sum(),
                total=pl.col("total").first(),
                confidence=pl.col("confidence").max(),
                account_level=account_level.any(),
            )
            .with_columns(
                coverage=pl.when(pl.col("account_level")).then(1.0)
                .otherwise((pl.col("matched") / pl.col("total").clip(self.settings.min_exchanges, None)).clip(0.0, 1.0))
            )
            .join(weights, on="ikind", how="left")
            .with_columns(
                s=pl.col("kind_weight").fill_null(0.0) * pl.col("confidence") / 100.0
                * (pl.col("coverage") / self.settings.full_coverage).clip(0.0, 1.0)
            )
        )  # fmt: skip
        per_account = per_kind.group_by("account_id").agg(
            score=1.0 - (1.0 - pl.col("s")).product(),
        )
        n_ind = hits.group_by("account_id").agg(
            value=pl.col("indicator_id").n_unique().cast(pl.Float64)
        )
        scored = (
            totals.join(per_account, on="account_id", how="left")
            .join(n_ind, on="account_id", how="left")
            .with_columns(pl.col("score").fill_null(0.0), pl.col("value").fill_null(0.0))
            .sort("account_id")
        )
        scores = pa.table(
            {
                "account_id": pa.array(scored["account_id"].to_list(), pa.string()),
                "score": pa.array(scored["score"].to_list(), pa.float64()),
                "value": pa.array(scored["value"].to_list(), pa.float64()),
                "abstain_reason": pa.nulls(scored.height, pa.string()),
            }
        )
        return Detections(self.info, scores, self._evidence(signals, hits, per_kind))

    def _abstain(self, totals: pl.DataFrame, reason: str) -> Detections:
        n = totals.height
        scores = pa.table(
            {
                "account_id": pa.array(totals["account_id"].to_list(), pa.string()),
                "score": pa.nulls(n, pa.float64()),
                "value": pa.nulls(n, pa.float64()),
                "abstain_reason": pa.array([reason] * n, pa.string()),
            }
        )
        return Detections(self.info, scores, {})

    def _evidence(
        self, signals: pl.DataFrame, hits: pl.DataFrame, per_kind: pl.DataFrame
    ) -> dict[str, dict[str, Any]]:
        """Per matched account: per-kind terms, the strongest indicators with provenance, sample request ids."""
        if hits.height == 0:
            return {}
        samples: dict[str, list[str]] = {}
        if "request_id" in signals.columns:
            parts = []
            keys = hits.select("account_id", "kind", "value").unique()
            for column, kind in _EXCHANGE_KINDS.items():
                if column not in signals.columns or column == "template_id":
                    continue
                sub = keys.filter(pl.col("kind") == kind).select("account_id", "value")
                if sub.height:
                    parts.append(
                        signals.select(
                            "account_id", "request_id", "ts", value=pl.col(column).cast(pl.String)
                        )
                        .join(sub, on=["account_id", "value"])
                        .select("account_id", "request_id", "ts")
                    )
            tpl = keys.filter(pl.col("kind") == "template_key").select("account_id", "value")
            if tpl.height and "template_id" in signals.columns:
                ids = tpl.with_columns(
                    template_id=pl.Series(
                        [int(v, 16) for v in tpl["value"].to_list()], dtype=pl.UInt64
                    )
                )
                parts.append(
                    signals.with_columns(pl.col("template_id").cast(pl.UInt64))
                    .join(ids.select("account_id", "template_id"), on=["account_id", "template_id"])
                    .select("account_id", "request_id", "ts")
                )
            if parts:
                picked = (
                    pl.concat(parts, how="vertical_relaxed").unique()
                    .sort(["account_id", "ts", "request_id"])
                    .group_by("account_id", maintain_order=True).head(EVIDENCE_SAMPLE)
                )  # fmt: skip
                for acc, rid in picked.select("account_id", "request_id").iter_rows():
                    samples.setdefault(str(acc), []).append(str(rid))
        top = (
            hits.group_by("account_id", "ikind", "indicator_id", "peer")
            .agg(
                confidence=pl.col("confidence").max(), produced_at=pl.col("produced_at").max(),
                imported_at=pl.col("imported_at").max(), valid_until=pl.col("valid_until").max(),
                exchanges=pl.col("n").sum(),
            )
            .sort(["account_id", "confidence", "exchanges", "indicator_id"], descending=[False, True, True, False])
            .group_by("account_id", maintain_order=True).head(EVIDENCE_INDICATORS)
        )  # fmt: skip
        out: dict[str, dict[str, Any]] = {}
        for r in per_kind.sort(["account_id", "ikind"]).iter_rows(named=True):
            e = out.setdefault(
                str(r["account_id"]),
                {"detector": self.info.ref, "kinds": {}, "indicators": [], "peers": [],
                 "sample_request_ids": samples.get(str(r["account_id"]), [])},
            )  # fmt: skip
            e["kinds"][r["ikind"]] = {
                "coverage": round(float(r["coverage"]), 4),
                "confidence": int(r["confidence"]),
                "term": round(float(r["s"]), 4),
            }
        for r in top.iter_rows(named=True):
            e = out[str(r["account_id"])]
            e["indicators"].append(
                {
                    "kind": r["ikind"], "indicator_id": r["indicator_id"], "peer": r["peer"],
                    "confidence": int(r["confidence"]), "exchanges": int(r["exchanges"]),
                    "produced_at": _iso(r["produced_at"]), "imported_at": _iso(r["imported_at"]),
                    "valid_until": _iso(r["valid_until"]),
                }
            )  # fmt: skip
            if r["peer"] not in e["peers"]:
                e["peers"].append(r["peer"])
        for e in out.values():
            e["peers"].sort()
        return out


def _iso(ts: datetime | None) -> str | None:
    return ts.isoformat().replace("+00:00", "Z") if ts is not None else None


def our_template_params(config: Mapping[str, Any]) -> dict[str, object]:
    """Parameters of our own signals stage's template sketches (peers' sketches match only under these)."""
    from distillguard.signals.exchange import template_params
    from distillguard.signals.template import MINHASH_SEED

    p = template_params(config)
    return local_template_params(seed=MINHASH_SEED, num_perm=p.num_perm, bands=p.bands, shingle=p.shingle,
                                 head_words=p.head_words, tail_words=p.tail_words)  # fmt: skip


def peer_detections(
    signals: pa.Table | pads.Dataset | pl.DataFrame,
    accounts: pa.Table | None,
    config: Mapping[str, Any],
) -> Detections | None:
    """The peer detector's result over a run's signals, or None when no store is configured.

    Time comes from the events: indicators are judged valid at the log's last exchange.
    """
    settings = PeerMatchSettings.from_config(config)
    if not settings.enabled or settings.store is None:
        return None
    store = read_indicator_store(settings.store)
    frame = _frame(signals)
    at = frame["ts"].cast(_TS).max() if "ts" in frame.columns and frame.height else None
    detector = PeerIndicatorDetector(
        store, key=settings.group_key(), settings=settings, accounts=accounts,
        template_params=our_template_params(config), at=at if isinstance(at, datetime) else None,
    )  # fmt: skip
    return detector.score(frame)


def with_peer_signal(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` with the peer detector added to ``scoring.account_signals`` (non-volume, own evidence)."""
    settings = PeerMatchSettings.from_config(config)
    scoring = dict(config["scoring"])
    specs: Sequence[Mapping[str, Any]] = scoring["account_signals"]
    if not any(s.get("detector") == PEER_DETECTOR_ID for s in specs):
        scoring["account_signals"] = [
            *specs,
            {
                "name": PEER_SIGNAL,
                "detector": PEER_DETECTOR_ID,
                "weight": settings.weight,
                "volume": False,
            },
        ]
    return {**config, "scoring": scoring}


def with_peer_evidence(
    reasons: Sequence[Reason], evidence: Mapping[str, Any] | None
) -> tuple[Reason, ...]:
    """Put the peer provenance (indicators, peers, confidence, when) into the peer reason's detail."""
    if not evidence:
        return tuple(reasons)
    out = []
    for r in reasons:
        if r.signal == PEER_SIGNAL:
            detail = dict(r.detail)
            detail.update(
                {k: evidence[k] for k in ("kinds", "indicators", "peers") if k in evidence}
            )
            if evidence.get("sample_request_ids"):
                detail["sample_request_ids"] = list(evidence["sample_request_ids"])
            r = Reason(r.signal, r.value, detail)
        out.append(r)
    return tuple(out)


#: Account-level detectors of this stage (the peer detector needs its store at construction).
ACCOUNT_DETECTORS: Final[dict[str, type[PeerIndicatorDetector]]] = {
    PEER_DETECTOR_ID: PeerIndicatorDetector
}

__all__ = [
    "ACCOUNT_DETECTORS", "PEER_DETECTOR_ID", "PEER_SIGNAL", "PeerIndicatorDetector", "observations",
    "our_template_params", "peer_detections", "with_peer_evidence", "with_peer_signal",
]  # fmt: skip
