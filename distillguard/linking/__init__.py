"""Linking: per-exchange signals + accounts → weighted cross-account edges → clusters + cluster features."""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import ibis
import ibis.expr.types as ir
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from distillguard.core.engine import Engine
from distillguard.linking.clusters import (
    CLUSTER_DETECTORS,
    account_activity_expr,
    cluster_features,
    shared_indicators,
    shared_indicators_expr,
    shared_keys_expr,
)
from distillguard.linking.communities import find_clusters
from distillguard.linking.edges import (
    ADDRESS_KEY,
    EDGE_KINDS,
    SIGNUP_IP_KEY,
    EdgePlan,
    edge_plan,
    edge_sums,
    edge_totals,
    empty_edges,
    evidence_families,
    kind_on,
    named_edges,
    signup_prefix,
)
from distillguard.linking.peer_indicators import ACCOUNT_DETECTORS, peer_detections

__all__ = [
    "ACCOUNT_DETECTORS",
    "CLUSTER_DETECTORS",
    "EDGE_KINDS",
    "LinkResult",
    "link",
    "peer_detections",
]


@dataclass(frozen=True)
class LinkResult:
    """Everything linking hands to scoring and the outputs."""

    # Edges with both ends in one cluster, named (empty_edges schema): the heaviest
    # linking.max_cluster_edges of each cluster (cluster features count them all).
    edges: pa.Table
    membership: pa.Table
    features: pa.Table
    activity: pa.Table
    capabilities: pa.Table
    shared: Mapping[str, list[dict[str, Any]]]


def _summed_slices(engine: Engine, plan: EdgePlan, config: Mapping[str, Any]) -> list[ir.Table]:
    """Every coded edge's weight and kinds (:func:`edge_totals`), summed once and held in the
    engine, in ``linking.edge_partitions`` slices of ``code_a``.

    At the seed scale there are ~230M pairs, ~48M of them strong (a hydra of 25,000 heads), and
    one aggregation over all of them does not fit the engine's memory cap, so each slice is
    summed alone; every row of a pair lands in one slice. Held rather than summed again by each
    reader (the strong edges, then the in-cluster statistics and heaviest edges): the in-cluster
    pass once summed every slice twice more (8 x 34 s).
    """
    partitions = max(1, int(config["linking"].get("edge_partitions", 1)))
    return [
        engine.cache(edge_totals(plan.kind_pairs, plan.accounts, config, partitions, part))
        for part in range(partitions)
    ]


def _strong_edges(
    summed_slices: list[ir.Table], engine: Engine, config: Mapping[str, Any]
) -> pa.Table:
    """The coded edges at or above ``graph.min_edge_weight``: codes, weight, and whether each
    kind contributed (booleans ``w_<kind>``), in no particular order.

    Only the strong edges of each slice leave the engine. Codes travel as int32 and kinds as
    booleans, ~17 bytes an edge.
    """
    threshold = float(config["linking"]["graph"]["min_edge_weight"])
    slices = []
    for summed in summed_slices:
        strong = summed.filter(summed.weight >= threshold)
        slices.append(
            engine.to_arrow(
                strong.select(
                    code_a=strong.code_a.cast("int32"),
                    code_b=strong.code_b.cast("int32"),
                    weight=strong.weight,
                    **{f"w_{k}": kind_on(strong.kinds, k) for k in EDGE_KINDS},
                )
            )
        )
    return pa.concat_tables(slices)


