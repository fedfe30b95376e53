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
from distillguard.linking.edges import EDGE_KINDS, edge_plan, named_edges
from distillguard.linking.peer_indicators import ACCOUNT_DETECTORS, peer_detections

__all__ = ["ACCOUNT_DETECTORS", "CLUSTER_DETECTORS", "EDGE_KINDS", "LinkResult", "link", "peer_detections"]


@dataclass(frozen=True)
class LinkResult:
    """Everything linking hands to scoring and the outputs."""

    edges: pa.Table
    indicators: pa.Table
    membership: pa.Table
    features: pa.Table
    activity: pa.Table
    capabilities: pa.Table
    shared: Mapping[str, list[dict[str, Any]]]


def _strong_and_internal(
    engine: Engine,
    coded: ir.Table,
    accounts: ir.Table,
    strong: pa.Table,
    membership: pa.Table,
    threshold: float,
) -> pa.Table:
    """Strong edges plus every weaker edge between two members of one cluster, in name order."""
    if membership.num_rows == 0:
        return strong.drop_columns(["code_a", "code_b"])
    members = engine.table("cluster_members", membership)
    codes = accounts.join(members, "account_id").select("account_code", "cluster_id")
    ma = codes.select(code_a=codes.account_code, cluster_a=codes.cluster_id)
    mb = codes.select(code_b=codes.account_code, cluster_b=codes.cluster_id)
    inside = coded.filter(coded.weight < threshold).join(ma, "code_a").join(mb, "code_b")
    inside = inside.filter(inside.cluster_a == inside.cluster_b).drop("cluster_a", "cluster_b")
    weak = engine.to_arrow(named_edges(inside, accounts))
    both = pa.concat_tables([strong, weak.cast(strong.schema)])
    return both.sort_by([("code_a", "ascending"), ("code_b", "ascending")]).drop_columns(
        ["code_a", "code_b"]
    )


def link(
    engine: Engine, signals: ir.Table, accounts: ir.Table, config: Mapping[str, Any]
) -> LinkResult:
    """Build edges (relational, on ``engine``), find communities, compute cluster features."""
    # Each kind's key memberships feed both the edges and the indicators: compute them once.
    plan = edge_plan(signals, accounts, config, hold=engine.cache)
    coded = engine.cache(plan.coded)
    # Communities read only the strong edges; cluster features and campaign subgraphs only the
    # edges inside a cluster. The weak edges between unclustered accounts (most of them: ~99 %
    # on medium scenarios) stay in the engine instead of crossing into Python.
    threshold = float(config["linking"]["graph"]["min_edge_weight"])
    strong = engine.to_arrow(named_edges(coded.filter(coded.weight >= threshold), plan.accounts))
    membership = find_clusters(strong, config)
    edges = _strong_and_internal(engine, coded, plan.accounts, strong, membership, threshold)
    indicators = engine.to_arrow(plan.indicators)
    act_expr, cap_expr = account_activity_expr(signals)
    activity = engine.to_arrow(act_expr.order_by("account_id"))
    capabilities = engine.to_arrow(cap_expr.order_by(["account_id", "capability"]))
    features = cluster_features(membership, edges, activity, capabilities, config)
    shared = shared_indicators(membership, indicators)
    return LinkResult(edges, indicators, membership, features, activity, capabilities, shared)
