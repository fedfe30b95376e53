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
from distillguard.linking.edges import EDGE_KINDS, edge_expressions
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


def _cached(expr: ir.Table) -> ir.Table:
    """Materialise ``expr`` inside the engine that owns it (a DuckDB temp table, a Spark cache)."""
    return expr.cache()


def link(
    engine: Engine, signals: ir.Table, accounts: ir.Table, config: Mapping[str, Any]
) -> LinkResult:
    """Build edges (relational, on ``engine``), find communities, compute cluster features."""
    # Each kind's key memberships feed both the edges and the indicators: compute them once.
    edges_expr, ind_expr = edge_expressions(signals, accounts, config, hold=_cached)
    edges = engine.to_arrow(edges_expr).drop_columns(["code_a", "code_b"])
    indicators = engine.to_arrow(ind_expr)
    membership = find_clusters(edges, config)
    act_expr, cap_expr = account_activity_expr(signals)
    activity = engine.to_arrow(act_expr.order_by("account_id"))
    capabilities = engine.to_arrow(cap_expr.order_by(["account_id", "capability"]))
    features = cluster_features(membership, edges, activity, capabilities, config)
    shared = shared_indicators(membership, indicators)
    return LinkResult(edges, indicators, membership, features, activity, capabilities, shared)
