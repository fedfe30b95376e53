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
from dataclasses import dataclass
from typing import Any

import igraph as ig
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from distillguard.linking.edges import evidence_families

MEMBERSHIP_SCHEMA = pa.schema(
    [pa.field("account_id", pa.string()), pa.field("cluster_id", pa.string())]
)


def _cluster_id(members: list[str]) -> str:
    digest = hashlib.sha256("\n".join(sorted(members)).encode("utf-8")).hexdigest()
    return f"C-{digest[:12]}"


@dataclass(frozen=True)
class _Edges:
    """Strong edges as parallel arrays (src < dst, vertex codes), in canonical order."""

    src: np.ndarray
    dst: np.ndarray
    weight: np.ndarray
    families: np.ndarray  # bool, one column per evidence family

    def take(self, idx: np.ndarray) -> _Edges:
        return _Edges(self.src[idx], self.dst[idx], self.weight[idx], self.families[idx])

    def within(self, inside: np.ndarray) -> _Edges:
        """The edges with both ends where the boolean vertex mask ``inside`` is set."""
        return self.take(np.flatnonzero(inside[self.src] & inside[self.dst]))


def _leiden(n: int, edges: _Edges, resolution: float, seed: int) -> np.ndarray:
    graph = ig.Graph(n=n, edges=np.column_stack([edges.src, edges.dst]).tolist(), directed=False)
    graph.es["weight"] = edges.weight.tolist()
    # igraph draws from a process-wide generator: use a private seeded one, then restore the default.
    ig.set_random_number_generator(random.Random(seed))
    try:
        parts = graph.community_leiden(
            objective_function="CPM", weights="weight", resolution=resolution, n_iterations=-1
        )
    finally:
        ig.set_random_number_generator(random)
    return np.asarray(parts.membership, dtype=np.int64)


def _structural_order(
    verts: np.ndarray, edges: _Edges, strength: np.ndarray, names: np.ndarray
) -> np.ndarray:
    """``verts`` in a label-independent order: own strength, then a digest of the sorted
    (edge weight, neighbour strength) pairs around it; names only break ties between
    structurally identical vertices.

    Leiden visits vertices and their adjacency in storage order, so the order it sees must not
    come from the account names.
    """
    own = np.concatenate([edges.src, edges.dst])
    other = np.concatenate([edges.dst, edges.src])
    w = np.round(np.concatenate([edges.weight, edges.weight]), 9)
    s_other = np.round(strength[other], 9)
    order = np.lexsort((s_other, w, own))
    pairs = np.column_stack([w[order], s_other[order]])
    starts = np.searchsorted(own[order], verts, side="left")
    ends = np.searchsorted(own[order], verts, side="right")
    digests = [
        hashlib.blake2b(pairs[a:b].tobytes(), digest_size=16).digest()
        for a, b in zip(starts.tolist(), ends.tolist(), strict=True)
    ]
    own_strength = np.round(strength[verts], 9).tolist()
    keys = sorted(
        range(len(verts)),
        key=lambda i: (-own_strength[i], digests[i], str(names[verts[i]])),
    )
    return verts[np.asarray(keys, dtype=np.int64)]


def _split(
    verts: np.ndarray,
    edges: _Edges,
    strength: np.ndarray,
    names: np.ndarray,
    resolution: float,
    seed: int,
) -> list[np.ndarray]:
    """Leiden (CPM) on one component, on a canonical copy: vertex i = ordered[i], edges sorted
    by their new end positions."""
    ordered = _structural_order(verts, edges, strength, names)
    position = np.full(int(strength.shape[0]), -1, dtype=np.int64)
    position[ordered] = np.arange(len(ordered))
    a, b = position[edges.src], position[edges.dst]
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    canon = np.lexsort((edges.weight, hi, lo))
    sub = _Edges(lo[canon], hi[canon], edges.weight[canon], edges.families[canon])
    labels = _leiden(len(ordered), sub, resolution, seed)
    return [ordered[labels == k] for k in np.unique(labels)]


def _prune(
    verts: np.ndarray, edges: _Edges, n_vertices: int, min_share: float, min_size: int
) -> np.ndarray:
    """Drop weakly attached members until every one has enough strong edges inside the group."""
    keep = np.sort(verts)
    while len(keep) >= min_size:
        inside = np.zeros(n_vertices, dtype=bool)
        inside[keep] = True
        sub = edges.within(inside)
        degree = np.bincount(sub.src, minlength=n_vertices) + np.bincount(
            sub.dst, minlength=n_vertices
        )
        need = max(2.0, min_share * (len(keep) - 1))
        ok = degree[keep] >= need
        if ok.all():
            return keep
        keep = keep[ok]
    return np.empty(0, dtype=np.int64)


