"""The online decision path: exchange in → state update → additive score → policy → graduated action → limits.

One :class:`Enforcer` serves the HTTP service (batches of one), the gateway and replay (batches
of thousands). Per batch it

1. computes the per-exchange content signals with the batch detectors' own code
   (:func:`distillguard.signals.exchange.exchange_signals` on the micro-batch table),
2. folds every exchange into the state backend in arrival order (counters, distinct-count
   sketches) — the incremental adapter over the per-account features,
3. scores the rows (:func:`score_rows`: standardised signals combined additively, each
   reason's contribution visible) and maps scores to actions with the scoring stage's
   :class:`~distillguard.scoring.policy.Policy` (no second copy of the rules),
4. ratchets each account's action (online actions only escalate) and records the changes.

:meth:`Enforcer.process` (service, gateway) does 2–4 one exchange after the other.
:meth:`Enforcer.replay_batch` (replay) relies on steps 1–2 not depending on the decisions: it
folds the whole batch columnar, scores every row at once, and only then takes the decisions in
order, reading the taint that earlier decisions spread — the same decisions and state
(``tests/enforce/test_replay_batch.py``).
"""

from __future__ import annotations

import functools
import ipaddress
import math
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from distillguard.core.schema import EXCHANGE_SCHEMA
from distillguard.core.verdict import Action
from distillguard.enforce.campaigns import CampaignWatcher, KnownCampaigns
from distillguard.enforce.limiter import Limiter, LimitHit
from distillguard.enforce.peer_indicators import PeerIndicatorMatcher
from distillguard.enforce.settings import (
    ADDRESS_SIGNALS,
    BEHAVIOUR_FEATURES,
    PROPAGATION_KINDS,
    SHARING_KINDS,
    Counted,
    EnforceSettings,
)
from distillguard.enforce.state import (
    COUNT_ONLY,
    TOUCH_SLOTS,
    AccountView,
    ExchangeColumns,
    Folded,
    MemoryState,
    Observation,
    StateBackend,
    StateUnavailable,
    additions,
    apply_counters,
    note_exit,
    take_exits,
)
from distillguard.enforce.windows import PassedWindows
from distillguard.scoring.combine import Scored, SignalSpec
from distillguard.scoring.policy import ACTIONS_BY_RANK, Policy
from distillguard.scoring.standardise import RobustBaseline
from distillguard.signals.geo import country_of, country_ranges

ONLINE_VERSION = "1.1.0"


@dataclass(frozen=True)
class AccountMeta:
    """What the provider knows about an account (contract ``accounts`` columns), all optional."""

    payment_fingerprint: str | None = None
    email_domain: str | None = None
    created_at_ms: int | None = None
    verification: str | None = None


@dataclass(frozen=True)
class Decision:
    """The answer to one check: the account's action, why, and whether to serve now."""

    request_id: str
    account_id: str
    ts_ms: int
    action: Action
    score: float
    cluster_id: str | None
    reasons: tuple[dict[str, Any], ...]
    retry_after: float | None  # set: do not serve now (limit, or state store down and fail closed)
    limited_by: str | None
    changed: bool  # the account's action changed with this exchange (a decisions.jsonl line)

    @property
    def served(self) -> bool:
        return self.retry_after is None and self.action.is_served

    def to_json(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "account_id": self.account_id,
            "action": self.action.value,
            "score": round(self.score, 6),
            "cluster_id": self.cluster_id,
            "reasons": list(self.reasons),
            "retry_after": self.retry_after,
            "limited_by": self.limited_by,
        }


# --------------------------------------------------------------------------- content signals


class ContentSignals(Protocol):
    """Per-exchange content signals for a batch: reasoning, grader, capability, template."""

    def compute(self, table: pa.Table) -> pl.DataFrame: ...


class BatchContentSignals:
    """The signal stage's own per-exchange code on a micro-batch (one stateful template index).

    ``carry_over``: keep the signal stage's per-prompt and per-address results across batches
    (``PromptSignals``, ``AddressContext``: bounded, and equal to recomputing), as ``detect``
    does. Replay turns it on (a log repeats prompts and clients batch after batch); the service
    keeps its memory to the state caps.
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        intel: pa.Table | None = None,
        capability_model: bool = True,
        carry_over: bool = False,
    ) -> None:
        from distillguard.signals.exchange import PromptSignals, content_scores, template_params
        from distillguard.signals.network import AddressContext
        from distillguard.signals.template import TemplateIndex

        self._content_scores = content_scores
        self.intel = intel
        # The country table (~2 s to load) only where exit_countries can use it.
        countries_cfg = (config.get("enforce") or {}).get("online", {}).get("exit_countries", {})
        self.with_country = float(countries_cfg.get("weight", 0.0)) != 0.0
        self.index = TemplateIndex(template_params(config))
        self.model: Any = None
        self.prompts: PromptSignals | None = None
        self.addresses: AddressContext | None = None
        if capability_model:
            from distillguard.signals.capability import load_model

            self.model = load_model()
            if carry_over:
                self.prompts = PromptSignals(self.model, self.index.params)
                self.addresses = AddressContext(intel)

    def compute(self, table: pa.Table) -> pl.DataFrame:
        """``reasoning, grader, capability, template_id, ip_prefix, network_kind, asn, country`` per row."""
        from distillguard.signals.exchange import conform, exchange_signals
        from distillguard.signals.geo import countries
        from distillguard.signals.network import network_context

        country = (
            pl.Series("country", countries(table.column("client_ip")), dtype=pl.String)
            if self.with_country
            else pl.Series("country", [None] * table.num_rows, dtype=pl.String)
        )

        if self.model is not None:
            sig = exchange_signals(
                table,
                model=self.model,
                index=self.index,
                intel=self.intel,
                prompts=self.prompts,
                addresses=self.addresses,
            )
            frame = pl.from_arrow(
                sig.select(
                    [
                        "reasoning_elicitation",
                        "grader_use",
                        "capability",
                        "template_id",
                        "ip_prefix",
                        "network_kind",
                        "asn",
                    ]
                )
            )
            assert isinstance(frame, pl.DataFrame)
            return frame.rename(
                {"reasoning_elicitation": "reasoning", "grader_use": "grader"}
            ).with_columns(country)
        t = conform(table)
        content = self._content_scores(t)
        prompts = pl.Series(values=t.column("prompt")).cast(pl.String)
        tid, _, valid = self.index.assign(prompts)
        net = network_context(t.column("client_ip"), self.intel)
        return pl.DataFrame(
            {
                "reasoning": content["reasoning_elicitation"],
                "grader": content["grader_use"],
                "capability": pl.Series([None] * t.num_rows, dtype=pl.String),
                "template_id": pl.Series(np.where(valid, tid, 0), dtype=pl.UInt64).set(
                    pl.Series(~valid), None
                ),
                "ip_prefix": pl.Series(net.column("ip_prefix").to_pylist(), dtype=pl.String),
                "network_kind": pl.Series(net.column("network_kind").to_pylist(), dtype=pl.String),
                "asn": pl.Series(net.column("asn").to_pylist(), dtype=pl.Int64),
                "country": country,
            }
        )


# --------------------------------------------------------------------------- scoring

_SPECS: tuple[SignalSpec, ...] = (
    *(
        SignalSpec(f"online.{n}", f"online.{n}@{ONLINE_VERSION}", False, False)
        for n in BEHAVIOUR_FEATURES
    ),
    # Only a shared payment instrument counts as cluster evidence (what lets the policy suspend);
    # shared prefixes, templates and user agents are infrastructure that benign customers share too.
    *(
        SignalSpec(
            f"online.shared_{k}", f"online.shared_{k}@{ONLINE_VERSION}", False, k == "payment"
        )
        for k in SHARING_KINDS
    ),
    SignalSpec(
        "online.known_campaign_member", f"online.known_campaign@{ONLINE_VERSION}", False, True
    ),
    SignalSpec(
        "online.known_campaign_link", f"online.known_campaign@{ONLINE_VERSION}", False, True
    ),
    # A card a contained account paid with is cluster evidence; an address or template it used is not.
    *(
        SignalSpec(
            f"online.flagged_{k}", f"online.propagation@{ONLINE_VERSION}", False, k == "payment"
        )
        for k in PROPAGATION_KINDS
    ),
    # Per-account counts without warm-up (``enforce.online.exit_networks`` / ``reasoning_hits``).
    SignalSpec("online.exit_networks", f"online.exit_networks@{ONLINE_VERSION}", False, False),
    SignalSpec("online.exit_countries", f"online.exit_countries@{ONLINE_VERSION}", False, False),
    SignalSpec("online.reasoning_hits", f"online.reasoning_hits@{ONLINE_VERSION}", False, False),
    SignalSpec(
        "online.peer_indicator", f"online.peer_indicator@{ONLINE_VERSION}", False, False
    ),  # share/: never cluster
)
FEATURES: tuple[str, ...] = (
    *BEHAVIOUR_FEATURES,
    *(f"shared_{k}" for k in SHARING_KINDS),
    "known_member",
    "known_link",
    *(f"flagged_{k}" for k in PROPAGATION_KINDS),
    "exit_networks",
    "exit_countries",
    "reasoning_hits",
    "peer_indicator",  # last: its contribution (log-odds) is computed by enforce.peer_indicators
)
_NO_CONTRIB: list[float] = []

#: Sketch-group prefix of each propagation kind (members: the contained accounts on the key).
_TAINT_PREFIX = {"payment": "flg:pay:", "ip": "flg:ipa:", "template": "flg:tpl:"}


def coefficients(settings: EnforceSettings) -> tuple[np.ndarray, ...]:
    """Per-feature (kind, weight, offset, scale, max_k) arrays so scoring is one pass over the matrix."""
    n = len(FEATURES)
    kind = np.zeros(
        n, dtype=np.int8
    )  # 0 behaviour, 1 sharing, 2 pass-through, 3 capped pass-through
    weight, offset, scale, max_k = np.zeros(n), np.zeros(n), np.ones(n), np.full(n, np.inf)
    for j, name in enumerate(BEHAVIOUR_FEATURES):
        b = settings.behaviour.get(name)
        if b is not None:
            weight[j], offset[j], scale[j] = b.weight, b.x0, 1.0 - b.x0
    off = len(BEHAVIOUR_FEATURES)
    for j, k in enumerate(SHARING_KINDS):
        sh = settings.sharing.get(k)
        kind[off + j] = 1
        if sh is not None:
            weight[off + j], offset[off + j], scale[off + j], max_k[off + j] = (
                sh.weight,
                sh.k0,
                sh.cap,
                sh.max_k,
            )
    kind[off + len(SHARING_KINDS)] = 2
    kind[off + len(SHARING_KINDS) + 1] = 3
    off += len(SHARING_KINDS) + 2
    for j, k in enumerate(PROPAGATION_KINDS):
        pr = settings.propagation.get(k)
        kind[off + j] = 1
        if pr is not None and k == "ip":
            # The share of the address's accounts (today) that are contained, graded from x0.
            kind[off + j] = 0
            weight[off + j], offset[off + j], scale[off + j] = pr.weight, pr.x0, pr.x1 - pr.x0
        elif pr is not None:
            weight[off + j], offset[off + j], scale[off + j], max_k[off + j] = (
                pr.weight,
                pr.k0,
                pr.cap,
                pr.max_k,
            )
    for name in ("exit_networks", "exit_countries", "reasoning_hits"):
        cnt: Counted = getattr(settings, name)
        j = FEATURES.index(name)
        kind[j] = 1
        weight[j], offset[j], scale[j] = cnt.weight, cnt.k0, cnt.cap
    kind[-1] = 2  # peer_indicator: pass-through
    return kind, weight, offset, scale, max_k


def score_rows(
    values: np.ndarray, settings: EnforceSettings, coef: tuple[np.ndarray, ...] | None = None
) -> np.ndarray:
    """Contribution matrix (rows x :data:`FEATURES`) from raw feature values (NaN = abstain).

    Behaviour: ``weight * clip((x - x0) / (1 - x0), 0, 1)``; sharing: ``weight * clip(k - k0, 0,
    cap) / cap`` and nothing above ``max_k``; known-campaign member: its value; link: its value
    capped at ``member_weight``.
    """
    kind, weight, offset, scale, max_k = coef if coef is not None else coefficients(settings)
    v = np.nan_to_num(values, nan=0.0)
    graded = weight * np.clip((v - offset) / scale, 0.0, 1.0)
    graded = np.where(v > max_k, 0.0, graded)
    out: np.ndarray = np.where(
        kind == 2, v, np.where(kind == 3, np.minimum(v, settings.member_weight), graded)
    )
    ip_link = settings.propagation.get("ip")
    if ip_link is not None and ip_link.supersedes_shared_ip:
        _one_address(out)
    return out


def _one_address(contrib: np.ndarray) -> None:
    """The address counted once: with a flagged-address link, the shared address adds only what exceeds it.

    Both read the same sketch of the address's accounts today, so their sum counted one fact twice
    (``shared_ip + flagged_ip`` becomes ``max(shared_ip, flagged_ip)``).
    """
    flagged, shared = contrib[:, _FLAGGED_IP], contrib[:, _SHARED_IP]
    contrib[:, _SHARED_IP] = np.where(
        flagged > 0.0, np.where(shared > flagged, shared - flagged, 0.0), shared
    )


#: Sketch-group prefix -> index of its sharing kind in SHARING_KINDS (0: not a sharing group).
_GROUP_SLOT = {"pfx:": SHARING_KINDS.index("prefix"), "tpl:": SHARING_KINDS.index("template"),
               "uag:": SHARING_KINDS.index("user_agent"), "sip:": SHARING_KINDS.index("ip")}  # fmt: skip


_N_BEHAVIOUR = len(BEHAVIOUR_FEATURES)
#: ``group[4:8]`` of a taint sketch -> index in PROPAGATION_KINDS.
_TAINT_SLOT = {p[4:]: PROPAGATION_KINDS.index(k) for k, p in _TAINT_PREFIX.items()}
_TAINT_IP = PROPAGATION_KINDS.index("ip")
_KNOWN_MEMBER = FEATURES.index("known_member")
_SHARED_IP = FEATURES.index("shared_ip")
_FLAGGED_IP = FEATURES.index("flagged_ip")
_EXIT_NETWORKS = FEATURES.index("exit_networks")
_EXIT_COUNTRIES = FEATURES.index("exit_countries")
_REASONING_HITS = FEATURES.index("reasoning_hits")


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else math.nan


def _cluster(stored: str | None, member_cid: str | None, link_cid: str | None) -> str | None:
    """A decision's cluster: a known campaign's (member) over the stored one over a linked campaign's."""
    if member_cid is not None:
        stored = member_cid
    if link_cid is not None:
        stored = stored or link_cid
    return stored


