"""Cluster-level features and the cluster detectors registered over them.

A campaign is only visible as a cluster (each account alone can look like an ordinary customer),
so these detectors judge the group: how strongly and by how many independent kinds of indicator
its members are tied, whether they target one capability, whether they act in lock-step.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import ibis
import ibis.expr.types as ir
import numpy as np
import polars as pl
import pyarrow as pa

from distillguard.core.detector import Detections, DetectorInfo, Level, Status
from distillguard.linking.edges import EDGE_KINDS, evidence_families

CLUSTER_FEATURE_VERSION = "1.0.0"


def account_activity_expr(signals: ir.Table) -> tuple[ir.Table, ir.Table]:
    """Per-account volume/time span, and per-(account, capability) counts, as Ibis expressions."""
    s = signals
    activity = s.group_by("account_id").agg(
        n_exchanges=ibis._.count(), first_ts=s.ts.min(), last_ts=s.ts.max()
    )
    caps = (
        s.filter(s.capability.notnull())
        .group_by(["account_id", "capability"])
        .agg(n=ibis._.count())
    )
    return activity, caps


def cluster_features(
    membership: pa.Table,
    edge_stats: pa.Table,
    activity: pa.Table,
    capabilities: pa.Table,
    config: Mapping[str, Any],
) -> pa.Table:
    """One row per cluster: size, volumes, span, internal-edge statistics, capability focus.

    Columns: cluster_id, size, n_exchanges, first_ts, last_ts, n_edges, density, mean_weight,
    share_<kind> (share of internal edges carrying that kind), n_kinds (kinds on at least
    ``min_kind_share`` of edges, an IP and its prefix counting once — ``linking.kind_families``),
    synchrony_share, top_capability, capability_top_share,
    n_classified.
    """
    min_share = float(config["linking"].get("min_kind_share", 0.2))
    mem = pl.from_arrow(membership)
    assert isinstance(mem, pl.DataFrame)
    if mem.height == 0:
        return _empty_features()
    act = pl.from_arrow(activity)
    cap = pl.from_arrow(capabilities)
    assert isinstance(act, pl.DataFrame) and isinstance(cap, pl.DataFrame)
    base = (
        mem.join(act, on="account_id", how="left")
        .group_by("cluster_id")
        .agg(
            size=pl.len(),
            n_exchanges=pl.col("n_exchanges").fill_null(0).sum(),
            first_ts=pl.col("first_ts").min(),
            last_ts=pl.col("last_ts").max(),
        )
    )
    stats = pl.from_arrow(edge_stats)
    assert isinstance(stats, pl.DataFrame)
    families = evidence_families(config)
    n = pl.col("n_edges")
    estats = stats.select(
        "cluster_id",
        "n_edges",
        mean_weight=pl.col("weight_sum") / n,
        **{f"share_{k}": pl.col(f"n_w_{k}") / n for k in EDGE_KINDS},
        **{f"fam_{name}": pl.col(f"n_fam_{name}") / n for name in families},
    )
    capc = (
        mem.join(cap, on="account_id")
        .group_by(["cluster_id", "capability"])
        .agg(n=pl.col("n").sum())
        .sort(["cluster_id", "n", "capability"], descending=[False, True, False])
        .group_by("cluster_id", maintain_order=True)
        .agg(
            top_capability=pl.col("capability").first(),
            capability_top_share=pl.col("n").first() / pl.col("n").sum(),
            n_classified=pl.col("n").sum(),
        )
    )
    out = base.join(estats, on="cluster_id", how="left").join(capc, on="cluster_id", how="left")
    out = out.with_columns(pl.col("size").cast(pl.Int64), pl.col("n_edges").cast(pl.Int64))
    share_cols = [f"share_{k}" for k in EDGE_KINDS]
    out = out.with_columns(
        pl.col("n_edges").fill_null(0),
        pl.col("mean_weight").fill_null(0.0),
        *[pl.col(c).fill_null(0.0) for c in share_cols],
        pl.col("n_classified").fill_null(0).cast(pl.Int64),
    )
    fam_cols = [f"fam_{name}" for name in families]
    out = out.with_columns(*[pl.col(c).fill_null(0.0) for c in fam_cols])
    out = out.with_columns(
        density=pl.col("n_edges") / (pl.col("size") * (pl.col("size") - 1) / 2),
        n_kinds=pl.sum_horizontal([(pl.col(c) >= min_share).cast(pl.Int64) for c in fam_cols]),
        synchrony_share=pl.col("share_synchrony"),
    ).sort("cluster_id")
    schema = _empty_features().schema
    return out.select(schema.names).to_arrow().cast(schema)


def _empty_features() -> pa.Table:
    fields = [
        ("cluster_id", pa.string()),
        ("size", pa.int64()),
        ("n_exchanges", pa.int64()),
        ("first_ts", pa.timestamp("ms", tz="UTC")),
        ("last_ts", pa.timestamp("ms", tz="UTC")),
        ("n_edges", pa.int64()),
        ("mean_weight", pa.float64()),
        *[(f"share_{k}", pa.float64()) for k in EDGE_KINDS],
        ("top_capability", pa.string()),
        ("capability_top_share", pa.float64()),
        ("n_classified", pa.int64()),
        ("density", pa.float64()),
        ("n_kinds", pa.int64()),
        ("synchrony_share", pa.float64()),
    ]
    return pa.schema(fields).empty_table()


def _result(
    info: DetectorInfo,
    table: pa.Table,
    values: np.ndarray,
    scores: np.ndarray,
    abstain: list[str | None],
) -> Detections:
    ids = (
        table["cluster_id"].cast(pa.string())
        if "cluster_id" in table.column_names
        else pa.array([], pa.string())
    )
    score_arr = pa.array(
        [None if r is not None else float(s) for s, r in zip(scores, abstain, strict=True)],
        pa.float64(),
    )
    value_arr = pa.array(
        [None if r is not None else float(v) for v, r in zip(values, abstain, strict=True)],
        pa.float64(),
    )
    out = pa.table(
        {
            "cluster_id": ids,
            "score": score_arr,
            "value": value_arr,
            "abstain_reason": pa.array(abstain, pa.string()),
        }
    )
    evidence = {
        str(cid): {"reference": info.description.split(":")[0], "value": v}
        for cid, v in zip(out["cluster_id"].to_pylist(), value_arr.to_pylist(), strict=True)
    }
    return Detections(detector=info, scores=out, evidence=evidence)


def _col(table: pa.Table, name: str) -> np.ndarray | None:
    if name not in table.column_names:
        return None
    return np.asarray(table[name].to_numpy(zero_copy_only=False), dtype=float)


class ClusterLinkage:
    """How strongly members are tied: mean weight of internal edges (sum of per-kind evidence).

    Indicates extraction because unrelated customers share no rare infrastructure, scaffolds,
    cards or schedules. Benign look-alikes: a company's staff on one card, a class on a campus
    NAT (discounted at the edge). Verify: open the shared keys in campaigns.json.
    """

    info: ClassVar[DetectorInfo] = DetectorInfo(
        id="cluster.linkage",
        version="1.1.0",
        level=Level.CLUSTER,
        status=Status.TEST,
        description="mean internal edge weight: strength of cross-account linkage",
        falsepositives=("team of one company sharing a card", "class behind a campus NAT"),
        runbook="Check campaigns.json shared_indicators against accounts and exchanges.",
    )
    # Edges enter clusters at weight >= 2 (linking.graph.min_edge_weight); a mean of 2 gives 0.63.
    scale: ClassVar[float] = 2.0

    def score(self, table: pa.Table) -> Detections:
        v = _col(table, "mean_weight")
        n = table.num_rows
        if v is None:
            return _result(
                self.info, table, np.zeros(n), np.zeros(n), ["abstain: no mean_weight"] * n
            )
        return _result(
            self.info, table, v, 1.0 - np.exp(-np.clip(v, 0, None) / self.scale), [None] * n
        )


class ClusterIndicatorDiversity:
    """How many independent kinds of indicator tie the cluster (payment, IP, UA, template, ...).

    One shared thing is often innocent; three unrelated kinds at once rarely are. Benign
    look-alikes: a company on one egress and one internal user agent (two kinds, both
    discounted). Verify: each kind's keys in shared_indicators.
    """

    info: ClassVar[DetectorInfo] = DetectorInfo(
        id="cluster.indicator_diversity",
        version="1.0.0",
        level=Level.CLUSTER,
        status=Status.TEST,
        description="kinds of indicator on at least a fifth of internal edges",
        falsepositives=("corporate team on one egress with one internal client",),
        runbook="Count the kinds in shared_indicators; each must hold for many member pairs.",
    )
    full: ClassVar[float] = 4.0

    def score(self, table: pa.Table) -> Detections:
        v = _col(table, "n_kinds")
        n = table.num_rows
        if v is None:
            return _result(self.info, table, np.zeros(n), np.zeros(n), ["abstain: no n_kinds"] * n)
        return _result(self.info, table, v, np.clip(v / self.full, 0.0, 1.0), [None] * n)


class ClusterCapabilityFocus:
    """Share of the cluster's classified exchanges on its top capability.

    A harvesting operation spreads one target capability over many accounts. Benign look-alikes:
    a coding-agent product or a class doing one assignment (those rarely form linked clusters).
    Abstains when no exchange carried content. Verify: sample prompts of the top capability.
    """

    info: ClassVar[DetectorInfo] = DetectorInfo(
        id="cluster.capability_focus",
        version="1.0.0",
        level=Level.CLUSTER,
        status=Status.TEST,
        description="top-capability share of the cluster's classified exchanges",
        falsepositives=("a class on one assignment", "a coding-agent product's accounts"),
        runbook="Pull sample request ids of the top capability and read the prompts.",
    )
    floor: ClassVar[float] = 0.4

    def score(self, table: pa.Table) -> Detections:
        v = _col(table, "capability_top_share")
        n = table.num_rows
        if v is None:
            return _result(
                self.info, table, np.zeros(n), np.zeros(n), ["abstain: no capability"] * n
            )
        classified = _col(table, "n_classified")
        missing = np.isnan(v)
        if classified is not None:
            missing |= classified == 0
        vv = np.nan_to_num(v)
        scores = np.clip((vv - self.floor) / (1.0 - self.floor), 0.0, 1.0)
        abstain: list[str | None] = [
            "abstain: no content" if m else None for m in np.atleast_1d(missing)
        ]
        return _result(self.info, table, vv, scores, abstain)


class ClusterSynchrony:
    """Share of internal edges carrying synchronised activity (SynchroTrap-style co-activity).

    Scripts drive accounts in lock-step; people do not. Benign look-alikes: a class in one
    lab session (explained sharing is removed before this). Verify: plot members' activity.
    """

    info: ClassVar[DetectorInfo] = DetectorInfo(
        id="cluster.synchrony",
        version="1.0.0",
        level=Level.CLUSTER,
        status=Status.TEST,
        description="share of internal edges with synchronised activity",
        falsepositives=("a class in one lab session",),
        runbook="Compare members' per-15-minute activity; lock-step over days is scripted.",
    )

    def score(self, table: pa.Table) -> Detections:
        v = _col(table, "synchrony_share")
        n = table.num_rows
        if v is None:
            return _result(
                self.info, table, np.zeros(n), np.zeros(n), ["abstain: no synchrony"] * n
            )
        return _result(self.info, table, v, np.clip(np.nan_to_num(v), 0.0, 1.0), [None] * n)


class ClusterSize:
    """How many accounts the cluster holds (a volume signal: never enough on its own)."""

    info: ClassVar[DetectorInfo] = DetectorInfo(
        id="cluster.size",
        version="1.0.0",
        level=Level.CLUSTER,
        status=Status.TEST,
        description="number of linked accounts",
        falsepositives=("a large organisation's many accounts",),
        runbook="Volume only; read together with the other cluster reasons.",
    )
    scale: ClassVar[float] = 10.0

    def score(self, table: pa.Table) -> Detections:
        v = _col(table, "size")
        n = table.num_rows
        if v is None:
            return _result(self.info, table, np.zeros(n), np.zeros(n), ["abstain: no size"] * n)
        return _result(
            self.info, table, v, 1.0 - np.exp(-np.clip(v - 2.0, 0, None) / self.scale), [None] * n
        )


#: Registration: the plain dict the conformance suite iterates.
CLUSTER_DETECTORS: dict[str, type[Any]] = {
    cls.info.id: cls
    for cls in (
        ClusterLinkage,
        ClusterIndicatorDiversity,
        ClusterCapabilityFocus,
        ClusterSynchrony,
        ClusterSize,
    )
}

#: Detectors whose signal is volume; the policy never lets these alone justify ``suspend``.
VOLUME_SIGNALS: frozenset[str] = frozenset({"cluster.size"})


def shared_keys_expr(indicators: ir.Table, members: ir.Table) -> ir.Table:
    """Every key held by at least two members of one cluster: ``cluster_id, kind, key,
    n_members, key_weight, address`` (``indicators`` has one row per (kind, key, account),
    ``members`` is (account_id, cluster_id))."""
    joined = indicators.join(members, "account_id")
    hits = joined.group_by(["cluster_id", "kind", "key"]).agg(
        # one row per (kind, key, account): the row count is the member count
        n_members=ibis._.count(),
        key_weight=joined.key_weight.max(),
        address=joined.address.max(),
    )
    return hits.filter(hits.n_members >= 2)


def shared_indicators_expr(indicators: ir.Table, members: ir.Table, per_kind: int = 5) -> ir.Table:
    """Per cluster and kind, the ``per_kind`` keys held by the most members (at least two), as
    an Ibis expression: ``cluster_id, kind, key, n_members, key_weight``.

    ``indicators`` has one row per (kind, key, account) and ``members`` is (account_id,
    cluster_id). At the seed scale the indicator memberships are ~10^8 rows (every address
    window every account used): they are joined and ranked in the engine, and only the few
    keys shown per cluster leave it.
    """
    hits = shared_keys_expr(indicators, members).drop("address")
    rank = ibis.row_number().over(
        group_by=[hits.cluster_id, hits.kind], order_by=[ibis.desc(hits.n_members), hits.key]
    )
    hits = hits.mutate(rank=rank)
    return hits.filter(hits.rank < per_kind).drop("rank")


def shared_indicators(hits: pa.Table) -> dict[str, list[dict[str, Any]]]:
    """The rows of :func:`shared_indicators_expr`, per cluster (kinds in name order, most-shared
    key first)."""
    table = pl.from_arrow(hits)
    assert isinstance(table, pl.DataFrame)
    out: dict[str, list[dict[str, Any]]] = {}
    if table.height == 0:
        return out
    ordered = table.sort(
        ["cluster_id", "kind", "n_members", "key"], descending=[False, False, True, False]
    )
    for row in ordered.iter_rows(named=True):
        out.setdefault(row["cluster_id"], []).append(
            {
                "kind": row["kind"],
                "key": row["key"],
                "n_members": int(row["n_members"]),
                "key_weight": round(float(row["key_weight"]), 4),
            }
        )
    return out
