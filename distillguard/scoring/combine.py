"""Additive scoring: each standardised signal adds a visible log-odds contribution; the sum is squashed.

``logit = bias + Σ account contributions + Σ cluster contributions`` and ``score = sigmoid(logit)``.
An account signal is either a registered account detector (``detector: <id>``; it contributes
``weight * score``, the score being the detector's own [0, 1] mapping against its configured
reference) or a feature column (``name``; it contributes ``weight * clip(direction * z - z0, 0,
cap)`` on the robust z against the cohort outside every cluster: nothing until it is ``z0``
robust deviations out, bounded so no single signal dominates); a cluster detector contributes
``weight * score`` to every member of the cluster. Because the contributions add up
to the total, each reason in a verdict carries exactly its share of the score.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from distillguard.core.detector import Detections
from distillguard.scoring.standardise import RobustBaseline, column_values

SCORING_VERSION = "1.0.0"


@dataclass(frozen=True)
class SignalSpec:
    """One column of the contribution matrix."""

    name: str  # the reason's ``signal``
    detector: str  # detector@version that produced the value
    volume: bool  # a volume signal can never justify suspend on its own
    cluster: bool  # cluster evidence (shared by all members) or own behaviour


@dataclass(frozen=True)
class Scored:
    """Per-account totals plus the contribution matrix behind them (rows aligned with accounts)."""

    accounts: pa.Table  # account_id, cluster_id, logit, score
    specs: tuple[SignalSpec, ...]
    values: np.ndarray  # (n_accounts, n_signals) raw observed values (NaN = abstain)
    contributions: np.ndarray  # (n_accounts, n_signals) log-odds added
    references: tuple[Mapping[str, Any], ...]  # per signal: what the value was compared with
    baseline: RobustBaseline


def _sigmoid(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = 1.0 / (1.0 + np.exp(-x))
    return out


def _cluster_scores(
    membership_cluster: np.ndarray, det: Detections
) -> tuple[np.ndarray, np.ndarray]:
    """Map a cluster detector's (score, value) onto accounts via their cluster ids."""
    table = det.scores
    ids = table["cluster_id"].to_pylist()
    scores = column_values(table, "score")
    values = column_values(table, "value")
    lookup = {cid: i for i, cid in enumerate(ids)}
    idx = np.array(
        [lookup.get(c, -1) if c is not None else -1 for c in membership_cluster], dtype=np.int64
    )
    s = np.where(idx >= 0, scores[np.clip(idx, 0, None)] if len(ids) else np.nan, np.nan)
    v = np.where(idx >= 0, values[np.clip(idx, 0, None)] if len(ids) else np.nan, np.nan)
    return s, v


def _account_scores(features: pa.Table, det: Detections) -> tuple[np.ndarray, np.ndarray]:
    """An account detector's (score, value) aligned with ``features`` rows (NaN where absent)."""
    table = det.scores
    idx = pc.index_in(features["account_id"], value_set=table["account_id"])
    idx_np = np.asarray(idx.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64)
    scores = column_values(table, "score")
    values = column_values(table, "value")
    if table.num_rows == 0:
        nan = np.full(features.num_rows, np.nan)
        return nan, nan.copy()
    safe = np.clip(idx_np, 0, None)
    return (
        np.where(idx_np >= 0, scores[safe], np.nan),
        np.where(idx_np >= 0, values[safe], np.nan),
    )


