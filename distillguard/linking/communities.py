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
from collections.abc import Iterator, Mapping
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
    """Strong edges as parallel arrays (src < dst, vertex numbers), in canonical order.

    Sized for the seed scale (~48M strong edges): vertex numbers are int32 and the evidence
    families one bit each (bit j: family j is on the edge), about 17 bytes an edge.
    """

    src: np.ndarray  # int32
    dst: np.ndarray  # int32
    weight: np.ndarray  # float64
    families: np.ndarray  # unsigned bit mask
    n_families: int

    def take(self, idx: np.ndarray) -> _Edges:
        return _Edges(
            self.src[idx], self.dst[idx], self.weight[idx], self.families[idx], self.n_families
        )

    def family(self, j: int) -> np.ndarray:
        """1.0 where evidence family ``j`` is on the edge, else 0.0."""
        return ((self.families >> j) & 1).astype(np.float64)

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


def _pair_hash(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """A fixed 64-bit mix of each (src, dst) pair (splitmix64 finaliser): a deterministic sample key."""
    x = (src.astype(np.uint64) << np.uint64(32)) | dst.astype(np.uint64)
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def _thinned(edges: _Edges, max_edges: int, size: int) -> _Edges:
    """About ``max_edges`` of the edges: each kept with its own probability by a hash of its ends,
    its weight divided by that probability.

    For Leiden on a giant component (a seed-scale hydra: ~48M strong edges among 25,000 heads).
    CPM compares a group's internal weight with ``resolution`` times its pairs; the thinned,
    re-weighted graph has the same expected internal weight for every group, so dense groups
    stay whole and sparse cuts stay cut, at a fraction of the memory and time. An edge's
    probability is ``min(1, c / d)``, ``d`` the lesser degree of its ends and ``c`` set so about
    ``max_edges`` stay: the hydra's heads (thousands of ties each) are thinned, an account with
    a few dozen ties keeps them all. One probability for every edge left a small operation's
    members with no edge at all now and then (fresh seed 1071: one of the 40 ``pivot``
    accounts, 39 ties, each kept with p = 0.08, became a singleton). Membership checks
    (``_prune``, ``_signature_members``) still read every edge.
    """
    if max_edges <= 0 or len(edges.src) <= max_edges:
        return edges
    degree = np.bincount(edges.src, minlength=size) + np.bincount(edges.dst, minlength=size)
    lesser = np.minimum(degree[edges.src], degree[edges.dst])
    c = _degree_budget(np.bincount(lesser), max_edges)
    p = np.minimum(1.0, c / lesser)
    del lesser, degree
    # 53 bits of the hash as a uniform draw in [0, 1) (a float64 holds them exactly).
    draw = (_pair_hash(edges.src, edges.dst) >> np.uint64(11)).astype(np.float64) * 2.0**-53
    keep = np.flatnonzero(draw < p)
    del draw
    sub = edges.take(keep)
    return _Edges(sub.src, sub.dst, sub.weight / p[keep], sub.families, sub.n_families)


def _degree_budget(edges_by_lesser_degree: np.ndarray, max_edges: int) -> float:
    """The ``c`` for which edges kept with probability ``min(1, c / d)`` number ``max_edges`` in
    expectation, given how many edges have lesser end degree ``d`` (index ``d``)."""
    d = np.flatnonzero(edges_by_lesser_degree)
    count = edges_by_lesser_degree[d].astype(np.float64)
    lo, hi = 0.0, float(d[-1])
    for _ in range(60):  # the expected count grows with c: bisect
        mid = (lo + hi) / 2.0
        if float((count * np.minimum(1.0, mid / d)).sum()) > max_edges:
            hi = mid
        else:
            lo = mid
    return lo


def _split(
    edges: _Edges, size: int, resolution: float, seed: int, max_edges: int
) -> list[np.ndarray]:
    """Leiden (CPM) on one component (local vertex numbers), on a canonical copy: vertex i =
    ordered[i], edges sorted by their new end positions. Giant components are thinned first
    (:func:`_thinned`)."""
    edges = _thinned(edges, max_edges, size)
    strength = np.bincount(edges.src, edges.weight, minlength=size) + np.bincount(
        edges.dst, edges.weight, minlength=size
    )
    ordered = _structural_order(edges, strength)
    position = np.empty(len(ordered), dtype=np.int64)
    position[ordered] = np.arange(len(ordered))
    a, b = position[edges.src], position[edges.dst]
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    canon = np.lexsort((edges.weight, hi, lo))
    sub = _Edges(lo[canon], hi[canon], edges.weight[canon], edges.families[canon], edges.n_families)
    labels = _leiden(len(ordered), sub, resolution, seed)
    return [np.sort(ordered[labels == k]) for k in np.unique(labels)]


def _prune(
    verts: np.ndarray,
    edges: _Edges,
    n_vertices: int,
    min_share: float,
    min_size: int,
    max_ties: float = float("inf"),
) -> np.ndarray:
    """Drop weakly attached members until every one has enough strong edges inside the group:
    to ``min_share`` of the other members and two of them, but never more than ``max_ties``.

    A thread is one or two ties. Heads of a seed-scale hydra (25,000 accounts) are each tied to
    ~15 % of the others, thousands of edges: a share alone pruned all but a dense core of 2,263.
    """
    keep = np.sort(verts)
    sub = edges
    while len(keep) >= min_size:
        inside = np.zeros(n_vertices, dtype=bool)
        inside[keep] = True
        sub = sub.within(inside)
        degree = np.bincount(sub.src, minlength=n_vertices) + np.bincount(
            sub.dst, minlength=n_vertices
        )
        need = max(2.0, min(min_share * (len(keep) - 1), max_ties))
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
    majority_share: float = 1.01,
    majority_min_ties: int = 0,
) -> np.ndarray:
    """Members showing the cluster's own kinds of evidence, not just one of them.

    The cluster's signature is the evidence families on at least ``signature_share`` (0.9) of
    the internal edges of its *core* — the quarter of members most strongly tied inside (sum
    of internal edge weights) — what nearly every pair of heads shares; a member must carry ``min(2, |signature|)``
    of them on ``min_kind_share`` of its own internal edges. A batch customer on the same cloud
    egress as a campaign whose heads also share scaffolds is tied by the network alone: not part
    of the operation. The core keeps the signature the operation's own: at the seed scale 45
    home users whose addresses a 40-account operation rented as proxy exits made up half of its
    group, and on all its edges (or those of its better-tied half) only the network was on
    90 % of them. A member strongly tied to at least ``majority_share`` of the others (and to
    ``majority_min_ties`` of them) is kept whatever its ties are made of.
    """
    if edges.n_families == 0 or len(verts) < 2:
        return verts
    inside = np.zeros(n_vertices, dtype=bool)
    inside[verts] = True
    sub = edges.within(inside)
    if sub.src.size == 0:
        return verts
    n_edges = np.bincount(sub.src, minlength=n_vertices) + np.bincount(
        sub.dst, minlength=n_vertices
    )
    strength = np.bincount(sub.src, sub.weight, minlength=n_vertices) + np.bincount(
        sub.dst, sub.weight, minlength=n_vertices
    )
    core = np.zeros(n_vertices, dtype=bool)
    core[verts[strength[verts] >= np.percentile(strength[verts], 75)]] = True
    on = [sub.family(j) for j in range(sub.n_families)]
    between = core[sub.src] & core[sub.dst]
    if not between.any():
        between = np.ones(len(sub.src), dtype=bool)
    signature = np.array([col[between].mean() for col in on]) >= signature_share
    need = min(2, int(signature.sum()))
    if need == 0:
        return verts
    carried = np.column_stack(
        [
            np.bincount(sub.src, col, minlength=n_vertices)
            + np.bincount(sub.dst, col, minlength=n_vertices)
            for col in on
        ]
    )
    share = carried[verts] / np.maximum(n_edges[verts], 1)[:, None]
    shown = ((share >= min_kind_share) & signature[None, :]).sum(axis=1)
    # Strong ties to most of the group make a member of it, whatever they are made of: a
    # lightly active hydra head (small seed 2026: 13 of 150, tied to 62-87 % of the others by
    # rotating exits, no template often enough) is part of the operation; a home user whose
    # address the operation rented is tied only to the few accounts that used that exit. In a
    # handful of accounts "most" is two or three exits: hence a floor on the count.
    need_ties = max(majority_share * (len(verts) - 1), float(majority_min_ties))
    majority = n_edges[verts] >= need_ties
    kept: np.ndarray = verts[(shown >= need) | majority]
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
                edges["code_a"].to_numpy(zero_copy_only=False),
                edges["code_b"].to_numpy(zero_copy_only=False),
            ]
        )
        low = int(ends.min())
        present = np.zeros(int(ends.max()) - low + 1, dtype=bool)
        present[ends - low] = True
        codes = np.flatnonzero(present) + low
        index = (np.cumsum(present) - 1).astype(_vertex_dtype(len(codes)))[ends - low]
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
    return names, index.astype(_vertex_dtype(len(names)))


