"""Campaign attribution: the infrastructure the traffic used, kept apart from what links the accounts to one operator.

Two findings per campaign, each with a confidence and sentences rendered from data:

* **infrastructure** — which networks (ASN, organisation, kind) the campaign's traffic
  arrived from, with traffic shares. Traffic on a network says which proxies or hosts
  were used; it never implies that the network's operator took part, and the wording
  says so. Confidence reflects how much of the traffic ``ip_intel`` could place.
* **operator** — what ties the member accounts to one controlling party: shared payment
  instruments, sign-up waves, shared prompt templates, synchronised activity, shared exit
  addresses. Confidence grows with the number and strength of independent kinds of link.

Limits: both findings are only as good as the provider's ``ip_intel`` and account data; a
payment reseller or a shared corporate card can make unrelated accounts look linked, and
a proxy pool shared by several customers can put unrelated traffic on the same addresses.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import polars as pl
import pyarrow as pa

from distillguard.ingest import lookup

#: How each network kind is named in a sentence ("..., a residential network").
KIND_PHRASES: Final[Mapping[str, str]] = {
    "residential": "a residential network",
    "mobile": "a mobile carrier network",
    "business": "a business network",
    "education": "an education network",
    "datacenter": "a hosting (datacenter) network",
    "vpn": "a VPN service",
    "proxy": "a proxy service",
    "tor": "the Tor network",
    "unknown": "a network not described in ip_intel",
}
#: Strength of each kind of operator link: how hard it is for unrelated customers to share it.
LINK_STRENGTH: Final[Mapping[str, float]] = {
    "payment": 0.5,
    "template": 0.2,
    "synchrony": 0.2,
    "signup": 0.15,
    "shared_addresses": 0.1,
    "user_agent": 0.05,
    "model_pivot": 0.05,
}
HIGH: Final = 0.6
MEDIUM: Final = 0.3
#: Networks listed per campaign; the rest are summed into "other networks".
TOP_NETWORKS: Final = 5
SIGNUP_WAVE_MINUTES: Final = 30


@dataclass(frozen=True)
class NetworkShare:
    """One network the campaign's traffic arrived from."""

    asn: int | None
    org: str | None
    kind: str
    exchanges: int
    share: float

    def label(self) -> str:
        """``AS7922 (COMCAST-7922)``, or the kind alone when the address is unplaced."""
        if self.asn is None:
            return "unplaced addresses"
        return f"AS{self.asn} ({self.org})" if self.org else f"AS{self.asn}"


@dataclass(frozen=True)
class Infrastructure:
    """Where the traffic came from; never a claim about who runs those networks."""

    networks: tuple[NetworkShare, ...]
    kind_shares: Mapping[str, float]
    placed_share: float
    exchanges: int
    confidence: str
    statements: tuple[str, ...]


@dataclass(frozen=True)
class OperatorLink:
    """One kind of evidence that the member accounts share a controlling party."""

    kind: str
    accounts: int
    strength: float
    statement: str


@dataclass(frozen=True)
class Operator:
    """What links the accounts, with a confidence that they are run by one party."""

    links: tuple[OperatorLink, ...]
    score: float
    confidence: str
    statements: tuple[str, ...]


@dataclass(frozen=True)
class Attribution:
    """Infrastructure and operator findings for one campaign, kept apart."""

    campaign_id: str
    infrastructure: Infrastructure
    operator: Operator


def _level(score: float) -> str:
    return "high" if score >= HIGH else "medium" if score >= MEDIUM else "low"


def _pct(x: float) -> str:
    return f"{100 * x:.0f} %" if x >= 0.01 else "under 1 %"