# --------------------------------------------------------------------------- enforcer


LATENCY_BUCKETS: tuple[float, ...] = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.25, 1.0, math.inf)


@dataclass
class Metrics:
    """Counters exposed at ``/metrics`` (Prometheus text)."""

    checks: int = 0
    records: int = 0
    decisions: dict[str, int] = field(default_factory=dict)
    limited: dict[str, int] = field(default_factory=dict)
    state_errors: int = 0
    degraded_checks: int = 0
    rejected: int = 0
    latency_sum: float = 0.0
    latency_buckets: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS))


class Enforcer:
    """The online path over one state backend, one limiter and the known-campaign snapshot."""

    def __init__(
        self,
        config: Mapping[str, Any],
        backend: StateBackend | None = None,
        limiter: Limiter | None = None,
        content: ContentSignals | None = None,
        campaigns: CampaignWatcher | None = None,
        settings: EnforceSettings | None = None,
        intel: pa.Table | None = None,
    ) -> None:
        self.config = config
        self.intel = intel
        self.settings = settings or EnforceSettings.from_config(config)
        s = self.settings
        online = config["enforce"]["online"]
        # The online model's own thresholds and evidence-kinds floor: its signals are not the batch
        # detectors the policy's evidence counting is written for (one known-campaign link stands
        # for every indicator family detect saw), so the batch value does not carry over.
        self.policy = Policy.from_config({**config, "policy": {
            **config["policy"], "thresholds": online["thresholds"],
            "min_evidence_kinds": int(online.get("min_evidence_kinds", 0)),
        }})  # fmt: skip
        self.bias = float(online["bias"])
        self.min_reason = float(config["scoring"]["min_reason_contribution"])
        self.max_reasons = int(config["scoring"]["max_reasons"])
        self.backend: StateBackend = backend or MemoryState(
            s.max_accounts, s.max_sketch_keys, s.hll_precision
        )
        self.local = MemoryState(s.max_accounts, s.max_sketch_keys, s.hll_precision)
        self.limiter = limiter
        self.content = content
        self.campaigns = campaigns or CampaignWatcher(
            s.campaigns_dir, s.min_key_weight, s.campaigns_reload_seconds
        )
        self.metrics = Metrics()
        self.peer = PeerIndicatorMatcher.from_config(
            config
        )  # None unless share.indicators.store is set
        self._down_until = 0.0
        self._lock = threading.Lock()
        self.lpm = ScalarNetwork(intel)
        self._coef = coefficients(self.settings)
        self._coef_lists = tuple(a.tolist() for a in self._coef)
        self._memo: dict[tuple[float, ...], tuple[int, float, list[float]]] = {}
        self._non_volume = [j for j, spec in enumerate(_SPECS) if not spec.volume]
        # Propagated links that do not make an account a source of taint itself (see _spread).
        self._link_slots = [FEATURES.index(f"flagged_{k}") for k in ("ip", "template")]
        self._cluster = [j for j, spec in enumerate(_SPECS) if spec.cluster and not spec.volume]
        # Propagation kinds with a weight: only those keep taint sketches.
        self._taint = {k: _TAINT_PREFIX[k] for k, pr in s.propagation.items() if pr.weight != 0.0}
        icfg = s.sharing.get("ip")
        self._ip_ms = (
            max(icfg.window_minutes, 1.0) * 60_000
            if icfg is not None and icfg.weight != 0.0
            else 0.0
        )
        # A sharing kind with weight 0 can never contribute or be a reason: its sketch is not kept.
        ucfg = s.sharing.get("user_agent")
        self._track_ua = ucfg is not None and ucfg.weight != 0.0
        pcfg = s.sharing.get("prefix")
        self._prefix_ms = max(pcfg.window_minutes, 1.0) * 60_000 if pcfg is not None else 0.0
        # Exit networks per account and window (a sketch kept only with a weight).
        self._net_ms = (
            s.exit_networks.window_minutes * 60_000 if s.exit_networks.weight != 0.0 else 0.0
        )
        self._net_kinds = s.exit_networks.kinds
        # Countries per account in a shorter window (a proxy pool spanning countries, not a traveller).
        self._cty_ms = (
            s.exit_countries.window_minutes * 60_000 if s.exit_countries.weight != 0.0 else 0.0
        )
        self._cty_kinds = s.exit_countries.kinds
        if self._cty_ms:
            country_ranges()  # loaded at start-up (~2 s), not inside the first check
        # Contained accounts an address of a kind needs before it links (shared infrastructure: more than one).
        ip_link = s.propagation.get("ip")
        self._ip_min_contained = dict(ip_link.min_contained) if ip_link is not None else {}
        # The address counted once (see _one_address).
        self._one_addr = ip_link is not None and ip_link.supersedes_shared_ip
        # Retro-taint: a newly contained account's earlier exits in the shared-address window carry its
        # taint too (it may have used a rented exit for hours before its own evidence sufficed).
        self._retro = ip_link.retro_exits if ip_link is not None and "ip" in self._taint else 0
        self._retro_ms = self._ip_ms or 86_400_000.0
        # Replay only: sketches of windows time has passed are dropped (never read again in order).
        self._windows = PassedWindows(
            {
                "pfx:": self._prefix_ms,
                "sip:": self._ip_ms,
                "net:": self._net_ms,
                "cty:": self._cty_ms,
            }
        )
        # Vouched accounts (KYC, platforms): their infrastructure sharing and address taint abstain.
        v = s.vouched
        self._vouch_verifications = v.verifications
        self._eu_min = v.platform_min_end_users
        # Abstaining slots by vouching level: 0 not vouched, 1 vouched, 2 vouched and on a shared-infrastructure address.
        base = [FEATURES.index(f) for f in sorted(v.abstain - ADDRESS_SIGNALS)]
        self._vouch_slots: tuple[list[int], ...] = (
            [],
            base,
            base + [FEATURES.index(f) for f in sorted(v.abstain & ADDRESS_SIGNALS)],
        )
        self._infra_kinds = v.infrastructure_kinds
        # The embedded backend is updated in place (no copy per exchange), under self._lock.
        self._live = self.backend.observe_live if isinstance(self.backend, MemoryState) else None

    def _network(self, rows: Sequence[Mapping[str, Any]]) -> pl.DataFrame | list[dict[str, Any]]:
        if len(rows) > 64:
            return network_signals(
                [str(r.get("client_ip") or "") for r in rows], self.intel, bool(self._cty_ms)
            )
        out = []
        for r in rows:
            ip = str(r.get("client_ip") or "")
            prefix, kind, asn = self.lpm.context(ip)
            land = country_of(ip) if self._cty_ms else None
            out.append({"ip_prefix": prefix, "network_kind": kind, "asn": asn, "country": land})
        return out

    # -- state with the fail mode -------------------------------------------------------

    def _degraded(self) -> bool:
        return self.backend.name != "memory" and time.monotonic() < self._down_until

    def _mark_down(self) -> None:
        self.metrics.state_errors += 1
        self._down_until = time.monotonic() + self.settings.redis_retry_seconds

    def _observe(
        self,
        account: str,
        ts_ms: int,
        counters: Mapping[str, float],
        distinct: Sequence[tuple[str, str]],
        exit_: tuple[str, int] | None = None,
    ) -> tuple[AccountView, dict[str, int], bool]:
        """Fold into the shared backend; on failure into the local one. Returns (view, sketch counts, degraded).

        ``exit_``: ``(taint group, window bucket)`` of the exchange's address, remembered for retro-taint.
        The view may be the stored one (memory backends): read it before the next update.
        """
        live = self._live
        rank = self.settings.propagation_rank
        if live is not None:
            view, counts = live(account, ts_ms, counters, distinct)
            if exit_ is not None:
                note_exit(view, exit_[1], exit_[0], self._retro, rank)
            return view, counts, False
        if not self._degraded():
            try:
                ex = (exit_[0], exit_[1], self._retro, rank) if exit_ is not None else None
                view = self.backend.observe(Observation(account, ts_ms, counters, distinct, ex))
                return view, view.distinct, False
            except StateUnavailable:
                self._mark_down()
        view, counts = self.local.observe_live(account, ts_ms, counters, distinct)
        if exit_ is not None:
            note_exit(view, exit_[1], exit_[0], self._retro, rank)
        return view, counts, True

    def _take_exits(
        self, account: str, view: AccountView, bucket: int, degraded: bool
    ) -> list[str]:
        """The exits the account remembered in this window (and forgets them): memory on the view, Redis in the store."""
        take = getattr(self.backend, "take_exits", None)
        if self._live is not None or degraded or take is None:
            return take_exits(view, bucket)
        try:
            out: list[str] = take(account, bucket)
            return out
        except StateUnavailable:
            self._mark_down()
            return []

    # -- building observations ----------------------------------------------------------

    def _observation(
        self,
        row: Mapping[str, Any],
        meta: AccountMeta | None,
        sig: Mapping[str, Any] | None,
        ts_ms: int,
    ) -> tuple[str, dict[str, float], list[tuple[str, str]], dict[str, str | None], list[str]]:
        """``(account, counter increments, sketch memberships, link keys, taint groups)`` of one exchange.

        The taint groups are the propagation sketches this exchange's keys feed once its account
        is contained; the memberships read their counts (``COUNT_ONLY``) for the score.
        """
        s = self.settings
        account = str(row["account_id"])
        counters: dict[str, float] = {"n": 1.0, "in_tok": float(row.get("input_tokens") or 0)}
        out_tok = row.get("output_tokens")
        if out_tok:
            counters["out_tok"] = float(out_tok)
        distinct: list[tuple[str, str]] = []
        ip = row.get("client_ip")
        if ip:
            distinct.append((f"ip:{account}", str(ip)))
        keys: dict[str, str | None] = {"ip": str(ip) if ip else None}
        taint: list[str] = []
        prop = self._taint
        if sig is not None:
            kind = sig.get("network_kind")
            prefix = sig.get("ip_prefix")
            keys["prefix"] = prefix
            explained = kind in s.explained_kinds
            if prefix and self._prefix_ms and not explained:
                distinct.append((f"pfx:{prefix}|{int(ts_ms // self._prefix_ms)}", account))
            if ip and not explained:
                if self._ip_ms:
                    sip = f"sip:{ip}|{int(ts_ms // self._ip_ms)}"
                    keys["sip"] = sip
                    distinct.append((sip, account))
                if "ip" in prop:
                    taint.append(prop["ip"] + str(ip))
                    keys["tip"] = taint[-1]
                    floor = self._ip_min_contained.get(str(kind), 1)
                    if floor > 1:
                        keys["ip_min_contained"] = str(floor)
            if ip and self._net_ms and kind in self._net_kinds:
                asn = sig.get("asn")
                network = str(asn) if asn is not None else f"p:{prefix}" if prefix else None
                if network is not None:
                    net = f"net:{account}|{int(ts_ms // self._net_ms)}"
                    keys["net"] = net
                    distinct.append((net, network))
            if ip and self._cty_ms and kind in self._cty_kinds:
                land = sig.get("country")
                if land:
                    cty = f"cty:{account}|{int(ts_ms // self._cty_ms)}"
                    keys["cty"] = cty
                    distinct.append((cty, str(land)))
            reasoning = sig.get("reasoning")
            grader = sig.get("grader")
            if reasoning is not None or grader is not None:
                counters["content_n"] = 1.0
                counters["reasoning_sum"] = float(reasoning or 0.0)
                counters["grader_sum"] = float(grader or 0.0)
                if reasoning is not None and reasoning >= s.reasoning_hits.threshold:
                    counters["reasoning_hits"] = 1.0
            cap = sig.get("capability")
            if cap:
                counters[f"cap:{cap}"] = 1.0
                if cap in s.target_capabilities:
                    counters["cap_target"] = 1.0
            tid = sig.get("template_id")
            if tid is not None:
                counters[f"tpl:{tid}"] = 1.0
                keys["template"] = str(tid)
                distinct.append((f"tpl:{tid}", account))
                if "template" in prop:
                    taint.append(prop["template"] + str(tid))
        ua = row.get("user_agent")
        if ua:
            keys["user_agent"] = str(ua)
            if self._track_ua:
                distinct.append((f"uag:{ua}", account))
        if meta is not None and meta.payment_fingerprint:
            keys["payment"] = meta.payment_fingerprint
            distinct.append((f"pay:{meta.payment_fingerprint}", account))
            distinct.append((f"paydom:{meta.payment_fingerprint}", self._org_domain(meta, account)))
            if "payment" in prop:
                taint.append(prop["payment"] + meta.payment_fingerprint)
        end_user = row.get("end_user_id")
        if end_user and self._eu_min:
            distinct.append((f"eu:{account}", str(end_user)))
        distinct.extend((g, COUNT_ONLY) for g in taint)
        return account, counters, distinct, keys, taint

    def _org_domain(self, meta: AccountMeta, account: str) -> str:
        """The account's email domain as the payment rule reads it: an organisation's, else the account itself.

        Accounts of one organisation's domain sharing a card are explained; a free-mail domain (or
        none) explains nothing, so each such account counts as a domain of its own.
        """
        domain = meta.email_domain
        if not domain or domain.lower() in self.settings.free_mail_domains:
            return f"?{account}"
        return domain

    def _vouched(
        self,
        account: str,
        meta: AccountMeta | None,
        counts: Mapping[str, int],
        sig: Mapping[str, Any] | None,
    ) -> int:
        """Vouching level: 0 not vouched; 1 identity-verified (``vouched.verification``) or serving
        ``platform_min_end_users`` distinct end users so far; 2 that, on an ``infrastructure_kinds`` address."""
        if not (meta is not None and meta.verification in self._vouch_verifications) and not (
            self._eu_min and counts.get(f"eu:{account}", 0) >= self._eu_min
        ):
            return 0
        return 2 if sig is not None and sig.get("network_kind") in self._infra_kinds else 1

    def _features(
        self,
        view: AccountView,
        counts: Mapping[str, int],
        keys: Mapping[str, str | None],
        known: KnownCampaigns,
        vouched: int = 0,
    ) -> tuple[list[float], str | None, dict[str, Any]]:
        """Feature values (aligned with :data:`FEATURES`, NaN = abstain), cluster id and evidence.

        ``vouched``: the level from :meth:`_vouched`; its ``enforce.online.vouched.abstain`` signals abstain.
        """
        c = view.counters
        n = c.get("n", 0.0)
        cn = c.get("content_n", 0.0)
        warmup = self.settings.warmup
        warm = n >= warmup
        nan = math.nan
        vals = [nan] * len(FEATURES)
        evidence: dict[str, Any] = {}
        if warm and cn >= warmup:
            vals[0] = _ratio(c.get("reasoning_sum", 0.0), cn)
            vals[1] = _ratio(c.get("grader_sum", 0.0), cn)
            vals[2] = _ratio(c.get("cap_top", 0.0), cn)
            vals[3] = _ratio(c.get("tpl_top", 0.0), cn)
            vals[5] = _ratio(c.get("cap_target", 0.0), cn)
        acct = view.account_id
        if warm:
            vals[4] = _ratio(float(counts.get(f"ip:{acct}", 0)), n)
        net = keys.get("net")
        if net:
            vals[_EXIT_NETWORKS] = float(counts.get(net, 0))
        cty = keys.get("cty")
        if cty:
            vals[_EXIT_COUNTRIES] = float(counts.get(cty, 0))
        if cn > 0:
            hits = c.get("reasoning_hits", 0.0)
            vals[_REASONING_HITS] = (
                hits if hits >= self.settings.reasoning_hits.min_share * cn else 0.0
            )
        off = _N_BEHAVIOUR
        pay = keys.get("payment")
        if pay:
            domains = counts.get(f"paydom:{pay}", 0)
            vals[off] = float(counts.get(f"pay:{pay}", 0)) if domains >= 2 else 0.0
        taint_at = off + len(SHARING_KINDS) + 2
        # An account already contained is itself in the taint sets of the keys it uses: its own
        # taint must not count as someone else's (and it needs no propagated evidence).
        uncontained = view.action_rank < self.settings.propagation_rank
        for group, count in counts.items():
            j = _GROUP_SLOT.get(group[:4], 0)
            if j:
                prev = vals[off + j]
                vals[off + j] = (
                    float(count) if prev != prev or count > prev else prev
                )  # prev != prev: NaN
            elif group[:4] == "flg:" and count and uncontained:
                t = _TAINT_SLOT[group[4:8]]
                if t == _TAINT_IP:
                    if count < int(keys.get("ip_min_contained") or 1):
                        continue  # shared infrastructure: one contained account on it is no link
                    # A cloud NAT with one attacker among ten customers is not a proxy pool.
                    on_key = counts.get(keys.get("sip") or "", 0)
                    vals[taint_at + t] = count / max(on_key, count)
                else:
                    vals[taint_at + t] = float(count)
                evidence[f"flagged_{PROPAGATION_KINDS[t]}"] = {
                    "key": group[group.index(":", 4) + 1 :],
                    "contained_accounts": count,
                }
        for j in self._vouch_slots[vouched]:
            vals[j] = nan
        cluster_id = view.cluster_id
        if known.members or known.indicators:
            cluster_id = _cluster(cluster_id, *self._known(acct, keys, known, vals, evidence))
        return vals, cluster_id, evidence

    def _known(
        self,
        account: str,
        keys: Mapping[str, str | None],
        known: KnownCampaigns,
        vals: list[float],
        evidence: dict[str, Any],
    ) -> tuple[str | None, str | None]:
        """Known-campaign membership and links into ``vals`` / ``evidence``: (member's campaign, first link's campaign)."""
        off = _N_BEHAVIOUR + len(SHARING_KINDS)
        member_cid = link_cid = None
        member = known.members.get(account)
        if member is not None:
            member_cid = member[0]
            vals[off] = self.settings.member_weight * (
                1.0 if member[1] >= Action.THROTTLE.rank else 0.5
            )
            evidence["known_member"] = {"campaign": member[0], "source": known.source}
        links = known.link(keys)
        if links:
            by_kind = {k: (key, cid) for k, key, cid in links}
            vals[off + 1] = sum(self.settings.link_weights.get(k, 0.0) for k in by_kind)
            link_cid = links[0][2]
            evidence["known_link"] = {
                "links": [
                    {"kind": k, "key": key, "campaign": cid}
                    for k, (key, cid) in sorted(by_kind.items())
                ],
                "source": known.source,
            }
        return member_cid, link_cid

    # -- scoring and decisions -------------------------------------------------------------

    def decide_matrix(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Reference scoring of many rows with numpy and the policy's own ``decide``: (ranks, scores, contributions).

        The decision loop uses :meth:`_score_one` (the same arithmetic and rules on Python floats);
        a test holds the two to agreement.
        """
        contrib = score_rows(values, self.settings, self._coef)
        logit = self.bias + contrib.sum(axis=1)
        score = 1.0 / (1.0 + np.exp(-logit))
        scored = Scored(
            # from_arrays, not pa.table: the latter probes for pandas on every call (~0.5 ms).
            accounts=pa.Table.from_arrays([pa.array(score, pa.float64())], names=["score"]),
            specs=_SPECS,
            values=values,
            contributions=contrib,
            references=(),
            baseline=RobustBaseline([]),
        )
        return self.policy.decide(scored), score, contrib

    def _score_one(self, row: list[float]) -> tuple[int, float, list[float]]:
        """One exchange's (action rank, score, contributions), memoised per feature vector.

        Decisions are taken row by row because a contained account's taint reaches the next
        request at once (:data:`_TAINT_PREFIX`); numpy's per-call overhead would dominate one row.
        The rules are the policy's (``Policy.decide``), checked against it in the tests; with
        ``min_evidence_kinds`` > 0 the policy object itself decides.
        """
        # Abstentions are the math.nan singleton, and tuples compare items by identity first, so
        # equal vectors hit; a NaN of another origin only misses the memo, never changes an answer.
        key = tuple(row)
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        kind, weight, offset, scale, max_k = self._coef_lists
        member_weight = self.settings.member_weight
        contrib: list[float] = []
        for j, x in enumerate(row):
            if x != x:
                x = 0.0
            k = kind[j]
            if k == 2:
                contrib.append(x)
            elif k == 3:
                contrib.append(min(x, member_weight))
            elif x > max_k[j]:
                contrib.append(0.0)
            else:
                g = (x - offset[j]) / scale[j]
                contrib.append(weight[j] * (0.0 if g < 0.0 else 1.0 if g > 1.0 else g))
        if self._one_addr and (flagged := contrib[_FLAGGED_IP]) > 0.0:
            shared = contrib[_SHARED_IP]
            contrib[_SHARED_IP] = shared - flagged if shared > flagged else 0.0
        logit = self.bias
        for c in contrib:
            logit += c
        score = 1.0 / (1.0 + math.exp(-logit)) if logit > -700 else 0.0
        if self.policy.min_evidence_kinds > 0:
            ranks, _, _ = self.decide_matrix(np.array([row], dtype=np.float64))
            rank = int(ranks[0])
        else:
            rank = self._rules(score, contrib)
        out = (rank, score, contrib)
        if len(self._memo) >= 65536:
            self._memo.clear()  # bounded; refilled from the common cases within a few checks
        self._memo[key] = out
        return out

    def _rules(self, score: float, contrib: list[float]) -> int:
        """``Policy.decide`` for one row without evidence-kinds counting (online uses 0)."""
        p = self.policy
        rank = 0
        for action in (Action.MONITOR, Action.THROTTLE, Action.CHALLENGE, Action.SUSPEND):
            if score >= p.thresholds[action]:
                rank = action.rank
        floor = p.min_reason_contribution
        non_volume = any(contrib[j] >= floor for j in self._non_volume)
        if p.flag_requires_non_volume_reason and not non_volume and rank > Action.MONITOR.rank:
            rank = Action.MONITOR.rank
        cluster_total = 0.0
        for j in self._cluster:
            cluster_total += contrib[j]
        ok = non_volume and (
            not p.suspend_requires_cluster or cluster_total >= p.min_cluster_contribution
        )
        if not ok and rank > Action.CHALLENGE.rank:
            rank = Action.CHALLENGE.rank
        return rank

    def _reasons(
        self, values: list[float], contrib: list[float], evidence: Mapping[str, Any]
    ) -> list[dict[str, Any]]:
        order = sorted(range(len(contrib)), key=lambda j: -contrib[j])
        out = []
        for j in order[: self.max_reasons]:
            if contrib[j] < self.min_reason:
                break
            spec = _SPECS[j]
            name = FEATURES[j]
            v = values[j]
            detail: dict[str, Any] = {
                "detector": spec.detector,
                "contribution": round(float(contrib[j]), 4),
            }
            if name in self.settings.behaviour:
                detail["reference"] = {"x0": self.settings.behaviour[name].x0}
            elif name.startswith("shared_"):
                sh = self.settings.sharing[name.removeprefix("shared_")]
                detail["reference"] = {
                    "k0": sh.k0,
                    "max_k": sh.max_k,
                    "unit": "distinct accounts on the key",
                }
            elif name in ("exit_networks", "exit_countries"):
                net = getattr(self.settings, name)
                what = "networks" if name == "exit_networks" else "countries of the addresses"
                detail["reference"] = {
                    "k0": net.k0,
                    "cap": net.cap,
                    "window_minutes": net.window_minutes,
                    "unit": f"distinct {'/'.join(sorted(net.kinds))} {what} the account sent from",
                }
            elif name == "reasoning_hits":
                hits = self.settings.reasoning_hits
                detail["reference"] = {
                    "k0": hits.k0,
                    "cap": hits.cap,
                    "threshold": hits.threshold,
                    "min_share": hits.min_share,
                    "unit": "exchanges eliciting step-by-step reasoning",
                }
            elif name.startswith("flagged_"):
                pr = self.settings.propagation[name.removeprefix("flagged_")]
                detail["reference"] = (
                    {
                        "x0": pr.x0,
                        "x1": pr.x1,
                        "unit": "share of the address's accounts today that are contained",
                    }
                    if name == "flagged_ip"
                    else {"k0": pr.k0, "unit": "contained accounts on the key"}
                )
            extra = evidence.get(name)
            if extra:
                detail.update(extra)
            out.append(
                {
                    "signal": spec.name,
                    "value": None if math.isnan(v) else round(float(v), 6),
                    "detail": detail,
                }
            )
        return out

    def process(
        self,
        rows: Sequence[Mapping[str, Any]],
        metas: Sequence[AccountMeta | None] | None = None,
        signals: pl.DataFrame | list[dict[str, Any]] | None = None,
        limits: bool = True,
        changes_only: bool = False,
    ) -> list[Decision]:
        """Decide a batch of exchanges (contract fields as dicts, in arrival order).

        Each exchange is folded in, scored and decided before the next, exactly as a service
        check would be, so the decisions do not depend on how the rows are batched.
        ``changes_only``: return only the decisions that changed an account's action (replay
        writes nothing else; building ~50,000 unused decisions per batch is measurable).
        """
        if not rows:
            return []
        if signals is None:
            signals = (
                self.content.compute(exchange_table(rows))
                if self.content is not None
                else self._network(rows)
            )
        sig_rows = signals.to_dicts() if isinstance(signals, pl.DataFrame) else signals
        known = self.campaigns.maybe_reload()
        observation, observe, features, score_one = (
            self._observation,
            self._observe,
            self._features,
            self._score_one,
        )
        sticky = self.settings.sticky_actions
        taint_rank = self.settings.propagation_rank
        retro, retro_ms = self._retro, self._retro_ms
        use_limits = limits and self.limiter is not None
        final = [0] * len(ACTIONS_BY_RANK)
        top = len(ACTIONS_BY_RANK) - 1
        fast = changes_only and not use_limits and sticky
        n_degraded = 0
        out: list[Decision] = []
        with self._lock:
            for i, row in enumerate(rows):
                ts = row.get("ts")
                ts_ms = ts if type(ts) is int else _ts_ms(ts)
                meta = metas[i] if metas is not None else None
                sig = sig_rows[i] if sig_rows is not None else None
                account, counters, distinct, keys, taint = observation(row, meta, sig, ts_ms)
                tip = keys.get("tip") if retro else None
                bucket = int(ts_ms // retro_ms)
                view, counts, deg = observe(
                    account, ts_ms, counters, distinct, (tip, bucket) if tip else None
                )
                n_degraded += deg
                # Read before _set_action: on the memory backend the view is the stored object.
                before, stored_cluster, stored_reasons = (
                    view.action_rank,
                    view.cluster_id,
                    view.reasons,
                )
                vals, cluster_id, evidence = features(
                    view, counts, keys, known, self._vouched(account, meta, counts, sig)
                )
                if self.peer is not None:
                    vals[-1] = self.peer.contribution(
                        account, keys, ts_ms, view.counters.get("n", 1.0), evidence
                    )
                if before == top and fast:
                    # Already at the top action: no score can change it, and replay needs no answer.
                    rank, score, contrib = before, 1.0, _NO_CONTRIB
                else:
                    rank, score, contrib = score_one(vals)
                if sticky and before > rank:
                    rank = before
                changed = rank != before
                if changed:
                    reasons = self._reasons(vals, contrib, evidence)
                    if not reasons and rank > 0:  # the contract forbids an unexplained action
                        rank, changed = before, False
                        reasons = list(stored_reasons)
                    else:
                        self._set_action(account, rank, cluster_id, reasons, deg)
                if taint and rank >= taint_rank:
                    self._spread(account, ts_ms, view, vals, changed, taint, bucket, deg)
                final[rank] += 1
                if not changed and changes_only and not use_limits:
                    continue
                if not changed:
                    reasons = list(stored_reasons) if rank == before else []
                    cluster_id = cluster_id or stored_cluster
                action = ACTIONS_BY_RANK[rank]
                hit: LimitHit | None = None
                if use_limits and action.is_served:
                    hit = self._limit(action, account, cluster_id, row.get("api_key_id"), deg)
                if hit is not None:
                    self.metrics.limited[hit.scope] = self.metrics.limited.get(hit.scope, 0) + 1
                if changed or not changes_only:
                    out.append(
                        Decision(
                            str(row.get("request_id") or ""),
                            account,
                            ts_ms,
                            action,
                            score,
                            cluster_id,
                            tuple(reasons),
                            hit.retry_after if hit else None,
                            hit.scope if hit else None,
                            changed,
                        )
                    )
            self._count_decisions(final, len(rows))
            self.metrics.degraded_checks += n_degraded
        return out

    # -- replay: a time-ordered batch in two passes ---------------------------------------

    def replay_batch(
        self, table: pa.Table, signals: pl.DataFrame | None, metas: Mapping[str, AccountMeta]
    ) -> list[Decision]:
        """Decide a time-ordered batch of exchanges (contract columns) for replay: changed decisions only, no limits.

        The same decisions, state and metrics as ``process(rows, metas, signals, limits=False,
        changes_only=True)``, in two passes. First everything that does not depend on a decision
        is computed for the whole batch: the state update (:meth:`MemoryState.fold`), the
        behaviour and sharing features, their scores and actions (numpy, the same float
        operations as :meth:`_score_one`). Then a short loop takes the decisions in order: it
        reads the taint sketches as they stand (a contained account's taint reaches the very next
        request), rescores only the rows that taint or a ratchet can change, and spreads taint.
        Sketch evictions wait for the end of the batch; near the cap the sketches one by one
        would evict before their use are dropped first (:meth:`MemoryState.plan_evictions`), and
        the batch is cut where that depends on decisions still to take (an exchange undecided even
        at its own start and a few after it go through :meth:`process`). Other backends, and
        batches without account ids or times, go through :meth:`process`.
        """
        n = table.num_rows
        if n == 0:
            return []
        if signals is None and self.content is not None:
            signals = self.content.compute(table)
        backend = self.backend
        cols = (
            _ReplayColumns.build(self, table, signals, metas)
            if isinstance(backend, MemoryState) and signals is not None
            else None
        )
        if cols is None:
            return self._replay_rows(table, signals, metas)
        assert isinstance(backend, MemoryState) and signals is not None
        out: list[Decision] = []
        lo = 0
        windows = self._windows
        while lo < n:
            part = cols if lo == 0 else cols.slice(lo)
            adds = additions(part.fold)
            if lo == 0 and windows.active:
                windows.note(adds.get_column("group"))
            evicted: dict[str, int] = {}
            undecided: int | None = None
            refs = self._pending_refs(backend, part) if self._retro else None
            pending = refs.height if refs is not None else 0
            if backend.size()["sketches"] + part.n_memberships + pending > backend.max_sketch_keys:
                taint_refs = part.taint_refs()
                evicted, undecided = backend.plan_evictions(
                    adds,
                    pl.concat([taint_refs, refs]) if pending and refs is not None else taint_refs,
                )
            stop = part.n if undecided is None else undecided // TOUCH_SLOTS
            if stop > 0:
                # Up to the first exchange whose sketches' fate depends on decisions still to take.
                piece = part if stop == part.n else part.slice(0, stop)
                with self._lock:
                    backend.drop(
                        evicted
                    )  # evicted before their first use: they come back empty then
                    out += self._replay_decide(
                        backend, piece, adds if piece is part else additions(piece.fold)
                    )
                lo += stop
                continue
            # That exchange's fate is undecided even at its own start: a few one by one, then again.
            window = min(_ROW_WINDOW, n - lo)
            out += self._replay_rows(table.slice(lo, window), signals.slice(lo, window), metas)
            lo += window
        return out

    def drop_passed_windows(self, now_ms: float) -> int:
        """Replay, between batches: drop the windowed sketches of buckets before ``now_ms``; how many went.

        Exchanges from ``now_ms`` on never read them (time order), so no count changes; what
        changes is the room under ``max_sketch_keys``, which the LRU would otherwise free by
        evicting live sketches. The replay calls it at fixed points of the log (its signal
        blocks), so where the cap binds the decisions still do not depend on the batch size.
        """
        backend = self.backend
        if not self._windows.active or not isinstance(backend, MemoryState):
            return 0
        passed = self._windows.passed(now_ms)
        with self._lock:
            backend.drop(passed)
        return len(passed)

    def _pending_refs(self, backend: MemoryState, cols: _ReplayColumns) -> pl.DataFrame:
        """The exits the batch's accounts remembered before it (retro-taint), each at its account's first row: taint the
        decisions may add to (``group``, ``key`` as :meth:`_ReplayColumns.taint_refs`)."""
        firsts = np.flatnonzero(
            cols.frame.get_column("acct").is_first_distinct().to_numpy()
        ).tolist()
        groups, keys = [], []
        for i in firsts:
            for g in backend.pending_exits(cols.accounts[i]):
                groups.append(g)
                keys.append(i * TOUCH_SLOTS + len(_MEMBERSHIPS))
        return pl.DataFrame(
            {"group": groups, "key": keys}, schema={"group": pl.String, "key": pl.Int64}
        )

    def _replay_rows(
        self, table: pa.Table, signals: pl.DataFrame | None, metas: Mapping[str, AccountMeta]
    ) -> list[Decision]:
        rows = exchange_rows(table)
        return self.process(
            rows,
            [metas.get(r["account_id"]) for r in rows],
            signals,
            limits=False,
            changes_only=True,
        )

    def _replay_decide(
        self, backend: MemoryState, cols: _ReplayColumns, adds: pl.DataFrame
    ) -> list[Decision]:
        """Both passes of :meth:`replay_batch` (under the lock), sketch evictions deferred."""
        s = self.settings
        n = cols.n
        known = self.campaigns.maybe_reload()
        folded = backend.fold(cols.fold, adds)
        vouched = self._vouched_rows(cols, folded)
        values, extra = self._base_features(cols, folded, known, vouched)
        vectorised = self.policy.min_evidence_kinds == 0
        rank_list: list[int] | None = None
        if vectorised:
            ranks, contrib, scores = self._score_matrix(values)
            rank_list = ranks.tolist()
        views = folded.views
        accounts, ts_list = cols.accounts, cols.ts_ms
        taint_cols = cols.taint
        sip_counts = folded.counts[:, _SIP_COLUMN].tolist()
        prop_rank = s.propagation_rank
        sticky = s.sticky_actions
        top = len(ACTIONS_BY_RANK) - 1
        taint_at = _N_BEHAVIOUR + len(SHARING_KINDS) + 2
        peek = backend.peek
        ip_floor = cols.ip_floor
        # Taint kinds each vouching level does not read.
        vouch_taint = [
            {
                PROPAGATION_KINDS.index(FEATURES[j][8:])
                for j in slots
                if FEATURES[j].startswith("flagged_")
            }
            for slots in self._vouch_slots
        ]
        # Taint keys that exist: most exchanges' keys carry no taint, and a set lookup is cheaper than a peek.
        live = backend.present({g for _, groups in taint_cols for g in groups if g is not None})
        final = [0] * len(ACTIONS_BY_RANK)
        touches: list[tuple[int, str]] = []
        out: list[Decision] = []
        retro, retro_b = self._retro, cols.retro_b
        tips = next((groups for t, groups in taint_cols if t == _TAINT_IP), None) if retro else None
        for i in range(n):
            view = views[i]
            if tips is not None and (tip := tips[i]) is not None:
                note_exit(
                    view, retro_b[i], tip, retro, prop_rank
                )  # as Enforcer._observe, before the decision
            before = view.action_rank
            if before == top and sticky:
                # Already at the top action: no score can change it, and replay needs no answer.
                final[top] += 1
                if taint_cols and top >= prop_rank:
                    self._replay_spread(
                        backend,
                        i,
                        view,
                        None,
                        values,
                        rank_list,
                        False,
                        taint_cols,
                        touches,
                        live,
                        retro_b[i] if retro else 0,
                    )
                continue
            vals: list[float] | None = None
            evidence: dict[str, Any] = extra[i] if extra is not None else {}
            if taint_cols and before < prop_rank:
                # An account already contained is in the taint sets of its own keys: it reads none.
                for t, groups in taint_cols:
                    if t in vouch_taint[vouched[i]]:
                        continue
                    group = groups[i]
                    if group not in live:
                        continue
                    count = peek(group)
                    if not count or (t == _TAINT_IP and count < ip_floor[i]):
                        continue
                    if vals is None:
                        vals = values[i].tolist()
                        evidence = dict(evidence)
                    if t == _TAINT_IP:
                        # A cloud NAT with one attacker among ten customers is not a proxy pool.
                        vals[taint_at + t] = count / max(sip_counts[i], count)
                    else:
                        vals[taint_at + t] = float(count)
                    evidence[f"flagged_{PROPAGATION_KINDS[t]}"] = {
                        "key": group[group.index(":", 4) + 1 :],
                        "contained_accounts": count,
                    }
            row_contrib: list[float] | None = None
            if vals is not None or not vectorised:
                if vals is None:
                    vals = values[i].tolist()
                rank, score, row_contrib = self._score_one(vals)
            else:
                assert rank_list is not None
                rank, score = rank_list[i], scores[i]
            if sticky and before > rank:
                rank = before
            if rank != before:
                if vals is None:
                    vals = values[i].tolist()
                if row_contrib is None:
                    row_contrib = contrib[i].tolist()
                reasons = self._reasons(vals, row_contrib, evidence)
                if not reasons and rank > 0:  # the contract forbids an unexplained action
                    rank = before
                else:
                    cluster_id = _cluster(view.cluster_id, cols.member_cid[i], cols.link_cid[i])
                    # What _set_action does, on the view current at this exchange (memory backend).
                    self.local.set_action(accounts[i], rank, cluster_id, reasons)
                    view.action_rank, view.cluster_id, view.reasons = (
                        rank,
                        cluster_id,
                        list(reasons),
                    )
                    decision = Decision(
                        cols.request_id(i), accounts[i], ts_list[i], ACTIONS_BY_RANK[rank], score,
                        cluster_id, tuple(reasons), None, None, True,
                    )  # fmt: skip
                    out.append(decision)
                    if taint_cols and rank >= prop_rank:
                        self._replay_spread(
                            backend,
                            i,
                            view,
                            vals,
                            values,
                            rank_list,
                            True,
                            taint_cols,
                            touches,
                            live,
                            retro_b[i] if retro else 0,
                        )
                    final[rank] += 1
                    continue
            if taint_cols and rank >= prop_rank:
                self._replay_spread(
                    backend,
                    i,
                    view,
                    vals,
                    values,
                    rank_list,
                    False,
                    taint_cols,
                    touches,
                    live,
                    retro_b[i] if retro else 0,
                )
            final[rank] += 1
        backend.settle(_touch_order(folded.touched, touches))
        self._count_decisions(final, n)
        return out

    def _count_decisions(self, per_rank: Sequence[int], checks: int) -> None:
        """Add a batch's decisions per action (``per_rank[r]``: how many at rank r) to the metrics."""
        decisions = self.metrics.decisions
        for r, count in enumerate(per_rank):
            if count:
                key = ACTIONS_BY_RANK[r].value
                decisions[key] = decisions.get(key, 0) + count
        self.metrics.checks += checks

    def _replay_spread(
        self,
        backend: MemoryState,
        i: int,
        view: AccountView,
        vals: list[float] | None,
        values: np.ndarray,
        rank_list: list[int] | None,
        changed: bool,
        taint_cols: list[tuple[int, list[str | None]]],
        touches: list[tuple[int, str]],
        live: set[str],
        bucket: int = 0,
    ) -> None:
        """:meth:`_spread` inside a batch: the account's taint memberships, recorded for :meth:`MemoryState.settle`."""
        groups = [g for _, col in taint_cols if (g := col[i]) is not None]
        if not groups:
            return
        linked_only = False
        if changed or view.counters.get("taint_linked_only", 0.0) > 0.0:
            # Without taint read, the row's values are the base row, whose link slots are already
            # empty: its own-evidence rank is the vectorised one.
            own_rank = rank_list[i] if vals is None and rank_list is not None else None
            linked_only, inc = self._linked_only(
                view, vals if vals is not None else values[i].tolist(), changed, own_rank
            )
            if inc:
                apply_counters(view.counters, inc)
        account = view.account_id
        if not linked_only and account != COUNT_ONLY:
            if self._retro:
                groups += [g for g in take_exits(view, bucket) if g not in groups]
            for k, group in enumerate(groups):
                backend.add_deferred(group, account)
                live.add(group)
                touches.append((i * TOUCH_SLOTS + len(_MEMBERSHIPS) + k, group))

    def _vouched_rows(self, cols: _ReplayColumns, folded: Folded) -> list[int]:
        """:meth:`_vouched` of every row of a folded batch (the end-user count as it stands after the row)."""
        vouched = cols.kyc
        if self._eu_min:
            vouched = vouched | (folded.counts[:, _EU_COLUMN] >= self._eu_min)
        out: list[int] = (vouched.astype(np.int64) * (1 + cols.infra.astype(np.int64))).tolist()
        return out

    def _base_features(
        self,
        cols: _ReplayColumns,
        folded: Folded,
        known: KnownCampaigns,
        vouched: list[int] | None = None,
    ) -> tuple[np.ndarray, list[dict[str, Any]] | None]:
        """Feature matrix of a folded batch without the taint columns (NaN = abstain), and per-row evidence (known campaigns, peers)."""
        n = cols.n
        warmup = self.settings.warmup
        nan = math.nan
        values = np.full((n, len(FEATURES)), nan)
        cnt, content, reasoning, grader, cap_top, tpl_top, cap_target, hits = folded.values.T
        warm = cnt >= warmup
        cwarm = warm & (content >= warmup)
        with np.errstate(divide="ignore", invalid="ignore"):
            for j, num in (
                (0, reasoning),
                (1, grader),
                (2, cap_top),
                (3, tpl_top),
                (5, cap_target),
            ):
                values[:, j] = np.where(cwarm & (content > 0), num / content, nan)
            ip_count = folded.counts[:, 0].astype(np.float64)
            values[:, 4] = np.where(warm & (cnt > 0), ip_count / cnt, nan)
            # What _features does per row: the count where the exchange added to the account's sketch,
            # and the hits while they are at least min_share of its content exchanges.
            share = self.settings.reasoning_hits.min_share
            values[:, _REASONING_HITS] = np.where(
                content > 0, np.where(hits >= share * content, hits, 0.0), nan
            )
        counts = folded.counts.astype(np.float64).T
        present = cols.present
        values[:, _EXIT_NETWORKS] = np.where(present[_NET_COLUMN], counts[_NET_COLUMN], nan)
        values[:, _EXIT_COUNTRIES] = np.where(present[_CTY_COLUMN], counts[_CTY_COLUMN], nan)
        off = _N_BEHAVIOUR
        pay, paydom = counts[_PAY_COLUMN], counts[_PAY_COLUMN + 1]
        values[:, off] = np.where(present[_PAY_COLUMN], np.where(paydom >= 2, pay, 0.0), nan)
        for column, slot in _SHARING_COLUMNS:
            values[:, off + slot] = np.where(present[column], counts[column], nan)
        if vouched is not None:
            level = np.asarray(vouched, dtype=np.int64)
            for lv in (1, 2):
                rows = level == lv
                for j in self._vouch_slots[lv]:
                    values[rows, j] = nan
        extra: list[dict[str, Any]] | None = None
        if known.members or known.indicators or self.peer is not None:
            extra = [{} for _ in range(n)]
            accounts, n_list = cols.accounts, cnt.tolist()
            for i in range(n):
                keys = cols.keys_of(i)
                vals = [nan] * len(FEATURES)
                if known.members or known.indicators:
                    cols.member_cid[i], cols.link_cid[i] = self._known(
                        accounts[i], keys, known, vals, extra[i]
                    )
                if self.peer is not None:
                    vals[-1] = self.peer.contribution(
                        accounts[i], keys, cols.ts_ms[i], n_list[i], extra[i]
                    )
                values[i, _KNOWN_MEMBER] = vals[_KNOWN_MEMBER]
                values[i, _KNOWN_MEMBER + 1] = vals[_KNOWN_MEMBER + 1]
                values[i, -1] = vals[-1]
        return values, extra

    def _score_matrix(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[float]]:
        """:meth:`_score_one` of every row at once: the same float operations in the same order, so the same bits.

        (ranks, contributions, scores); scores with ``math.exp`` as the scalar path does.
        """
        kind, weight, offset, scale, max_k = self._coef
        x = np.where(np.isnan(values), 0.0, values)
        with np.errstate(divide="ignore", invalid="ignore"):
            g = (x - offset) / scale
        graded = np.where(
            x > max_k, 0.0, weight * np.where(g < 0.0, 0.0, np.where(g > 1.0, 1.0, g))
        )
        mw = self.settings.member_weight
        contrib: np.ndarray = np.where(
            kind == 2, x, np.where(kind == 3, np.where(mw < x, mw, x), graded)
        )
        if self._one_addr:
            _one_address(contrib)
        logit = np.full(values.shape[0], self.bias)
        for j in range(contrib.shape[1]):
            logit += contrib[:, j]
        exp = math.exp
        scores = [1.0 / (1.0 + exp(-v)) if v > -700 else 0.0 for v in logit.tolist()]
        p = self.policy
        score = np.array(scores)
        rank = np.zeros(score.shape[0], dtype=np.int64)
        for action in (Action.MONITOR, Action.THROTTLE, Action.CHALLENGE, Action.SUSPEND):
            rank = np.where(score >= p.thresholds[action], action.rank, rank)
        non_volume = (contrib[:, self._non_volume] >= p.min_reason_contribution).any(axis=1)
        monitor, challenge = Action.MONITOR.rank, Action.CHALLENGE.rank
        if p.flag_requires_non_volume_reason:
            rank = np.where(~non_volume & (rank > monitor), monitor, rank)
        cluster_total = np.zeros(score.shape[0])
        for j in self._cluster:
            cluster_total += contrib[:, j]
        ok = (
            non_volume & (cluster_total >= p.min_cluster_contribution)
            if p.suspend_requires_cluster
            else non_volume
        )
        rank = np.where(~ok & (rank > challenge), challenge, rank)
        return rank, contrib, scores

    def _spread(
        self,
        account: str,
        ts_ms: int,
        view: AccountView,
        vals: list[float],
        changed: bool,
        taint: list[str],
        bucket: int = 0,
        degraded: bool = False,
    ) -> None:
        """A contained account's keys carry its taint from the next request on (any account).

        Only accounts contained on evidence of their own (or by an analyst or a known campaign)
        spread taint: one contained only because it used a tainted address does not, else a
        false positive on a VPN exit would walk through every account behind that provider.
        The mark is a counter (``taint_linked_only``), so it lives in either backend.
        With retro-taint, the exits the account used in this window before it spread taint carry it
        too (after this exchange's keys, in the order they were first used).
        """
        linked_only, inc = self._linked_only(view, vals, changed)
        if not linked_only:
            if self._retro:
                taint = taint + [
                    g for g in self._take_exits(account, view, bucket, degraded) if g not in taint
                ]
            self._observe(account, ts_ms, inc, [(g, account) for g in taint])
        elif inc:
            self._observe(account, ts_ms, inc, ())

    def _linked_only(
        self, view: AccountView, vals: list[float], changed: bool, own_rank: int | None = None
    ) -> tuple[bool, dict[str, float]]:
        """Whether a contained account is contained only through propagated links, and the mark's change.

        ``own_rank``: the rank of ``vals`` without the links, when the caller has it.
        """
        linked_only = view.counters.get("taint_linked_only", 0.0) > 0.0
        inc: dict[str, float] = {}
        if changed or linked_only:
            if own_rank is None:
                own = list(vals)
                for j in self._link_slots:
                    own[j] = math.nan
                own_rank = self._score_one(own)[0]
            own_ok = own_rank >= self.settings.propagation_rank
            if changed and not own_ok:
                inc["taint_linked_only"], linked_only = 1.0, True
            elif linked_only and own_ok:
                inc["taint_linked_only"], linked_only = -1.0, False
        return linked_only, inc

    def _set_action(
        self,
        account: str,
        rank: int,
        cluster_id: str | None,
        reasons: list[dict[str, Any]],
        degraded: bool,
    ) -> None:
        self.local.set_action(account, rank, cluster_id, reasons)
        if degraded:
            return
        try:
            self.backend.set_action(account, rank, cluster_id, reasons)
        except StateUnavailable:
            self._mark_down()

    def _limit(
        self, action: Action, account: str, cluster_id: str | None, api_key: Any, degraded: bool
    ) -> LimitHit | None:
        assert self.limiter is not None
        if self.settings.fail_mode == "closed" and (degraded or self._degraded()):
            return LimitHit(
                "state_unavailable", "fail closed", max(1.0, self.settings.redis_retry_seconds)
            )
        if not degraded and not self._degraded():
            try:
                return self.limiter.check(
                    action, account, cluster_id, str(api_key) if api_key else None
                )
            except StateUnavailable:
                self._mark_down()
                if self.settings.fail_mode == "closed":
                    return LimitHit(
                        "state_unavailable",
                        "fail closed",
                        max(1.0, self.settings.redis_retry_seconds),
                    )
        return self.limiter.check_fallback(account)

    def fold_content(
        self,
        rows: Sequence[Mapping[str, Any]],
        metas: Sequence[AccountMeta | None],
        signals: pl.DataFrame,
    ) -> None:
        """Fold content signals of already-checked exchanges into their accounts (no decision)."""
        base = {"n", "in_tok", "out_tok"}
        with self._lock:
            for row, meta, sig in zip(rows, metas, signals.to_dicts(), strict=True):
                ts_ms = _ts_ms(row.get("ts"))
                account, counters, distinct, _, _ = self._observation(row, meta, sig, ts_ms)
                content = {k: v for k, v in counters.items() if k not in base}
                tpl = [(g, m) for g, m in distinct if g.startswith("tpl:")]
                if content or tpl:
                    self._observe(account, ts_ms, content, tpl)

    def record(
        self, account_id: str, ts: Any, output_tokens: int, input_tokens: int | None = None
    ) -> None:
        """Fold a completed exchange's token counts into the account (no new exchange is counted)."""
        counters = {"out_tok": float(output_tokens)}
        if input_tokens is not None:
            counters["in_tok_recorded"] = float(input_tokens)
        with self._lock:
            self._observe(account_id, _ts_ms(ts), counters, ())
            self.metrics.records += 1

    def account(self, account_id: str) -> AccountView | None:
        """The account's stored state (shared backend first, local fallback when it is down)."""
        if not self._degraded():
            try:
                return self.backend.get(account_id)
            except StateUnavailable:
                self._mark_down()
        return self.local.get(account_id)


