"""One address is one piece of evidence: with a flagged-address link, the shared address adds only what exceeds it."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from distillguard.core.verdict import Action
from distillguard.enforce.online import (
    FEATURES,
    AccountMeta,
    Decision,
    Enforcer,
    build_enforcer,
    score_rows,
)

T0 = 1_750_000_000_000


def _check(e: Enforcer, account: str, ip: str, i: int) -> Decision:
    row = {
        "request_id": f"{account}-{i}",
        "account_id": account,
        "client_ip": ip,
        "model": "m",
        "ts": T0 + i,
    }
    return e.process([row], [AccountMeta(None, None, None, "email")])[0]


def _contain(e: Enforcer, account: str, ip: str, i: int) -> None:
    e.backend.set_action(
        account, Action.CHALLENGE.rank, None, [{"signal": "test", "value": 1, "detail": {}}]
    )
    assert _check(e, account, ip, i).action is Action.CHALLENGE


def _contrib(d: Decision, signal: str) -> float:
    r = {x["signal"]: x for x in d.reasons}.get(signal)
    return 0.0 if r is None else float(r["detail"]["contribution"])


def _exit_dominated_by_contained_accounts(e: Enforcer) -> Decision:
    """Eight contained accounts on one exit today, then a bystander's first request there (nothing else known)."""
    for k in range(8):
        _contain(e, f"attacker-{k}", "198.51.100.50", k)
    return _check(e, "vpn-user", "198.51.100.50", 100)


def test_an_exit_full_of_contained_accounts_alone_does_not_contain_a_bystander(
    config: dict[str, Any],
) -> None:
    d = _exit_dominated_by_contained_accounts(build_enforcer(config, with_limits=False))
    assert _contrib(d, "online.flagged_ip") == pytest.approx(6.0)
    assert _contrib(d, "online.shared_ip") == 0.0  # 2.8 does not exceed the link
    assert d.action.rank < Action.CHALLENGE.rank


def test_without_supersede_the_same_exit_counted_twice_contains_the_bystander(
    config: dict[str, Any],
) -> None:
    """Near miss: the shared address and the link summed (6.0 + 2.8) reach challenge with no evidence of its own."""
    config["enforce"]["online"]["propagation"]["links"]["ip"]["supersedes_shared_ip"] = False
    d = _exit_dominated_by_contained_accounts(build_enforcer(config, with_limits=False))
    assert _contrib(d, "online.shared_ip") == pytest.approx(2.8)
    assert d.action.rank >= Action.CHALLENGE.rank


def test_a_weak_link_never_lowers_the_shared_address(config: dict[str, Any]) -> None:
    """The address's evidence is max(shared, link): a partial link adds to the shared address only what exceeds it."""
    e = build_enforcer(config, with_limits=False)
    settings = e.settings
    values = np.full((3, len(FEATURES)), math.nan)
    s_ip, f_ip = FEATURES.index("shared_ip"), FEATURES.index("flagged_ip")
    values[:, s_ip] = 8.0  # full shared-address weight (2.8)
    values[:, f_ip] = [math.nan, 0.17, 0.25]  # no link, a weak one (1.2), the full one (6.0)
    c = score_rows(values, settings)
    address = c[:, s_ip] + c[:, f_ip]
    assert address.tolist() == pytest.approx([2.8, 2.8, 6.0])
    # Near miss: without supersede the weak link is added on top.
    config["enforce"]["online"]["propagation"]["links"]["ip"]["supersedes_shared_ip"] = False
    off = build_enforcer(config, with_limits=False).settings
    c_off = score_rows(values, off)
    assert (c_off[:, s_ip] + c_off[:, f_ip]).tolist() == pytest.approx([2.8, 4.0, 8.8])
