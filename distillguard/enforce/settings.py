"""The ``enforce:`` configuration section parsed once into typed, validated settings (fail fast)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from limits import parse

from distillguard.core.errors import ConfigError
from distillguard.enforce.state import MAX_RETRO_EXITS

SHARING_KINDS = ("payment", "prefix", "template", "user_agent", "ip")
#: Keys through which a contained account's taint reaches other accounts (``enforce.online.propagation``).
PROPAGATION_KINDS = ("payment", "ip", "template")
BEHAVIOUR_FEATURES = (
    "reasoning_mean",
    "grader_mean",
    "capability_top_share",
    "template_top_share",
    "ip_churn",
    "target_share",
)
LINK_KINDS = ("payment", "template", "prefix", "ip", "user_agent")


@dataclass(frozen=True)
class Sharing:
    """One cross-account sharing signal: ``weight * clip(k - k0, 0, cap) / cap``."""

    weight: float
    k0: int
    cap: int
    max_k: int
    window_minutes: float = 0.0
    x0: float = 0.0  # propagation.links.ip: a share, nothing up to x0 and full weight from x1
    x1: float = 1.0
    # propagation.links.ip: contained accounts an address of a network kind needs before it links (default 1)
    min_contained: Mapping[str, int] = field(default_factory=dict)
    # propagation.links.ip: exits per account and window remembered until it is contained (0: no retro-taint)
    retro_exits: int = 0
    # propagation.links.ip: with a link, the shared-address signal adds only what exceeds it
    supersedes_shared_ip: bool = False


@dataclass(frozen=True)
class Counted:
    """A per-account count graded like sharing: ``weight * clip(k - k0, 0, cap) / cap``, no warm-up.

    ``exit_networks``: ``k`` is the distinct access networks of ``kinds`` the account sent from in
    the current ``window_minutes`` bucket; ``exit_countries``: the distinct countries of those
    addresses in its own (shorter) bucket. ``reasoning_hits``: ``k`` is the account's exchanges
    whose reasoning-elicitation score is at least ``threshold``, counted while they are at least
    ``min_share`` of its content exchanges (else 0).
    """

    weight: float
    k0: int
    cap: int
    window_minutes: float = 0.0
    kinds: frozenset[str] = frozenset()
    threshold: float = 0.5
    min_share: float = 0.0


@dataclass(frozen=True)
class Vouched:
    """Accountable accounts (``enforce.online.vouched``): identity-verified, or platforms serving many end users.

    Their ``abstain`` signals (shared infrastructure and address taint) carry nothing; their
    own behaviour and cluster evidence (a shared or contained card, a known campaign) still count.
    """

    verifications: frozenset[str]
    platform_min_end_users: int  # 0: no platform vouching (and no end-user sketch)
    abstain: frozenset[str]
    # Address signals (ADDRESS_SIGNALS) in ``abstain`` abstain only on exchanges from these network kinds.
    infrastructure_kinds: frozenset[str] = frozenset()


#: Signals a vouched account may abstain from: infrastructure others share with it, and address or
#: template taint. Payment sharing and payment taint are cluster evidence and always count.
VOUCHED_ABSTAIN = frozenset(
    {f"shared_{k}" for k in SHARING_KINDS if k != "payment"}
    | {f"flagged_{k}" for k in PROPAGATION_KINDS if k != "payment"}
)


#: Signals about the exchange's address: a vouched account waives them only on shared infrastructure.
ADDRESS_SIGNALS = frozenset({"shared_ip", "shared_prefix", "flagged_ip"})


@dataclass(frozen=True)
class Behaviour:
    """One per-account behaviour signal: ``weight * clip((x - x0) / (1 - x0), 0, 1)``."""

    weight: float
    x0: float


@dataclass(frozen=True)
class EnforceSettings:
    """Everything the online path reads from configuration."""

    host: str
    port: int
    api_key: str | None
    max_body_bytes: int
    max_prompt_chars: int
    backend: str
    redis_url: str
    redis_prefix: str
    redis_timeout: float
    fail_mode: str
    fallback_limit: str
    redis_retry_seconds: float
    max_accounts: int
    max_sketch_keys: int
    state_ttl_seconds: int
    hll_precision: int
    sticky_actions: bool
    account_limits: Mapping[str, str]
    cluster_limit: str
    api_key_limit: str
    capability_model: bool
    warmup: int
    behaviour: Mapping[str, Behaviour]
    sharing: Mapping[str, Sharing]
    explained_kinds: frozenset[str]
    # Email domains anyone can sign up with: accounts sharing one of them are not one organisation.
    free_mail_domains: frozenset[str]
    campaigns_dir: Path | None
    campaigns_reload_seconds: float
    member_weight: float
    link_weights: Mapping[str, float]
    min_key_weight: float
    replay_batch_rows: int
    replay_read_rows: int
    replay_signal_rows: int
    propagation: Mapping[str, Sharing]
    propagation_rank: int
    target_capabilities: frozenset[str]
    exit_networks: Counted
    exit_countries: Counted
    reasoning_hits: Counted
    vouched: Vouched

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> EnforceSettings:
        """Parse and check ``config['enforce']``; every problem is a ConfigError saying how to fix it."""
        try:
            e = config["enforce"]
            svc, lim, onl, kc = e["service"], e["limits"], e["online"], e["known_campaigns"]
            rates = [*lim["account"].values(), lim["cluster"], lim["api_key"], e["fallback_limit"]]
            for rate in rates:
                try:
                    parse(str(rate))
                except ValueError as exc:
                    raise ConfigError(
                        f"enforce.limits: {rate!r} is not a rate like '10/minute'"
                    ) from exc
            missing = {"allow", "monitor", "throttle"} - set(lim["account"])
            if missing:
                raise ConfigError(f"enforce.limits.account needs rates for {sorted(missing)}")
            if e["backend"] not in ("memory", "redis"):
                raise ConfigError(
                    f"enforce.backend must be 'memory' or 'redis', got {e['backend']!r}"
                )
            if e["fail_mode"] not in ("open", "closed"):
                raise ConfigError(
                    f"enforce.fail_mode must be 'open' or 'closed', got {e['fail_mode']!r}"
                )
            if not 4 <= int(e["hll_precision"]) <= 16:
                raise ConfigError("enforce.hll_precision must be between 4 and 16")
            for key in ("batch_rows", "read_rows"):
                if int(e["replay"][key]) < 1:
                    raise ConfigError(f"enforce.replay.{key} must be >= 1")
            for key in ("max_accounts", "max_sketch_keys", "max_body_bytes"):
                holder = svc if key == "max_body_bytes" else e
                if int(holder[key]) < 1:
                    raise ConfigError(f"enforce.{key} must be >= 1")
            unknown_b = set(onl["behaviour"]) - set(BEHAVIOUR_FEATURES)
            unknown_s = set(onl["sharing"]) - set(SHARING_KINDS)
            unknown_l = set(kc["link_weights"]) - set(LINK_KINDS)
            if unknown_b or unknown_s or unknown_l:
                raise ConfigError(
                    f"enforce.online: unknown signals {sorted(unknown_b | unknown_s | unknown_l)}; "
                    f"behaviour: {BEHAVIOUR_FEATURES}, sharing: {SHARING_KINDS}, links: {LINK_KINDS}"
                )
            behaviour = {
                k: Behaviour(float(v["weight"]), float(v["x0"]))
                for k, v in onl["behaviour"].items()
            }
            if any(not 0.0 <= b.x0 < 1.0 for b in behaviour.values()):
                raise ConfigError("enforce.online.behaviour: x0 must be in [0, 1)")
            sharing = {
                k: Sharing(
                    float(v["weight"]),
                    int(v["k0"]),
                    int(v["cap"]),
                    int(v["max_k"]),
                    float(v.get("window_minutes", 0.0)),
                )
                for k, v in onl["sharing"].items()
            }
            if any(s.cap < 1 for s in sharing.values()):
                raise ConfigError("enforce.online.sharing: cap must be >= 1")
            prop = onl["propagation"]
            ranks = {"throttle": 2, "challenge": 3, "suspend": 4}
            if prop["min_action"] not in ranks:
                raise ConfigError(
                    f"enforce.online.propagation.min_action must be one of {sorted(ranks)}"
                )
            unknown_p = set(prop["links"]) - set(PROPAGATION_KINDS)
            if unknown_p:
                raise ConfigError(
                    f"enforce.online.propagation.links: unknown {sorted(unknown_p)}; known: {PROPAGATION_KINDS}"
                )
            propagation = {
                k: Sharing(
                    float(v["weight"]),
                    int(v.get("k0", 0)),
                    int(v.get("cap", 1)),
                    int(v.get("max_k", 10**9)),
                    x0=float(v.get("x0", 0.0)),
                    x1=float(v.get("x1", 1.0)),
                    min_contained={
                        str(n): int(m) for n, m in (v.get("min_contained") or {}).items()
                    },
                    retro_exits=int(v.get("retro_exits", 0)),
                    supersedes_shared_ip=bool(v.get("supersedes_shared_ip", False)),
                )
                for k, v in prop["links"].items()
            }
            ip_link = propagation.get("ip", Sharing(0, 0, 1, 1))
            if not 0.0 <= ip_link.x0 < ip_link.x1 <= 1.0:
                raise ConfigError("enforce.online.propagation.links.ip needs 0 <= x0 < x1 <= 1")
            if any(m < 1 for m in ip_link.min_contained.values()):
                raise ConfigError(
                    "enforce.online.propagation.links.ip.min_contained: every kind needs >= 1"
                )
            if not 0 <= ip_link.retro_exits <= MAX_RETRO_EXITS:
                raise ConfigError(
                    f"enforce.online.propagation.links.ip.retro_exits must be within 0..{MAX_RETRO_EXITS}"
                )
            if any(s.cap < 1 for s in propagation.values()):
                raise ConfigError("enforce.online.propagation.links: cap must be >= 1")
            hits = onl["reasoning_hits"]
            exit_networks, exit_countries = (
                Counted(
                    float(section["weight"]),
                    int(section["k0"]),
                    int(section["cap"]),
                    float(section["window_minutes"]),
                    frozenset(str(k) for k in section["kinds"]),
                )
                for section in (onl["exit_networks"], onl["exit_countries"])
            )
            reasoning_hits = Counted(
                float(hits["weight"]),
                int(hits["k0"]),
                int(hits["cap"]),
                threshold=float(hits["threshold"]),
                min_share=float(hits["min_share"]),
            )
            if min(exit_networks.cap, exit_countries.cap, reasoning_hits.cap) < 1:
                raise ConfigError(
                    "enforce.online.exit_networks / exit_countries / reasoning_hits: cap must be >= 1"
                )
            for name, counted in (
                ("exit_networks", exit_networks),
                ("exit_countries", exit_countries),
            ):
                if counted.window_minutes <= 0 or not counted.kinds:
                    raise ConfigError(
                        f"enforce.online.{name} needs window_minutes > 0 and a non-empty kinds list, "
                        "e.g. {window_minutes: 1440, kinds: [residential, mobile, unknown, proxy]}"
                    )
            if (
                not 0.0 < reasoning_hits.threshold <= 1.0
                or not 0.0 <= reasoning_hits.min_share <= 1.0
            ):
                raise ConfigError(
                    "enforce.online.reasoning_hits needs 0 < threshold <= 1 and 0 <= min_share <= 1"
                )
            vc = onl.get("vouched") or {}
            vouched = Vouched(
                frozenset(str(v) for v in vc.get("verification", ())),
                int(vc.get("platform_min_end_users", 0)),
                frozenset(str(v) for v in vc.get("abstain", ())),
                frozenset(str(v) for v in vc.get("infrastructure_kinds", ())),
            )
            if vouched.abstain - VOUCHED_ABSTAIN:
                raise ConfigError(
                    f"enforce.online.vouched.abstain: {sorted(vouched.abstain - VOUCHED_ABSTAIN)} cannot be waived; "
                    f"choose from {sorted(VOUCHED_ABSTAIN)} (payment links are cluster evidence)"
                )
            if vouched.platform_min_end_users < 0:
                raise ConfigError(
                    "enforce.online.vouched.platform_min_end_users must be >= 0 (0: off)"
                )
            api_key = os.environ.get("DISTILLGUARD_API_KEY") or svc["api_key"]
            cdir = kc["results_dir"]
            return cls(
                host=str(svc["host"]),
                port=int(svc["port"]),
                api_key=str(api_key) if api_key else None,
                max_body_bytes=int(svc["max_body_bytes"]),
                max_prompt_chars=int(svc["max_prompt_chars"]),
                backend=str(e["backend"]),
                redis_url=str(e["redis_url"]),
                redis_prefix=str(e["redis_prefix"]),
                redis_timeout=float(e["redis_timeout_seconds"]),
                fail_mode=str(e["fail_mode"]),
                fallback_limit=str(e["fallback_limit"]),
                redis_retry_seconds=float(e["redis_retry_seconds"]),
                max_accounts=int(e["max_accounts"]),
                max_sketch_keys=int(e["max_sketch_keys"]),
                state_ttl_seconds=int(e["state_ttl_seconds"]),
                hll_precision=int(e["hll_precision"]),
                sticky_actions=bool(e["sticky_actions"]),
                account_limits={str(k): str(v) for k, v in lim["account"].items()},
                cluster_limit=str(lim["cluster"]),
                api_key_limit=str(lim["api_key"]),
                capability_model=bool(onl["capability_model"]),
                warmup=int(onl["warmup_exchanges"]),
                behaviour=behaviour,
                sharing=sharing,
                explained_kinds=frozenset(str(k) for k in onl["explained_network_kinds"]),
                free_mail_domains=frozenset(
                    str(d).strip().lower() for d in config["linking"]["free_mail_domains"] or ()
                ),
                campaigns_dir=Path(cdir) if cdir else None,
                campaigns_reload_seconds=float(kc["reload_seconds"]),
                member_weight=float(kc["member_weight"]),
                link_weights={str(k): float(v) for k, v in kc["link_weights"].items()},
                min_key_weight=float(kc["min_key_weight"]),
                replay_batch_rows=int(e["replay"]["batch_rows"]),
                replay_read_rows=int(e["replay"]["read_rows"]),
                replay_signal_rows=int(e["replay"]["signal_rows"]),
                propagation=propagation,
                propagation_rank=ranks[str(prop["min_action"])],
                target_capabilities=frozenset(str(c) for c in onl["target_capabilities"]),
                exit_networks=exit_networks,
                exit_countries=exit_countries,
                reasoning_hits=reasoning_hits,
                vouched=vouched,
            )
        except KeyError as exc:
            raise ConfigError(f"enforce configuration is missing key {exc.args[0]!r}") from exc
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"enforce configuration has a value of the wrong type: {exc}"
            ) from exc