def _vertex_dtype(n: int) -> type[np.signedinteger[Any]]:
    return np.int32 if n < 2**31 else np.int64


def _family_mask(strong: pa.Table, config: Mapping[str, Any]) -> tuple[np.ndarray, int]:
    """One bit per evidence family present on each edge (``w_<kind>`` > 0 for one of its kinds)."""
    families = [
        kinds
        for kinds in evidence_families(config).values()
        if all(f"w_{k}" in strong.column_names for k in kinds)
    ]
    dtype = np.uint8 if len(families) <= 8 else np.uint16 if len(families) <= 16 else np.uint32
    mask = np.zeros(strong.num_rows, dtype=dtype)
    for j, kinds in enumerate(families):
        on = np.logical_or.reduce(
            [strong[f"w_{k}"].to_numpy(zero_copy_only=False) > 0 for k in kinds]
        )
        mask |= on.astype(dtype) << dtype(j)
    return mask, len(families)


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
        dtype = _vertex_dtype(len(verts))
        local = _Edges(
            np.searchsorted(verts, edges.src).astype(dtype),
            np.searchsorted(verts, edges.dst).astype(dtype),
            edges.weight,
            edges.families,
            edges.n_families,
        )
        out.append((verts, local))
    return out


def _part_edges(parts: list[np.ndarray], edges: _Edges, size: int) -> Iterator[_Edges]:
    """Each part's own edges (both ends in it), in the component's edge order, one part at a time.

    The same edges ``edges.within`` would give for the part, without a pass over the whole
    component per part: Leiden cuts a seed-scale hydra's component (~48M strong edges) into
    many parts, and membership checks on each read every edge of the component (minutes).
    """
    label = np.full(size, -1, dtype=np.int64)
    for k, part in enumerate(parts):
        label[part] = k
    src_label = label[edges.src]
    same = np.flatnonzero((src_label == label[edges.dst]) & (src_label >= 0))
    order = same[np.argsort(src_label[same], kind="stable")]
    bounds = np.searchsorted(src_label[order], np.arange(len(parts) + 1))
    del label, src_label, same
    for k in range(len(parts)):
        yield edges.take(order[bounds[k] : bounds[k + 1]])


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
    del ends
    # Canonical edge order (by names) so nothing downstream depends on input row order.
    order = np.argsort(src.astype(np.int64) * len(names) + dst, kind="stable")
    weights = strong["weight"].to_numpy(zero_copy_only=False).astype(np.float64)
    families, n_families = _family_mask(strong, config)
    graph = _Edges(src[order], dst[order], weights[order], families[order], n_families)
    del src, dst, weights, families, order
    min_kind_share = float(config["linking"].get("min_kind_share", 0.2))
    min_size = int(gcfg["min_cluster_size"])
    leiden_min = int(gcfg["leiden_min_size"])
    min_share = float(gcfg.get("min_member_share", 0.0))
    max_ties = float(gcfg.get("max_member_ties", float("inf")))
    signature_share = float(gcfg.get("signature_share", 1.01))
    majority_share = float(gcfg.get("majority_member_share", 1.01))
    majority_min_ties = int(gcfg.get("majority_min_ties", 0))
    groups: list[list[str]] = []
    for verts, local in _components(graph, len(names), min_size):
        size = len(verts)
        if size <= leiden_min:
            parts = [np.arange(size)]
        else:
            parts = _split(
                local,
                size,
                float(gcfg["resolution"]),
                int(gcfg["seed"]),
                int(gcfg.get("leiden_max_edges", 0)),
            )
        for part, own in zip(parts, _part_edges(parts, local, size), strict=True):
            kept = _prune(part, own, size, min_share, min_size, max_ties) if min_share > 0 else part
            signed = _signature_members(
                kept,
                own,
                size,
                min_kind_share,
                signature_share,
                majority_share,
                majority_min_ties,
            )
            if len(signed) < len(kept):
                kept = (
                    _prune(signed, own, size, min_share, min_size, max_ties)
                    if min_share > 0
                    else signed
                )
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
