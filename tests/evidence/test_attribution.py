"""Attribution keeps infrastructure (networks, shares) apart from operator links, in careful words."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest

from distillguard.core.schema import IP_INTEL_SCHEMA
from distillguard.evidence.attribution import attribute, infrastructure, operator

INTEL = pa.table(
    {
        "cidr": ["73.0.0.0/8", "73.5.5.0/24", "13.224.0.0/16"],
        "asn": [7922, 9009, 16509],
        "asn_org": ["COMCAST-7922", "M247", "AMAZON-02"],
        "kind": ["residential", "proxy", "datacenter"],
    }
).cast(IP_INTEL_SCHEMA)


def _addresses(rows: list[tuple[str, int]]) -> pa.Table:
    return pa.table(
        {"client_ip": [r[0] for r in rows], "n": pa.array([r[1] for r in rows], pa.int64())}
    )


def _accounts(payments: list[str | None], minutes_apart: float = 600.0) -> pa.Table:
    start = datetime(2026, 5, 1, tzinfo=UTC)
    n = len(payments)
    return pa.table(
        {
            "account_id": [f"a{i}" for i in range(n)],
            "created_at": pa.array(
                [start + timedelta(minutes=minutes_apart * i) for i in range(n)],
                pa.timestamp("ms", tz="UTC"),
            ),
            "payment_fingerprint": pa.array(payments, pa.string()),
            "signup_ip": [f"198.51.{i}.7" for i in range(n)],
        }
    )


def test_traffic_shares_by_network_with_careful_wording() -> None:
    # 60 residential (two addresses), 30 datacenter, 10 on a proxy /24 nested in the residential /8.
    infra = infrastructure(
        _addresses([("73.1.1.1", 40), ("73.2.2.2", 20), ("13.224.1.1", 30), ("73.5.5.9", 10)]),
        INTEL,
    )
    shares = {(n.asn, n.kind): n.share for n in infra.networks}
    assert shares == pytest.approx(
        {(7922, "residential"): 0.6, (16509, "datacenter"): 0.3, (9009, "proxy"): 0.1}
    )
    assert infra.kind_shares == pytest.approx({"residential": 0.6, "datacenter": 0.3, "proxy": 0.1})
    assert infra.confidence == "high" and infra.exchanges == 100
    first = infra.statements[0]
    assert first.startswith(
        "60 % of this campaign's traffic arrived from addresses in AS7922 (COMCAST-7922), a residential network"
    )
    assert "not the network operator's involvement" in first
    assert any("a hosting (datacenter) network" in s for s in infra.statements)


def test_unplaced_traffic_lowers_infrastructure_confidence() -> None:
    infra = infrastructure(_addresses([("73.1.1.1", 20), ("192.0.2.1", 80)]), INTEL)
    assert infra.placed_share == pytest.approx(0.2)
    assert infra.confidence == "low"
    assert infra.networks[0].asn is None and "does not place" in infra.statements[0]
    no_intel = infrastructure(_addresses([("73.1.1.1", 5)]), None)
    assert no_intel.confidence == "low" and no_intel.kind_shares == {"unknown": 1.0}


def test_shared_payment_instrument_is_strong_operator_evidence() -> None:
    campaign = {"id": "C-1", "n_accounts": 4, "indicator_kind_shares": {"template": 0.8}, "shared_indicators": [
        {"kind": "template", "key": "t1", "n_members": 4, "key_weight": 0.5}]}  # fmt: skip
    op = operator(campaign, _accounts(["p1", "p1", "p1", "p2"]))
    kinds = [link.kind for link in op.links]
    assert kinds[0] == "payment" and "template" in kinds
    payment = op.links[0]
    assert payment.accounts == 3 and "3 of 4 accounts" in payment.statement
    assert op.confidence == "high"
    assert "says nothing about who that party is" in op.statements[-1]


def test_near_miss_distinct_payments_and_spread_signups_give_low_confidence() -> None:
    campaign = {
        "id": "C-2",
        "n_accounts": 4,
        "indicator_kind_shares": {"ip": 0.5},
        "shared_indicators": [],
    }
    op = operator(campaign, _accounts(["p1", "p2", "p3", None]))
    assert [link.kind for link in op.links] == ["shared_addresses"]
    assert op.confidence == "low"


def test_signup_wave_is_found() -> None:
    op = operator({"id": "C-3", "n_accounts": 3}, _accounts([None, None, None], minutes_apart=2))
    assert any(link.kind == "signup" and link.accounts == 3 for link in op.links)


def test_attribute_keeps_both_findings() -> None:
    att = attribute(
        {"id": "C-9", "n_accounts": 2},
        _addresses([("13.224.9.9", 3)]),
        _accounts(["x", "x"]),
        INTEL,
    )
    assert att.campaign_id == "C-9"
    assert att.infrastructure.networks[0].label() == "AS16509 (AMAZON-02)"
    assert att.operator.links[0].kind == "payment"
