"""Retro-taint: a newly contained account's earlier exits in the window carry its taint, not only later ones."""

from __future__ import annotations

import copy
import random
from typing import Any

import pyarrow as pa
import pytest

from distillguard.core.errors import ConfigError
from distillguard.core.verdict import Action
from distillguard.enforce.campaigns import CampaignWatcher
from distillguard.enforce.online import (
    AccountMeta,
    BatchContentSignals,
    Decision,
    Enforcer,
    build_enforcer,
    exchange_table,
)
from distillguard.enforce.settings import EnforceSettings
from distillguard.enforce.state import AccountView, MemoryState, note_exit, take_exits

from .conftest import RedisServer
from .test_replay_batch import BENIGN, HARVEST, _state, in_replay_batches, one_check_at_a_time

T0 = (
    1_750_000_000_000 - 1_750_000_000_000 % 86_400_000
)  # a UTC midnight: the address window's bucket start
DAY = 86_400_000
PROXY = "198.51.100.0/24"  # a residential-proxy range
VPN = "192.0.2.0/24"  # a commercial VPN range (explained: never a link)


def _intel() -> pa.Table:
    return pa.table(
        {
            "cidr": [PROXY, VPN],
            "asn": [64502, 64503],
            "asn_org": ["Proxy Co", "VPN Co"],
            "kind": ["proxy", "vpn"],
        }
    )


def _check(e: Enforcer, account: str, ip: str, ts: int, reasoning: float | None = None) -> Decision:
    row = {
        "request_id": f"{account}-{ts}",
        "account_id": account,
        "client_ip": ip,
        "model": "m",
        "ts": ts,
    }
    sig = e._network([row])
    if (
        reasoning is not None
    ):  # a content signal: a step-by-step request (reasoning_hits, evidence of its own)
        assert isinstance(sig, list)
        sig[0].update(reasoning=reasoning, grader=0.0)
    return e.process([row], [AccountMeta(None, None, None, "email")], sig)[0]


def _contain_at(e: Enforcer, account: str, ip: str, ts: int) -> None:
    """The account is contained (an analyst's or its own evidence) and sends once more: it starts spreading taint."""
    e.backend.set_action(
        account, Action.CHALLENGE.rank, None, [{"signal": "test", "value": 1, "detail": {}}]
    )
    assert _check(e, account, ip, ts).action is Action.CHALLENGE


def _link(d: Decision) -> float:
    r = {x["signal"]: x for x in d.reasons}.get("online.flagged_ip")
    return 0.0 if r is None else float(r["detail"]["contribution"])


def _head_then_contained(
    e: Enforcer, exits: list[str], contain_ts: int, contain_ip: str = "198.51.100.99"
) -> None:
    for k, ip in enumerate(exits):
        _check(e, "head", ip, T0 + 1000 * k)
    _contain_at(e, "head", contain_ip, contain_ts)


def test_exits_used_before_containment_carry_the_taint(config: dict[str, Any]) -> None:
    e = build_enforcer(config, with_limits=False, intel=_intel())
    _head_then_contained(e, ["198.51.100.1", "198.51.100.2"], T0 + 3_600_000)
    # A sibling on an exit the head used an hour before it was contained: the full link.
    assert _link(_check(e, "sibling", "198.51.100.1", T0 + 4_000_000)) == pytest.approx(6.0)
    assert _link(_check(e, "sibling-2", "198.51.100.2", T0 + 4_000_001)) > 0.0


def test_without_retro_taint_only_later_exits_link(config: dict[str, Any]) -> None:
    """Near miss: retro_exits 0 is the forward-only taint (the exit it is contained on still links)."""
    config["enforce"]["online"]["propagation"]["links"]["ip"]["retro_exits"] = 0
    e = build_enforcer(config, with_limits=False, intel=_intel())
    _head_then_contained(e, ["198.51.100.1", "198.51.100.2"], T0 + 3_600_000)
    assert _link(_check(e, "sibling", "198.51.100.1", T0 + 4_000_000)) == 0.0
    assert _link(_check(e, "sibling-3", "198.51.100.99", T0 + 4_000_002)) == pytest.approx(6.0)


def test_exits_of_an_earlier_window_do_not_carry_it(config: dict[str, Any]) -> None:
    e = build_enforcer(config, with_limits=False, intel=_intel())
    _head_then_contained(e, ["198.51.100.1"], T0 + DAY + 60_000)  # used yesterday, contained today
    assert _link(_check(e, "sibling", "198.51.100.1", T0 + DAY + 120_000)) == 0.0