def _top_cuts(
    strong: pa.Table, membership: pa.Table, names: pa.Table, config: Mapping[str, Any]
) -> pa.Table:
    """Per cluster with at least ``linking.max_cluster_edges`` strong internal edges, a weight
    its heaviest edges all reach: the cap-th heaviest strong internal weight, less a margin
    for the last bits a parallel sum may change between two runs.

    Its heaviest edges are the cap-th heaviest or heavier, and the strong edges already found
    hold at least cap of them, so cutting each slice's internal edges at this weight loses none
    of the heaviest and spares the engine ranking every edge of a hydra (~200M at the seed
    scale; the rank window was 40 s of each slice's minute).
    """
    cap = int(config["linking"].get("max_cluster_edges", 0))
    empty = pa.table({"cluster_id": pa.array([], pa.string()), "cut": pa.array([], pa.float64())})
    if cap <= 0 or strong.num_rows < cap or membership.num_rows == 0:
        return empty
    code_cluster = (
        pl.DataFrame(names.select(["account_code", "account_id"]))
        .join(pl.DataFrame(membership.select(["account_id", "cluster_id"])), on="account_id")
        .select(code=pl.col("account_code").cast(pl.Int32), cluster=pl.col("cluster_id"))
    )
    clusters = code_cluster.get_column("cluster").unique().sort()
    cluster_no = code_cluster.select(
        "code",
        no=pl.col("cluster").replace_strict(
            clusters, pl.int_range(clusters.len(), eager=True, dtype=pl.Int32)
        ),
    )
    edges = pl.DataFrame(strong.select(["code_a", "code_b", "weight"]))
    inside = (
        edges.join(cluster_no.rename({"code": "code_a", "no": "no_a"}), on="code_a")
        .join(cluster_no.rename({"code": "code_b", "no": "no_b"}), on="code_b")
        .filter(pl.col("no_a") == pl.col("no_b"))
    )
    cuts = (
        inside.group_by("no_a")
        .agg(n=pl.len(), cut=pl.col("weight").top_k(cap).min())
        .filter(pl.col("n") >= cap)
    )
    if cuts.height == 0:
        return empty
    return pa.table(
        {
            "cluster_id": clusters.gather(cuts.get_column("no_a").cast(pl.UInt32)).to_arrow(),
            "cut": (cuts.get_column("cut") * (1.0 - 1e-9)).to_arrow(),
        }
    ).cast(empty.schema)