def _signature_members(
    verts: np.ndarray,
    edges: _Edges,
    n_vertices: int,
    min_kind_share: float,
    signature_share: float,
) -> np.ndarray:
    """Members showing the cluster's own kinds of evidence, not just one of them.

    The cluster's signature is the evidence families on at least ``signature_share`` (0.9) of
    its internal edges — what nearly every pair of heads shares; a member must carry
    ``min(2, |signature|)`` of them on that share of its own internal edges. A batch customer on
    the same cloud egress as a campaign whose heads also share scaffolds is tied by the network
    alone: not part of the operation.
    """
    if edges.families.shape[1] == 0 or len(verts) < 2:
        return verts
    inside = np.zeros(n_vertices, dtype=bool)
    inside[verts] = True
    sub = edges.within(inside)
    if sub.src.size == 0:
        return verts
    fam = sub.families.astype(float)
    signature = fam.mean(axis=0) >= signature_share
    need = min(2, int(signature.sum()))
    if need == 0:
        return verts
    n_edges = np.zeros(n_vertices)
    carried = np.zeros((n_vertices, fam.shape[1]))
    for ends in (sub.src, sub.dst):
        np.add.at(n_edges, ends, 1.0)
        np.add.at(carried, ends, fam)
    share = carried[verts] / np.maximum(n_edges[verts], 1.0)[:, None]
    shown = ((share >= min_kind_share) & signature[None, :]).sum(axis=1)
    kept: np.ndarray = verts[shown >= need]
    return kept


def _vertices(edges: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Sorted vertex names and each edge end's vertex index (all ``account_a``, then ``account_b``).

    With linking's integer codes (``code_a``, ``code_b``: codes follow the names) the ends are
    numbered on the integers and only one name per vertex is materialised: at the seed scale
    NumPy string arrays of every edge end took gigabytes and their sort minutes. Same result.
    """
    if "code_a" in edges.column_names and "code_b" in edges.column_names:
        ends = np.concatenate(
            [edges["code_a"].to_numpy(zero_copy_only=False), edges["code_b"].to_numpy(zero_copy_only=False)]
        )
        _, first, index = np.unique(ends, return_index=True, return_inverse=True)
        both = pa.chunked_array(edges["account_a"].chunks + edges["account_b"].chunks)
        names = both.take(pa.array(first)).to_numpy(zero_copy_only=False).astype(str)
        return names, index
    a = edges["account_a"].to_numpy(zero_copy_only=False).astype(str)
    b = edges["account_b"].to_numpy(zero_copy_only=False).astype(str)
    names, index = np.unique(np.concatenate([a, b]), return_inverse=True)
    return names, index


def find_clusters(edges: pa.Table, config: Mapping[str, Any]) -> pa.Table:
    """Membership table (account_id, cluster_id) for accounts in clusters of at least min size.

    Accounts in no cluster are absent. Output is sorted by (cluster_id, account_id).
    """
    gcfg = config["linking"]["graph"]
    strong = edges.filter(pc.greater_equal(edges["weight"], float(gcfg["min_edge_weight"])))
    if strong.num_rows == 0:
        return MEMBERSHIP_SCHEMA.empty_table()
    names, codes = _vertices(strong)
    pairs = np.sort(codes.reshape(2, -1).T, axis=1)
    # Canonical edge order (by names) so nothing downstream depends on input row order.
    order = np.lexsort((pairs[:, 1], pairs[:, 0]))
    weights = strong["weight"].to_numpy(zero_copy_only=False).astype(np.float64)
    fam_cols = [
        np.logical_or.reduce([strong[f"w_{k}"].to_numpy(zero_copy_only=False) > 0 for k in kinds])
        for kinds in evidence_families(config).values()
        if all(f"w_{k}" in strong.column_names for k in kinds)
    ]
    families = np.column_stack(fam_cols) if fam_cols else np.zeros((len(order), 0), dtype=bool)
    graph = _Edges(pairs[order, 0], pairs[order, 1], weights[order], families[order])
    n = len(names)
    strength = np.bincount(graph.src, graph.weight, minlength=n) + np.bincount(
        graph.dst, graph.weight, minlength=n
    )
    _, component = connected_components(
        coo_matrix((np.ones(len(order)), (graph.src, graph.dst)), shape=(n, n)), directed=False
    )
    min_kind_share = float(config["linking"].get("min_kind_share", 0.2))
    min_size = int(gcfg["min_cluster_size"])
    leiden_min = int(gcfg["leiden_min_size"])
    min_share = float(gcfg.get("min_member_share", 0.0))
    signature_share = float(gcfg.get("signature_share", 1.01))
    by_component = np.argsort(component[graph.src], kind="stable")
    edge_component = component[graph.src][by_component]
    parts: list[np.ndarray] = []
    sizes = np.bincount(component)
    for comp in np.flatnonzero(sizes >= min_size):
        verts = np.flatnonzero(component == comp)
        if len(verts) <= leiden_min:
            parts.append(verts)
            continue
        lo, hi = np.searchsorted(edge_component, [comp, comp + 1])
        comp_edges = graph.take(np.sort(by_component[lo:hi]))
        parts.extend(
            _split(verts, comp_edges, strength, names, float(gcfg["resolution"]), int(gcfg["seed"]))
        )
    groups: list[list[str]] = []
    for part in parts:
        kept = _prune(part, graph, n, min_share, min_size) if min_share > 0 else part
        signed = _signature_members(kept, graph, n, min_kind_share, signature_share)
        if len(signed) < len(kept):
            kept = _prune(signed, graph, n, min_share, min_size) if min_share > 0 else signed
        if len(kept) >= min_size:
            groups.append(sorted(str(names[v]) for v in kept))
    rows_a: list[str] = []
    rows_c: list[str] = []
    for group in groups:
        cid = _cluster_id(group)
        rows_a.extend(group)
        rows_c.extend([cid] * len(group))
    table = pa.table({"account_id": rows_a, "cluster_id": rows_c}, schema=MEMBERSHIP_SCHEMA)
    return table.sort_by([("cluster_id", "ascending"), ("account_id", "ascending")])
