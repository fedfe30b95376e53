"""Account / end-user features on a hand-made signals table whose right answers are worked out by hand."""

from __future__ import annotations

import math
from typing import Any

import pyarrow as pa
import pytest

from distillguard.features import compute_account_features, compute_end_user_features
from distillguard.features.detectors import ReasoningShare, TimingRegularity
from distillguard.signals.exchange import SIGNAL_SCHEMA

T0 = 1_780_000_000_000  # 2026-05-28T20:26:40Z
HOUR = 3_600_000


def _signals(rows: list[dict[str, Any]]) -> pa.Table:
    full = [{f.name: r.get(f.name) for f in SIGNAL_SCHEMA} for r in rows]
    return pa.Table.from_pylist(full, schema=SIGNAL_SCHEMA)


def _row(i: int, account: str, ts: int, **kw: Any) -> dict[str, Any]:
    base = {"request_id": f"{account}-{i}", "account_id": account, "ts": ts, "model": "m1", "client_ip": f"10.0.0.{i % 3}",
            "ip_prefix": "10.0.0.0/24", "network_kind": "residential", "input_tokens": 100, "output_tokens": 300,
            "has_content": True, "capability": "coding", "reasoning_elicitation": 0.1, "grader_use": 0.0,
            "rewrite_request": 0.0, "template_id": 1}  # fmt: skip
    base.update(kw)
    return base


# bot: 10 exchanges exactly one hour apart, all reasoning elicitation, one template, via proxy
BOT = [_row(i, "bot", T0 + i * HOUR, reasoning_elicitation=0.9, network_kind="proxy", capability="reasoning",
            client_ip=f"5.5.5.{i}", template_id=7, end_user_id=None) for i in range(10)]  # fmt: skip
# eval lab: irregular, capability split 6 reasoning / 4 coding, two templates, one without content
LAB = [_row(i, "lab", T0 + g, capability="reasoning" if i < 6 else "coding", template_id=1 if i < 5 else 2,
            end_user_id=f"u{i % 2}") for i, g in enumerate([0, 60_000, 61_000, 5 * HOUR, 5 * HOUR + 1000,
                                                             9 * HOUR, 30 * HOUR, 30 * HOUR + 5, 31 * HOUR, 50 * HOUR])]  # fmt: skip
LAB[9].update(
    has_content=False,
    capability=None,
    reasoning_elicitation=None,
    grader_use=None,
    rewrite_request=None,
    template_id=None,
)
ACCOUNTS = pa.table({"account_id": ["bot", "lab"],
                     "created_at": pa.array([T0 - HOUR * 12, T0 - 400 * 24 * HOUR], pa.timestamp("ms", tz="UTC")),
                     "verification": ["email", "kyc"]})  # fmt: skip


@pytest.fixture(scope="module")
def features() -> dict[str, dict[str, Any]]:
    table = compute_account_features(_signals(BOT + LAB), ACCOUNTS, {})
    return {r["account_id"]: r for r in table.to_pylist()}


def test_volume_and_timing(features: dict[str, dict[str, Any]]) -> None:
    bot, lab = features["bot"], features["lab"]
    assert (bot["n_exchanges"], lab["n_exchanges"], lab["n_content"]) == (10, 10, 9)
    assert bot["interarrival_cv"] == pytest.approx(0.0, abs=1e-9)
    assert lab["interarrival_cv"] > 1.0
    assert bot["active_hours"] == 10


def test_shares_over_content_only(features: dict[str, dict[str, Any]]) -> None:
    bot, lab = features["bot"], features["lab"]
    assert bot["reasoning_share"] == 1.0 and lab["reasoning_share"] == 0.0
    assert lab["top_capability"] == "reasoning" and lab["top_capability_share"] == pytest.approx(
        6 / 9
    )
    expected = -(6 / 9) * math.log2(6 / 9) - (3 / 9) * math.log2(3 / 9)
    assert lab["capability_entropy"] == pytest.approx(expected)
    assert lab["top_template_share"] == pytest.approx(5 / 9) and lab["n_templates"] == 2
    assert bot["top_template_share"] == 1.0 and bot["n_templates"] == 1


def test_network_and_account(features: dict[str, dict[str, Any]]) -> None:
    bot, lab = features["bot"], features["lab"]
    assert bot["share_proxy"] == 1.0 and bot["share_anonymising"] == 1.0 and bot["ip_churn"] == 1.0
    assert lab["share_residential"] == 1.0 and lab["ip_churn"] == pytest.approx(0.3)
    assert bot["account_age_days"] == pytest.approx(0.5)
    assert (bot["verification_level"], lab["verification_level"]) == (1, 4)
    assert bot["out_in_ratio"] == pytest.approx(3.0)


def test_end_user_features_split_accounts() -> None:
    table = compute_end_user_features(_signals(BOT + LAB), ACCOUNTS, {})
    keys = sorted((r["account_id"], r["end_user_id"] or "") for r in table.to_pylist())
    assert keys == [("bot", ""), ("lab", "u0"), ("lab", "u1")]
    assert sum(table["n_exchanges"].to_pylist()) == 20


def test_named_account_detectors() -> None:
    signals = _signals(BOT + LAB)
    timing = {
        r["account_id"]: r["score"] for r in TimingRegularity().score(signals).scores.to_pylist()
    }
    assert timing["bot"] > 0.9 > 0.1 > timing["lab"]
    reasoning = ReasoningShare().score(signals)
    scores = {r["account_id"]: r["score"] for r in reasoning.scores.to_pylist()}
    assert scores["bot"] > 0.9 and scores["lab"] < 0.1
    assert reasoning.evidence["bot"]["sample_request_ids"] == [f"bot-{i}" for i in range(5)]