def _internal_edges(
    engine: Engine,
    plan: EdgePlan,
    summed_slices: list[ir.Table],
    membership: pa.Table,
    config: Mapping[str, Any],
    cuts: pa.Table | None = None,
) -> tuple[pa.Table, pa.Table]:
    """The edges between two members of one cluster: (the heaviest ``linking.max_cluster_edges``
    of each cluster, named, in name order; per-cluster statistics over all of them).

    Slice by slice (``summed_slices``, from :func:`_summed_slices`), each slice's edges are cut
    to those with both ends in one cluster (clusters numbered as integers for the joins): a
    seed-scale hydra of 25,000 heads has ~200M internal edges, so its statistics (the columns
    of :func:`_empty_stats`) are summed in the engine and only its heaviest edges come out as
    the campaign subgraph's evidence. ``cuts`` (from :func:`_top_cuts`) drops, before the
    ranking, the edges of a large cluster that cannot be among its heaviest.
    """
    if membership.num_rows == 0:
        return empty_edges(), _empty_stats(config)
    cap = int(config["linking"].get("max_cluster_edges", 0))
    families = evidence_families(config)
    cluster_of = pl.Series(membership["cluster_id"])
    cluster_names = cluster_of.unique().sort()
    numbers = pl.int_range(cluster_names.len(), eager=True, dtype=pl.Int32)
    numbered = pa.table(
        {
            "account_id": membership["account_id"],
            "cluster_no": cluster_of.replace_strict(cluster_names, numbers).to_arrow(),
        }
    )
    members = engine.table("cluster_numbers", numbered)
    codes = plan.accounts.join(members, "account_id").select("account_code", "cluster_no")
    ma = codes.select(code_a=codes.account_code, cluster_a=codes.cluster_no)
    # "Both ends in one cluster" as one lookup of (cluster, account) keys: written as two
    # member lookups and cluster_a == cluster_b, DuckDB joined the two lookups on the cluster
    # first, 625M rows for a 25,000-head hydra, before it met the edges.
    mk = codes.select(member_key=_member_key(codes.cluster_no, codes.account_code))
    cut_table = None
    if cap > 0 and cuts is not None and cuts.num_rows > 0:
        cut_table = engine.table(
            "cluster_top_cuts",
            pa.table(
                {
                    "cut_cluster": pl.Series(cuts["cluster_id"])
                    .replace_strict(cluster_names, numbers)
                    .to_arrow(),
                    "cut": cuts["cut"],
                }
            ),
        )
    tops: list[pa.Table] = []
    stats: list[pa.Table] = []
    for summed in summed_slices:
        inside = summed.join(ma, "code_a")
        inside = inside.semi_join(mk, _member_key(inside.cluster_a, inside.code_b) == mk.member_key)
        stats.append(
            engine.to_arrow(
                inside.group_by(cluster_no=inside.cluster_a).agg(
                    n_edges=inside.count(),
                    weight_sum=inside.weight.sum(),
                    **{
                        f"n_w_{k}": kind_on(inside.kinds, k).cast("int64").sum() for k in EDGE_KINDS
                    },
                    **{
                        f"n_fam_{name}": kind_on(inside.kinds, *kinds).cast("int64").sum()
                        for name, kinds in families.items()
                    },
                )
            )
        )
        if cut_table is not None:
            inside = inside.left_join(cut_table, inside.cluster_a == cut_table.cut_cluster)
            inside = inside.filter(inside.cut.isnull() | (inside.weight >= inside.cut))
        if cap > 0:
            rank = ibis.row_number().over(
                group_by=inside.cluster_a,
                order_by=[ibis.desc(inside.weight), inside.code_a, inside.code_b],
            )
            inside = inside.mutate(rank=rank)
            inside = inside.filter(inside.rank < cap)
        tops.append(engine.to_arrow(inside.select("code_a", "code_b", "weight", "cluster_a")))
    top = pl.from_arrow(pa.concat_tables(tops))
    assert isinstance(top, pl.DataFrame)
    if cap > 0:
        top = (
            top.sort(
                ["cluster_a", "weight", "code_a", "code_b"], descending=[False, True, False, False]
            )
            .group_by("cluster_a", maintain_order=True)
            .head(cap)
        )
    kept = engine.table("cluster_edges_kept", top.select("code_a", "code_b", "weight").to_arrow())
    named = engine.to_arrow(named_edges(_with_kind_values(plan, kept, config), plan.accounts))
    total = pl.from_arrow(pa.concat_tables(stats))
    assert isinstance(total, pl.DataFrame)
    summary = total.group_by("cluster_no").agg(pl.all().sum())
    summary = summary.with_columns(
        cluster_id=cluster_names.gather(summary.get_column("cluster_no").cast(pl.UInt32))
    ).sort("cluster_id")
    return (
        named.drop_columns(["code_a", "code_b"]).cast(empty_edges().schema),
        summary.select(_empty_stats(config).column_names)
        .to_arrow()
        .cast(_empty_stats(config).schema),
    )


def _with_kind_values(plan: EdgePlan, kept: ir.Table, config: Mapping[str, Any]) -> ir.Table:
    """The edges ``kept`` (codes and weight) with ``n_kinds`` and each kind's value
    (:func:`edge_sums` over their pairs' rows alone); the weight stays the one they were
    ranked by."""
    rows = plan.pairs.semi_join(
        kept, [plan.pairs.code_a == kept.code_a, plan.pairs.code_b == kept.code_b]
    )
    values = edge_sums(rows, plan.accounts, config).drop("weight")
    return kept.join(values, ["code_a", "code_b"])