# --------------------------------------------------------------------------- replay batches

#: Sketch memberships of an exchange, in :meth:`Enforcer._observation`'s order (it fixes the LRU order).
_MEMBERSHIPS = (
    "g_ip", "g_pfx", "g_sip", "g_net", "g_cty", "g_tpl", "g_uag", "g_pay", "g_paydom", "g_eu"
)  # fmt: skip
_SIP_COLUMN = _MEMBERSHIPS.index("g_sip")
_NET_COLUMN = _MEMBERSHIPS.index("g_net")
_CTY_COLUMN = _MEMBERSHIPS.index("g_cty")
_PAY_COLUMN = _MEMBERSHIPS.index("g_pay")  # g_paydom follows
_EU_COLUMN = _MEMBERSHIPS.index("g_eu")
#: Membership column -> its sharing slot (the one count that fills that feature).
_SHARING_COLUMNS = tuple((_MEMBERSHIPS.index(f"g_{p[:3]}"), j) for p, j in _GROUP_SLOT.items())
#: Counters the features read after each exchange (the first is the exchange count).
_READS = (
    "n",
    "content_n",
    "reasoning_sum",
    "grader_sum",
    "cap_top",
    "tpl_top",
    "cap_target",
    "reasoning_hits",
)
#: Exchanges decided one by one from one that uses a sketch whose eviction cannot wait.
_ROW_WINDOW = 64


