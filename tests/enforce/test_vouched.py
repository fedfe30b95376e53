"""Shared infrastructure is no link: one contained account does not taint a cloud address, and vouched accounts waive it."""

from __future__ import annotations

import math
from typing import Any

import pyarrow as pa
import pytest

from distillguard.core.errors import ConfigError
from distillguard.core.verdict import Action
from distillguard.enforce.online import AccountMeta, Decision, Enforcer, build_enforcer
from distillguard.enforce.settings import EnforceSettings

T0 = 1_750_000_000_000
CLOUD = "203.0.113.0/24"  # datacenter in the intel table below
PROXY = "198.51.100.0/24"  # a residential-proxy range


def _intel() -> pa.Table:
    return pa.table(
        {
            "cidr": [CLOUD, PROXY],
            "asn": [64501, 64502],
            "asn_org": ["Cloud Co", "Proxy Co"],
            "kind": ["datacenter", "proxy"],
        }
    )


def _check(
    e: Enforcer,
    account: str,
    ip: str,
    i: int,
    *,
    verification: str | None = None,
    card: str | None = None,
    end_user: str | None = None,
) -> Decision:
    row = {"request_id": f"{account}-{i}", "account_id": account, "client_ip": ip, "model": "m", "ts": T0 + i,
           "end_user_id": end_user}  # fmt: skip
    meta = AccountMeta(card, "mail.test" if card else None, None, verification)
    return e.process([row], [meta])[0]


def _contain(e: Enforcer, account: str, ip: str, i: int, card: str | None = None) -> None:
    """An account already at challenge (an earlier decision), then one request from it: its keys carry taint."""
    e.backend.set_action(
        account, Action.CHALLENGE.rank, None, [{"signal": "test", "value": 1, "detail": {}}]
    )
    assert _check(e, account, ip, i, card=card).action is Action.CHALLENGE


def _signals(d: Decision) -> dict[str, dict[str, Any]]:
    return {r["signal"]: r for r in d.reasons}


def _flagged_ip_score(e: Enforcer, d: Decision) -> float:
    """The score's log-odds contribution of the flagged-address link (0 when it abstained)."""
    r = _signals(d).get("online.flagged_ip")
    return 0.0 if r is None else float(r["detail"]["contribution"])


def test_one_contained_account_on_a_cloud_address_is_no_link_but_on_a_proxy_exit_it_is(
    config: dict[str, Any],
) -> None:
    e = build_enforcer(config, with_limits=False, intel=_intel())
    _contain(e, "cloud-attacker", "203.0.113.7", 0)
    _contain(e, "proxy-attacker", "198.51.100.7", 1)
    # The next customer on the attacker's cloud address (a shared NAT, or the address passed on): no link.
    assert "online.flagged_ip" not in _signals(_check(e, "customer", "203.0.113.7", 10))
    # Near miss: on a proxy exit the one contained account is the full link (share 1/2).
    assert _flagged_ip_score(e, _check(e, "fresh", "198.51.100.7", 11)) == pytest.approx(6.0)


def test_two_contained_accounts_make_a_cloud_address_a_link(config: dict[str, Any]) -> None:
    """A rented cloud exit several campaign accounts use still links, once two of them are contained."""
    e = build_enforcer(config, with_limits=False, intel=_intel())
    _contain(e, "cloud-attacker-0", "203.0.113.8", 0)
    _contain(e, "cloud-attacker-1", "203.0.113.8", 1)
    assert _flagged_ip_score(e, _check(e, "next-head", "203.0.113.8", 10)) == pytest.approx(6.0)


def test_min_contained_empty_links_a_cloud_address_at_one(config: dict[str, Any]) -> None:
    config["enforce"]["online"]["propagation"]["links"]["ip"]["min_contained"] = {}
    e = build_enforcer(config, with_limits=False, intel=_intel())
    _contain(e, "cloud-attacker", "203.0.113.7", 0)
    assert _flagged_ip_score(e, _check(e, "customer", "203.0.113.7", 10)) == pytest.approx(6.0)


def _exit_of_four_contained_accounts(config: dict[str, Any], who: str, ip: str) -> Enforcer:
    """Four contained accounts on ``ip``; the shared address read on its own (not superseded by
    the link), to see vouching waive it."""
    config["enforce"]["online"]["propagation"]["links"]["ip"]["supersedes_shared_ip"] = False
    e = build_enforcer(config, with_limits=False, intel=_intel())
    for k in range(4):
        _contain(e, f"{who}-{k}", ip, k)
    return e


