"""Communities on the aggregated edge list: thresholded components, large ones split by Leiden (CPM).

Modularity-based Leiden merged separate planted groups (shared/stack.md), so the default is the
Constant Potts Model with an explicit resolution: a cluster must be denser than ``resolution``
in edge weight. Components are cut first so that unrelated groups never share a run of Leiden.
Cluster ids are derived from the sorted member names, so the same input gives the same ids and
a relabelled input gives the same partition.

A member must be tied to a real share of its cluster (``min_member_share`` of the other members,
and at least two of them): one customer who happened to share a proxy exit or a popular prompt
with one or two campaign accounts is attached by a thread, not a part of the operation. And a
member must show the cluster's signature (its evidence families): a batch customer on the same
cloud egress as a campaign whose heads also share scaffolds is tied by the network alone.
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

from distillguard.linking.edges import evidence_families

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


def _canonical_subgraph(graph: ig.Graph, verts: list[int]) -> ig.Graph:
    """``graph`` induced on ``verts``, vertex i = verts[i], edges in order of the new positions.

    Leiden visits vertices and their adjacency in storage order, so both the vertex order and
    the edge order must come from a label-independent key, never from the original ids.
    """
    position = {v: i for i, v in enumerate(verts)}
    rows: list[tuple[int, int, float]] = []
    for edge in graph.es.select(_within=verts):
        a, b = position[edge.source], position[edge.target]
        rows.append((min(a, b), max(a, b), float(edge["weight"])))
    rows.sort()
    sub = ig.Graph(n=len(verts), edges=[(a, b) for a, b, _ in rows], directed=False)
    sub.es["weight"] = [w for _, _, w in rows]
    return sub


def _structural_key(graph: ig.Graph, strength: list[float], v: int) -> tuple[object, ...]:
    """Label-independent sort key: own strength, then the sorted (edge weight, neighbour
    strength) pairs; names only break ties between structurally identical vertices."""
    around: list[tuple[float, float]] = []
    for e in graph.incident(v):
        edge = graph.es[e]
        other = edge.target if edge.source == v else edge.source
        around.append((round(float(edge["weight"]), 9), round(strength[other], 9)))
    around.sort()
    return (-round(strength[v], 9), tuple(around))


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


def _signature_members(
    graph: ig.Graph,
    families: np.ndarray,
    verts: list[int],
    min_kind_share: float,
    signature_share: float,
) -> list[int]:
    """Members showing the cluster's own kinds of evidence, not just one of them.

    The cluster's signature is the evidence families on at least ``signature_share`` (0.9) of
    its internal edges — what nearly every pair of heads shares; a member must carry ``min(2, |signature|)`` of them on that share of its own
    internal edges. A batch customer on the same cloud egress as a campaign whose heads also
    share scaffolds is tied by the network alone: not part of the operation.
    """
    if families.shape[1] == 0 or len(verts) < 2:
        return verts
    eids = np.asarray([e.index for e in graph.es.select(_within=verts)], dtype=np.int64)
    if eids.size == 0:
        return verts
    fam = families[eids]
    signature = fam.mean(axis=0) >= signature_share
    need = min(2, int(signature.sum()))
    if need == 0:
        return verts
    ends = np.asarray([graph.es[int(e)].tuple for e in eids], dtype=np.int64)
    index = {v: i for i, v in enumerate(verts)}
    pos = np.vectorize(index.__getitem__, otypes=[np.int64])(ends)
    n_edges = np.zeros(len(verts))
    carried = np.zeros((len(verts), fam.shape[1]))
    for side in (0, 1):
        np.add.at(n_edges, pos[:, side], 1.0)
        np.add.at(carried, pos[:, side], fam.astype(float))
    share = carried / np.maximum(n_edges, 1.0)[:, None]
    shown = ((share >= min_kind_share) & signature[None, :]).sum(axis=1)
    return [v for v, k in zip(verts, shown.tolist(), strict=True) if k >= need]


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
    # Per edge (graph edge id order): which evidence families it carries.
    fam_cols = [
        np.logical_or.reduce([strong[f"w_{k}"].to_numpy(zero_copy_only=False) > 0 for k in kinds])
        for kinds in evidence_families(config).values()
        if all(f"w_{k}" in strong.column_names for k in kinds)
    ]
    families = (
        np.column_stack(fam_cols)[order] if fam_cols else np.zeros((len(order), 0), dtype=bool)
    )
    min_kind_share = float(config["linking"].get("min_kind_share", 0.2))
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
        # Leiden's result depends on vertex and edge order: order by a structural key (names
        # only break ties between identical vertices) so renaming accounts changes nothing.
        verts = sorted(comp, key=lambda v: (_structural_key(graph, strength, v), str(names[v])))
        sub = _canonical_subgraph(graph, verts)
        labels = _leiden(sub, float(gcfg["resolution"]), int(gcfg["seed"]))
        by_label: dict[int, list[int]] = {}
        for v, label in zip(verts, labels, strict=True):
            by_label.setdefault(label, []).append(v)
        parts.extend(by_label[k] for k in sorted(by_label))
    groups: list[list[str]] = []
    for part in parts:
        kept = _prune(graph, part, min_share, min_size) if min_share > 0 else part
        signed = _signature_members(
            graph, families, kept, min_kind_share, float(gcfg.get("signature_share", 1.01))
        )
        if len(signed) < len(kept):
            kept = _prune(graph, signed, min_share, min_size) if min_share > 0 else signed
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
