"""Scoring: robust baseline, additive contributions, and policy rules no score can override."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from distillguard.core.config import load_config
from distillguard.core.detector import Detections
from distillguard.core.errors import ConfigError
from distillguard.core.verdict import Action
from distillguard.linking.clusters import CLUSTER_DETECTORS
from distillguard.scoring.combine import score_accounts
from distillguard.scoring.policy import Policy
from distillguard.scoring.standardise import RobustBaseline


def _features(n: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table(
        {
            "account_id": [f"acct-{i:04d}" for i in range(n)],
            "n_exchanges": rng.poisson(20, n).astype(float),
            "reasoning_share": rng.beta(1, 12, n),
            "capability_top_share": rng.uniform(0.3, 0.7, n),
        }
    )


def _cluster_features(ids: list[str], strength: float, n_kinds: int = 4) -> pa.Table:
    n = len(ids)
    return pa.table(
        {
            "cluster_id": ids,
            "size": [30] * n,
            "mean_weight": [strength] * n,
            "n_kinds": [n_kinds] * n,
            "capability_top_share": [0.95] * n,
            "n_classified": [100] * n,
            "synchrony_share": [0.9] * n,
        }
    )


def _dets(cluster_table: pa.Table) -> list[Detections]:
    return [CLUSTER_DETECTORS[k]().score(cluster_table) for k in sorted(CLUSTER_DETECTORS)]


def test_baseline_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError, match="min_scale"):
        RobustBaseline(["x"], min_scale=0.0)


def test_baseline_protects_against_anomalies() -> None:
    table = pa.table({"x": [1.0, 1.1, 0.9, 1.0, 50.0, 60.0, 70.0, 80.0, 90.0]})
    flagged = np.array([False] * 4 + [True] * 5)
    protected = RobustBaseline(["x"]).fit(table, exclude=flagged)
    naive = RobustBaseline(["x"]).fit(table)
    assert protected.median_["x"] == pytest.approx(1.0)
    assert naive.median_["x"] == pytest.approx(50.0)
    assert protected.transform(table)["x"][-1] > 100


def test_contributions_add_up_to_the_score() -> None:
    config = load_config()
    feats = _features(400)
    membership = pa.table(
        {"account_id": ["acct-0001", "acct-0002", "acct-0003"], "cluster_id": ["C-1"] * 3}
    )
    scored = score_accounts(feats, membership, _dets(_cluster_features(["C-1"], 6.0)), config)
    logit = np.asarray(scored.accounts["logit"].to_numpy())
    assert np.allclose(logit, config["scoring"]["bias"] + scored.contributions.sum(axis=1))
    score = np.asarray(scored.accounts["score"].to_numpy())
    assert np.all((score >= 0) & (score <= 1))
    members = np.isin(
        np.asarray(scored.accounts["account_id"].to_pylist()),
        ["acct-0001", "acct-0002", "acct-0003"],
    )
    assert score[members].min() > score[~members].max()


def _config(**thresholds: float) -> dict[str, Any]:
    config = load_config()
    config["policy"]["thresholds"] = {
        "monitor": 0.01,
        "throttle": 0.02,
        "challenge": 0.03,
        "suspend": 0.04,
        **thresholds,
    }
    return config


def test_volume_alone_never_flags_or_suspends() -> None:
    config = _config()
    config["scoring"]["account_signals"] = [
        {
            "name": "n_exchanges",
            "weight": 5.0,
            "direction": 1,
            "z0": 1.0,
            "cap": 4.0,
            "volume": True,
        }
    ]
    config["scoring"]["cluster_signals"] = {"cluster.size": {"weight": 5.0, "volume": True}}
    feats = _features(300)
    feats = feats.set_column(1, "n_exchanges", pa.array([5000.0] + [20.0] * 299))
    membership = pa.table(
        {"account_id": ["acct-0000", "acct-0001", "acct-0002"], "cluster_id": ["C-1"] * 3}
    )
    scored = score_accounts(feats, membership, _dets(_cluster_features(["C-1"], 6.0)), config)
    ranks = Policy.from_config(config).decide(scored)
    assert float(scored.accounts["score"][0].as_py()) > 0.04  # the score alone would suspend
    assert ranks[0] == Action.MONITOR.rank


def test_suspend_requires_cluster_evidence() -> None:
    config = _config()
    config["policy"]["min_evidence_kinds"] = 1  # this test isolates the suspend rule
    config["scoring"]["account_signals"] = [
        {
            "name": "reasoning_share",
            "weight": 5.0,
            "direction": 1,
            "z0": 1.0,
            "cap": 4.0,
            "volume": False,
        }
    ]
    feats = _features(300)
    feats = feats.set_column(2, "reasoning_share", pa.array([0.99] + [0.05] * 299))
    empty = pa.table(
        {"account_id": pa.array([], pa.string()), "cluster_id": pa.array([], pa.string())}
    )
    scored = score_accounts(feats, empty, _dets(_cluster_features([], 0.0)), config)
    ranks = Policy.from_config(config).decide(scored)
    assert ranks[0] == Action.CHALLENGE.rank
    membership = pa.table(
        {"account_id": ["acct-0000", "acct-0001", "acct-0002"], "cluster_id": ["C-1"] * 3}
    )
    scored = score_accounts(feats, membership, _dets(_cluster_features(["C-1"], 8.0)), config)
    assert Policy.from_config(config).decide(scored)[0] == Action.SUSPEND.rank


def test_one_kind_of_evidence_however_strong_never_throttles() -> None:
    # A group linked only by a shared residential IP (one family: IP + prefix) with strong
    # edges: linkage alone would throttle, but it is one kind of evidence; a second family
    # (a shared card, a sign-up wave) lets the same score act.
    config = _config()
    config["scoring"]["account_signals"] = []
    config["scoring"]["cluster_signals"] = {
        "cluster.linkage": {"weight": 8.0, "volume": False},
        "cluster.indicator_diversity": {"weight": 1.0, "volume": False},
    }
    feats = _features(300)
    membership = pa.table(
        {"account_id": ["acct-0000", "acct-0001", "acct-0002"], "cluster_id": ["C-1"] * 3}
    )
    policy = Policy.from_config(config)
    assert policy.min_evidence_kinds == 2
    one = score_accounts(feats, membership, _dets(_cluster_features(["C-1"], 8.0, 1)), config)
    assert float(one.accounts["score"][0].as_py()) > 0.04  # the score alone would suspend
    assert policy.evidence_kinds(one)[0] == 1
    assert policy.decide(one)[0] == Action.MONITOR.rank
    two = score_accounts(feats, membership, _dets(_cluster_features(["C-1"], 8.0, 2)), config)
    assert policy.evidence_kinds(two)[0] == 2
    assert policy.decide(two)[0] >= Action.THROTTLE.rank
    assert policy.decide(one)[5] == Action.ALLOW.rank  # an unlinked account is untouched


def test_policy_rejects_unordered_thresholds() -> None:
    with pytest.raises(ConfigError, match="non-decreasing"):
        Policy.from_config(_config(throttle=0.9, challenge=0.5))


def test_account_detectors_contribute_weight_times_score() -> None:
    from distillguard.features import REGISTRY

    config = load_config()
    config["scoring"]["account_signals"] = [
        {"name": "reasoning_share", "detector": "features.reasoning_share", "weight": 2.0}
    ]
    feats = _features(50).append_column("n_content", pa.array([40] * 50))
    feats = feats.set_column(2, "reasoning_share", pa.array([0.9] + [0.01] * 49))
    det = REGISTRY["features.reasoning_share"](config).score_features(feats)
    empty = pa.table(
        {"account_id": pa.array([], pa.string()), "cluster_id": pa.array([], pa.string())}
    )
    scored = score_accounts(feats, empty, [], config, account_detections=[det])
    expected = 2.0 * np.nan_to_num(np.asarray(det.scores["score"].to_numpy(zero_copy_only=False)))
    assert np.allclose(scored.contributions[:, 0], expected)
    assert scored.contributions[0, 0] > 1.9 and scored.contributions[1:, 0].max() < 0.1
    assert scored.specs[0].detector == "features.reasoning_share@1"
    # No such detector ran: the signal is absent, not a silent zero column.
    assert score_accounts(feats, empty, [], config).contributions.shape[1] == 0
