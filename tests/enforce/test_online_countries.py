"""Exit countries: consumer addresses in several countries within two hours (positives and near misses), and the country lookup."""

from __future__ import annotations

import random
from typing import Any

import pyarrow as pa
import pytest

from distillguard.core.verdict import Action
from distillguard.enforce.campaigns import CampaignWatcher
from distillguard.enforce.online import (
    BatchContentSignals,
    Decision,
    Enforcer,
    build_enforcer,
    exchange_table,
)
from distillguard.signals.geo import countries, country_of

from .conftest import RedisServer, checked_one_by_one

T0 = 1_750_000_000_000  # 2025-06-15 15:06:40 UTC
HOUR = 3_600_000

#: Real public addresses (GeoLite2 countries as the geoip2fast wheel ships them), listed as the
#: provider's intel would list them. The "cloud" ranges are in the same countries as the homes.
GB_HOME, GB_HOME_2, IN_HOME, CA_MOBILE = (
    "51.6.225.133",
    "51.6.10.1",
    "152.52.10.142",
    "173.209.135.148",
)
US_CLOUD, US_CLOUD_2, ES_VPN = "8.8.8.8", "4.2.2.2", "2a02:9010:40::1"
INTEL = pa.table(
    {
        "cidr": ["51.6.0.0/16", "152.52.0.0/16", "173.209.128.0/19", "8.8.8.0/24", "4.2.2.0/24", "2a02:9010::/32"],
        "asn": [2856, 24560, 812, 15169, 3356, 9009],
        "asn_org": ["BT", "Airtel", "Rogers", "Google", "Level3", "M247"],
        "kind": ["residential", "residential", "mobile", "datacenter", "datacenter", "vpn"],
    }
)  # fmt: skip


def _row(account: str, ip: str, i: int, ts: int | None = None) -> dict[str, Any]:
    return {"request_id": f"{account}-{i}", "account_id": account, "client_ip": ip, "model": "m",
            "ts": T0 + i * 60_000 if ts is None else ts, "prompt": "", "input_tokens": 20}  # fmt: skip


def _seen(e: Enforcer, rows: list[dict[str, Any]]) -> list[tuple[float, float]]:
    """Each row checked in turn: the exit-countries value the score saw (NaN: abstained) and its contribution."""
    from distillguard.enforce import online

    seen: list[tuple[float, float]] = []
    score_one = e._score_one

    def spy(row: list[float]) -> tuple[int, float, list[float]]:
        out = score_one(row)
        j = online._EXIT_COUNTRIES
        seen.append((row[j], out[2][j]))
        return out

    e._score_one = spy  # type: ignore[method-assign]
    for r in rows:
        e.process([r])
    return seen


@pytest.fixture
def enforcer(config: dict[str, Any]) -> Enforcer:
    return build_enforcer(config, with_limits=False, intel=INTEL)


def _reason(decision: Decision, name: str) -> dict[str, Any] | None:
    return next((r for r in decision.reasons if r["signal"] == name), None)


# --------------------------------------------------------------------------- the lookup


def test_country_lookup_agrees_with_geoip2fast_on_a_sample() -> None:
    """The vectorised and the single-address lookups give what geoip2fast's own reader gives."""
    from geoip2fast import GeoIP2Fast

    reader = GeoIP2Fast(geoip2fast_data_file="geoip2fast-asn-ipv6.dat.gz")
    rng = random.Random(7)
    v4 = [".".join(str(rng.randrange(256)) for _ in range(4)) for _ in range(300)]
    v6 = [
        f"2{rng.randrange(4096):03x}:{rng.randrange(65536):x}::{rng.randrange(65536):x}"
        for _ in range(100)
    ]
    ips = v4 + v6 + ["10.0.0.1", "192.0.2.1", "not-an-ip", ""]
    vectorised = countries(pa.array(ips, pa.string())).to_pylist()
    expected = []
    for ip in ips:
        code = reader.lookup(ip).country_code if ip and ip != "not-an-ip" else ""
        expected.append(code if len(code) == 2 and code.isalpha() else None)
    assert vectorised == expected
    assert [country_of(ip) for ip in ips] == expected
    assert sum(c is not None for c in expected) > 250  # the sample exercised real ranges


# --------------------------------------------------------------------------- positives


def test_consumer_addresses_in_two_countries_within_two_hours(enforcer: Enforcer) -> None:
    """A proxy pool spanning countries: a British home line, then an Indian one, then a Canadian phone."""
    rows = [_row("hydra", ip, i) for i, ip in enumerate([GB_HOME, IN_HOME, CA_MOBILE])]
    seen = _seen(enforcer, rows[:2])
    weight = enforcer.settings.exit_countries.weight
    assert weight > 0
    assert [s[0] for s in seen] == [1.0, 2.0]
    assert [s[1] for s in seen] == [0.0, weight]  # cap 1: two countries is the whole weight
    second = enforcer.process([_row("hydra", IN_HOME, 5)])[0]
    reason = _reason(second, "online.exit_countries")
    assert reason is not None and reason["detail"]["contribution"] == weight
    assert reason["value"] == 2.0 and reason["detail"]["reference"]["window_minutes"] == 120.0
    # With the two exit networks that come with it, still below throttle: evidence, not a verdict.
    assert _reason(second, "online.exit_networks") is not None
    assert second.action.rank < Action.THROTTLE.rank
    # One more reason (a third network, here) throttles.
    third = enforcer.process([rows[2]])[0]
    assert third.action.rank >= Action.THROTTLE.rank


