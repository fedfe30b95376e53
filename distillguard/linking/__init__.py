"""Linking: per-exchange signals + accounts → weighted cross-account edges → clusters + cluster features."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import ibis.expr.types as ir
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
    named_edges,
)
from distillguard.linking.peer_indicators import ACCOUNT_DETECTORS, peer_detections

__all__ = ["ACCOUNT_DETECTORS", "CLUSTER_DETECTORS", "EDGE_KINDS", "LinkResult", "link", "peer_detections"]


@dataclass(frozen=True)
class LinkResult:
    """Everything linking hands to scoring and the outputs."""

    edges: pa.Table  # every edge with both ends in one cluster, named (empty_edges schema)
    indicators: pa.Table
    membership: pa.Table
    features: pa.Table
    activity: pa.Table
    capabilities: pa.Table
    shared: Mapping[str, list[dict[str, Any]]]


def _strong_edges(engine: Engine, plan: EdgePlan, config: Mapping[str, Any]) -> pa.Table:
    """The coded edges at or above ``graph.min_edge_weight``: codes, weight, and whether each
    kind contributed (booleans), in no particular order.

    Pairs are summed in slices of ``code_a`` (``linking.edge_partitions``) and only the strong
    edges of each slice leave the engine: at the seed scale there are ~230M pairs, ~48M of them
    strong (a hydra of 25,000 heads), and one aggregation over all of them does not fit the
    engine's memory cap. Codes travel as int32 and kinds as booleans, ~17 bytes an edge.
    """
    lcfg = config["linking"]
    threshold = float(lcfg["graph"]["min_edge_weight"])
    partitions = max(1, int(lcfg.get("edge_partitions", 1)))
    pairs = plan.pairs
    slices = []
    for part in range(partitions):
        chunk = pairs if partitions == 1 else pairs.filter(pairs.code_a % partitions == part)
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
) -> pa.Table:
    """Every edge, strong or weak, between two members of one cluster, named, in name order.

    The pairs are cut to the clusters before they are summed: summing all of them again (~230M
    at the seed scale) to keep a few million would cost as much as the strong edges did.
    """
    if membership.num_rows == 0:
        return empty_edges()
    members = engine.table("cluster_members", membership)
    codes = plan.accounts.join(members, "account_id").select("account_code", "cluster_id")
    ma = codes.select(code_a=codes.account_code, cluster_a=codes.cluster_id)
    mb = codes.select(code_b=codes.account_code, cluster_b=codes.cluster_id)
    pairs = plan.pairs
    inside = pairs.join(ma, "code_a").join(mb, "code_b")
    inside = inside.filter(inside.cluster_a == inside.cluster_b).select(*pairs.columns)
    named = engine.to_arrow(named_edges(edge_sums(inside, plan.accounts, config), plan.accounts))
    return named.drop_columns(["code_a", "code_b"]).cast(empty_edges().schema)


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
    edges = _internal_edges(engine, plan, membership, config)
    indicators = engine.to_arrow(plan.indicators)
    act_expr, cap_expr = account_activity_expr(signals)
    activity = engine.to_arrow(act_expr.order_by("account_id"))
    capabilities = engine.to_arrow(cap_expr.order_by(["account_id", "capability"]))
    features = cluster_features(membership, edges, activity, capabilities, config)
    shared = shared_indicators(membership, indicators)
    return LinkResult(edges, indicators, membership, features, activity, capabilities, shared)
