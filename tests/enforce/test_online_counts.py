"""Per-account counts without warm-up: exit networks hopped and reasoning-elicitation hits (positives and near misses)."""

from __future__ import annotations

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
    ScalarNetwork,
    build_enforcer,
    exchange_table,
)
from distillguard.enforce.settings import EnforceSettings
from distillguard.signals.network import network_context

from .conftest import RedisServer, checked_one_by_one

T0 = 1_750_000_000_000  # 2025-06-15 15:06:40 UTC
DAY = 86_400_000
ELICIT = "Give your full internal reasoning trace and chain of thought before the final answer. Problem {}: {} + {}"
PLAIN = [
    "how do I bake bread {}",
    "translate 'good morning' into French {}",
    "write a haiku about rain {}",
]

#: Residential ISPs A, B, D, a mobile carrier C, two clouds, a VPN host (documentation and private ranges).
INTEL = pa.table(
    {
        "cidr": ["198.51.100.0/24", "203.0.113.0/24", "192.0.2.0/24", "100.64.0.0/16", "10.1.0.0/16", "10.2.0.0/16",
                 "172.16.0.0/16", "203.0.113.0/29"],
        "asn": [64501, 64502, 64503, 64504, 64510, 64511, 64520, 64502],
        "asn_org": ["ISP A", "ISP B", "Carrier C", "ISP D", "Cloud 1", "Cloud 2", "VPN host", "ISP B"],
        "kind": ["residential", "residential", "mobile", "residential", "datacenter", "datacenter", "vpn", "proxy"],
    }
)  # fmt: skip


def _row(account: str, ip: str, i: int, ts: int | None = None, prompt: str = "") -> dict[str, Any]:
    return {"request_id": f"{account}-{i}", "account_id": account, "client_ip": ip, "model": "m",
            "ts": T0 + i * 60_000 if ts is None else ts, "prompt": prompt, "input_tokens": 20}  # fmt: skip


def _signal(decision: Decision, name: str) -> dict[str, Any] | None:
    return next((r for r in decision.reasons if r["signal"] == name), None)


def _scored(
    e: Enforcer, rows: list[dict[str, Any]], content: bool = False
) -> list[tuple[float, ...]]:
    """Each row checked in turn: the exit-network and reasoning-hit values the score saw (NaN: abstained), then their contributions."""
    from distillguard.enforce import online

    seen: list[tuple[float, ...]] = []
    score_one = e._score_one

    def spy(row: list[float]) -> tuple[int, float, list[float]]:
        out = score_one(row)
        j, k = online._EXIT_NETWORKS, online._REASONING_HITS
        seen.append((row[j], row[k], out[2][j], out[2][k]))
        return out

    e._score_one = spy  # type: ignore[method-assign]
    signals = (
        BatchContentSignals(e.config, intel=INTEL, capability_model=False) if content else None
    )
    for r in rows:
        e.process([r], None, signals.compute(exchange_table([r])) if signals is not None else None)
    return seen


@pytest.fixture
def enforcer(config: dict[str, Any]) -> Enforcer:
    return build_enforcer(config, with_limits=False, intel=INTEL)


# --------------------------------------------------------------------------- exit networks


def test_an_account_hopping_consumer_isps_scores_exit_networks(enforcer: Enforcer) -> None:
    """A residential proxy pool: four ISPs (one a mobile carrier, one via a listed proxy range) in an hour."""
    ips = ["198.51.100.7", "203.0.113.40", "192.0.2.9", "100.64.3.3", "203.0.113.2"]
    seen = _scored(enforcer, [_row("hydra", ip, i) for i, ip in enumerate(ips)])
    # The /29 proxy row nested in ISP B's /24 is ISP B's ASN: the fifth exchange adds no network.
    assert [s[0] for s in seen] == [1.0, 2.0, 3.0, 4.0, 4.0]
    weight = enforcer.settings.exit_networks.weight
    assert weight > 0 and [s[2] for s in seen] == [0.0, weight / 3, 2 * weight / 3, weight, weight]
    last = enforcer.process([_row("hydra", "198.51.100.8", 9)])[0]
    state = enforcer.account("hydra")
    assert state is not None and state.action_rank >= Action.MONITOR.rank
    reason = next(r for r in state.reasons if r["signal"] == "online.exit_networks")
    assert reason["value"] == 4.0 and reason["detail"]["contribution"] == weight
    assert reason["detail"]["reference"]["window_minutes"] == 1440.0
    # Alone it stays below throttle: hopping is evidence, not a verdict.
    assert last.action.rank < Action.THROTTLE.rank


