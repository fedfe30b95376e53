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
    # NumPy edges go to igraph's C layer as one buffer: Python lists of tuples and floats for
    # every edge took gigabytes at the seed scale (a hydra of 25,000 heads, ~10M strong edges).
    graph = ig.Graph(n=n, edges=np.column_stack([edges.src, edges.dst]), directed=False)
    # igraph draws from a process-wide generator: use a private seeded one, then restore the default.
    ig.set_random_number_generator(random.Random(seed))
    try:
        parts = graph.community_leiden(
            objective_function="CPM", weights=edges.weight, resolution=resolution, n_iterations=-1
        )
    finally:
        ig.set_random_number_generator(random)
    return np.asarray(parts.membership, dtype=np.int64)


def _structural_order(edges: _Edges, strength: np.ndarray) -> np.ndarray:
    """The component's vertices (``0..n-1``, in name order) in a label-independent order: own
    strength, then a digest of the sorted (edge weight, neighbour strength) pairs around it; the
    name order only breaks ties between structurally identical vertices.

    Leiden visits vertices and their adjacency in storage order, so the order it sees must not
    come from the account names.
    """
    n = int(strength.shape[0])
    own = np.concatenate([edges.src, edges.dst])
    other = np.concatenate([edges.dst, edges.src])
    w = np.round(np.concatenate([edges.weight, edges.weight]), 9)
    s_other = np.round(strength[other], 9)
    order = np.lexsort((s_other, w, own))
    pairs = np.column_stack([w[order], s_other[order]])
    bounds = np.searchsorted(own[order], np.arange(n + 1), side="left")
    digests = [
        hashlib.blake2b(pairs[a:b].tobytes(), digest_size=16).digest()
        for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True)
    ]
    own_strength = np.round(strength, 9).tolist()
    keys = sorted(range(n), key=lambda i: (-own_strength[i], digests[i], i))
    return np.asarray(keys, dtype=np.int64)


def _split(edges: _Edges, strength: np.ndarray, resolution: float, seed: int) -> list[np.ndarray]:
    """Leiden (CPM) on one component (local vertex numbers), on a canonical copy: vertex i =
    ordered[i], edges sorted by their new end positions."""
    ordered = _structural_order(edges, strength)
    position = np.empty(len(ordered), dtype=np.int64)
    position[ordered] = np.arange(len(ordered))
    a, b = position[edges.src], position[edges.dst]
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    canon = np.lexsort((edges.weight, hi, lo))
    sub = _Edges(lo[canon], hi[canon], edges.weight[canon], edges.families[canon])
    labels = _leiden(len(ordered), sub, resolution, seed)
    return [np.sort(ordered[labels == k]) for k in np.unique(labels)]


def _prune(
    verts: np.ndarray, edges: _Edges, n_vertices: int, min_share: float, min_size: int
) -> np.ndarray:
    """Drop weakly attached members until every one has enough strong edges inside the group."""
    keep = np.sort(verts)
    sub = edges
    while len(keep) >= min_size:
        inside = np.zeros(n_vertices, dtype=bool)
        inside[keep] = True
        sub = sub.within(inside)
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
    signature = sub.families.mean(axis=0) >= signature_share
    need = min(2, int(signature.sum()))
    if need == 0:
        return verts
    n_edges = np.bincount(sub.src, minlength=n_vertices) + np.bincount(
        sub.dst, minlength=n_vertices
    )
    carried = np.column_stack(
        [
            np.bincount(sub.src, col, minlength=n_vertices)
            + np.bincount(sub.dst, col, minlength=n_vertices)
            for col in sub.families.T.astype(np.float64)
        ]
    )
    share = carried[verts] / np.maximum(n_edges[verts], 1)[:, None]
    shown = ((share >= min_kind_share) & signature[None, :]).sum(axis=1)
    kept: np.ndarray = verts[shown >= need]
    return kept


def _vertices(edges: pa.Table, account_names: pa.Table | None) -> tuple[np.ndarray, np.ndarray]:
    """Vertex names in name order and each edge end's vertex index (all ``account_a``, then
    ``account_b``).

    With linking's integer codes (``code_a``, ``code_b``: codes follow the names) the ends are
    numbered on the integers and only one name per vertex is materialised, from
    ``account_names`` (``account_code``, ``account_id``) or else from the edges' own names: at
    the seed scale name arrays per edge end took gigabytes and their sort minutes. Same result.
    """
    if "code_a" in edges.column_names and "code_b" in edges.column_names:
        ends = np.concatenate(
            [
                edges["code_a"].to_numpy(zero_copy_only=False).astype(np.int64),
                edges["code_b"].to_numpy(zero_copy_only=False).astype(np.int64),
            ]
        )
        low = int(ends.min())
        present = np.zeros(int(ends.max()) - low + 1, dtype=bool)
        present[ends - low] = True
        codes = np.flatnonzero(present) + low
        index = (np.cumsum(present) - 1)[ends - low]
        if account_names is not None:
            known = account_names["account_code"].to_numpy(zero_copy_only=False).astype(np.int64)
            order = np.argsort(known, kind="stable")
            at = order[np.searchsorted(known[order], codes)]
            if not np.array_equal(known[at], codes):
                raise ValueError("account_names lacks the code of an edge end")
            names = account_names["account_id"].take(pa.array(at)).to_numpy(zero_copy_only=False)
            return names.astype(str), index
        # Any end with the code will do: every end of one code carries the same name.
        first = np.zeros(len(codes), dtype=np.int64)
        first[index] = np.arange(len(ends))
        both = pa.chunked_array(edges["account_a"].chunks + edges["account_b"].chunks)
        return both.take(pa.array(first)).to_numpy(zero_copy_only=False).astype(str), index
    a = edges["account_a"].to_numpy(zero_copy_only=False).astype(str)
    b = edges["account_b"].to_numpy(zero_copy_only=False).astype(str)
    names, index = np.unique(np.concatenate([a, b]), return_inverse=True)
    return names, index