def score_accounts(
    features: pa.Table,
    membership: pa.Table,
    cluster_detections: Sequence[Detections],
    config: Mapping[str, Any],
    account_detections: Sequence[Detections] = (),
) -> Scored:
    """Score every account in ``features`` (must have ``account_id``).

    The robust baseline is fitted on accounts outside every cluster (protect_anomaly).
    Missing feature columns, absent and abstaining detectors contribute nothing.
    """
    scfg = config["scoring"]
    features = features.sort_by("account_id")
    n = features.num_rows
    mem_idx = pc.index_in(features["account_id"], value_set=membership["account_id"])
    mem_idx_np = np.asarray(mem_idx.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64)
    cluster_ids_all = membership["cluster_id"].to_pylist()
    cluster_of = np.array(
        [cluster_ids_all[i] if i >= 0 else None for i in mem_idx_np], dtype=object
    )
    in_cluster = mem_idx_np >= 0

    account_specs: list[Mapping[str, Any]] = list(scfg["account_signals"])
    names = [str(s["name"]) for s in account_specs if "detector" not in s]
    baseline = RobustBaseline(names).fit(features, exclude=in_cluster)
    zs = baseline.transform(features)
    by_id = {d.detector.id: d for d in account_detections}

    specs: list[SignalSpec] = []
    cols_v: list[np.ndarray] = []
    cols_c: list[np.ndarray] = []
    refs: list[Mapping[str, Any]] = []
    for spec in account_specs:
        if "detector" in spec:
            det_id = str(spec["detector"])
            found = by_id.get(det_id)
            if found is None:
                continue
            s_acc, v_acc = _account_scores(features, found)
            specs.append(
                SignalSpec(
                    str(spec.get("name", det_id)),
                    found.detector.ref,
                    bool(spec.get("volume", False)),
                    False,
                )
            )
            cols_v.append(v_acc)
            cols_c.append(float(spec["weight"]) * np.nan_to_num(s_acc, nan=0.0))
            refs.append(
                {
                    "reference": found.detector.description,
                    **dict(
                        ((config.get("features") or {}).get("detectors") or {}).get(det_id) or {}
                    ),
                    "weight": float(spec["weight"]),
                }
            )
            continue
        name = str(spec["name"])
        raw = column_values(features, name)
        z = zs[name]
        shifted = float(spec.get("direction", 1)) * z - float(spec.get("z0", 2.0))
        contrib = float(spec["weight"]) * np.clip(
            np.nan_to_num(shifted, nan=0.0), 0.0, float(spec.get("cap", 4.0))
        )
        specs.append(
            SignalSpec(
                name, f"account.{name}@{SCORING_VERSION}", bool(spec.get("volume", False)), False
            )
        )
        cols_v.append(raw)
        cols_c.append(contrib)
        refs.append(
            {
                "baseline_median": round(baseline.median_.get(name, float("nan")), 6),
                "baseline_scale": round(baseline.scale_.get(name, float("nan")), 6),
                "direction": "high" if float(spec.get("direction", 1)) > 0 else "low",
                "z0": float(spec.get("z0", 2.0)),
                "cohort": f"{baseline.n_fit_} accounts outside every cluster",
            }
        )
    cluster_cfg: Mapping[str, Mapping[str, Any]] = scfg["cluster_signals"]
    for det in sorted(cluster_detections, key=lambda d: d.detector.id):
        ccfg = cluster_cfg.get(det.detector.id)
        if ccfg is None:
            continue
        s, v = _cluster_scores(cluster_of, det)
        contrib = float(ccfg["weight"]) * np.nan_to_num(s, nan=0.0)
        specs.append(
            SignalSpec(det.detector.id, det.detector.ref, bool(ccfg.get("volume", False)), True)
        )
        cols_v.append(v)
        cols_c.append(contrib)
        refs.append({"reference": det.detector.description, "weight": float(ccfg["weight"])})

    values = np.column_stack(cols_v) if cols_v else np.zeros((n, 0))
    contributions = np.column_stack(cols_c) if cols_c else np.zeros((n, 0))
    logit = float(scfg["bias"]) + contributions.sum(axis=1)
    score = _sigmoid(logit)
    accounts = pa.table(
        {
            "account_id": features["account_id"].cast(pa.string()),
            "cluster_id": pa.array(cluster_of.tolist(), pa.string()),
            "logit": pa.array(logit, pa.float64()),
            "score": pa.array(score, pa.float64()),
        }
    )
    return Scored(accounts, tuple(specs), values, contributions, tuple(refs), baseline)