@dataclass
class _ReplayColumns:
    """One replay batch as the columns both passes of :meth:`Enforcer.replay_batch` read."""

    n: int
    accounts: list[str]
    ts_ms: list[int]
    fold: ExchangeColumns
    present: list[np.ndarray]  # per membership column: the exchange has that membership
    taint: list[
        tuple[int, list[str | None]]
    ]  # (slot in PROPAGATION_KINDS, taint group per row), _observation's order
    frame: pl.DataFrame  # the membership columns and their members
    table: pa.Table
    fps: list[Any]
    kyc: np.ndarray  # per row: the account's verification makes it vouched
    infra: np.ndarray  # per row: the address is of a vouched.infrastructure_kinds kind
    ip_floor: list[
        int
    ]  # per row: contained accounts its address needs before it links (propagation.links.ip.min_contained)
    retro_b: list[int]  # per row: the retro-taint window bucket (empty without retro-taint)
    member_cid: list[str | None] = field(default_factory=list)
    link_cid: list[str | None] = field(default_factory=list)
    _keys: list[tuple[Any, ...]] | None = None

    @classmethod
    def build(
        cls, e: Enforcer, table: pa.Table, signals: pl.DataFrame, metas: Mapping[str, AccountMeta]
    ) -> _ReplayColumns | None:
        """The batch's columns, or None when it has what only the row path handles (missing ids or times)."""
        s = e.settings
        n = table.num_rows
        names = table.column_names
        if "account_id" not in names or "ts" not in names or signals.height != n:
            return None
        acct_col, ts_col = table["account_id"], table["ts"]
        if (
            acct_col.null_count
            or ts_col.null_count
            or not (pa.types.is_string(acct_col.type) or pa.types.is_large_string(acct_col.type))
        ):
            return None
        if pa.types.is_timestamp(ts_col.type):
            ts_col = pc.cast(pc.cast(ts_col, pa.timestamp("ms", "UTC"), safe=False), pa.int64())
        elif not pa.types.is_integer(ts_col.type):
            return None
        ts_series = pl.from_arrow(ts_col)  # (pyarrow's to_numpy on a chunked array imports pandas)
        assert isinstance(ts_series, pl.Series)
        ts = ts_series.cast(pl.Int64).to_numpy()
        accounts: list[str] = acct_col.to_pylist()
        fps: list[Any] = []
        domains: list[str | None] = []
        kyc = np.zeros(n, dtype=bool)
        verifications = s.vouched.verifications
        for i, a in enumerate(accounts):
            meta = metas.get(a)
            if meta is not None and meta.verification in verifications:
                kyc[i] = True
            if meta is not None and meta.payment_fingerprint:
                fps.append(meta.payment_fingerprint)
                domains.append(e._org_domain(meta, a))
            else:
                fps.append(None)
                domains.append(None)

        def col(name: str, dtype: Any) -> pl.Series:
            if name not in names:
                return pl.Series(name, [None] * n, dtype=dtype)
            series = pl.from_arrow(table[name])
            assert isinstance(series, pl.Series)
            return series.alias(name).cast(dtype)

        def sig(name: str, dtype: Any) -> pl.Series:
            return (
                signals.get_column(name).cast(dtype).alias(name)
                if name in signals.columns
                else pl.Series(name, [None] * n, dtype=dtype)
            )

        def bucket(ms: float) -> np.ndarray:
            # Python's int(ts_ms // ms): numpy's float floor division is CPython's algorithm.
            return (
                np.floor_divide(ts.astype(np.float64), ms).astype(np.int64)
                if ms
                else np.zeros(n, dtype=np.int64)
            )

        frame = pl.DataFrame([
            pl.Series("acct", accounts, dtype=pl.String), pl.Series("ts", ts), col("client_ip", pl.String), col("user_agent", pl.String),
            col("end_user_id", pl.String),
            col("input_tokens", pl.Float64), col("output_tokens", pl.Float64),
            sig("ip_prefix", pl.String), sig("network_kind", pl.String), sig("reasoning", pl.Float64),
            sig("grader", pl.Float64), sig("capability", pl.String), sig("template_id", pl.String), sig("asn", pl.String),
            sig("country", pl.String),
            pl.Series("fp", [None if f is None else str(f) for f in fps], dtype=pl.String),
            pl.Series("domain", domains, dtype=pl.String),
            pl.Series("pfx_b", bucket(e._prefix_ms)), pl.Series("sip_b", bucket(e._ip_ms)), pl.Series("net_b", bucket(e._net_ms)),
            pl.Series("cty_b", bucket(e._cty_ms)),
        ])  # fmt: skip
        c, lit, cat = pl.col, pl.lit, pl.concat_str
        null = lit(None, dtype=pl.String)
        ip_ok = (c("client_ip").is_not_null() & (c("client_ip") != "")).fill_null(False)
        explained = c("network_kind").is_in(sorted(s.explained_kinds)).fill_null(False)
        shared_ip = ip_ok & ~explained
        prefix_ok = (c("ip_prefix").is_not_null() & (c("ip_prefix") != "")).fill_null(
            False
        ) & ~explained
        cap_ok = (c("capability").is_not_null() & (c("capability") != "")).fill_null(False)
        has_tpl = c("template_id").is_not_null()
        has_fp = c("fp").is_not_null()
        has_content = c("reasoning").is_not_null() | c("grader").is_not_null()
        # Enforcer._observation's exit network: the ASN, else the prefix, of an address of a counted kind.
        has_prefix = (c("ip_prefix").is_not_null() & (c("ip_prefix") != "")).fill_null(False)
        network = pl.coalesce(c("asn"), pl.when(has_prefix).then(cat([lit("p:"), c("ip_prefix")])))
        counted = (
            ip_ok
            & c("network_kind").is_in(sorted(s.exit_networks.kinds)).fill_null(False)
            & network.is_not_null()
        )
        in_land = (
            ip_ok
            & c("network_kind").is_in(sorted(s.exit_countries.kinds)).fill_null(False)
            & (c("country").is_not_null() & (c("country") != "")).fill_null(False)
        )
        taint = e._taint
        frame = frame.select(
            g_ip=pl.when(ip_ok).then(cat([lit("ip:"), c("acct")])),
            m_ip=c("client_ip"),
            g_pfx=pl.when(prefix_ok).then(cat([lit("pfx:"), c("ip_prefix"), lit("|"), c("pfx_b").cast(pl.String)])) if e._prefix_ms else null,
            g_sip=pl.when(shared_ip).then(cat([lit("sip:"), c("client_ip"), lit("|"), c("sip_b").cast(pl.String)])) if e._ip_ms else null,
            g_net=pl.when(counted).then(cat([lit("net:"), c("acct"), lit("|"), c("net_b").cast(pl.String)])) if e._net_ms else null,
            m_net=network,
            g_cty=pl.when(in_land).then(cat([lit("cty:"), c("acct"), lit("|"), c("cty_b").cast(pl.String)])) if e._cty_ms else null,
            m_cty=c("country"),
            g_tpl=pl.when(has_tpl).then(cat([lit("tpl:"), c("template_id")])),
            g_uag=pl.when((c("user_agent").is_not_null() & (c("user_agent") != "")).fill_null(False)).then(cat([lit("uag:"), c("user_agent")])) if e._track_ua else null,
            g_pay=pl.when(has_fp).then(cat([lit("pay:"), c("fp")])),
            g_paydom=pl.when(has_fp).then(cat([lit("paydom:"), c("fp")])),
            m_paydom=c("domain"),
            g_eu=pl.when((c("end_user_id").is_not_null() & (c("end_user_id") != "")).fill_null(False)).then(cat([lit("eu:"), c("acct")])) if e._eu_min else null,
            m_eu=c("end_user_id"),
            acct=c("acct"),
            ts=c("ts"),
            t_ip=pl.when(shared_ip).then(cat([lit(taint["ip"]), c("client_ip")])) if "ip" in taint else null,
            t_tpl=pl.when(has_tpl).then(cat([lit(taint["template"]), c("template_id")])) if "template" in taint else null,
            t_pay=pl.when(has_fp).then(cat([lit(taint["payment"]), c("fp")])) if "payment" in taint else null,
            in_tok=c("input_tokens").fill_null(0.0),
            out_tok=pl.when(c("output_tokens").is_not_null() & (c("output_tokens") != 0)).then(c("output_tokens")),
            content_n=pl.when(has_content).then(lit(1.0)),
            reasoning_sum=pl.when(has_content).then(c("reasoning").fill_null(0.0)),
            grader_sum=pl.when(has_content).then(c("grader").fill_null(0.0)),
            reasoning_hits=pl.when(has_content & (c("reasoning") >= s.reasoning_hits.threshold).fill_null(False)).then(lit(1.0)),
            cap_name=pl.when(cap_ok).then(cat([lit("cap:"), c("capability")])),
            cap_target=pl.when(cap_ok & c("capability").is_in(sorted(s.target_capabilities))).then(lit(1.0)),
            # what Enforcer._observation puts in an exchange's link keys (known campaigns, peer indicators)
            k_ip=pl.when(ip_ok).then(c("client_ip")), k_prefix=c("ip_prefix"), k_tpl=c("template_id"),
            k_ua=pl.when((c("user_agent").is_not_null() & (c("user_agent") != "")).fill_null(False)).then(c("user_agent")),
        )  # fmt: skip
        fold = ExchangeColumns(
            frame=frame,
            account="acct",
            ts_ms="ts",
            counters={k: k for k in ("in_tok", "out_tok", "content_n", "reasoning_sum", "grader_sum", "cap_target", "reasoning_hits")},
            families=["cap_name", "g_tpl"],  # a template's counter field is its sketch key (tpl:<id>)
            memberships=[("g_ip", "m_ip"), ("g_pfx", "acct"), ("g_sip", "acct"), ("g_net", "m_net"), ("g_cty", "m_cty"), ("g_tpl", "acct"),
                         ("g_uag", "acct"), ("g_pay", "acct"), ("g_paydom", "m_paydom"), ("g_eu", "m_eu")],
            reads=_READS,
        )  # fmt: skip
        taint_cols = [
            (PROPAGATION_KINDS.index(kind), frame.get_column(name).to_list())
            for kind, name in (("ip", "t_ip"), ("template", "t_tpl"), ("payment", "t_pay"))
            if kind in taint
        ]
        present = [frame.get_column(name).is_not_null().to_numpy() for name in _MEMBERSHIPS]
        floors = e._ip_min_contained
        ip_floor = (
            signals.get_column("network_kind")
            .cast(pl.String)
            .replace_strict(floors, default=1, return_dtype=pl.Int64)
            .to_list()
            if floors and "network_kind" in signals.columns
            else [1] * n
        )
        infra = (
            signals.get_column("network_kind")
            .cast(pl.String)
            .is_in(sorted(e._infra_kinds))
            .fill_null(False)
            .to_numpy()
            if "network_kind" in signals.columns
            else np.zeros(n, dtype=bool)
        )
        retro_b: list[int] = bucket(e._retro_ms).tolist() if e._retro else []
        return cls(
            n,
            accounts,
            ts.tolist(),
            fold,
            present,
            taint_cols,
            frame,
            table,
            fps,
            kyc,
            infra,
            ip_floor,
            retro_b,
            [None] * n,
            [None] * n,
        )

    def slice(self, start: int, length: int | None = None) -> _ReplayColumns:
        """Rows ``start`` .. ``start + length`` (to the end by default), without recomputing anything."""
        stop = self.n if length is None else min(self.n, start + length)
        frame = self.frame.slice(start, stop - start)
        fold = ExchangeColumns(
            frame,
            self.fold.account,
            self.fold.ts_ms,
            self.fold.counters,
            self.fold.families,
            self.fold.memberships,
            self.fold.reads,
        )
        return _ReplayColumns(
            stop - start, self.accounts[start:stop], self.ts_ms[start:stop], fold, [m[start:stop] for m in self.present],
            [(t, groups[start:stop]) for t, groups in self.taint], frame, self.table.slice(start, stop - start),
            self.fps[start:stop], self.kyc[start:stop], self.infra[start:stop], self.ip_floor[start:stop], self.retro_b[start:stop],
            self.member_cid[start:stop], self.link_cid[start:stop],
        )  # fmt: skip

    def taint_refs(self) -> pl.DataFrame:
        """Taint keys the batch's decisions may read or add to, at the earliest moment (``group``, ``key``)."""
        row = pl.int_range(pl.len(), dtype=pl.Int64) * TOUCH_SLOTS + len(_MEMBERSHIPS)
        parts = [
            self.frame.select(pl.col(c).alias("group"), row.alias("key")).filter(
                pl.col("group").is_not_null()
            )
            for c in ("t_ip", "t_tpl", "t_pay")
        ]
        return pl.concat(parts)

    @property
    def n_memberships(self) -> int:
        """How many sketch keys the batch names at most (memberships and taint keys, repeats included)."""
        return sum(
            self.n - self.frame.get_column(name).null_count()
            for name in (*_MEMBERSHIPS, "t_ip", "t_tpl", "t_pay")
        )

    def keys_of(self, i: int) -> dict[str, Any]:
        """Exchange ``i``'s link keys, as :meth:`Enforcer._observation` builds them."""
        if self._keys is None:
            f = self.frame
            self._keys = list(
                zip(
                    *(
                        f.get_column(k).to_list()
                        for k in ("k_ip", "k_prefix", "g_sip", "g_net", "g_cty", "k_tpl", "k_ua")
                    ),
                    self.fps,
                    strict=True,
                )
            )
        ip, prefix, sip, net, cty, tid, ua, fp = self._keys[i]
        keys: dict[str, Any] = {"ip": ip, "prefix": prefix}
        if sip is not None:
            keys["sip"] = sip
        if net is not None:
            keys["net"] = net
        if cty is not None:
            keys["cty"] = cty
        if tid is not None:
            keys["template"] = tid
        if ua is not None:
            keys["user_agent"] = ua
        if fp is not None:
            keys["payment"] = fp
        return keys

    def request_id(self, i: int) -> str:
        if "request_id" not in self.table.column_names:
            return ""
        return str(self.table["request_id"][i].as_py() or "")