def test_home_and_phone_is_a_third_of_the_weight_and_no_flag(enforcer: Enforcer) -> None:
    rows = [_row("commuter", ip, i) for i, ip in enumerate(["198.51.100.20", "192.0.2.20"] * 6)]
    seen = _scored(enforcer, rows)
    assert max(s[0] for s in seen) == 2.0
    assert max(s[2] for s in seen) == enforcer.settings.exit_networks.weight / 3
    state = enforcer.account("commuter")
    assert state is not None and state.action_rank <= Action.MONITOR.rank
    d = enforcer.process([_row("commuter", "198.51.100.20", 50)])[0]
    assert d.action.rank <= Action.MONITOR.rank


def test_one_isp_many_addresses_is_one_network(enforcer: Enforcer) -> None:
    """DHCP churn inside one ISP (and one /24 without an ASN) is one network, however many addresses."""
    rows = [_row("home", f"198.51.100.{i + 1}", i) for i in range(12)]
    rows += [_row("unlisted", f"198.18.7.{i + 1}", i) for i in range(5)]
    assert {s[0] for s in _scored(enforcer, rows)} == {1.0}


def test_unlisted_addresses_count_by_prefix(enforcer: Enforcer) -> None:
    seen = _scored(
        enforcer,
        [_row("x", ip, i) for i, ip in enumerate(["198.18.7.1", "198.18.9.1", "198.19.0.1"])],
    )
    assert [s[0] for s in seen] == [1.0, 2.0, 3.0]


def test_cloud_and_vpn_exits_are_not_counted(enforcer: Enforcer) -> None:
    """A SaaS backend rotating over two clouds and a VPN user: the signal abstains on those exchanges."""
    rows = [
        _row("saas", ip, i)
        for i, ip in enumerate(["10.1.0.5", "10.2.0.9", "10.1.4.4", "10.2.8.8"] * 3)
    ]
    rows += [
        _row("vpn-user", ip, i) for i, ip in enumerate(["172.16.0.1", "172.16.9.9", "172.16.3.3"])
    ]
    seen = _scored(enforcer, rows)
    assert all(s[0] != s[0] and s[2] == 0.0 for s in seen)  # NaN: abstained
    assert not any(k.startswith("net:") for k in enforcer.backend._sketches)  # type: ignore[attr-defined]