def _one_location_clusters(
    engine: Engine,
    plan: EdgePlan,
    membership: pa.Table,
    edge_stats: pa.Table,
    config: Mapping[str, Any],
) -> list[str]:
    """Clusters that are one place, not an operation: tied by the network alone, through at most
    ``linking.location_max_addresses`` shared address (and as many shared prefixes).

    A household, a carrier-grade NAT or a small office shares one address for weeks, so its
    accounts are tied strongly, window after window; an operation's accounts rotate through a
    pool and share many addresses, or share something besides the network. At the seed scale
    (676k accounts) ~13,000 groups of 3–19 home users on one residential address each formed
    a cluster, and their members' own small oddities then made them look like campaigns. A
    family other than the network counts when on ``min_kind_share`` of the internal edges.
    0 keeps every cluster.

    Sign-up waves from the network of a shared address are that place again: a family signs up
    together at home (fresh seed-scale seed 1071: three home users on one address who had
    signed up within half an hour from its /24 were throttled and challenged as a campaign). A
    wave keyed on an e-mail domain, or from another network, still counts as its own evidence.
    """
    max_addresses = int(config["linking"].get("location_max_addresses", 0))
    if max_addresses <= 0 or membership.num_rows == 0 or edge_stats.num_rows == 0:
        return []
    families = evidence_families(config)
    network = [name for name, kinds in families.items() if "ip" in kinds or "prefix" in kinds]
    signup = [name for name, kinds in families.items() if kinds == ["signup_wave"]]
    others = [name for name in families if name not in network and name not in signup]
    min_share = float(config["linking"].get("min_kind_share", 0.2))
    stats = pl.from_arrow(edge_stats)
    assert isinstance(stats, pl.DataFrame)
    n = pl.col("n_edges").cast(pl.Float64)
    network_only = stats.filter(
        pl.any_horizontal([pl.col(f"n_fam_{f}") >= min_share * n for f in network]),
        *[pl.col(f"n_fam_{f}") < min_share * n for f in others],
    ).select(
        "cluster_id",
        waves=pl.any_horizontal(
            [pl.lit(False), *[pl.col(f"n_fam_{f}") >= min_share * n for f in signup]]
        ),
    )
    if network_only.height == 0:
        return []
    candidates = membership.filter(
        pc.is_in(membership["cluster_id"], network_only.get_column("cluster_id").to_arrow())
    )
    members = engine.table("location_candidates", candidates)
    keys = plan.indicators.filter(plan.indicators.kind.isin(["ip", "prefix", "signup_wave"]))
    shared = shared_keys_expr(keys, members)
    on_network = shared.filter(shared.kind != "signup_wave")
    places = on_network.group_by(["cluster_id", "kind"]).agg(
        n_addresses=on_network.address.nunique()
    )
    counted = pl.from_arrow(engine.to_arrow(places))
    assert isinstance(counted, pl.DataFrame)
    widest = counted.group_by("cluster_id").agg(pl.col("n_addresses").max())
    many = set(widest.filter(pl.col("n_addresses") > max_addresses)["cluster_id"].to_list())
    located = set(network_only["cluster_id"].to_list()) - many
    waved = set(network_only.filter(pl.col("waves"))["cluster_id"].to_list()) & located
    if waved:
        located -= waved - _waves_from_the_place(engine, shared, sorted(waved))
    return sorted(located)


def _waves_from_the_place(engine: Engine, shared: ir.Table, clusters: list[str]) -> set[str]:
    """Of ``clusters``, those whose shared sign-up wave keys all come from the network (the
    sign-up prefix) of an address its members share."""
    mine = shared.filter(shared.cluster_id.isin(clusters))
    waves = mine.filter(mine.kind == "signup_wave")
    wave_places = waves.select(
        "cluster_id", place=waves.key.re_extract(SIGNUP_IP_KEY, 1), from_network=ibis.literal(False)
    )
    ips = mine.filter(mine.kind == "ip")
    ip_places = ips.select(
        "cluster_id",
        place=signup_prefix(ips.key.re_extract(ADDRESS_KEY, 1)),
        from_network=ibis.literal(True),
    )
    rows = pl.from_arrow(engine.to_arrow(ibis.union(wave_places, ip_places, distinct=True)))
    assert isinstance(rows, pl.DataFrame)
    at_home = rows.filter(~pl.col("from_network")).join(
        rows.filter(pl.col("from_network")).select("cluster_id", "place"),
        on=["cluster_id", "place"],
        how="left",
        coalesce=False,
    )
    # A domain wave extracts no place ("") and so matches no address.
    away = at_home.filter((pl.col("place") == "") | pl.col("place_right").is_null())
    return set(clusters) - set(away["cluster_id"].to_list())


