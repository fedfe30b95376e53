"""Online linking: a contained account's card and addresses reach other accounts at their first request."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from distillguard.core.verdict import Action
from distillguard.enforce.online import AccountMeta, Enforcer, build_enforcer
from distillguard.enforce.state import COUNT_ONLY, MemoryState, Observation

T0 = 1_750_000_000_000
CAMPUS = "192.0.2.0/24"  # an education network in the intel table below


def _intel() -> pa.Table:
    return pa.table(
        {"cidr": [CAMPUS], "asn": [64500], "asn_org": ["State U"], "kind": ["education"]}
    )


def _check(
    e: Enforcer,
    account: str,
    ip: str,
    card: str | None = None,
    domain: str = "mail.test",
    i: int = 0,
) -> Any:
    row = {
        "request_id": f"{account}-{i}",
        "account_id": account,
        "client_ip": ip,
        "model": "m",
        "ts": T0 + i,
    }
    return e.process([row], [AccountMeta(card, domain) if card else None])[0]


def _contain(e: Enforcer, account: str, ip: str, card: str | None = None) -> None:
    """An account already at challenge (an earlier decision), then one request from it."""
    e.backend.set_action(
        account, Action.CHALLENGE.rank, None, [{"signal": "test", "value": 1, "detail": {}}]
    )
    assert _check(e, account, ip, card, "a.test").action is Action.CHALLENGE


def test_new_account_on_a_contained_accounts_card_is_contained_at_its_first_request(
    config: dict[str, Any],
) -> None:
    e = build_enforcer(config, with_limits=False)
    _contain(e, "hydra-1", "203.0.113.5", card="card-H")
    first = _check(e, "hydra-2", "198.51.100.77", card="card-H", domain="b.test", i=1)
    assert first.action.rank >= Action.CHALLENGE.rank
    signals = {r["signal"]: r for r in first.reasons}
    assert signals["online.flagged_payment"]["detail"]["contained_accounts"] == 1
    # A bystander with its own card and address is untouched.
    assert _check(e, "someone", "198.51.100.200", card="card-S", i=2).action is Action.ALLOW


def test_a_contained_address_links_but_a_campus_address_does_not(config: dict[str, Any]) -> None:
    e = build_enforcer(config, with_limits=False, intel=_intel())
    for k in range(3):
        _contain(e, f"proxy-user-{k}", "203.0.113.9")
        _contain(e, f"campus-user-{k}", "192.0.2.10")
    baseline = _check(e, "elsewhere", "198.51.100.3", i=1).score
    # Three of the address's four accounts today are contained: a strong link, not yet alone an action.
    linked = _check(e, "fresh", "203.0.113.9", i=2)
    assert linked.score > baseline
    student = _check(e, "student", "192.0.2.10", i=3)
    assert student.action is Action.ALLOW and student.score == baseline


def test_an_address_mostly_used_by_others_links_weakly(config: dict[str, Any]) -> None:
    """One contained account among many on a cloud NAT adds less than on a proxy exit it dominates."""
    e = build_enforcer(config, with_limits=False)
    _contain(e, "attacker", "203.0.113.50")
    _contain(e, "attacker-2", "203.0.113.60")
    _contain(e, "attacker-3", "203.0.113.60")
    for k in range(8):
        _check(e, f"customer-{k}", "203.0.113.50", i=10 + k)
    crowded = _check(e, "new-1", "203.0.113.50", i=30).score
    dominated = _check(e, "new-2", "203.0.113.60", i=31).score
    assert dominated > crowded


def test_an_accounts_own_taint_is_not_evidence_against_it(config: dict[str, Any]) -> None:
    e = build_enforcer(config, with_limits=False)
    _contain(e, "solo", "203.0.113.20", card="card-solo")
    again = _check(e, "solo", "203.0.113.20", card="card-solo", domain="a.test", i=1)
    # Its own card is now tainted, but that must not lift it to suspend (no one else's evidence).
    assert again.action is Action.CHALLENGE


def test_propagation_weight_zero_keeps_no_taint(config: dict[str, Any]) -> None:
    for link in config["enforce"]["online"]["propagation"]["links"].values():
        link["weight"] = 0.0
    e = build_enforcer(config, with_limits=False)
    _contain(e, "hydra-1", "203.0.113.5", card="card-H")
    assert not any(k.startswith("flg:") for k in e.backend._sketches)  # type: ignore[attr-defined]
    assert (
        _check(e, "hydra-2", "203.0.113.5", card="card-H", domain="b.test", i=1).action
        is not Action.CHALLENGE
    )


def test_count_only_member_reads_without_adding() -> None:
    state = MemoryState()
    view = state.observe(Observation("a", 1, {"n": 1.0}, [("g", COUNT_ONLY)]))
    assert view.distinct["g"] == 0 and state.size()["sketches"] == 0
    state.observe(Observation("a", 2, {}, [("g", "a")]))
    view = state.observe(Observation("b", 3, {"n": 1.0}, [("g", COUNT_ONLY), ("g", COUNT_ONLY)]))
    assert view.distinct["g"] == 1