def _touch_order(touched: pl.DataFrame, taint: list[tuple[int, str]]) -> list[str]:
    """Every sketch a batch touched, in the order one-by-one updates touched them last (oldest first).

    ``touched``: the fold's last addition per sketch (:attr:`Folded.touched`); ``taint``: the
    taint additions after it, ``(row * TOUCH_SLOTS + position, group)``.
    """
    if taint:
        extra = pl.DataFrame(
            {"group": [g for _, g in taint], "key": [k for k, _ in taint]},
            schema={"group": pl.String, "key": pl.Int64},
        )
        touched = pl.concat([touched, extra]).group_by("group").agg(pl.col("key").max())
    order: list[str] = touched.sort("key").get_column("group").to_list()
    return order


#: Exchange fields the state update reads per row (content comes from the signals table).
ROW_COLUMNS = (
    "request_id",
    "account_id",
    "ts",
    "client_ip",
    "input_tokens",
    "output_tokens",
    "user_agent",
    "api_key_id",
    "end_user_id",
)


def exchange_rows(batch: pa.Table) -> list[dict[str, Any]]:
    """The state update's fields of a batch as dicts, ``ts`` as epoch milliseconds (columnar conversion)."""
    cols = [c for c in ROW_COLUMNS if c in batch.column_names]
    small = batch.select(cols)
    if "ts" in cols and pa.types.is_timestamp(small.schema.field("ts").type):
        small = small.set_column(
            cols.index("ts"),
            "ts",
            pc.cast(pc.cast(small["ts"], pa.timestamp("ms", "UTC"), safe=False), pa.int64()),
        )
    out: list[dict[str, Any]] = small.to_pylist()
    return out