# --------------------------------------------------------------------------- near misses


def test_many_addresses_in_one_country_are_one_country(enforcer: Enforcer) -> None:
    rows = [_row("home", ip, i) for i, ip in enumerate([GB_HOME, GB_HOME_2] * 5)]
    assert {s[0] for s in _seen(enforcer, rows)} == {1.0}


def test_cloud_and_vpn_exits_abroad_are_not_counted(enforcer: Enforcer) -> None:
    """A British user on a Spanish VPN exit, a product on US clouds: the signal abstains on those exchanges."""
    rows = [_row("vpn-user", ip, i) for i, ip in enumerate([GB_HOME, ES_VPN, GB_HOME, ES_VPN])]
    rows += [_row("saas", ip, i) for i, ip in enumerate([US_CLOUD, US_CLOUD_2] * 3)]
    seen = _seen(enforcer, rows)
    assert [s[0] for s in seen[:4]][::2] == [1.0, 1.0]
    assert all(s[0] != s[0] and s[1] == 0.0 for s in seen[1:4:2] + seen[4:])  # NaN: abstained
    assert not any(k.startswith("cty:saas") for k in enforcer.backend._sketches)  # type: ignore[attr-defined]


def test_addresses_outside_the_intel_count_their_country(enforcer: Enforcer) -> None:
    """Kind `unknown` is counted (intel misses consumer ISPs): a listed British line, then an unlisted US address."""
    unlisted = "9.9.9.9"  # a public address with a country, in no INTEL row
    assert "unknown" in enforcer.settings.exit_countries.kinds
    assert country_of(unlisted) not in (None, country_of(GB_HOME))
    seen = _seen(enforcer, [_row("hop", ip, i) for i, ip in enumerate([GB_HOME, unlisted])])
    assert [s[0] for s in seen] == [1.0, 2.0]


def test_a_traveller_hours_apart_is_not_two_countries_at_once(enforcer: Enforcer) -> None:
    """London in the morning, a Canadian phone after a flight: different windows, one country each."""
    bucket = 2 * HOUR
    start = (T0 // bucket) * bucket
    rows = [
        _row("traveller", GB_HOME, 0, ts=start + 60_000),
        _row("traveller", CA_MOBILE, 1, ts=start + 9 * HOUR),
    ]
    assert [s[0] for s in _seen(enforcer, rows)] == [1.0, 1.0]


def test_exit_countries_weight_zero_keeps_no_sketch(config: dict[str, Any]) -> None:
    config["enforce"]["online"]["exit_countries"]["weight"] = 0.0
    e = build_enforcer(config, with_limits=False, intel=INTEL)
    seen = _seen(e, [_row("hydra", ip, i) for i, ip in enumerate([GB_HOME, IN_HOME])])
    assert all(s[1] == 0.0 for s in seen)
    assert not any(k.startswith("cty:") for k in e.backend._sketches)  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- paths and backends


def _traffic(seed: int) -> list[dict[str, Any]]:
    """Accounts hopping countries (some on clouds and VPNs too) among homebodies, over five hours."""
    rng = random.Random(seed)
    pool = [GB_HOME, GB_HOME_2, IN_HOME, CA_MOBILE, US_CLOUD, ES_VPN]
    rows = []
    for a in range(8):
        for i in range(rng.randrange(3, 15)):
            rows.append(_row(f"hop-{a}", rng.choice(pool), i, ts=T0 + rng.randrange(5 * HOUR)))
    for b in range(12):
        home = rng.choice(pool[:4])
        for i in range(rng.randrange(2, 10)):
            rows.append(_row(f"home-{b}", home, i, ts=T0 + rng.randrange(5 * HOUR)))
    rows.sort(key=lambda r: (r["ts"], r["request_id"]))
    return rows


def _decisions(e: Enforcer, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return checked_one_by_one(e, rows, INTEL)


def test_replay_batch_and_the_network_only_check_agree_with_checks(config: dict[str, Any]) -> None:
    rows = _traffic(11)
    one = Enforcer(config, campaigns=CampaignWatcher(None, 0.3), intel=INTEL)
    expected = _decisions(one, rows)
    assert any(r["signal"] == "online.exit_countries" for d in expected for r in d["reasons"])
    # A check before content signals (the service's request path) sees the same countries.
    bare = Enforcer(config, campaigns=CampaignWatcher(None, 0.3), intel=INTEL)
    assert [d.to_json() for r in rows for d in bare.process([r]) if d.changed] == expected
    table = exchange_table(rows)
    signals = BatchContentSignals(config, intel=INTEL, capability_model=False).compute(table)
    for batch in (5, len(rows)):
        batched = Enforcer(config, campaigns=CampaignWatcher(None, 0.3), intel=INTEL)
        got = []
        for s in range(0, len(rows), batch):
            got += [
                d.to_json()
                for d in batched.replay_batch(table.slice(s, batch), signals.slice(s, batch), {})
            ]
        assert got == expected


def test_redis_backend_counts_countries_like_memory(
    redis_server: RedisServer, config: dict[str, Any]
) -> None:
    rows = _traffic(13)
    memory = build_enforcer(config, with_limits=False, intel=INTEL)
    shared = build_enforcer(
        config, backend="redis", redis_url=redis_server.url, with_limits=False, intel=INTEL
    )
    expected = _decisions(memory, rows)
    assert any(r["signal"] == "online.exit_countries" for d in expected for r in d["reasons"])
    assert _decisions(shared, rows) == expected
    assert shared.metrics.state_errors == 0