def test_a_kyc_account_on_a_cloud_address_reads_no_address_taint_and_no_shared_address(
    config: dict[str, Any],
) -> None:
    e = _exit_of_four_contained_accounts(config, "cloud-attacker", "203.0.113.9")
    kyc = _check(e, "lab", "203.0.113.9", 10, verification="kyc")
    assert not {"online.flagged_ip", "online.shared_ip"} & set(_signals(kyc))
    assert kyc.action is Action.ALLOW
    # Near miss: a card-verified account on the same cloud exit gets the link and the shared address.
    card = _check(e, "shop", "203.0.113.9", 11, verification="card")
    assert _flagged_ip_score(e, card) == pytest.approx(6.0)
    assert "online.shared_ip" in _signals(card)
    assert card.score > kyc.score


def test_a_kyc_account_on_a_proxy_exit_still_reads_its_taint(config: dict[str, Any]) -> None:
    """Hopping residential-proxy exits shared with contained accounts is no ordinary business, KYC or not."""
    e = _exit_of_four_contained_accounts(config, "proxy-attacker", "198.51.100.9")
    kyc = _check(e, "kyc-head", "198.51.100.9", 10, verification="kyc")
    assert _flagged_ip_score(e, kyc) == pytest.approx(6.0)
    assert "online.shared_ip" in _signals(kyc)


def _logit(d: Decision) -> float:
    return math.log(d.score / (1.0 - d.score))


def test_a_platform_is_vouched_from_its_min_end_users_th_end_user(config: dict[str, Any]) -> None:
    config["enforce"]["online"]["vouched"]["platform_min_end_users"] = 5
    e = build_enforcer(config, with_limits=False, intel=_intel())
    for k in range(3):
        _contain(e, f"proxy-attacker-{k}", "203.0.113.11", k)
    seen = [_check(e, "reseller", "203.0.113.11", 10 + u, end_user=f"user-{u}") for u in range(5)]
    # Four distinct end users: not yet a platform, the link applies (near miss) ...
    assert _flagged_ip_score(e, seen[0]) == pytest.approx(6.0)
    # ... the fifth makes it one: the link (6.0) and the shared address abstain from then on.
    assert _logit(seen[3]) - _logit(seen[4]) > 6.0
    # The same end user again and again is one end user: no platform.
    e2 = build_enforcer(config, with_limits=False, intel=_intel())
    for k in range(3):
        _contain(e2, f"proxy-attacker-{k}", "203.0.113.11", k)
    same = [_check(e2, "single", "203.0.113.11", 10 + u, end_user="same-user") for u in range(8)]
    assert _logit(same[3]) - _logit(same[7]) < 1.0


def test_a_vouched_account_on_a_contained_accounts_card_is_still_contained(
    config: dict[str, Any],
) -> None:
    """A shared or contained card is cluster evidence, not infrastructure: vouching does not waive it."""
    e = build_enforcer(config, with_limits=False, intel=_intel())
    _contain(e, "hydra-1", "198.51.100.20", 0, card="card-H")
    d = _check(e, "hydra-kyc", "198.51.100.21", 1, verification="kyc", card="card-H")
    assert d.action.rank >= Action.CHALLENGE.rank
    assert "online.flagged_payment" in _signals(d)


def test_no_end_user_sketch_without_platform_vouching(config: dict[str, Any]) -> None:
    config["enforce"]["online"]["vouched"]["platform_min_end_users"] = 0
    e = build_enforcer(config, with_limits=False)
    _check(e, "a", "198.51.100.30", 0, end_user="u-1")
    assert not any(g.startswith("eu:") for g in e.backend._sketches)  # type: ignore[attr-defined]
    config["enforce"]["online"]["vouched"]["platform_min_end_users"] = 20
    e = build_enforcer(config, with_limits=False)
    _check(e, "a", "198.51.100.30", 0, end_user="u-1")
    assert "eu:a" in e.backend._sketches  # type: ignore[attr-defined]


@pytest.mark.parametrize("bad", [["shared_payment"], ["flagged_payment"], ["target_share"]])
def test_vouching_cannot_waive_cluster_evidence_or_behaviour(
    config: dict[str, Any], bad: list[str]
) -> None:
    config["enforce"]["online"]["vouched"]["abstain"] = bad
    with pytest.raises(ConfigError, match="cannot be waived"):
        EnforceSettings.from_config(config)