def _components(graph: _Edges, n: int, min_size: int) -> list[tuple[np.ndarray, _Edges]]:
    """Connected components of at least ``min_size`` vertices: (global vertex numbers, sorted;
    the component's edges renumbered locally ``0..size-1``, in the global edge order)."""
    _, component = connected_components(
        coo_matrix((np.ones(len(graph.src)), (graph.src, graph.dst)), shape=(n, n)), directed=False
    )
    sizes = np.bincount(component)
    vert_order = np.argsort(component, kind="stable")
    vert_bounds = np.concatenate([[0], np.cumsum(sizes)])
    edge_component = component[graph.src]
    edge_order = np.argsort(edge_component, kind="stable")
    edge_bounds = np.searchsorted(edge_component[edge_order], np.arange(len(sizes) + 1))
    out = []
    for comp in np.flatnonzero(sizes >= min_size).tolist():
        verts = vert_order[vert_bounds[comp] : vert_bounds[comp + 1]]
        edges = graph.take(edge_order[edge_bounds[comp] : edge_bounds[comp + 1]])
        local = _Edges(
            np.searchsorted(verts, edges.src),
            np.searchsorted(verts, edges.dst),
            edges.weight,
            edges.families,
        )
        out.append((verts, local))
    return out


def find_clusters(
    edges: pa.Table, config: Mapping[str, Any], account_names: pa.Table | None = None
) -> pa.Table:
    """Membership table (account_id, cluster_id) for accounts in clusters of at least min size.

    ``edges`` carries ``account_a``/``account_b`` names, or linking's integer codes
    ``code_a``/``code_b`` with the names in ``account_names`` (``account_code``, ``account_id``).
    Accounts in no cluster are absent. Output is sorted by (cluster_id, account_id).
    """
    gcfg = config["linking"]["graph"]
    strong = edges.filter(pc.greater_equal(edges["weight"], float(gcfg["min_edge_weight"])))
    if strong.num_rows == 0:
        return MEMBERSHIP_SCHEMA.empty_table()
    names, ends = _vertices(strong, account_names)
    half = strong.num_rows
    src = np.minimum(ends[:half], ends[half:])
    dst = np.maximum(ends[:half], ends[half:])
    # Canonical edge order (by names) so nothing downstream depends on input row order.
    order = np.lexsort((dst, src))
    weights = strong["weight"].to_numpy(zero_copy_only=False).astype(np.float64)
    fam_cols = [
        np.logical_or.reduce([strong[f"w_{k}"].to_numpy(zero_copy_only=False) > 0 for k in kinds])
        for kinds in evidence_families(config).values()
        if all(f"w_{k}" in strong.column_names for k in kinds)
    ]
    families = np.column_stack(fam_cols) if fam_cols else np.zeros((half, 0), dtype=bool)
    graph = _Edges(src[order], dst[order], weights[order], families[order])
    del src, dst, weights, families, fam_cols, order, ends
    min_kind_share = float(config["linking"].get("min_kind_share", 0.2))
    min_size = int(gcfg["min_cluster_size"])
    leiden_min = int(gcfg["leiden_min_size"])
    min_share = float(gcfg.get("min_member_share", 0.0))
    signature_share = float(gcfg.get("signature_share", 1.01))
    groups: list[list[str]] = []
    for verts, local in _components(graph, len(names), min_size):
        size = len(verts)
        if size <= leiden_min:
            parts = [np.arange(size)]
        else:
            strength = np.bincount(local.src, local.weight, minlength=size) + np.bincount(
                local.dst, local.weight, minlength=size
            )
            parts = _split(local, strength, float(gcfg["resolution"]), int(gcfg["seed"]))
        for part in parts:
            kept = _prune(part, local, size, min_share, min_size) if min_share > 0 else part
            signed = _signature_members(kept, local, size, min_kind_share, signature_share)
            if len(signed) < len(kept):
                kept = _prune(signed, local, size, min_share, min_size) if min_share > 0 else signed
            if len(kept) >= min_size:
                groups.append(sorted(names[verts[kept]].tolist()))
    rows_a: list[str] = []
    rows_c: list[str] = []
    for group in groups:
        cid = _cluster_id(group)
        rows_a.extend(group)
        rows_c.extend([cid] * len(group))
    table = pa.table({"account_id": rows_a, "cluster_id": rows_c}, schema=MEMBERSHIP_SCHEMA)
    return table.sort_by([("cluster_id", "ascending"), ("account_id", "ascending")])