def test_explained_exits_are_not_remembered(config: dict[str, Any]) -> None:
    """A VPN exit the head used is still no link: explained kinds keep no taint, retro or not."""
    e = build_enforcer(config, with_limits=False, intel=_intel())
    _head_then_contained(e, ["192.0.2.10", "198.51.100.1"], T0 + 3_600_000)
    assert _link(_check(e, "vpn-user", "192.0.2.10", T0 + 4_000_000)) == 0.0
    assert _link(_check(e, "sibling", "198.51.100.1", T0 + 4_000_001)) == pytest.approx(6.0)


def test_an_account_contained_only_through_a_link_taints_nothing_retroactively(
    config: dict[str, Any],
) -> None:
    e = build_enforcer(config, with_limits=False, intel=_intel())
    for k in range(8):
        _contain_at(e, f"attacker-{k}", "198.51.100.50", T0 + k)
    # "bystander" used 198.51.100.7 earlier with two step-by-step requests (evidence of its own, short
    # of containment), then is contained through the attackers' exit: contained only through a link.
    _check(e, "bystander", "198.51.100.7", T0 + 1000, reasoning=0.9)
    _check(e, "bystander", "198.51.100.7", T0 + 1001, reasoning=0.9)
    d = _check(e, "bystander", "198.51.100.50", T0 + 2000)
    assert d.action.rank >= Action.CHALLENGE.rank and _link(d) == pytest.approx(6.0)
    assert e.account("bystander").counters.get("taint_linked_only") == 1.0  # type: ignore[union-attr]
    assert _link(_check(e, "next", "198.51.100.7", T0 + 3000)) == 0.0


def test_the_cloud_floor_still_applies_to_retro_taint(config: dict[str, Any]) -> None:
    intel = pa.table(
        {
            "cidr": ["203.0.113.0/24"],
            "asn": [64501],
            "asn_org": ["Cloud Co"],
            "kind": ["datacenter"],
        }
    )
    e = build_enforcer(config, with_limits=False, intel=intel)
    _check(e, "head", "203.0.113.5", T0)
    _contain_at(e, "head", "203.0.113.99", T0 + 60_000)
    assert (
        _link(_check(e, "customer", "203.0.113.5", T0 + 120_000)) == 0.0
    )  # one contained account: no link
    _check(e, "head-2", "203.0.113.5", T0 + 130_000)
    _contain_at(e, "head-2", "203.0.113.98", T0 + 140_000)
    assert _link(_check(e, "next-head", "203.0.113.5", T0 + 150_000)) == pytest.approx(6.0)


def test_remembered_exits_are_bounded_per_account_and_window() -> None:
    view = AccountView("a")
    for k in range(10):
        note_exit(view, 7, f"flg:ipa:10.0.0.{k}", 4, 3)
    note_exit(view, 7, "flg:ipa:10.0.0.0", 4, 3)  # a repeat is not a new exit
    assert take_exits(view, 7) == [f"flg:ipa:10.0.0.{k}" for k in range(4)]
    assert take_exits(view, 7) == []  # taken once
    note_exit(view, 7, "flg:ipa:10.0.0.1", 4, 3)
    note_exit(view, 8, "flg:ipa:10.0.0.2", 4, 3)  # a new window starts afresh
    assert take_exits(view, 8) == ["flg:ipa:10.0.0.2"]
    # Near miss: an account already spreading taint remembers nothing (its exits are tainted as it goes).
    view.action_rank = 3
    note_exit(view, 8, "flg:ipa:10.0.0.3", 4, 3)
    assert take_exits(view, 8) == []
    view.counters["taint_linked_only"] = (
        1.0  # contained only through a link: it spreads nothing yet
    )
    note_exit(view, 8, "flg:ipa:10.0.0.3", 4, 3)
    assert take_exits(view, 8) == ["flg:ipa:10.0.0.3"]


@pytest.mark.parametrize("bad", [-1, 33])
def test_retro_exits_out_of_range_is_a_config_error(config: dict[str, Any], bad: int) -> None:
    config["enforce"]["online"]["propagation"]["links"]["ip"]["retro_exits"] = bad
    with pytest.raises(ConfigError, match="retro_exits"):
        EnforceSettings.from_config(config)


