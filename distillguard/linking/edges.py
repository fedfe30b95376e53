"""Cross-account edge detectors as Ibis expressions: shared indicators → one weighted, explained edge list.

Every edge kind follows one recipe so its evidence reads the same way:

1. each exchange (or account) yields *keys* it exposes (a payment fingerprint, an IP within a
   time window, a rare user agent, a template id, a sign-up wave, ...);
2. per key: how many accounts share it (``df``), how many email domains they span, how much of
   the key's traffic one account carries, and the network kind behind it;
3. the key's weight is IDF-like rarity ``ln(N/df)/ln(N)`` times the network kind's weight, cut
   when the sharing is *explained* (one email domain on an education/business network — a campus
   NAT or a corporate egress — or one dominant account), and zero above a fan-out cap;
4. every pair of accounts sharing a key gets the key's weight; per pair and kind the sum ``s`` is
   saturated to ``weight * (1 - exp(-s / scale))`` so no single kind can dominate by repetition.

Synchrony (SynchroTrap-style) is the exception: its contribution is the Jaccard similarity of two
accounts' (time bucket, network) activity sets, counted only over buckets with limited fan-out.

Everything here is relational (group-by, self-join on key) so the same expressions run on Spark.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import ibis
import ibis.expr.types as ir
import pyarrow as pa

from distillguard.core.errors import ConfigError

EDGE_KINDS: tuple[str, ...] = (
    "payment",
    "ip",
    "prefix",
    "user_agent",
    "template",
    "synchrony",
    "signup_wave",
    "model_pivot",
)
EDGE_DETECTOR_VERSION = "1.0.0"
#: Each kind's bit in an edge's ``kinds`` mask (:func:`edge_totals`).
KIND_BITS: dict[str, int] = {kind: 1 << i for i, kind in enumerate(EDGE_KINDS)}

_EXPLAINABLE_KINDS = ("education", "business")
#: Kinds whose keys are network addresses (and so may be shared cloud infrastructure).
_ADDRESS_KINDS = ("ip", "prefix")


def _seconds_bucket(
    ts: ir.TimestampValue, minutes: float, offset_minutes: float = 0.0
) -> ir.IntegerValue:
    width = max(1, int(minutes * 60))
    return ((ts.epoch_seconds() + int(offset_minutes * 60)) // width).cast("int64")


def _key_stats(
    keyed: ir.Table,
    accounts: ir.Table,
    n_accounts: ir.IntegerScalar,
    cfg: Mapping[str, Any],
    lcfg: Mapping[str, Any],
    hold: Callable[[ir.Table], ir.Table] | None = None,
    unexplaining_domains: Sequence[str] = (),
) -> ir.Table:
    """Per (key, account) rows of eligible keys with the key's weight.

    A key whose accounts all signed up with one email domain is explained sharing (one
    organisation), unless that domain is one of ``unexplaining_domains`` (free mail: anyone's).

    ``keyed`` has ``key``, ``account_id``, ``kind_w`` (network-kind weight, 1 when not network
    based), ``net_kind`` (string or null) and optionally ``address`` (an integer id of the
    key's address without its time window; see :func:`_pairs`).
    """
    if "address" not in keyed.columns:
        keyed = keyed.mutate(address=ibis.null("int64"))
    ka = keyed.group_by(["key", "account_id"]).agg(
        n=ibis._.count(),
        kind_w=ibis._.kind_w.max(),
        net_kind=ibis._.net_kind.max(),
        address=ibis._.address.max(),
    )
    if hold is not None:
        # Read twice below (per-key stats, memberships): held in the engine, where it can leave
        # memory, rather than as a shared subquery DuckDB keeps resident (the seed scale's OOM).
        ka = hold(ka)
    doms = accounts.select(d_id=accounts.account_id, email_domain=accounts.email_domain)
    kad = ka.left_join(doms, ka.account_id == doms.d_id).drop("d_id")
    # One row per (key, account) already, so count() is the account count; and "at most one
    # email domain" is min == max — both far cheaper than COUNT(DISTINCT) per key.
    per_key = kad.group_by("key").agg(
        df=ibis._.count(),
        total=ibis._.n.sum(),
        top=ibis._.n.max(),
        dom_lo=ibis._.email_domain.min(),
        dom_hi=ibis._.email_domain.max(),
        kind_w=ibis._.kind_w.max(),
        net_kind=ibis._.net_kind.max(),
    )
    max_fanout = int(cfg.get("max_fanout", lcfg["max_fanout"]))
    # A key held by a sizeable share of all accounts is common infrastructure, not a link.
    max_df = ibis.least(
        ibis.literal(max_fanout),
        (n_accounts.cast("float64") * float(lcfg["max_df_share"])).ceil().cast("int64"),
    )
    per_key = per_key.filter((per_key.df >= 2) & (per_key.df <= ibis.greatest(max_df, 2)))
    n = n_accounts.cast("float64")
    idf = (n / per_key.df.cast("float64")).ln() / ibis.greatest(n, 3.0).ln()
    one_domain = per_key.dom_lo.isnull() | (per_key.dom_lo == per_key.dom_hi)
    if unexplaining_domains:
        anyones = per_key.dom_lo.lower().isin([d.lower() for d in unexplaining_domains])
        one_domain = one_domain & ~anyones.fill_null(False)
    explained = one_domain & (
        per_key.net_kind.isnull() | per_key.net_kind.isin(list(_EXPLAINABLE_KINDS))
    )
    dominant = per_key.top.cast("float64") / per_key.total.cast("float64") >= float(
        lcfg["dominant_account_share"]
    )
    w = (
        idf
        * per_key.kind_w
        * ibis.ifelse(explained, float(lcfg["explained_discount"]), 1.0)
        * ibis.ifelse(dominant, float(lcfg["dominant_discount"]), 1.0)
    )
    infra_kinds = [str(k) for k in lcfg.get("vouched_infrastructure_kinds") or []]
    infra = per_key.net_kind.isin(infra_kinds) if infra_kinds else ibis.literal(False)
    per_key = per_key.mutate(key_weight=w, infra=infra.fill_null(False)).select(
        "key", "df", "key_weight", "infra"
    )
    members = ka.select("key", "account_id", "address").join(per_key, "key")
    # No kind column: a constant string in every held row (~29M for the ip kind at the seed
    # scale) made writing the table a third slower; edge_plan names the kind as it reads it.
    return members.select("key", "account_id", "key_weight", "df", "address", "infra")


def _pairs(members: ir.Table, cfg: Mapping[str, Any], vouched_discount: float = 1.0) -> ir.Table:
    """Saturated per-pair contribution of one kind from its eligible key memberships.

    Keys on shared infrastructure (``infra``: a cloud address, ``vouched_infrastructure_kinds``)
    held by a *vouched* member (``vouched``, see ``_account_table``) count at
    ``vouched_discount``: what they add to the pair's saturated contribution beyond its other
    keys is multiplied by it — after saturation, since a pair sharing a cloud NAT for weeks
    shares hundreds of its windows. A KYC'd business's batch jobs leave from the same cloud NAT
    gateways and prefixes as anyone renting there, campaigns included (seed scale, fresh seed
    1071: ten enterprise batch accounts tied to all 120 accounts of a reasoning harvester by
    cloud exits alone, and suspended with it). The online path's vouched accounts ignore shared
    cloud addresses the same way. Both ends unvouched: no change.

    Pairs are keyed by integer account codes: the self-join and the per-pair sums are the
    heaviest step of linking, and integers hash and compare far faster than account names.

    With ``distinct_address`` (the ip and prefix kinds, whose keys are an address in a time
    window) a pair's evidence counts each shared address once, at its heaviest window: accounts
    rotating through one proxy pool share many addresses, while a household, a carrier-grade
    NAT or an office shares one address however many weeks it does so. Off by default: it also
    drops the repeated co-visits of one pool address that tie a small hydra's lighter accounts
    (small seed 2026: `june2026` recall 100 → 93 %). Clusters standing on one address are set
    apart after clustering instead (``linking.location_max_addresses``).
    """
    discounting = vouched_discount < 1.0
    # Only the address kinds carry the flag: the widest self-joins of the others stay as narrow.
    flag = {"vi": members.infra & members.vouched} if discounting else {}
    a = members.select(
        key=members.key,
        code_a=members.account_code,
        key_weight=members.key_weight,
        address=members.address,
        **{f"{k}_a": v for k, v in flag.items()},
    )
    b = members.select(
        key_b=members.key, code_b=members.account_code, **{f"{k}_b": v for k, v in flag.items()}
    )
    joined = a.join(b, [a.key == b.key_b, a.code_a < b.code_b])
    vi_weight = (
        ibis.ifelse(joined.vi_a | joined.vi_b, joined.key_weight, 0.0)
        if discounting
        else ibis.literal(0.0)
    )
    joined = joined.mutate(vi_weight=vi_weight)
    if cfg.get("distinct_address", False):
        joined = joined.group_by(["code_a", "code_b", "address"]).agg(
            key_weight=joined.key_weight.max(), vi_weight=joined.vi_weight.max()
        )
    summed = joined.group_by(["code_a", "code_b"]).agg(
        s=joined.key_weight.sum(), s_vi=joined.vi_weight.sum()
    )
    weight = float(cfg["weight"])
    scale = float(cfg.get("scale", 1.0))
    full = weight * (1.0 - (-(summed.s / scale)).exp())
    # What the vouched cloud keys add beyond the pair's other keys counts at the discount.
    plain = weight * (1.0 - (-((summed.s - summed.s_vi) / scale)).exp())
    contrib = plain + (full - plain) * vouched_discount if discounting else full
    return summed.select("code_a", "code_b", contribution=contrib.cast("float64"))


def _net_weight(kind_col: ir.StringValue, lcfg: Mapping[str, Any]) -> ir.FloatingValue:
    weights: Mapping[str, float] = lcfg["network_kind_weight"]
    expr: ir.FloatingValue = ibis.literal(float(weights.get("unknown", 0.5)))
    for name, value in sorted(weights.items()):
        expr = ibis.ifelse(kind_col == name, float(value), expr)
    return expr


def _exchange_keys(
    signals: ir.Table, kind: str, cfg: Mapping[str, Any], lcfg: Mapping[str, Any]
) -> ir.Table:
    s = signals
    net = s.network_kind.fill_null("unknown")
    if kind in ("ip", "prefix"):
        col = s.client_ip if kind == "ip" else s.ip_prefix
        minutes = float(cfg["window_minutes"])
        keyed = s.filter(col.notnull()).mutate(
            key=col + "|" + _seconds_bucket(s.ts, minutes).cast("string"),
            kind_w=_net_weight(net, lcfg),
            net_kind=net,
            # A grouping id only (engines hash differently; each run uses one engine's).
            address=col.hash().cast("int64"),
        )
    elif kind == "user_agent":
        keyed = s.filter(s.user_agent.notnull() & (s.user_agent != "")).mutate(
            key=s.user_agent, kind_w=ibis.literal(1.0), net_kind=ibis.null("string")
        )
    elif kind == "template":
        base = s.filter(s.template_id.notnull())
        # An account sending a template under one constant system prompt is a product's scaffold
        # (a SaaS backend wrapping its users' text), not an operator's harvesting script.
        sp = base.group_by(["template_id", "account_id", "system_prompt_sha256"]).agg(
            n=ibis._.count()
        )
        uses = sp.group_by(["template_id", "account_id"]).agg(
            top=ibis.ifelse(sp.system_prompt_sha256.notnull(), sp.n, 0).max(), n=sp.n.sum()
        )
        uses = uses.filter(
            (uses.n >= int(cfg["min_uses"]))
            & (
                uses.top.cast("float64") / uses.n.cast("float64")
                < float(cfg["saas_system_prompt_share"])
            )
        )
        keyed = uses.mutate(
            key=uses.template_id.cast("string"),
            kind_w=ibis.literal(1.0),
            net_kind=ibis.null("string"),
        ).select("key", "account_id", "kind_w", "net_kind")
    elif kind == "model_pivot":
        first_model = s.group_by("model").agg(released=s.ts.min())
        newest = first_model.order_by([ibis.desc("released"), "model"]).limit(1)
        per = s.group_by("account_id").agg(first_seen=s.ts.min(), n_all=ibis._.count())
        on_new = s.join(newest, s.model == newest.model)
        per_new = on_new.group_by("account_id").agg(first_new=on_new.ts.min(), n_new=ibis._.count())
        j = per.join(per_new, "account_id").cross_join(newest.select("released"))
        window_s = int(float(cfg["window_hours"]) * 3600)
        pivoted = j.filter(
            (j.first_seen < j.released)
            & ((j.first_new.epoch_seconds() - j.released.epoch_seconds()) <= window_s)
            & (j.n_new.cast("float64") / j.n_all.cast("float64") >= float(cfg["min_share"]))
        )
        keyed = pivoted.mutate(
            key=_seconds_bucket(pivoted.first_new, float(cfg["bucket_minutes"])).cast("string"),
            kind_w=ibis.literal(1.0),
            net_kind=ibis.null("string"),
        ).select("key", "account_id", "kind_w", "net_kind")
    else:  # pragma: no cover - guarded by caller
        raise ValueError(kind)
    # Only the network kinds carry an address; _key_stats gives the others a null one.
    return keyed.select(
        "key", "account_id", "kind_w", "net_kind", *[c for c in ("address",) if c in keyed.columns]
    )


def signup_prefix(ip: ir.StringValue) -> ir.StringValue:
    """The network a sign-up wave is keyed on: an IPv4 address's /24 (``a.b.c``) or an IPv6
    address's first three groups; ``""`` for anything else."""
    ip = ip.fill_null("")
    v4 = ip.re_extract(r"^(\d+\.\d+\.\d+)\.\d+$", 1)
    v6 = ip.lower().re_extract(r"^([0-9a-f]*:[0-9a-f]*:[0-9a-f]*)", 1)
    return ibis.ifelse(v4 != "", v4, v6)


#: A sign-up wave key from one network: ``<grid>|ip|<prefix>|<bucket>`` (group 1: the prefix).
SIGNUP_IP_KEY = r"^[ab]\|ip\|(.+)\|-?\d+$"
#: An ip or prefix key, ``<address>|<window>`` (:func:`_exchange_keys`; group 1: the address).
ADDRESS_KEY = r"^(.+)\|-?\d+$"


def _signup_keys(accounts: ir.Table, cfg: Mapping[str, Any]) -> ir.Table:
    a = accounts.filter(accounts.created_at.notnull())
    prefix = signup_prefix(a.signup_ip)
    minutes = float(cfg["window_minutes"])
    parts = []
    # Two bucket grids half a window apart so a wave straddling a boundary is still seen.
    for offset, tag in ((0.0, "a"), (minutes / 2.0, "b")):
        bucket = _seconds_bucket(a.created_at, minutes, offset).cast("string")
        by_ip = a.filter(prefix != "").mutate(key=tag + "|ip|" + prefix + "|" + bucket)
        by_dom = a.filter(a.email_domain.notnull()).mutate(
            key=tag + "|dom|" + a.email_domain + "|" + bucket
        )
        for part in (by_ip, by_dom):
            parts.append(
                part.select(
                    "key", "account_id", kind_w=ibis.literal(1.0), net_kind=ibis.null("string")
                )
            )
    return ibis.union(*parts, distinct=True)


def _synchrony(
    signals: ir.Table,
    accounts: ir.Table,
    codes: ir.Table,
    cfg: Mapping[str, Any],
    hold: Callable[[ir.Table], ir.Table] | None,
) -> ir.Table:
    """Pairs of accounts active in the same (time bucket, network) cells, by Jaccard."""
    s = signals
    key_col = str(cfg["key"])
    bucket = _seconds_bucket(s.ts, float(cfg["bucket_minutes"]))
    key: ir.Value
    # Integer cells where possible: this is the widest self-join of linking.
    if key_col == "asn":
        key = bucket * (1 << 32) + s.asn.fill_null(-1).cast("int64")
    elif key_col == "prefix":
        key = bucket.cast("string") + "|" + s.ip_prefix.fill_null("?")
    else:
        key = bucket
    net = s.network_kind.fill_null("unknown")
    acts = (
        s.mutate(key=key, net_kind=net)
        .group_by(["key", "account_id"])
        .agg(net_kind=ibis._.net_kind.max())
    )
    if hold is not None:
        acts = hold(acts)  # read twice (fan-out per cell, then the cells kept)
    doms = accounts.select(dom_id=accounts.account_id, email_domain=accounts.email_domain)
    actd = acts.left_join(doms, acts.account_id == doms.dom_id)
    fan = actd.group_by("key").agg(
        df=ibis._.count(),  # acts has one row per (key, account)
        dom_lo=ibis._.email_domain.min(),
        dom_hi=ibis._.email_domain.max(),
        net_kind=ibis._.net_kind.max(),
    )
    # A class or a team active together behind its own campus/corporate network is expected.
    one_domain = fan.dom_lo.isnull() | (fan.dom_lo == fan.dom_hi)
    explained = one_domain & fan.net_kind.isin(list(_EXPLAINABLE_KINDS))
    fan = fan.filter((fan.df >= 2) & (fan.df <= int(cfg["max_fanout"])) & ~explained)
    acts = acts.join(fan, "key").select("key", "account_id", "df")
    acts = acts.join(codes, "account_id").select("key", "account_id", "account_code", "df")
    if hold is not None:
        acts = hold(acts)
    sizes = acts.group_by("account_code").agg(n_keys=ibis._.count())
    min_co = int(cfg["min_co"])
    min_jaccard = float(cfg["min_jaccard"])
    # Only accounts with at least min_co buckets can reach min_co shared ones.
    sized = acts.join(sizes.filter(sizes.n_keys >= min_co), "account_code")
    a = sized.select(key=sized.key, code_a=sized.account_code, na=sized.n_keys)
    b = sized.select(key_b=sized.key, code_b=sized.account_code, nb=sized.n_keys)
    # Jaccard <= min(na, nb) / max(na, nb): pairs of very unequal activity can never qualify,
    # so they are dropped inside the join rather than counted first.
    co = a.join(
        b,
        [
            a.key == b.key_b,
            a.code_a < b.code_b,
            ibis.least(a.na, b.nb).cast("float64")
            >= min_jaccard * ibis.greatest(a.na, b.nb).cast("float64"),
        ],
    )
    co = co.group_by(["code_a", "code_b", "na", "nb"]).agg(co=ibis._.count())
    jac = co.co.cast("float64") / (co.na + co.nb - co.co).cast("float64")
    co = co.mutate(jaccard=jac)
    co = co.filter((co.co >= min_co) & (co.jaccard >= min_jaccard))
    pairs = co.select(
        "code_a",
        "code_b",
        contribution=(float(cfg["weight"]) * co.jaccard).cast("float64"),
    )
    return pairs


def _sum_pairs(allp: ir.Table) -> ir.Table:
    """Per pair: the total weight, the number of kinds and each kind's contribution."""
    aggs = {
        f"w_{k}": ibis.ifelse(allp.kind == k, allp.contribution, 0.0).sum().cast("float64")
        for k in EDGE_KINDS
    }
    return allp.group_by(["code_a", "code_b"]).agg(
        weight=allp.contribution.sum().cast("float64"),
        n_kinds=(allp.contribution > 0).cast("int64").sum(),
        **aggs,
    )


def evidence_families(config: Mapping[str, Any]) -> dict[str, list[str]]:
    """Independent kinds of evidence: configured groups of edge kinds (an IP and its prefix are
    one network fact), every other kind on its own. Sorted by family name."""
    grouped: dict[str, list[str]] = {
        str(name): [str(k) for k in kinds]
        for name, kinds in (config["linking"].get("kind_families") or {}).items()
        if kinds
    }
    taken = {k for kinds in grouped.values() for k in kinds}
    unknown = taken - set(EDGE_KINDS)
    if unknown:
        raise ConfigError(f"linking.kind_families names unknown kinds: {sorted(unknown)}")
    families = {k: [k] for k in EDGE_KINDS if k not in taken}
    families.update(grouped)
    return dict(sorted(families.items()))


def _account_table(signals: ir.Table, accounts: ir.Table, lcfg: Mapping[str, Any]) -> ir.Table:
    """Every account seen, with an integer code in name order and whether it is *vouched*.

    Codes follow the names, so ``code_a < code_b`` orients a pair exactly as ``account_a <
    account_b`` would. Vouched: identity-verified (KYC), or a platform serving at least
    ``platform_min_end_users`` distinct end users (reseller, SaaS backend, coding-agent product).
    """
    ids = ibis.union(
        signals.select("account_id"), accounts.select("account_id"), distinct=True
    ).filter(ibis._.account_id.notnull())
    codes = ids.mutate(account_code=ibis.row_number().over(order_by=ids.account_id).cast("int64"))
    kyc: ir.BooleanValue = ibis.literal(False)
    if "verification" in accounts.columns:
        kyc = accounts.verification.fill_null("") == "kyc"
    acc = accounts.select(k_id=accounts.account_id, kyc=kyc)
    table = codes.left_join(acc, codes.account_id == acc.k_id)
    table = table.select("account_id", "account_code", kyc=table.kyc.fill_null(False))
    min_users = int(lcfg.get("platform_min_end_users", 0))
    if min_users > 0 and "end_user_id" in signals.columns:
        users = signals.group_by("account_id").agg(n_users=signals.end_user_id.nunique())
        platforms = users.filter(users.n_users >= min_users).select(p_id=users.account_id)
        table = table.left_join(platforms, table.account_id == platforms.p_id)
        return table.select("account_id", "account_code", "kyc", platform=table.p_id.notnull())
    return table.mutate(platform=ibis.literal(False))


def _vouched_factor(
    edges: ir.Table, table: ir.Table, discount: float
) -> tuple[ir.Table, ir.FloatingValue]:
    """``edges`` joined to each end's flags, and the factor of each edge: ``discount`` between
    two KYC accounts or where either end is a platform, 1 otherwise (see :func:`_discounted`)."""
    ta = table.select(code_a=table.account_code, ka=table.kyc, pa_=table.platform)
    tb = table.select(code_b=table.account_code, kb=table.kyc, pb_=table.platform)
    e = edges.join(ta, "code_a").join(tb, "code_b")
    return e, ibis.ifelse((e.ka & e.kb) | e.pa_ | e.pb_, discount, 1.0)


def _discounted(edges: ir.Table, table: ir.Table, discount: float) -> ir.Table:
    """The edge between two *vouched* accounts multiplied by ``discount`` (codes only, no names).

    Accountable businesses, not throwaway hydra heads: sharing a cloud egress, a datacenter
    prefix or a popular scaffold with them is ordinary. Two KYC customers vouch for each other;
    a platform's traffic mixes thousands of people, so anything anyone shares with it (an
    egress, a scaffold, a schedule) says little about either. A hydra head gains nothing by
    claiming end users unless every head does, and the accounts' own behaviour is still scored.
    """
    if discount >= 1.0:
        return edges
    e, factor = _vouched_factor(edges, table, discount)
    return e.select(
        "code_a",
        "code_b",
        weight=(e.weight * factor).cast("float64"),
        n_kinds=e.n_kinds,
        **{f"w_{k}": (e[f"w_{k}"] * factor).cast("float64") for k in EDGE_KINDS},
    )


def named_edges(edges: ir.Table, table: ir.Table) -> ir.Table:
    """Account names (``account_a``, ``account_b``) on coded edges, sorted by code, i.e. by name."""
    ta = table.select(code_a=table.account_code, account_a=table.account_id)
    tb = table.select(code_b=table.account_code, account_b=table.account_id)
    e = edges.join(ta, "code_a").join(tb, "code_b")
    return e.select(
        "code_a",
        "code_b",
        "account_a",
        "account_b",
        "weight",
        "n_kinds",
        *[f"w_{k}" for k in EDGE_KINDS],
    ).order_by(["code_a", "code_b"])


@dataclass(frozen=True)
class EdgePlan:
    """Unexecuted expressions of linking: coded edges, key memberships and the account table."""

    coded: ir.Table  # code_a < code_b, weight, n_kinds, w_<kind>; no names, no order
    pairs: ir.Table  # code_a, code_b, kind, contribution: one row per pair and kind
    kind_pairs: Mapping[str, ir.Table]  # per kind: code_a, code_b, contribution (its rows of pairs)
    indicators: ir.Table  # kind, key, account_id, key_weight, df, address (unordered)
    accounts: ir.Table  # account_id, account_code, kyc, platform


def edge_expressions(
    signals: ir.Table,
    accounts: ir.Table,
    config: Mapping[str, Any],
    hold: Callable[[ir.Table], ir.Table] | None = None,
) -> tuple[ir.Table, ir.Table]:
    """Ibis expressions for (edges, indicators): every edge, named; see :func:`edge_plan`."""
    plan = edge_plan(signals, accounts, config, hold)
    return named_edges(plan.coded, plan.accounts), plan.indicators.order_by(
        ["kind", "key", "account_id"]
    )


def edge_plan(
    signals: ir.Table,
    accounts: ir.Table,
    config: Mapping[str, Any],
    hold: Callable[[ir.Table], ir.Table] | None = None,
) -> EdgePlan:
    """Ibis expressions for the coded edges, the per-kind pairs, the indicators and the account
    table.

    Nothing is executed here unless ``hold`` is given: it is applied to each kind's key
    memberships, which both the edges and the indicators read, and to each kind's pairs, so an
    engine computes them once (``Engine.cache``) instead of once per consumer. Summing the
    pairs is left to the consumer: :func:`edge_sums` on all of them (``coded``) or on a subset,
    or :func:`edge_totals` (weight and kinds mask only) on a slice.

    The coded edges carry ``code_a`` / ``code_b`` (integer codes in account-name order, see
    ``_account_table``) and no names: :func:`named_edges` adds them and sorts by code.

    ``signals`` needs account_id, ts, client_ip, ip_prefix, asn, network_kind, user_agent,
    template_id, system_prompt_sha256, model; ``accounts`` needs account_id, created_at,
    email_domain, payment_fingerprint, signup_ip. A kind whose ``weight`` is 0 is skipped.
    """
    lcfg = config["linking"]
    kinds_cfg: Mapping[str, Mapping[str, Any]] = lcfg["kinds"]
    n_accounts = signals.account_id.nunique()
    if hold is not None:
        # Every kind's rarity reads it: count the active accounts once, not once per kind.
        active = hold(signals.select("account_id").filter(signals.account_id.notnull()).distinct())
        n_accounts = active.count()
    table = _account_table(signals, accounts, lcfg)
    if hold is not None:
        table = hold(table)
    codes = table.select("account_id", "account_code")
    vouched = table.select("account_id", "account_code", vouched=table.kyc | table.platform)
    infra_discount = float(lcfg.get("vouched_infrastructure_discount", 1.0))
    pair_parts: dict[str, ir.Table] = {}
    member_parts: list[ir.Table] = []
    for kind in EDGE_KINDS:
        cfg = kinds_cfg[kind]
        if float(cfg["weight"]) <= 0.0:
            continue
        if kind == "synchrony":
            pairs = _synchrony(signals, accounts, codes, cfg, hold)
        else:
            if kind == "payment":
                acc = accounts.filter(accounts.payment_fingerprint.notnull())
                keyed = acc.select(
                    key=acc.payment_fingerprint,
                    account_id=acc.account_id,
                    kind_w=ibis.literal(1.0),
                    net_kind=ibis.null("string"),
                )
            elif kind == "signup_wave":
                keyed = _signup_keys(accounts, cfg)
            else:
                keyed = _exchange_keys(signals, kind, cfg, lcfg)
            # Two gmail.com accounts on one card are not one organisation, as online. Only cards:
            # for templates and user agents the one-domain discount is all that keeps the free-mail
            # crowd's common keys quiet, and its effect on them was never judged.
            free_mail = (lcfg["free_mail_domains"] or ()) if kind == "payment" else ()
            members = _key_stats(keyed, accounts, n_accounts, cfg, lcfg, hold, free_mail)
            members = members.join(vouched, "account_id")
            if hold is not None:
                members = hold(members)
            pairs = _pairs(members, cfg, infra_discount if kind in _ADDRESS_KINDS else 1.0)
            # Synchrony's memberships are raw activity, not indicators: the edge share reports it.
            member_parts.append(
                # Cast: a kind without addresses holds nulls, which Spark reads back as int32.
                members.select(
                    kind=ibis.literal(kind),
                    key=members.key,
                    account_id=members.account_id,
                    key_weight=members.key_weight,
                    df=members.df,
                    address=members.address.cast("int64"),
                )
            )
        if hold is not None:
            # One self-join at a time: run together inside one query, the joins of every kind
            # competed for memory (the seed scale's next out-of-memory after the memberships).
            # Codes as int32 (~680k accounts at the seed scale) and no kind column: half the
            # writing of ~170M ip pairs (20 against 8 s at the seed scale, fresh seed 1102).
            pairs = hold(
                pairs.select(
                    code_a=pairs.code_a.cast("int32"),
                    code_b=pairs.code_b.cast("int32"),
                    contribution=pairs.contribution,
                )
            )
        pair_parts[kind] = pairs
    pairs = ibis.union(
        *(
            part.select("code_a", "code_b", kind=ibis.literal(kind), contribution=part.contribution)
            for kind, part in pair_parts.items()
        )
    )
    indicators = ibis.union(*member_parts)
    return EdgePlan(edge_sums(pairs, table, config), pairs, pair_parts, indicators, table)


def edge_sums(pairs: ir.Table, table: ir.Table, config: Mapping[str, Any]) -> ir.Table:
    """Coded edges of ``pairs`` (per-kind contributions, any subset of :attr:`EdgePlan.pairs`
    holding every row of each of its pairs): per pair the total weight, the number of kinds and
    each kind's contribution, with the vouched-pair discount."""
    discount = float(config["linking"].get("verified_pair_discount", 1.0))
    summed = _discounted(_sum_pairs(pairs), table, discount)
    return summed.mutate(weight=settled_weight(summed.weight))


def edge_totals(
    kind_pairs: Mapping[str, ir.Table],
    table: ir.Table,
    config: Mapping[str, Any],
    partitions: int = 1,
    part: int = 0,
) -> ir.Table:
    """Per pair of slice ``part`` of ``partitions`` (by ``code_a``): ``weight`` as
    :func:`edge_sums` gives it and ``kinds``, a mask of :data:`KIND_BITS` of the kinds that
    contributed (``n_kinds`` is its bit count; :func:`kind_on` reads one kind).

    What the graph step, the cluster statistics and the ranking of a cluster's heaviest edges
    read of every edge: at the seed scale (~230M pairs) summing and holding each kind's value
    too took three times as long (20.8 against 6.5 s a slice), while only a cluster's kept
    edges need them (:func:`edge_sums` over those pairs alone). Each kind's rows are tagged
    with its bit as a literal, which spares comparing the kind's name on every row; a pair has
    at most one row per kind, so summing the bits is their OR.
    """
    parts = []
    for kind, pairs in kind_pairs.items():
        if partitions > 1:
            pairs = pairs.filter(pairs.code_a % partitions == part)
        parts.append(
            pairs.select(
                "code_a",
                "code_b",
                "contribution",
                bit=ibis.ifelse(pairs.contribution > 0, KIND_BITS[kind], 0).cast("int32"),
            )
        )
    allp = ibis.union(*parts)
    summed = allp.group_by(["code_a", "code_b"]).agg(
        weight=allp.contribution.sum().cast("float64"), kinds=allp.bit.sum().cast("int32")
    )
    discount = float(config["linking"].get("verified_pair_discount", 1.0))
    if discount >= 1.0:
        return summed.mutate(weight=settled_weight(summed.weight))
    e, factor = _vouched_factor(summed, table, discount)
    return e.select("code_a", "code_b", weight=settled_weight(e.weight * factor), kinds=e.kinds)


WEIGHT_DECIMALS = 9


def settled_weight(weight: ir.FloatingValue) -> ir.FloatingValue:
    """An edge's summed weight rounded to :data:`WEIGHT_DECIMALS` places.

    A float sum depends on the order its rows are added in, which an engine's plan may change
    from one version or thread count to the next: on seed 1122's first week 4,316 weights
    differed by up to 1.8e-15 between two plans, and the community step broke a tie the other
    way (30 accounts changed cluster). Contributions are products of a few configured weights
    and rarities, so nine places keep every real difference and drop only the summation noise.
    """
    return weight.round(WEIGHT_DECIMALS).cast("float64")


def kind_on(kinds: ir.IntegerValue, *names: str) -> ir.BooleanValue:
    """Whether any of the kinds ``names`` contributed to an edge, from its ``kinds`` mask."""
    mask = sum(KIND_BITS[name] for name in names)
    return (kinds & mask) != 0


def empty_edges() -> pa.Table:
    """An edge table with no rows and the full schema."""
    fields = [pa.field("account_a", pa.string()), pa.field("account_b", pa.string())]
    fields += [pa.field("weight", pa.float64()), pa.field("n_kinds", pa.int64())]
    fields += [pa.field(f"w_{k}", pa.float64()) for k in EDGE_KINDS]
    return pa.schema(fields).empty_table()