def _one_address_members(
    engine: Engine, plan: EdgePlan, membership: pa.Table, config: Mapping[str, Any]
) -> pa.Table:
    """``membership`` without the members tied to their cluster by one shared place alone.

    A member that shares with the rest of its cluster no key but the network's, and those through
    at most ``linking.member_location_max_addresses`` address (and as many prefixes), is a
    bystander on one of the operation's exits, however many heads used that exit: at the seed
    scale (fresh seed 1089) a casual user whose only address in six weeks was one of `pivot`'s
    exits, shared with all 40 heads, and a VPN user on one address with 110 of a harvester's
    120 accounts were suspended with them. The per-cluster rule (:func:`_one_location_clusters`)
    applied to each member. A cluster left smaller than ``graph.min_cluster_size`` is dropped.

    A key of another kind (a template, a user agent) counts only where members of the cluster
    hold at least ``linking.member_key_min_cluster_share`` of its accounts (``df``): fresh seed
    1097 suspended a developer whose only address was one of `pivot`'s exits and whose coding
    prompts fell into scaffolds many other customers use too, all 40 heads among them.

    Prefixes count as places only where a prefix tie alone can make a strong edge
    (``kinds.prefix.weight`` at least ``graph.min_edge_weight``; by default it is a quarter of
    it): otherwise a member's strong ties stand on its shared addresses. The VPN user above also
    met the harvester on eight other /24s of the VPN host the harvester rented, once each, in one
    hour: counted as places, those kept it in the cluster and suspended.
    """
    lcfg = config["linking"]
    max_addresses = int(lcfg.get("member_location_max_addresses", 0))
    if max_addresses <= 0 or membership.num_rows == 0:
        return membership
    prefix_weight = float(lcfg["kinds"].get("prefix", {}).get("weight", 0.0))
    prefixes_are_places = prefix_weight >= float(lcfg["graph"]["min_edge_weight"])
    members = engine.table("member_places", membership.select(["account_id", "cluster_id"]))
    held = plan.indicators.join(members, "account_id").select(
        "cluster_id", "account_id", "kind", "key", "address", "df"
    )
    # Keys another member of the same cluster holds too: one pass over the memberships, where a
    # join back to shared_keys_expr would read the ~10^8 indicator rows twice at the seed scale.
    holders = held.key.count().over(group_by=[held.cluster_id, held.kind, held.key])
    own = held.mutate(holders=holders).filter(ibis._.holders >= 2)
    network = own.kind.isin(["ip", "prefix"])
    # Another kind of key ties the member to the operation only where the cluster holds most of
    # it: a coding scaffold hundreds of accounts use, 40 of them the operation's, is popular.
    own_share = float(lcfg.get("member_key_min_cluster_share", 0.0))
    its_own = own.holders.cast("float64") >= own_share * own.df.cast("float64")
    per_member = own.group_by(["cluster_id", "account_id"]).agg(
        ip_addresses=own.address.nunique(where=own.kind == "ip"),
        prefixes=own.address.nunique(where=own.kind == "prefix"),
        other_keys=(~network & its_own).sum(),
    )
    one_place = (per_member.ip_addresses <= max_addresses) & (per_member.other_keys == 0)
    if prefixes_are_places:
        one_place = one_place & (per_member.prefixes <= max_addresses)
    placed = per_member.filter(one_place).select("cluster_id", "account_id")
    dropped = pl.from_arrow(engine.to_arrow(placed.order_by(["cluster_id", "account_id"])))
    assert isinstance(dropped, pl.DataFrame)
    if dropped.height == 0:
        return membership
    table = pl.from_arrow(membership)
    assert isinstance(table, pl.DataFrame)
    kept = table.join(dropped, on=["cluster_id", "account_id"], how="anti")
    min_size = int(lcfg["graph"]["min_cluster_size"])
    kept = kept.filter(pl.len().over("cluster_id") >= min_size)
    return kept.to_arrow().cast(membership.schema)