def test_redis_backend_remembers_and_taints_exits_the_same_way(
    redis_server: RedisServer, config: dict[str, Any]
) -> None:
    e = build_enforcer(
        config, backend="redis", redis_url=redis_server.url, with_limits=False, intel=_intel()
    )
    _head_then_contained(e, ["198.51.100.1", "198.51.100.2"], T0 + 3_600_000)
    assert _link(_check(e, "sibling", "198.51.100.1", T0 + 4_000_000)) == pytest.approx(6.0)
    # Taken once: the store keeps no list for a spreading account.
    assert e.backend.take_exits("head", (T0 + 3_600_000) // DAY) == []  # type: ignore[attr-defined]
    # Near miss: an earlier window's exit does not link.
    e2 = build_enforcer(
        config, backend="redis", redis_url=redis_server.url, with_limits=False, intel=_intel()
    )
    _check(e2, "head-b", "198.51.100.3", T0)
    _contain_at(e2, "head-b", "198.51.100.98", T0 + DAY + 60_000)
    assert _link(_check(e2, "sibling-b", "198.51.100.3", T0 + DAY + 120_000)) == 0.0


# --------------------------------------------------------------------------- replay agrees with one check at a time


def _rotating_campaign(seed: int) -> tuple[list[dict[str, Any]], dict[str, AccountMeta]]:
    """Heads with cards of their own hopping a shared pool of proxy exits (only the exits tie them), among benign accounts."""
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    metas: dict[str, AccountMeta] = {}
    for a in range(30):
        acc = f"head-{a}"
        metas[acc] = AccountMeta(f"card-{a}", f"d{a}.test")
        start = rng.randrange(30 * 3_600_000)
        for i in range(rng.randrange(4, 25)):
            rows.append({"ts": T0 + start + i * rng.randrange(300_000, 2_400_000), "request_id": f"{acc}-{i}",
                         "account_id": acc, "client_ip": f"198.51.100.{rng.randrange(1, 15)}", "model": "m",
                         "prompt": HARVEST.format(i, rng.randrange(99), rng.randrange(99)), "input_tokens": 40,
                         "output_tokens": 900})  # fmt: skip
    for b in range(40):
        acc = f"ben-{b}"
        metas[acc] = AccountMeta(f"bcard-{b}", "gmail.com")
        for i in range(rng.randrange(3, 20)):
            rows.append({"ts": T0 + rng.randrange(48 * 3_600_000), "request_id": f"{acc}-{i}", "account_id": acc,
                         "client_ip": f"203.0.113.{b % 20}", "model": "m", "prompt": rng.choice(BENIGN).format(i),
                         "input_tokens": 20, "output_tokens": 200})  # fmt: skip
    rows.sort(key=lambda r: (r["ts"], r["request_id"]))
    return rows, metas


@pytest.mark.parametrize(
    ("max_accounts", "max_sketch_keys", "batch"),
    [
        (200_000, 400_000, 400),
        (200_000, 400_000, 9),
        (40, 600, 120),
        (200_000, 260, 300),
        (200_000, 330, 100),
    ],
)
def test_replay_batch_equals_one_check_at_a_time_with_retro_taint(
    config: dict[str, Any], max_accounts: int, max_sketch_keys: int, batch: int
) -> None:
    rows, metas = _rotating_campaign(seed=5)
    table = exchange_table(rows)
    signals = BatchContentSignals(config, intel=_intel(), capability_model=False).compute(table)
    cfg = {
        **config,
        "enforce": {
            **config["enforce"],
            "max_accounts": max_accounts,
            "max_sketch_keys": max_sketch_keys,
        },
    }
    one, batched = (
        Enforcer(cfg, campaigns=CampaignWatcher(None, 0.3), intel=_intel()) for _ in range(2)
    )
    expected = one_check_at_a_time(one, rows, metas, signals)
    got = in_replay_batches(batched, table, signals, metas, batch)
    assert got == expected
    assert isinstance(one.backend, MemoryState) and isinstance(batched.backend, MemoryState)
    assert _state(batched.backend) == _state(one.backend)
    # The traffic needs retro-taint: without it other decisions are taken.
    off = copy.deepcopy(cfg)
    off["enforce"]["online"]["propagation"]["links"]["ip"]["retro_exits"] = 0
    assert (
        one_check_at_a_time(
            Enforcer(off, campaigns=CampaignWatcher(None, 0.3), intel=_intel()),
            rows,
            metas,
            signals,
        )
        != expected
    )
