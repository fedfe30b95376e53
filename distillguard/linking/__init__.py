"""Linking: per-exchange signals + accounts → weighted cross-account edges → clusters + cluster features."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import ibis
import ibis.expr.types as ir
import polars as pl
import pyarrow as pa

from distillguard.core.engine import Engine
from distillguard.linking.clusters import (
    CLUSTER_DETECTORS,
    account_activity_expr,
    cluster_features,
    shared_indicators,
)
from distillguard.linking.communities import find_clusters
from distillguard.linking.edges import (
    EDGE_KINDS,
    EdgePlan,
    edge_plan,
    edge_sums,
    empty_edges,
    evidence_families,
    named_edges,
)
from distillguard.linking.peer_indicators import ACCOUNT_DETECTORS, peer_detections

__all__ = ["ACCOUNT_DETECTORS", "CLUSTER_DETECTORS", "EDGE_KINDS", "LinkResult", "link", "peer_detections"]


@dataclass(frozen=True)
class LinkResult:
    """Everything linking hands to scoring and the outputs."""

    # Edges with both ends in one cluster, named (empty_edges schema): the heaviest
    # linking.max_cluster_edges of each cluster (cluster features count them all).
    edges: pa.Table
    indicators: pa.Table
    membership: pa.Table
    features: pa.Table
    activity: pa.Table
    capabilities: pa.Table
    shared: Mapping[str, list[dict[str, Any]]]


def _slices(pairs: ir.Table, config: Mapping[str, Any]) -> list[ir.Table]:
    """The pairs in ``linking.edge_partitions`` slices of ``code_a``: every row of a pair lands
    in one slice, so each slice sums to whole edges."""
    partitions = max(1, int(config["linking"].get("edge_partitions", 1)))
    if partitions == 1:
        return [pairs]
    return [pairs.filter(pairs.code_a % partitions == part) for part in range(partitions)]


def _strong_edges(engine: Engine, plan: EdgePlan, config: Mapping[str, Any]) -> pa.Table:
    """The coded edges at or above ``graph.min_edge_weight``: codes, weight, and whether each
    kind contributed (booleans), in no particular order.

    Pairs are summed in slices of ``code_a`` (``linking.edge_partitions``) and only the strong
    edges of each slice leave the engine: at the seed scale there are ~230M pairs, ~48M of them
    strong (a hydra of 25,000 heads), and one aggregation over all of them does not fit the
    engine's memory cap. Codes travel as int32 and kinds as booleans, ~17 bytes an edge.
    """
    threshold = float(config["linking"]["graph"]["min_edge_weight"])
    slices = []
    for chunk in _slices(plan.pairs, config):
        summed = edge_sums(chunk, plan.accounts, config)
        strong = summed.filter(summed.weight >= threshold)
        slices.append(
            engine.to_arrow(
                strong.select(
                    code_a=strong.code_a.cast("int32"),
                    code_b=strong.code_b.cast("int32"),
                    weight=strong.weight,
                    **{f"w_{k}": strong[f"w_{k}"] > 0 for k in EDGE_KINDS},
                )
            )
        )
    return pa.concat_tables(slices)


def _internal_edges(
    engine: Engine, plan: EdgePlan, membership: pa.Table, config: Mapping[str, Any]
) -> tuple[pa.Table, pa.Table]:
    """The edges between two members of one cluster: (the heaviest ``linking.max_cluster_edges``
    of each cluster, named, in name order; per-cluster statistics over all of them).

    The pairs are cut to the clusters before they are summed, slice by slice like the strong
    edges: a seed-scale hydra of 25,000 heads has ~200M internal edges, so its statistics
    (the columns of :func:`_empty_stats`) are summed in the engine and only its heaviest edges
    come out as the campaign subgraph's evidence. Each slice's sums are held once and read
    twice (statistics, heaviest edges).
    """
    if membership.num_rows == 0:
        return empty_edges(), _empty_stats(config)
    cap = int(config["linking"].get("max_cluster_edges", 0))
    families = evidence_families(config)
    members = engine.table("cluster_members", membership)
    codes = plan.accounts.join(members, "account_id").select("account_code", "cluster_id")
    ma = codes.select(code_a=codes.account_code, cluster_a=codes.cluster_id)
    mb = codes.select(code_b=codes.account_code, cluster_b=codes.cluster_id)
    tops: list[pa.Table] = []
    stats: list[pa.Table] = []
    columns = ["code_a", "code_b", "weight", "n_kinds", *[f"w_{k}" for k in EDGE_KINDS]]
    for chunk in _slices(plan.pairs, config):
        inside = chunk.join(ma, "code_a").join(mb, "code_b")
        inside = inside.filter(inside.cluster_a == inside.cluster_b).select(*chunk.columns)
        summed = engine.cache(edge_sums(inside, plan.accounts, config).join(ma, "code_a"))
        fam_on = {
            name: ibis.or_(*[summed[f"w_{k}"] > 0 for k in kinds])
            for name, kinds in families.items()
        }
        stats.append(
            engine.to_arrow(
                summed.group_by(cluster_id=summed.cluster_a).agg(
                    n_edges=summed.count(),
                    weight_sum=summed.weight.sum(),
                    **{f"n_w_{k}": (summed[f"w_{k}"] > 0).cast("int64").sum() for k in EDGE_KINDS},
                    **{f"n_fam_{n}": on.cast("int64").sum() for n, on in fam_on.items()},
                )
            )
        )
        if cap > 0:
            rank = ibis.row_number().over(
                group_by=summed.cluster_a,
                order_by=[ibis.desc(summed.weight), summed.code_a, summed.code_b],
            )
            summed = summed.mutate(rank=rank)
            summed = summed.filter(summed.rank < cap)
        tops.append(engine.to_arrow(summed.select(*columns, "cluster_a")))
    top = pl.from_arrow(pa.concat_tables(tops))
    assert isinstance(top, pl.DataFrame)
    if cap > 0:
        top = (
            top.sort(["cluster_a", "weight", "code_a", "code_b"], descending=[False, True, False, False])
            .group_by("cluster_a", maintain_order=True)
            .head(cap)
        )
    kept = engine.table("cluster_edges_kept", top.select(columns).to_arrow())
    named = engine.to_arrow(named_edges(kept, plan.accounts))
    total = pl.from_arrow(pa.concat_tables(stats))
    assert isinstance(total, pl.DataFrame)
    summary = total.group_by("cluster_id").agg(pl.all().sum()).sort("cluster_id")
    return (
        named.drop_columns(["code_a", "code_b"]).cast(empty_edges().schema),
        summary.to_arrow().cast(_empty_stats(config).schema),
    )


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
    strong = _strong_edges(engine, plan, config)
    names = engine.to_arrow(plan.accounts.select("account_code", "account_id"))
    membership = find_clusters(strong, config, account_names=names)
    del strong
    edges, edge_stats = _internal_edges(engine, plan, membership, config)
    indicators = engine.to_arrow(plan.indicators)
    act_expr, cap_expr = account_activity_expr(signals)
    activity = engine.to_arrow(act_expr.order_by("account_id"))
    capabilities = engine.to_arrow(cap_expr.order_by(["account_id", "capability"]))
    features = cluster_features(membership, edge_stats, activity, capabilities, config)
    shared = shared_indicators(membership, indicators)
    return LinkResult(edges, indicators, membership, features, activity, capabilities, shared)