def _member_key(cluster_no: ir.IntegerValue, account_code: ir.IntegerValue) -> ir.IntegerValue:
    """One integer per (cluster, account): cluster numbers and account codes both fit 32 bits."""
    return cluster_no.cast("int64") * (1 << 32) + account_code.cast("int64")


def _empty_stats(config: Mapping[str, Any]) -> pa.Table:
    fields = [pa.field("cluster_id", pa.string()), pa.field("n_edges", pa.int64())]
    fields += [pa.field("weight_sum", pa.float64())]
    fields += [pa.field(f"n_w_{k}", pa.int64()) for k in EDGE_KINDS]
    fields += [pa.field(f"n_fam_{n}", pa.int64()) for n in evidence_families(config)]
    return pa.schema(fields).empty_table()


def link(
    engine: Engine, signals: ir.Table, accounts: ir.Table, config: Mapping[str, Any]
) -> LinkResult:
    """Build edges (relational, on ``engine``), find communities, compute cluster features."""
    # Each kind's key memberships and pairs feed both the edges and the indicators: held once.
    plan = edge_plan(signals, accounts, config, hold=engine.cache)
    # Communities read only the strong edges, by integer code (names on ~48M edges would take
    # gigabytes); cluster features and campaign subgraphs only the edges inside a cluster.
    # Every other edge (~99 % of them on medium scenarios) stays in the engine.
    summed_slices = _summed_slices(engine, plan, config)
    strong = _strong_edges(summed_slices, engine, config)
    # The graph step runs outside the engine, beside what the engine cached of its held tables.
    engine.release_memory()
    names = engine.to_arrow(plan.accounts.select("account_code", "account_id"))
    act_expr, cap_expr = account_activity_expr(signals)
    # The graph step is single-threaded Python (~45 s at the seed scale); the per-account activity
    # needs no cluster, so the engine reads it on the idle core meanwhile. One engine call at a
    # time still: the main thread waits for both before its next one.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="linking-activity") as beside:
        activity_call = beside.submit(engine.to_arrow, act_expr.order_by("account_id"))
        capabilities_call = beside.submit(
            engine.to_arrow, cap_expr.order_by(["account_id", "capability"])
        )
        clusters = find_clusters(strong, config, account_names=names)
        activity, capabilities = activity_call.result(), capabilities_call.result()
    membership = _one_address_members(engine, plan, clusters, config)
    cuts = _top_cuts(strong, membership, names, config)
    del strong
    edges, edge_stats = _internal_edges(engine, plan, summed_slices, membership, config, cuts)
    located = _one_location_clusters(engine, plan, membership, edge_stats, config)
    if located:
        membership = membership.filter(
            pc.invert(pc.is_in(membership["cluster_id"], pa.array(located)))
        )
        kept = membership["account_id"]
        edges = edges.filter(pc.is_in(edges["account_a"], kept))
        edge_stats = edge_stats.filter(pc.is_in(edge_stats["cluster_id"], membership["cluster_id"]))
    features = cluster_features(membership, edge_stats, activity, capabilities, config)
    # The indicator memberships (every address window every account used) stay in the engine.
    members = engine.table("cluster_membership", membership)
    shared = shared_indicators(engine.to_arrow(shared_indicators_expr(plan.indicators, members)))
    # Nothing reads linking's held tables again: what the engine keeps cached of them (~7 GiB of
    # pairs after the kept edges' values at the seed scale) would sit beside the next stages.
    engine.release_memory()
    return LinkResult(edges, membership, features, activity, capabilities, shared)