class ScalarNetwork:
    """Per-address prefix, network kind and ASN for single checks (the batch path uses ``network_context``).

    Same semantics as :func:`distillguard.signals.network.network_context`: ``/24`` or ``/48``
    prefix, longest matching ``ip_intel`` row (its kind and ASN), ``unknown`` and no ASN outside
    every row. Cached per address.
    """

    def __init__(self, intel: pa.Table | None, cache_size: int = 65536) -> None:
        self.by_len: dict[int, dict[Any, tuple[str, int | None]]] = {}
        if intel is not None and intel.num_rows:
            asns = (
                intel["asn"].to_pylist() if "asn" in intel.column_names else [None] * intel.num_rows
            )
            for cidr, kind, asn in zip(
                intel["cidr"].to_pylist(), intel["kind"].to_pylist(), asns, strict=True
            ):
                net = ipaddress.ip_network(cidr, strict=False)
                self.by_len.setdefault(net.prefixlen, {}).setdefault(
                    net, (str(kind), None if asn is None else int(asn))
                )
        self.lengths = sorted(self.by_len, reverse=True)
        self.context = functools.lru_cache(maxsize=cache_size)(self._context)

    def _context(self, ip: str) -> tuple[str | None, str, int | None]:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return None, "unknown", None
        prefix = str(
            ipaddress.ip_network(f"{addr}/{24 if addr.version == 4 else 48}", strict=False)
        )
        for length in self.lengths:
            if length > addr.max_prefixlen:
                continue
            hit = self.by_len[length].get(ipaddress.ip_network(f"{addr}/{length}", strict=False))
            if hit is not None:
                return prefix, hit[0], hit[1]
        return prefix, "unknown", None