def infrastructure(exchanges: pa.Table, ip_intel: pa.Table | None) -> Infrastructure:
    """Traffic shares by network from ``exchanges`` (``client_ip``, ``n``: exchanges per address)."""
    ips = exchanges.column("client_ip")
    counts = pl.Series("n", exchanges.column("n").to_numpy(zero_copy_only=False)).cast(pl.Int64)
    if ip_intel is not None and ip_intel.num_rows:
        placed = lookup(ips, ip_intel)
        frame = pl.DataFrame(
            {
                "asn": pl.Series(placed.column("asn").to_pylist(), dtype=pl.Int64),
                "org": pl.Series(placed.column("asn_org").to_pylist(), dtype=pl.String),
                "kind": pl.Series(placed.column("kind").to_pylist(), dtype=pl.String),
                "n": counts,
            }
        )
    else:
        frame = pl.DataFrame(
            {
                "asn": pl.Series([None] * len(counts), dtype=pl.Int64),
                "org": pl.Series([None] * len(counts), dtype=pl.String),
                "kind": pl.Series(["unknown"] * len(counts), dtype=pl.String),
                "n": counts,
            }
        )
    total = int(frame["n"].sum() or 0)
    if total == 0:
        return Infrastructure((), {}, 0.0, 0, "low", ("No exchanges to attribute.",))
    nets = (
        frame.group_by(["asn", "org", "kind"])
        .agg(pl.col("n").sum())
        .sort(["n", "asn", "kind"], descending=[True, False, False], nulls_last=True)
    )
    kinds = (
        frame.group_by("kind").agg(pl.col("n").sum()).sort(["n", "kind"], descending=[True, False])
    )
    kind_shares = {str(k): int(n) / total for k, n in kinds.iter_rows()}
    networks = tuple(
        NetworkShare(int(a) if a is not None else None, o, str(k), int(n), int(n) / total)
        for a, o, k, n in nets.head(TOP_NETWORKS).iter_rows()
    )
    placed_share = 1.0 - kind_shares.get("unknown", 0.0)
    statements = []
    for net in networks:
        if net.asn is None:
            statements.append(
                f"{_pct(net.share)} of this campaign's traffic came from addresses that ip_intel "
                "does not place in any network."
            )
            continue
        statements.append(
            f"{_pct(net.share)} of this campaign's traffic arrived from addresses in {net.label()}, "
            f"{KIND_PHRASES.get(net.kind, 'a ' + net.kind + ' network')}; this indicates the "
            "proxies or hosts used, not the network operator's involvement."
        )
    rest = 1.0 - sum(n.share for n in networks)
    if rest > 0.005:
        statements.append(
            f"The remaining {_pct(rest)} spread over {nets.height - len(networks)} other networks."
        )
    residential = kind_shares.get("residential", 0.0) + kind_shares.get("mobile", 0.0)
    if residential >= 0.5 and len(networks) > 1:
        statements.append(
            "Most traffic came from consumer (residential or mobile) addresses spread over several "
            "providers — the usual footprint of a residential proxy service, whose exit addresses "
            "belong to unrelated subscribers."
        )
    confidence = "high" if placed_share >= 0.9 else "medium" if placed_share >= 0.5 else "low"
    statements.append(
        f"Confidence {confidence}: ip_intel placed {_pct(placed_share)} of the traffic; network "
        "data describes address ranges, not who controlled a given request."
    )
    return Infrastructure(networks, kind_shares, placed_share, total, confidence, tuple(statements))


def _signup_links(accounts: pa.Table) -> list[OperatorLink]:
    """Sign-up waves (same half hour) and shared sign-up /24s among the members."""
    if accounts.num_rows < 2:
        return []
    frame = pl.from_arrow(accounts)
    assert isinstance(frame, pl.DataFrame)
    links: list[OperatorLink] = []
    n = frame.height
    if "created_at" in frame.columns and frame["created_at"].null_count() < n:
        waves = (
            frame.filter(pl.col("created_at").is_not_null())
            .with_columns(wave=pl.col("created_at").dt.truncate(f"{SIGNUP_WAVE_MINUTES}m"))
            .group_by("wave")
            .agg(k=pl.len())
            .filter(pl.col("k") >= 2)
        )
        in_waves = int(waves["k"].sum() or 0)
        if in_waves:
            links.append(
                OperatorLink(
                    "signup",
                    in_waves,
                    LINK_STRENGTH["signup"] * min(1.0, in_waves / n * 2),
                    f"{in_waves} of {n} accounts were created in {waves.height} waves "
                    f"(two or more sign-ups in the same {SIGNUP_WAVE_MINUTES} minutes).",
                )
            )
    if "signup_ip" in frame.columns and frame["signup_ip"].null_count() < n:
        prefixes = (
            frame.filter(pl.col("signup_ip").is_not_null())
            .with_columns(p=pl.col("signup_ip").str.replace(r"\.\d+$", ".0/24"))
            .group_by("p")
            .agg(k=pl.len())
            .filter(pl.col("k") >= 2)
        )
        shared = int(prefixes["k"].sum() or 0)
        if shared:
            links.append(
                OperatorLink(
                    "signup",
                    shared,
                    LINK_STRENGTH["signup"] * min(1.0, shared / n * 2),
                    f"{shared} of {n} accounts signed up from {prefixes.height} shared address "
                    "blocks (/24).",
                )
            )
    return links


def _payment_link(accounts: pa.Table) -> OperatorLink | None:
    if accounts.num_rows < 2 or "payment_fingerprint" not in accounts.column_names:
        return None
    frame = pl.from_arrow(accounts.select(["account_id", "payment_fingerprint"]))
    assert isinstance(frame, pl.DataFrame)
    groups = (
        frame.filter(pl.col("payment_fingerprint").is_not_null())
        .group_by("payment_fingerprint")
        .agg(k=pl.col("account_id").n_unique())
        .filter(pl.col("k") >= 2)
    )
    shared = int(groups["k"].sum() or 0)
    if not shared:
        return None
    n = accounts.num_rows
    return OperatorLink(
        "payment",
        shared,
        LINK_STRENGTH["payment"] * min(1.0, shared / n * 2),
        f"{shared} of {n} accounts pay with one of {groups.height} payment instruments that "
        "another member also uses: one payer (or one reseller) behind them.",
    )


