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
from distillguard.linking.edges import EDGE_KINDS, edge_plan, empty_edges, named_edges
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


def _internal_edges(
    engine: Engine, coded: ir.Table, accounts: ir.Table, membership: pa.Table
) -> pa.Table:
    """Every edge, strong or weak, between two members of one cluster, named, in name order."""
    if membership.num_rows == 0:
        return empty_edges()
    members = engine.table("cluster_members", membership)
    codes = accounts.join(members, "account_id").select("account_code", "cluster_id")
    ma = codes.select(code_a=codes.account_code, cluster_a=codes.cluster_id)
    mb = codes.select(code_b=codes.account_code, cluster_b=codes.cluster_id)
    inside = coded.join(ma, "code_a").join(mb, "code_b")
    inside = inside.filter(inside.cluster_a == inside.cluster_b).drop("cluster_a", "cluster_b")
    named = engine.to_arrow(named_edges(inside, accounts))
    return named.drop_columns(["code_a", "code_b"]).cast(empty_edges().schema)


def link(
    engine: Engine, signals: ir.Table, accounts: ir.Table, config: Mapping[str, Any]
) -> LinkResult:
    """Build edges (relational, on ``engine``), find communities, compute cluster features."""
    # Each kind's key memberships feed both the edges and the indicators: compute them once.
    plan = edge_plan(signals, accounts, config, hold=engine.cache)
    coded = engine.cache(plan.coded)
    # Communities read only the strong edges, by integer code (a hydra of 25,000 heads has
    # ~10M of them: names on each would take gigabytes); cluster features and campaign
    # subgraphs only the edges inside a cluster. Every other edge (~99 % of them on medium
    # scenarios) stays in the engine instead of crossing into Python.
    threshold = float(config["linking"]["graph"]["min_edge_weight"])
    strong = engine.to_arrow(
        coded.filter(coded.weight >= threshold).select(
            "code_a", "code_b", "weight", *[f"w_{k}" for k in EDGE_KINDS]
        )
    )
    names = engine.to_arrow(plan.accounts.select("account_code", "account_id"))
    membership = find_clusters(strong, config, account_names=names)
    del strong
    edges = _internal_edges(engine, coded, plan.accounts, membership)
    indicators = engine.to_arrow(plan.indicators)
    act_expr, cap_expr = account_activity_expr(signals)
    activity = engine.to_arrow(act_expr.order_by("account_id"))
    capabilities = engine.to_arrow(cap_expr.order_by(["account_id", "capability"]))
    features = cluster_features(membership, edges, activity, capabilities, config)
    shared = shared_indicators(membership, indicators)
    return LinkResult(edges, indicators, membership, features, activity, capabilities, shared)