def network_signals(
    ips: Sequence[str], intel: pa.Table | None, with_country: bool = True
) -> pl.DataFrame:
    """``ip_prefix, network_kind, asn, country`` only: what a check can know cheaply before content signals.

    ``with_country`` False leaves ``country`` null (no country table is loaded).
    """
    from distillguard.signals.geo import countries
    from distillguard.signals.network import network_context

    addresses = pa.array(list(ips), pa.string())
    net = network_context(addresses, intel)
    frame = pl.from_arrow(net.select(["ip_prefix", "network_kind", "asn"]))
    assert isinstance(frame, pl.DataFrame)
    land = countries(addresses) if with_country else pa.nulls(len(addresses), pa.string())
    return frame.with_columns(pl.Series("country", land, dtype=pl.String))


def build_enforcer(
    config: Mapping[str, Any],
    *,
    backend: str | None = None,
    redis_url: str | None = None,
    content: ContentSignals | None = None,
    with_limits: bool = True,
    intel: pa.Table | None = None,
) -> Enforcer:
    """An Enforcer on the configured (or given) backend, with limits on the same store."""
    settings = EnforceSettings.from_config(config)
    kind = backend or settings.backend
    url = redis_url or settings.redis_url
    state: StateBackend
    if kind == "redis":
        from distillguard.enforce.state import RedisState

        state = RedisState(
            url, settings.redis_prefix, settings.state_ttl_seconds, settings.redis_timeout
        )
    else:
        state = MemoryState(settings.max_accounts, settings.max_sketch_keys, settings.hll_precision)
    limiter = (
        Limiter(
            settings.account_limits,
            settings.cluster_limit,
            settings.api_key_limit,
            settings.fallback_limit,
            redis_url=url if kind == "redis" else None,
            prefix=settings.redis_prefix,
            timeout=settings.redis_timeout,
        )
        if with_limits
        else None
    )
    return Enforcer(
        config, backend=state, limiter=limiter, content=content, settings=settings, intel=intel
    )


def _ts_ms(value: Any) -> int:
    if value is None:
        return int(time.time() * 1000)
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    if isinstance(value, int | float):
        return int(value)
    return int(
        datetime.fromisoformat(str(value).replace("Z", "+00:00")).astimezone(UTC).timestamp() * 1000
    )


def exchange_table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Contract-typed Arrow table from exchange dicts (missing optional columns become nulls)."""
    cols: dict[str, Any] = {}
    for f in EXCHANGE_SCHEMA:
        vals = [r.get(f.name) for r in rows]
        if f.name == "ts":
            vals = [_ts_ms(v) for v in vals]
            cols[f.name] = pa.array(vals, pa.int64()).cast(f.type)
        elif f.name == "prompt":
            cols[f.name] = pa.array([v or "" for v in vals], pa.string())
        elif f.name in ("input_tokens", "output_tokens"):
            cols[f.name] = pa.array([int(v or 0) for v in vals], pa.int64())
        else:
            cols[f.name] = pa.array(vals, f.type)
    return pa.table(cols, schema=EXCHANGE_SCHEMA)
