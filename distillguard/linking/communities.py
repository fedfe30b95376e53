"""Communities on the aggregated edge list: thresholded components, large ones split by Leiden (CPM).

Modularity-based Leiden merged separate planted groups (shared/stack.md), so the default is the
Constant Potts Model with an explicit resolution: a cluster must be denser than ``resolution``
in edge weight. Components are cut first so that unrelated groups never share a run of Leiden.
Cluster ids are derived from the sorted member names, so the same input gives the same ids and
a relabelled input gives the same partition.

A member must be tied to a real share of its cluster (``min_member_share`` of the other members,
and at least two of them): one customer who happened to share a proxy exit or a popular prompt
with one or two campaign accounts is attached by a thread, not a part of the operation.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping
from typing import Any

import igraph as ig
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

MEMBERSHIP_SCHEMA = pa.schema(
    [pa.field("account_id", pa.string()), pa.field("cluster_id", pa.string())]
)


def _cluster_id(members: list[str]) -> str:
    digest = hashlib.sha256("\n".join(sorted(members)).encode("utf-8")).hexdigest()
    return f"C-{digest[:12]}"


def _leiden(graph: ig.Graph, resolution: float, seed: int) -> list[int]:
    # igraph draws from a process-wide generator: use a private seeded one, then restore the default.
    ig.set_random_number_generator(random.Random(seed))
    try:
        parts = graph.community_leiden(
            objective_function="CPM", weights="weight", resolution=resolution, n_iterations=-1
        )
    finally:
        ig.set_random_number_generator(random)
    return list(parts.membership)


def _rank(order: list[int], sub: ig.Graph) -> list[int]:
    """Permutation putting ``sub``'s vertices (created in ascending id order) into ``order``."""
    ascending = sorted(order)
    position = {v: i for i, v in enumerate(order)}
    return [position[v] for v in ascending]


def _prune(graph: ig.Graph, verts: list[int], min_share: float, min_size: int) -> list[int]:
    """Drop weakly attached members until every one has enough strong edges inside the group."""
    keep = sorted(verts)
    while len(keep) >= min_size:
        sub = graph.induced_subgraph(keep)
        degree = np.asarray(sub.degree(), dtype=float)
        need = max(2.0, min_share * (len(keep) - 1))
        ok = degree >= need
        if ok.all():
            return keep
        keep = [v for v, good in zip(keep, ok.tolist(), strict=True) if good]
    return []


def find_clusters(edges: pa.Table, config: Mapping[str, Any]) -> pa.Table:
    """Membership table (account_id, cluster_id) for accounts in clusters of at least min size.

    Accounts in no cluster are absent. Output is sorted by (cluster_id, account_id).
    """
    gcfg = config["linking"]["graph"]
    strong = edges.filter(pc.greater_equal(edges["weight"], float(gcfg["min_edge_weight"])))
    if strong.num_rows == 0:
        return MEMBERSHIP_SCHEMA.empty_table()
    a = strong["account_a"].to_numpy(zero_copy_only=False).astype(str)
    b = strong["account_b"].to_numpy(zero_copy_only=False).astype(str)
    names, codes = np.unique(np.concatenate([a, b]), return_inverse=True)
    pairs = codes.reshape(2, -1).T
    weights = strong["weight"].to_numpy(zero_copy_only=False)
    # Canonical edge order (by names) so vertex/edge order never depends on input row order.
    order = np.lexsort((pairs[:, 1], pairs[:, 0]))
    graph = ig.Graph(n=len(names), edges=pairs[order].tolist(), directed=False)
    graph.es["weight"] = weights[order].tolist()
    min_size = int(gcfg["min_cluster_size"])
    strength = graph.strength(weights="weight")
    leiden_min = int(gcfg["leiden_min_size"])
    min_share = float(gcfg.get("min_member_share", 0.0))
    parts: list[list[int]] = []
    for comp in graph.connected_components():
        if len(comp) < min_size:
            continue
        if len(comp) <= leiden_min:
            parts.append(sorted(comp))
            continue
        # Leiden's result depends on vertex order: order by weighted degree (names only break
        # exact ties) so renaming the accounts does not change the partition.
        verts = sorted(comp, key=lambda v: (-round(strength[v], 9), str(names[v])))
        sub = graph.subgraph(verts, implementation="create_from_scratch")
        sub = sub.permute_vertices(_rank(verts, sub))
        labels = _leiden(sub, float(gcfg["resolution"]), int(gcfg["seed"]))
        by_label: dict[int, list[int]] = {}
        for v, label in zip(verts, labels, strict=True):
            by_label.setdefault(label, []).append(v)
        parts.extend(by_label[k] for k in sorted(by_label))
    groups: list[list[str]] = []
    for part in parts:
        kept = _prune(graph, part, min_share, min_size) if min_share > 0 else part
        if len(kept) >= min_size:
            groups.append([str(names[v]) for v in kept])
    rows_a: list[str] = []
    rows_c: list[str] = []
    for group in groups:
        cid = _cluster_id(group)
        rows_a.extend(group)
        rows_c.extend([cid] * len(group))
    table = pa.table({"account_id": rows_a, "cluster_id": rows_c}, schema=MEMBERSHIP_SCHEMA)
    return table.sort_by([("cluster_id", "ascending"), ("account_id", "ascending")])
