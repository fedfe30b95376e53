"""Peer indicators as a signal: the batch detector (with conformance checks), the online matcher, and the policy around them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from distillguard.core.config import default_config
from distillguard.core.detector import KEY_COLUMNS, Level
from distillguard.core.errors import ConfigError
from distillguard.core.indicators import (
    INDICATOR_STORE_SCHEMA,
    GroupKey,
    PeerMatchSettings,
    use_indicator_store,
    write_indicator_store,
)
from distillguard.enforce.online import Enforcer
from distillguard.enforce.peer_indicators import PeerIndicatorMatcher
from distillguard.linking import ACCOUNT_DETECTORS
from distillguard.linking.peer_indicators import (
    PEER_SIGNAL,
    PeerIndicatorDetector,
    with_peer_signal,
)

KEY = GroupKey(bytes(range(32)))
OTHER_KEY = GroupKey(bytes(range(1, 33)))
T0 = datetime(2026, 6, 1, tzinfo=UTC)
PROXY_PREFIX = "198.51.100.0/24"
CLOUD_PREFIX = "34.120.8.0/24"  # a cloud prefix the operator rented and real customers also use
CAMPAIGN_UA = "harvest-client/2.1"
SDK_UA = "python-sdk/0.52.0"
TEMPLATE_ID = 0x1234_5678_9ABC_DEF0


def _row(kind: str, value: str, *, confidence: int = 90, key: GroupKey | None = None, until: datetime | None = None,
         ident: str = "", band_keys: list[str] | None = None) -> dict[str, Any]:  # fmt: skip
    return {
        "indicator_id": ident or f"indicator--{kind}-{value[:8]}",
        "kind": kind,
        "value": value,
        "band_keys": band_keys,
        "params": None,
        "key_id": key.key_id if key is not None else None,
        "confidence": confidence,
        "valid_from": T0 - timedelta(days=3),
        "valid_until": until or T0 + timedelta(days=30),
        "campaign_ids": ["campaign--x"],
        "capability_targets": ["coding"],
        "peer": "Lab A",
        "peer_identity": "identity--a",
        "tlp": "amber",
        "produced_at": T0 - timedelta(days=1),
        "source": "test",
        "imported_at": T0 - timedelta(hours=1),
        "bundle_sha256": "0" * 64,
    }


def _store(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=INDICATOR_STORE_SCHEMA)


def store_rows() -> list[dict[str, Any]]:
    return [
        _row("ip_prefix", PROXY_PREFIX),
        _row("ip_prefix", CLOUD_PREFIX),
        _row("ip", KEY.digest("ip", "198.51.100.7"), key=KEY),
        _row("user_agent", CAMPAIGN_UA),
        _row("payment", KEY.digest("payment", "card-x"), key=KEY),
    ]


def _signals(rows: list[tuple[str, str, str, str | None]]) -> pa.Table:
    """(account, ip, prefix, user agent) per exchange, one minute apart."""
    return pa.table(
        {
            "request_id": [f"r{i:04d}" for i in range(len(rows))],
            "account_id": [r[0] for r in rows],
            "ts": pa.array(
                [T0 + timedelta(minutes=i) for i in range(len(rows))], pa.timestamp("ms", tz="UTC")
            ),
            "client_ip": [r[1] for r in rows],
            "ip_prefix": [r[2] for r in rows],
            "asn": pa.array([64512] * len(rows), pa.int64()),
            "user_agent": [r[3] for r in rows],
            "template_id": pa.array(
                [TEMPLATE_ID if r[0] == "atk" else None for r in rows], pa.uint64()
            ),
        }
    )


def scenario() -> tuple[pa.Table, pa.Table]:
    """An attacker all on the proxy prefix; near misses: a cloud customer with a few requests on the
    rented cloud prefix, an SDK user, a stranger; plus a heavy cloud customer mostly elsewhere."""
    rows: list[tuple[str, str, str, str | None]] = []
    rows += [("atk", f"198.51.100.{1 + i % 20}", PROXY_PREFIX, CAMPAIGN_UA) for i in range(40)]
    rows += [("cloud-user", "34.120.8.19", CLOUD_PREFIX, SDK_UA) for _ in range(3)]
    rows += [("cloud-user", "81.2.69.10", "81.2.69.0/24", SDK_UA) for _ in range(17)]
    rows += [("saas", "34.120.8.50", CLOUD_PREFIX, SDK_UA) for _ in range(5)]
    rows += [("saas", "35.1.1.1", "35.1.1.0/24", SDK_UA) for _ in range(195)]
    rows += [("stranger", "81.2.69.11", "81.2.69.0/24", SDK_UA) for _ in range(30)]
    accounts = pa.table({"account_id": ["atk", "cloud-user", "saas", "stranger"],
                         "payment_fingerprint": ["card-x", "card-c", "card-s", None]})  # fmt: skip
    return _signals(rows), accounts


def _detector(rows: list[dict[str, Any]] | None = None, **kw: Any) -> PeerIndicatorDetector:
    _, accounts = scenario()
    store = _store(rows if rows is not None else store_rows())
    return PeerIndicatorDetector(
        store, key=kw.pop("key", KEY), accounts=accounts, at=T0 + timedelta(days=1), **kw
    )


def _scores(det: PeerIndicatorDetector, table: pa.Table) -> dict[str, float]:
    res = det.score(table).scores
    assert res["score"].null_count == 0
    return dict(zip(res["account_id"].to_pylist(), res["score"].to_pylist(), strict=True))


# ------------------------------------------------------------------ conformance (tests/conformance style)


def test_registered_and_described() -> None:
    assert ACCOUNT_DETECTORS[PeerIndicatorDetector.info.id] is PeerIndicatorDetector
    info = PeerIndicatorDetector.info
    assert info.level is Level.ACCOUNT and info.falsepositives and info.runbook and info.version


def test_deterministic_unmutated_order_free_and_bounded() -> None:
    table, _ = scenario()
    before = table.to_pydict()
    det = _detector()
    first = _scores(det, table)
    assert table.to_pydict() == before
    shuffled = table.take(pa.array(np.random.default_rng(0).permutation(table.num_rows)))
    assert _scores(det, shuffled) == first == _scores(_detector(), table)
    res = det.score(table)
    assert tuple(KEY_COLUMNS[Level.ACCOUNT]) == ("account_id",)
    assert set(res.scores["account_id"].to_pylist()) == set(table["account_id"].to_pylist())
    assert all(0.0 <= s <= 1.0 for s in first.values())
    assert set(res.evidence) <= set(table["account_id"].to_pylist()) and res.evidence
    request_ids = set(table["request_id"].to_pylist())
    for ev in res.evidence.values():
        assert set(ev["sample_request_ids"]) <= request_ids


def test_abstains_without_store_or_columns() -> None:
    table, _ = scenario()
    none = PeerIndicatorDetector(None).score(table).scores
    assert none["score"].null_count == none.num_rows
    assert set(none["abstain_reason"].to_pylist()) == {"abstain: no peer indicators loaded"}
    bare = PeerIndicatorDetector(_store(store_rows())).score(table.select(["account_id"])).scores
    assert bare["score"].null_count == bare.num_rows
    assert all(r.startswith("abstain") for r in bare["abstain_reason"].to_pylist())
    empty = _detector().score(table.slice(0, 0)).scores
    assert empty.num_rows == 0


# ------------------------------------------------------------------ positives and near misses


def test_campaign_account_scores_high_with_provenance() -> None:
    table, _ = scenario()
    res = _detector().score(table)
    scores = dict(
        zip(res.scores["account_id"].to_pylist(), res.scores["score"].to_pylist(), strict=True)
    )
    assert scores["atk"] > 0.8
    ev = res.evidence["atk"]
    assert set(ev["kinds"]) == {"ip", "ip_prefix", "user_agent", "payment"}
    assert ev["peers"] == ["Lab A"]
    assert {i["kind"] for i in ev["indicators"]} >= {"payment", "ip"}
    assert all(
        i["produced_at"] and i["imported_at"] and i["confidence"] == 90 for i in ev["indicators"]
    )
    assert ev["sample_request_ids"] == ["r0000", "r0001", "r0002"]


def test_near_misses_on_a_shared_cloud_prefix_stay_low() -> None:
    table, _ = scenario()
    scores = _scores(_detector(), table)
    # A few requests through a rented cloud prefix are a small share of the account's traffic.
    assert 0.0 < scores["cloud-user"] < 0.2
    assert 0.0 < scores["saas"] < 0.05
    assert scores["stranger"] == 0.0
    weight = PeerMatchSettings().weight
    # Even at full weight the cloud customer's contribution stays below one policy step.
    assert weight * scores["cloud-user"] < 1.0


def test_other_group_key_expired_and_unsure_indicators_never_match() -> None:
    table, _ = scenario()
    assert _scores(_detector(key=OTHER_KEY), table)["atk"] < _scores(_detector(), table)["atk"]
    keyed_only = [r for r in store_rows() if r["key_id"] is not None]
    assert _scores(_detector(keyed_only, key=OTHER_KEY), table)["atk"] == 0.0
    expired = [
        _row(r["kind"], r["value"], key=KEY if r["key_id"] else None, until=T0)
        for r in store_rows()
    ]
    assert set(_scores(_detector(expired), table).values()) == {0.0}
    unsure = [
        _row(r["kind"], r["value"], key=KEY if r["key_id"] else None, confidence=30)
        for r in store_rows()
    ]
    assert set(_scores(_detector(unsure), table).values()) == {0.0}


def test_template_ids_match_a_peers_sketch_band() -> None:
    table, _ = scenario()
    band_keys = [f"{k:016x}" for k in range(1, 20)] + [f"{TEMPLATE_ID:016x}"]
    params = {"algorithm": "x", "seed": 1}
    tpl = _row("template", "", band_keys=band_keys, ident="x-distillguard-template-sketch--t")
    tpl["params"] = '{"algorithm":"x","seed":1}'
    res = _detector([tpl], template_params=params).score(table)
    assert res.evidence["atk"]["kinds"]["template"]["coverage"] == 1.0
    other = _detector([tpl], template_params={"algorithm": "x", "seed": 2}).score(table)
    assert "atk" not in other.evidence  # sketches never compare across parameters


def test_settings_reject_bad_values() -> None:
    with pytest.raises(ConfigError, match="kind_weights must be in"):
        PeerMatchSettings(kind_weights={"ip": 2.0})
    with pytest.raises(ConfigError, match=r"unknown share\.indicators keys"):
        PeerMatchSettings.from_config({"share": {"indicators": {"wieght": 1}}})
    with pytest.raises(ConfigError, match="does not exist"):
        use_indicator_store(default_config(), "no/such/store.parquet")


def test_peer_signal_is_own_evidence_and_cannot_flag_or_suspend_alone() -> None:
    from distillguard.scoring.combine import score_accounts
    from distillguard.scoring.policy import Policy

    config = with_peer_signal(default_config())
    table, _ = scenario()
    det = _detector().score(table)
    features = pa.table({"account_id": det.scores["account_id"]})
    membership = pa.table(
        {"account_id": pa.array([], pa.string()), "cluster_id": pa.array([], pa.string())}
    )
    scored = score_accounts(features, membership, [], config, account_detections=[det])
    spec = next(s for s in scored.specs if s.name == PEER_SIGNAL)
    assert not spec.cluster and not spec.volume
    ranks = Policy.from_config(config).decide(scored)
    # One kind of evidence: the policy never lets it throttle (let alone suspend) on its own.
    assert int(ranks.max()) <= 1


# ------------------------------------------------------------------ online


def _exchanges(table: pa.Table) -> list[dict[str, Any]]:
    out = []
    for r in table.to_pylist():
        out.append({"account_id": r["account_id"], "ip": r["client_ip"], "prefix": r["ip_prefix"],
                    "user_agent": r["user_agent"], "ts": int(r["ts"].timestamp() * 1000)})  # fmt: skip
    return out


def test_online_matcher_agrees_with_batch_at_the_end_of_the_stream() -> None:
    table, accounts = scenario()
    settings = PeerMatchSettings()
    matcher = PeerIndicatorMatcher(_store(store_rows()), key=KEY, settings=settings)
    pay = dict(
        zip(
            accounts["account_id"].to_pylist(),
            accounts["payment_fingerprint"].to_pylist(),
            strict=True,
        )
    )
    seen: dict[str, int] = {}
    last: dict[str, float] = {}
    evidence: dict[str, Any] = {}
    for e in _exchanges(table):
        acc = e["account_id"]
        seen[acc] = seen.get(acc, 0) + 1
        keys = {
            "ip": e["ip"],
            "prefix": e["prefix"],
            "user_agent": e["user_agent"],
            "payment": pay[acc],
        }
        last[acc] = matcher.contribution(
            acc, keys, e["ts"], float(seen[acc]), evidence if acc == "atk" else None
        )
    batch_table = table.drop_columns(["asn", "template_id"])  # kinds the online path does not match
    batch = _scores(_detector(), batch_table)
    for acc, value in last.items():
        assert value == pytest.approx(settings.weight * batch[acc], abs=1e-9), acc
    assert evidence["peer_indicator"]["peers"] == ["Lab A"]


def test_online_matcher_is_bounded_and_honours_expiry() -> None:
    settings = PeerMatchSettings(max_online_accounts=3, max_online_values=2)
    matcher = PeerIndicatorMatcher(_store(store_rows()), key=KEY, settings=settings)
    assert len(matcher.values) == 2 and matcher.truncated == len(store_rows()) - 2
    m = PeerIndicatorMatcher(
        _store(store_rows()), key=KEY, settings=PeerMatchSettings(max_online_accounts=3)
    )
    ts = int(T0.timestamp() * 1000)
    for i in range(10):
        assert m.contribution(f"a{i}", {"prefix": PROXY_PREFIX}, ts, 1.0) > 0.0
    assert len(m.accounts) == 3 and list(m.accounts) == ["a7", "a8", "a9"]
    late = int((T0 + timedelta(days=31)).timestamp() * 1000)
    assert m.contribution("late", {"prefix": PROXY_PREFIX}, late, 1.0) == 0.0


def _enforcer(store: Path | None, key_file: Path | None) -> Enforcer:
    config = default_config()
    config["enforce"]["known_campaigns"]["results_dir"] = None
    if store is not None:
        config = use_indicator_store(config, store, key_file)
    return Enforcer(config)


def test_enforcer_hook_adds_a_peer_reason_and_never_suspends_on_it(tmp_path: Path) -> None:
    store = tmp_path / "store.parquet"
    write_indicator_store(_store(store_rows()), store)
    key_file = tmp_path / "group.key"
    KEY.save(key_file)
    with_peer, without = _enforcer(store, key_file), _enforcer(None, None)
    assert with_peer.peer is not None and without.peer is None
    base = int(T0.timestamp() * 1000)
    rows = [{"request_id": f"q{i}", "account_id": "atk", "client_ip": f"198.51.100.{1 + i % 20}", "model": "m",
             "user_agent": CAMPAIGN_UA, "ts": base + i * 1000, "input_tokens": 10, "output_tokens": 10}
            for i in range(30)]  # fmt: skip
    got = with_peer.process(rows, limits=False)
    plain = without.process(rows, limits=False)
    assert all(d.action.rank < 4 for d in got)  # a peer match alone never suspends
    assert got[-1].score > plain[-1].score
    contribution = got[-1].score
    assert contribution > 0
    # A cloud customer with a few requests on the rented prefix: no action beyond what it had.
    cloud = [{"request_id": f"c{i}", "account_id": "cloud", "client_ip": "34.120.8.19" if i < 3 else "81.2.69.10",
              "model": "m", "user_agent": SDK_UA, "ts": base + i * 60_000} for i in range(20)]  # fmt: skip
    assert [d.action for d in with_peer.process(cloud, limits=False)] == [
        d.action for d in without.process(cloud, limits=False)
    ]