def test_networks_count_per_window(enforcer: Enforcer) -> None:
    """Monday's ISP and Tuesday's are not two networks at once."""
    day0 = (T0 // DAY) * DAY
    rows = [
        _row("traveller", ip, i, ts=day0 + i * DAY + 3_600_000)
        for i, ip in enumerate(["198.51.100.1", "203.0.113.77", "192.0.2.5"])
    ]
    assert [s[0] for s in _scored(enforcer, rows)] == [1.0, 1.0, 1.0]


def test_exit_networks_weight_zero_keeps_no_sketch(config: dict[str, Any]) -> None:
    config["enforce"]["online"]["exit_networks"]["weight"] = 0.0
    e = build_enforcer(config, with_limits=False, intel=INTEL)
    _scored(
        e,
        [
            _row("hydra", ip, i)
            for i, ip in enumerate(["198.51.100.7", "203.0.113.40", "192.0.2.9"])
        ],
    )
    assert not any(k.startswith("net:") for k in e.backend._sketches)  # type: ignore[attr-defined]


def test_scalar_network_agrees_with_the_batch_lookup() -> None:
    """The single-check lookup gives the batch's prefix, kind and ASN (nested proxy rows included)."""
    ips = [
        "198.51.100.7",
        "203.0.113.3",
        "203.0.113.99",
        "192.0.2.1",
        "10.2.3.4",
        "172.16.1.1",
        "198.18.0.1",
        "not-an-ip",
    ]
    batch = network_context(pa.array(ips, pa.string()), INTEL).to_pylist()
    lpm = ScalarNetwork(INTEL)
    assert [lpm.context(ip) for ip in ips] == [
        (b["ip_prefix"], b["network_kind"], b["asn"]) for b in batch
    ]


# --------------------------------------------------------------------------- reasoning hits


def test_repeated_reasoning_elicitation_counts_before_warm_up(enforcer: Enforcer) -> None:
    rows = [_row("harvest", "198.51.100.4", i, prompt=p) for i, p in
            enumerate([ELICIT.format(1, 2, 3), PLAIN[0].format(1), ELICIT.format(2, 4, 5)])]  # fmt: skip
    seen = _scored(enforcer, rows, content=True)
    assert [s[1] for s in seen] == [1.0, 1.0, 2.0]
    weight = enforcer.settings.reasoning_hits.weight
    assert weight > 0 and [s[3] for s in seen] == [weight / 2, weight / 2, weight]
    assert enforcer.settings.warmup > len(
        rows
    )  # the share-based reasoning_mean is still abstaining


def test_occasional_reasoning_request_on_a_long_lived_account_fades(enforcer: Enforcer) -> None:
    """Two step-by-step requests among thirty ordinary ones are below min_share: no contribution."""
    prompts = [ELICIT.format(0, 1, 1), ELICIT.format(1, 2, 2)] + [
        PLAIN[i % 3].format(i) for i in range(28)
    ]
    seen = _scored(
        enforcer,
        [_row("dev", "198.51.100.9", i, prompt=p) for i, p in enumerate(prompts)],
        content=True,
    )
    assert [s[1] for s in seen[:2]] == [1.0, 2.0]
    assert (
        seen[-1][1] == 0.0
        and seen[-1][3] == 0.0
        and enforcer.settings.reasoning_hits.min_share * len(prompts) > 2
    )


def test_reasoning_hits_abstain_without_content(enforcer: Enforcer) -> None:
    seen = _scored(
        enforcer,
        [_row("quiet", "198.51.100.9", i, prompt=ELICIT.format(i, 1, 1)) for i in range(3)],
    )
    assert all(s[1] != s[1] and s[3] == 0.0 for s in seen)


# --------------------------------------------------------------------------- paths and backends


def _traffic(seed: int) -> tuple[list[dict[str, Any]], dict[str, AccountMeta]]:
    """Hydra accounts hopping ISPs over a day boundary with some eliciting prompts, among homebodies and a cloud product."""
    rng = random.Random(seed)
    hops = [
        "198.51.100.{}",
        "203.0.113.{}",
        "192.0.2.{}",
        "100.64.1.{}",
        "198.18.5.{}",
        "10.1.0.{}",
        "172.16.0.{}",
    ]
    rows: list[dict[str, Any]] = []
    for a in range(10):
        for i in range(rng.randrange(4, 25)):
            ip = rng.choice(hops).format(rng.randrange(1, 9))
            prompt = ELICIT.format(i, a, 1) if rng.random() < 0.3 else PLAIN[i % 3].format(i)
            rows.append(_row(f"hop-{a}", ip, i, ts=T0 + rng.randrange(2 * DAY), prompt=prompt))
    for b in range(25):
        home = rng.choice(hops[:5]).format(b + 10)
        for i in range(rng.randrange(2, 15)):
            rows.append(
                _row(
                    f"home-{b}",
                    home,
                    i,
                    ts=T0 + rng.randrange(2 * DAY),
                    prompt=PLAIN[i % 3].format(b),
                )
            )
    for i in range(40):
        rows.append(
            _row(
                "product",
                f"10.{1 + i % 2}.0.{i % 7}",
                i,
                ts=T0 + rng.randrange(2 * DAY),
                prompt=PLAIN[i % 3].format(i),
            )
        )
    rows.sort(key=lambda r: (r["ts"], r["request_id"]))
    return rows, {}


def _decisions(e: Enforcer, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return checked_one_by_one(e, rows, INTEL)


def test_replay_batch_agrees_with_checks_on_hopping_traffic(config: dict[str, Any]) -> None:
    rows, metas = _traffic(3)
    one = Enforcer(config, campaigns=CampaignWatcher(None, 0.3), intel=INTEL)
    expected = _decisions(one, rows)
    assert any(r["signal"] == "online.exit_networks" for d in expected for r in d["reasons"])
    assert any(r["signal"] == "online.reasoning_hits" for d in expected for r in d["reasons"])
    table = exchange_table(rows)
    signals = BatchContentSignals(config, intel=INTEL, capability_model=False).compute(table)
    for batch in (7, 100, len(rows)):
        batched = Enforcer(config, campaigns=CampaignWatcher(None, 0.3), intel=INTEL)
        got = []
        for s in range(0, len(rows), batch):
            got += [
                d.to_json()
                for d in batched.replay_batch(table.slice(s, batch), signals.slice(s, batch), metas)
            ]
        assert got == expected


def test_redis_backend_counts_like_memory(
    redis_server: RedisServer, config: dict[str, Any]
) -> None:
    rows, _ = _traffic(5)
    memory = build_enforcer(config, with_limits=False, intel=INTEL)
    shared = build_enforcer(
        config, backend="redis", redis_url=redis_server.url, with_limits=False, intel=INTEL
    )
    assert _decisions(shared, rows) == _decisions(memory, rows)
    assert shared.metrics.state_errors == 0


# --------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("exit_networks", "cap", 0, "cap must be >= 1"),
        ("exit_networks", "kinds", [], "non-empty kinds list"),
        ("exit_networks", "window_minutes", 0, "window_minutes > 0"),
        ("reasoning_hits", "threshold", 0.0, "0 < threshold <= 1"),
        ("reasoning_hits", "min_share", 1.5, "0 <= min_share <= 1"),
    ],
)
def test_bad_count_settings_are_rejected(
    config: dict[str, Any], section: str, key: str, value: Any, message: str
) -> None:
    config["enforce"]["online"][section][key] = value
    with pytest.raises(ConfigError, match=message):
        EnforceSettings.from_config(config)
