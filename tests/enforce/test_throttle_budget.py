"""Throttle budget: an account the score keeps at throttle is challenged after so many exchanges there (positives, near misses, every path)."""

from __future__ import annotations

from typing import Any

import pytest

from distillguard.core.verdict import Action
from distillguard.enforce.campaigns import CampaignWatcher
from distillguard.enforce.online import (
    AccountMeta,
    BatchContentSignals,
    Enforcer,
    exchange_table,
)
from distillguard.enforce.state import ACTION_SINCE, RedisState

from .conftest import RedisServer, row

BUDGET = 5


@pytest.fixture
def budget_config(config: dict[str, Any]) -> dict[str, Any]:
    """A card shared by four accounts of four domains (shared_payment at full weight) throttles and no more."""
    config["enforce"]["online"]["throttle_budget"] = BUDGET
    config["enforce"]["online"]["thresholds"] = {
        "monitor": 0.05, "throttle": 0.1, "challenge": 0.8, "suspend": 0.9,
    }  # fmt: skip
    return config


def _traffic(n_last: int) -> tuple[list[dict[str, Any]], dict[str, AccountMeta]]:
    """Three accounts on card-Q once each, then a fourth on it ``n_last`` times (a minute apart)."""
    rows = [row(i, f"head-{i}", ip=f"198.51.100.{i + 1}") for i in range(3)]
    rows += [row(3 + 60 * j, "head-3", ip="198.51.100.9") for j in range(n_last)]
    metas = {f"head-{i}": AccountMeta("card-Q", f"d{i}.example") for i in range(4)}
    return rows, metas


def _one_by_one(
    e: Enforcer, rows: list[dict[str, Any]], metas: dict[str, AccountMeta]
) -> list[Any]:
    return [
        d
        for r in rows
        for d in e.process([r], [metas[r["account_id"]]])
        if d.account_id == "head-3"
    ]


def test_an_account_kept_at_throttle_is_challenged_past_its_budget(
    budget_config: dict[str, Any],
) -> None:
    rows, metas = _traffic(BUDGET + 4)
    decisions = _one_by_one(Enforcer(budget_config), rows, metas)
    actions = [d.action for d in decisions]
    # Throttled at its first exchange (the card is shared by four), served at throttle for its
    # budget, then challenged: the score alone never gets there.
    assert actions[: BUDGET + 1] == [Action.THROTTLE] * (BUDGET + 1)
    assert actions[BUDGET + 1 :] == [Action.CHALLENGE] * 3
    first = decisions[BUDGET + 1]
    assert first.changed and not first.served
    assert first.reasons[0]["signal"] == "online.throttle_budget"
    assert first.reasons[0]["value"] == BUDGET + 1
    assert first.reasons[0]["detail"]["reference"]["budget"] == BUDGET
    # The throttle's own reasons still explain it.
    assert any(r["signal"] == "online.shared_payment" for r in first.reasons[1:])
    assert decisions[BUDGET + 1].score == pytest.approx(decisions[BUDGET].score)


def test_no_budget_and_monitor_are_never_escalated(budget_config: dict[str, Any]) -> None:
    rows, metas = _traffic(BUDGET + 20)
    budget_config["enforce"]["online"]["throttle_budget"] = 0
    assert {d.action for d in _one_by_one(Enforcer(budget_config), rows, metas)} == {
        Action.THROTTLE
    }
    # The same account held at monitor (throttle out of reach) sends as much and stays there.
    budget_config["enforce"]["online"]["throttle_budget"] = BUDGET
    budget_config["enforce"]["online"]["thresholds"]["throttle"] = 0.5
    assert {d.action for d in _one_by_one(Enforcer(budget_config), rows, metas)} == {Action.MONITOR}


def test_a_negative_budget_is_a_config_error(budget_config: dict[str, Any]) -> None:
    from distillguard.core.errors import ConfigError

    budget_config["enforce"]["online"]["throttle_budget"] = -1
    with pytest.raises(ConfigError, match="throttle_budget"):
        Enforcer(budget_config)


def test_replay_batch_agrees_with_checks_one_by_one(budget_config: dict[str, Any]) -> None:
    rows, metas = _traffic(BUDGET + 4)
    # Interleave a second throttled account so that one batch holds both budgets.
    rows += [row(4 + 60 * j, "head-0", ip="198.51.100.1") for j in range(BUDGET + 3)]
    rows.sort(key=lambda r: r["ts"])
    one = Enforcer(budget_config, campaigns=CampaignWatcher(None, 0.3))
    table = exchange_table(rows)
    signals = BatchContentSignals(budget_config, capability_model=False).compute(table)
    expected = [
        d.to_json()
        for i, r in enumerate(rows)
        for d in one.process([r], [metas[r["account_id"]]], signals.slice(i, 1))
        if d.changed
    ]
    assert sum(d["reasons"][0]["signal"] == "online.throttle_budget" for d in expected) == 2
    batch = Enforcer(budget_config, campaigns=CampaignWatcher(None, 0.3))
    got = [d.to_json() for d in batch.replay_batch(table, signals, metas)]
    assert got == expected


def test_redis_keeps_when_the_account_was_throttled_across_a_restart(
    budget_config: dict[str, Any], redis_server: RedisServer
) -> None:
    rows, metas = _traffic(BUDGET + 4)
    first = Enforcer(budget_config, backend=RedisState(redis_server.url, prefix="tb"))
    before = _one_by_one(first, rows[: 3 + 2], metas)
    assert [d.action for d in before] == [Action.THROTTLE] * 2
    stored = RedisState(redis_server.url, prefix="tb").get("head-3")
    assert stored is not None and stored.counters[ACTION_SINCE] == 1.0
    # A new process on the same Redis counts on from there: the budget is not granted again.
    second = Enforcer(budget_config, backend=RedisState(redis_server.url, prefix="tb"))
    after = _one_by_one(second, rows[3 + 2 :], metas)
    assert [d.action for d in after].index(Action.CHALLENGE) == BUDGET - 1