def operator(campaign: Mapping[str, Any], accounts: pa.Table) -> Operator:
    """Links among the members: account data plus the campaign's shared indicators and detectors."""
    n = int(campaign.get("n_accounts") or accounts.num_rows)
    links: list[OperatorLink] = []
    pay = _payment_link(accounts)
    if pay is not None:
        links.append(pay)
    signups = _signup_links(accounts)
    if signups:
        # Waves and shared blocks are one kind of evidence; keep the stronger strength only once.
        best = max(s.strength for s in signups)
        links.extend(
            OperatorLink(s.kind, s.accounts, best if i == 0 else 0.0, s.statement)
            for i, s in enumerate(sorted(signups, key=lambda s: -s.strength))
        )
    shares: Mapping[str, float] = campaign.get("indicator_kind_shares") or {}
    shared = campaign.get("shared_indicators") or []

    def most(kind: str) -> int:
        return max((int(i["n_members"]) for i in shared if i["kind"] == kind), default=0)

    template = float(shares.get("template") or 0.0)
    if template > 0:
        links.append(
            OperatorLink(
                "template",
                most("template"),
                LINK_STRENGTH["template"] * min(1.0, template * 2),
                f"{_pct(template)} of the links inside the campaign are shared prompt templates "
                f"(up to {most('template')} accounts on one template).",
            )
        )
    sync_score = max(
        (float(v) for k, v in (campaign.get("cluster_detectors") or {}).items()
         if k.startswith("cluster.synchrony") and v is not None),
        default=0.0,
    )  # fmt: skip
    sync_share = float(shares.get("synchrony") or 0.0)
    if max(sync_score, sync_share) > 0.1:
        links.append(
            OperatorLink(
                "synchrony",
                n,
                LINK_STRENGTH["synchrony"] * max(sync_score, sync_share),
                f"Activity is synchronised across accounts (synchrony score {sync_score:.2f}; "
                f"{_pct(sync_share)} of internal links): they start and stop together.",
            )
        )
    addr = max(float(shares.get("ip") or 0.0), float(shares.get("prefix") or 0.0))
    if addr > 0:
        links.append(
            OperatorLink(
                "shared_addresses",
                max(most("ip"), most("prefix")),
                LINK_STRENGTH["shared_addresses"] * addr,
                f"{_pct(addr)} of internal links are the same exit address or /24 in the same hours "
                "(a shared proxy pool: weaker, since unrelated customers can share one).",
            )
        )
    ua = float(shares.get("user_agent") or 0.0)
    if ua > 0.1:
        links.append(
            OperatorLink(
                "user_agent",
                most("user_agent"),
                LINK_STRENGTH["user_agent"] * ua,
                f"{_pct(ua)} of internal links are a shared uncommon client (user agent).",
            )
        )
    pivot = float(shares.get("model_pivot") or 0.0)
    if pivot > 0.1:
        links.append(
            OperatorLink(
                "model_pivot",
                n,
                LINK_STRENGTH["model_pivot"] * pivot,
                f"{_pct(pivot)} of internal links are accounts that moved to a newly released "
                "model together.",
            )
        )
    links.sort(key=lambda link: (-link.strength, link.kind))
    score = min(1.0, sum(link.strength for link in links))
    confidence = _level(score)
    kinds = sorted({link.kind for link in links if link.strength > 0})
    statements = [link.statement for link in links]
    if not links:
        statements.append("No account-level link beyond the clustering itself was found.")
    statements.append(
        f"Confidence {confidence} that one party controls these {n} accounts "
        f"({len(kinds)} independent kind(s) of link: {', '.join(kinds) or 'none'}). "
        "This says nothing about who that party is."
    )
    return Operator(tuple(links), score, confidence, tuple(statements))


def attribute(
    campaign: Mapping[str, Any],
    exchanges: pa.Table,
    accounts: pa.Table,
    ip_intel: pa.Table | None,
) -> Attribution:
    """Attribute one campaign.

    ``campaign`` is an entry of ``campaigns.json``; ``exchanges`` the members' traffic
    aggregated per address (``client_ip``, ``n``); ``accounts`` the members' account rows
    (any of ``account_id, created_at, signup_ip, payment_fingerprint``); ``ip_intel`` the
    log's networks (IP_INTEL_SCHEMA) or None.
    """
    return Attribution(
        str(campaign["id"]), infrastructure(exchanges, ip_intel), operator(campaign, accounts)
    )
