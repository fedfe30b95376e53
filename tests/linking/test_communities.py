"""Communities: planted groups recovered, benign look-alikes left out, labels invariant to renaming."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from distillguard.linking import LinkResult
from distillguard.linking.communities import find_clusters
from distillguard.linking.edges import EDGE_KINDS

from .conftest import small_world_config


def test_planted_hydras_are_separate_pure_clusters(linked: LinkResult) -> None:
    groups: dict[str, set[str]] = {}
    for row in linked.membership.to_pylist():
        groups.setdefault(row["cluster_id"], set()).add(row["account_id"].split("-")[0])
    assert sorted(tuple(sorted(g)) for g in groups.values()) == [("hyb",), ("hydra",)]
    assert linked.membership.num_rows == 42


def _edges(pairs: list[tuple[str, str, float]]) -> pa.Table:
    cols: dict[str, list[object]] = {
        "account_a": [min(a, b) for a, b, _ in pairs],
        "account_b": [max(a, b) for a, b, _ in pairs],
        "weight": [w for _, _, w in pairs],
        "n_kinds": [1] * len(pairs),
    }
    for k in EDGE_KINDS:
        cols[f"w_{k}"] = [0.0] * len(pairs)
    return pa.table(cols)


def _partition(membership: pa.Table, rename: dict[str, str] | None = None) -> set[frozenset[str]]:
    groups: dict[str, set[str]] = {}
    for row in membership.to_pylist():
        name = row["account_id"] if rename is None else rename[row["account_id"]]
        groups.setdefault(row["cluster_id"], set()).add(name)
    return {frozenset(g) for g in groups.values()}


@settings(max_examples=25, deadline=None)
@given(
    sizes=st.lists(st.integers(2, 20), min_size=1, max_size=4),
    seed=st.integers(0, 2**31 - 1),
)
def test_relabelling_accounts_gives_same_clusters(sizes: list[int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    pairs: list[tuple[str, str, float]] = []
    names: list[str] = []
    offset = 0
    for size in sizes:
        members = [f"a{offset + i}" for i in range(size)]
        names += members
        offset += size
        for i in range(size):
            for j in range(i + 1, size):
                if rng.random() < 0.8:
                    pairs.append((members[i], members[j], float(rng.uniform(2.5, 5.0))))
        if len(names) > size:  # a weak bridge to the previous group must not merge them
            pairs.append((names[0], members[0], 2.1))
    if not pairs:
        return
    config = small_world_config()
    base = _partition(find_clusters(_edges(pairs), config))
    perm = rng.permutation(len(names))
    rename = {n: f"z{perm[i]:04d}" for i, n in enumerate(names)}
    back = {v: k for k, v in rename.items()}
    relabelled = [(rename[a], rename[b], w) for a, b, w in pairs]
    again = _partition(find_clusters(_edges(relabelled), config), back)
    assert again == base


def test_a_customer_tied_by_one_thread_is_pruned_from_the_cluster() -> None:
    # A 12-account clique, plus a customer who shared one proxy exit with two of its members.
    ring = [f"h{i:02d}" for i in range(12)]
    pairs = [(a, b, 4.0) for i, a in enumerate(ring) for b in ring[i + 1 :]]
    pairs += [("cust", "h00", 2.5), ("cust", "h01", 2.5)]
    config = small_world_config()
    config["linking"]["graph"]["min_member_share"] = 0.2
    members = set(find_clusters(_edges(pairs), config)["account_id"].to_pylist())
    assert members == set(ring)
    config["linking"]["graph"]["min_member_share"] = 0.0  # without the rule it is swept in
    assert "cust" in set(find_clusters(_edges(pairs), config)["account_id"].to_pylist())


def _heads_and_outsiders(heads: list[str], outsiders: list[tuple[str, str]]) -> pa.Table:
    """Heads tied by IP and a scaffold on every edge; each (outsider, head) tie by IP alone."""
    pairs = [(a, b, 4.0) for i, a in enumerate(heads) for b in heads[i + 1 :]]
    pairs += [(o, h, 3.0) for o, h in outsiders]
    table = _edges(pairs)
    names = {o for o, _ in outsiders}
    network_only = [
        a in names or b in names
        for a, b in zip(table["account_a"].to_pylist(), table["account_b"].to_pylist(), strict=True)
    ]
    table = table.set_column(
        table.schema.get_field_index("w_ip"), "w_ip", pa.array([2.5] * table.num_rows)
    )
    return table.set_column(
        table.schema.get_field_index("w_template"),
        "w_template",
        pa.array([0.0 if n else 1.0 for n in network_only]),
    )


def test_member_without_the_cluster_signature_is_left_out() -> None:
    # Twelve heads share an IP pool and a scaffold (two families on >= 90 % of edges); a batch
    # customer on the same cloud egress is strongly tied to five heads, by the network alone.
    heads = [f"h{i:02d}" for i in range(12)]
    batch = ["b0"]
    table = _heads_and_outsiders(heads, [("b0", h) for h in heads[:5]])
    config = small_world_config()
    members = set(find_clusters(table, config)["account_id"].to_pylist())
    assert members == set(heads)
    # Were the customer's edges also carrying a scaffold, it would belong.
    table = table.set_column(
        table.schema.get_field_index("w_template"), "w_template", pa.array([1.0] * table.num_rows)
    )
    assert set(find_clusters(table, config)["account_id"].to_pylist()) == set(heads + batch)


def test_member_tied_to_most_of_the_group_stays_without_the_signature() -> None:
    # A lightly active head sends no scaffold often enough, but rotating through the pool it is
    # strongly tied to 8 of the 12 other heads; the customer on a rented exit is tied to 4.
    heads = [f"h{i:02d}" for i in range(12)]
    outsiders = [("light", h) for h in heads[:8]] + [("cust", h) for h in heads[8:]]
    table = _heads_and_outsiders(heads, outsiders)
    config = small_world_config()
    config["linking"]["graph"]["majority_member_share"] = 0.5
    config["linking"]["graph"]["majority_min_ties"] = 8
    assert set(find_clusters(table, config)["account_id"].to_pylist()) == {*heads, "light"}
    config["linking"]["graph"]["majority_member_share"] = 1.01  # the signature alone drops it
    assert set(find_clusters(table, config)["account_id"].to_pylist()) == set(heads)
    config["linking"]["graph"]["majority_member_share"] = 0.5
    config["linking"]["graph"]["majority_min_ties"] = 9  # eight ties are not enough in a handful
    assert set(find_clusters(table, config)["account_id"].to_pylist()) == set(heads)


def _two_groups_and_a_bridge(rng: np.random.Generator) -> list[tuple[str, str, float]]:
    """Two dense 40-account groups (70 % of pairs, weights 2–4) tied by 30 cross edges."""
    groups = [[f"{tag}{i:02d}" for i in range(40)] for tag in ("p", "q")]
    pairs = [
        (g[i], g[j], float(rng.uniform(2.0, 4.0)))
        for g in groups
        for i in range(len(g))
        for j in range(i + 1, len(g))
        if rng.random() < 0.7
    ]
    for _ in range(30):
        a, b = int(rng.integers(40)), int(rng.integers(40))
        pairs.append((groups[0][a], groups[1][b], 2.2))
    return pairs


def test_thinning_a_giant_component_for_leiden_keeps_its_groups() -> None:
    pairs = _two_groups_and_a_bridge(np.random.default_rng(11))
    config = small_world_config()
    config["linking"]["graph"]["min_member_share"] = 0.2
    config["linking"]["graph"]["leiden_max_edges"] = 0
    whole = _partition(find_clusters(_edges(pairs), config))
    assert sorted(len(g) for g in whole) == [40, 40]
    config["linking"]["graph"]["leiden_max_edges"] = len(pairs) // 4  # Leiden sees ~a quarter
    assert _partition(find_clusters(_edges(pairs), config)) == whole


def test_thinning_keeps_about_the_cap_and_the_expected_weight() -> None:
    from distillguard.linking.communities import _Edges, _thinned

    rng = np.random.default_rng(5)
    n = 200_000
    src = rng.integers(0, 5_000, n).astype(np.int32)
    dst = (src + 1 + rng.integers(0, 5_000, n)).astype(np.int32)
    edges = _Edges(src, dst, rng.uniform(2.0, 4.0, n), np.zeros(n, dtype=np.uint8), 0)
    assert _thinned(edges, n, 10_001) is edges  # under the cap: untouched
    thin = _thinned(edges, 20_000, 10_001)
    assert 18_000 < len(thin.src) < 22_000
    assert abs(thin.weight.sum() / edges.weight.sum() - 1.0) < 0.03
    again = _thinned(edges, 20_000, 10_001)  # deterministic: the same edges every time
    assert np.array_equal(thin.src, again.src) and np.array_equal(thin.dst, again.dst)


def test_thinning_keeps_every_tie_of_a_small_group_beside_a_giant_one() -> None:
    """A 20-account operation tied by one edge to a dense 400-account hydra: thinning the hydra
    for Leiden must not strand the small group's members (each has 19 ties; at one probability
    for every edge, ~0.1 here, a few of them kept none and became singletons)."""
    from distillguard.linking.communities import _Edges, _thinned

    rng = np.random.default_rng(23)
    big = [(i, j) for i in range(400) for j in range(i + 1, 400) if rng.random() < 0.6]
    small = [(400 + i, 400 + j) for i in range(20) for j in range(i + 1, 20)]
    pairs = np.array([*big, *small, (0, 400)], dtype=np.int32)
    n = len(pairs)
    edges = _Edges(pairs[:, 0], pairs[:, 1], np.full(n, 3.0), np.zeros(n, dtype=np.uint8), 0)
    thin = _thinned(edges, n // 10, 420)
    assert 0.08 * n < len(thin.src) < 0.12 * n
    in_small = thin.src >= 400
    assert in_small.sum() == len(small)  # every tie inside the small group kept...
    assert np.allclose(thin.weight[in_small], 3.0)  # ...at its own weight
    big_kept = (thin.src < 400) & (thin.dst < 400)
    assert abs(thin.weight[big_kept].sum() / (3.0 * len(big)) - 1.0) < 0.03
