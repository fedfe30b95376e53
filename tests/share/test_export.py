"""Export: campaign indicators become a valid STIX 2.1 bundle with no customer data and no benign contribution."""

from __future__ import annotations

import ipaddress
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from distillguard.core.errors import ConfigError, InvalidInputError
from distillguard.core.indicators import GroupKey
from distillguard.ingest import load_log
from distillguard.share.api import export_campaigns
from distillguard.share.harvest import ShareOptions, harvest, read_campaigns
from distillguard.share.stix import (
    KEYED_TYPE,
    SKETCH_TYPE,
    build_bundle,
    dumps,
    validation_messages,
)

from .synth import (
    CAMPAIGN_UA,
    PROXY_PREFIX,
    VPN_PREFIX,
    WEAK_PREFIX,
    ProviderLog,
    assert_no_customer_data,
)

NOW = datetime(2026, 6, 3, tzinfo=UTC)


def _export(provider: tuple[ProviderLog, Path], key: GroupKey, **kw: object) -> dict:
    log, results = provider
    return export_campaigns(results, log.logdir, key, producer="Lab A", created=NOW, **kw).bundle  # type: ignore[arg-type]


def test_bundle_validates_and_carries_every_kind(
    provider_a: tuple[ProviderLog, Path], group_key: GroupKey
) -> None:
    doc = _export(provider_a, group_key)
    errors, warnings = validation_messages(doc)
    assert errors == [] and warnings == []
    types = [o["type"] for o in doc["objects"]]
    assert types.count("campaign") == 1  # the 0.4-confidence campaign is below the floor
    patterns = {o["pattern"] for o in doc["objects"] if o["type"] == "indicator"}
    assert f"[ipv4-addr:value ISSUBSET '{PROXY_PREFIX}.0/24']" in patterns
    assert "[autonomous-system:number = 64512]" in patterns
    assert any(CAMPAIGN_UA in p for p in patterns)
    keyed = {o["identifier_type"] for o in doc["objects"] if o["type"] == KEYED_TYPE}
    assert keyed == {"ip", "payment", "email_domain"}
    sketches = [o for o in doc["objects"] if o["type"] == SKETCH_TYPE]
    assert sketches and all(len(s["band_keys"]) == s["bands"] for s in sketches)
    campaign = next(o for o in doc["objects"] if o["type"] == "campaign")
    assert campaign["confidence"] == 95
    rels = [o for o in doc["objects"] if o["type"] == "relationship"]
    assert all(r["target_ref"] == campaign["id"] for r in rels)
    for o in doc["objects"]:
        if o["type"] in ("indicator", KEYED_TYPE, SKETCH_TYPE):
            assert o["valid_until"] > o["valid_from"]
            assert o["object_marking_refs"] == [
                "marking-definition--f88d31f6-486f-44da-b317-01333bde0b82"
            ]


def test_export_is_deterministic(provider_a: tuple[ProviderLog, Path], group_key: GroupKey) -> None:
    assert dumps(_export(provider_a, group_key)) == dumps(_export(provider_a, group_key))


def test_no_customer_data_in_bundle(
    provider_a: tuple[ProviderLog, Path], group_key: GroupKey
) -> None:
    log, _ = provider_a
    assert_no_customer_data(dumps(_export(provider_a, group_key)), log)


def test_benign_accounts_contribute_no_indicators(provider_a: tuple[ProviderLog, Path]) -> None:
    log, results = provider_a
    h = harvest(load_log(log.logdir), read_campaigns(results / "campaigns.json"), ShareOptions())
    assert set(h.values["benign_accounts"].to_list()) <= {0}
    prefixes = set(h.values.filter(h.values["kind"] == "ip_prefix")["value"].to_list())
    assert prefixes == {f"{PROXY_PREFIX}.0/24"}
    assert f"{VPN_PREFIX}.0/24" not in prefixes and f"{WEAK_PREFIX}.0/24" not in prefixes
    assert h.vetoed["ip_prefix"] == 1 and h.vetoed["asn"] == 1  # the VPN exit and its ASN
    ips = set(h.values.filter(h.values["kind"] == "ip")["value"].to_list())
    assert not any(
        ipaddress.ip_address(i) in ipaddress.ip_network(f"{VPN_PREFIX}.0/24") for i in ips
    )
    assert set(h.values.filter(h.values["kind"] == "payment")["value"].to_list()) == {
        log.payments[a] for a in log.campaign_members
    }


def test_benign_veto_can_be_relaxed(provider_a: tuple[ProviderLog, Path]) -> None:
    log, results = provider_a
    lax = ShareOptions(max_benign_accounts=100, max_benign_share=1.0)
    h = harvest(load_log(log.logdir), read_campaigns(results / "campaigns.json"), lax)
    assert f"{VPN_PREFIX}.0/24" in set(h.values["value"].to_list())


def test_confidence_floor(provider_a: tuple[ProviderLog, Path], group_key: GroupKey) -> None:
    log, results = provider_a
    h = harvest(
        load_log(log.logdir),
        read_campaigns(results / "campaigns.json"),
        ShareOptions(min_confidence=0.99),
    )
    doc = build_bundle(h, group_key, producer="Lab A", created=NOW)
    assert not [
        o for o in doc["objects"] if o["type"] in ("campaign", "indicator", KEYED_TYPE, SKETCH_TYPE)
    ]
    with pytest.raises(ConfigError, match="min_confidence"):
        ShareOptions(min_confidence=2.0)
    with pytest.raises(ConfigError, match="unknown share"):
        ShareOptions.from_config({"share": {"min_confidnce": 0.5}})


def test_bad_campaigns_file_names_row_and_column(tmp_path: Path) -> None:
    path = tmp_path / "campaigns.json"
    path.write_text(json.dumps({"campaigns": [{"id": "c1", "members": ["a"], "confidence": 1.7}]}))
    with pytest.raises(InvalidInputError) as info:
        read_campaigns(path)
    assert (
        str(info.value)
        == f"{path}, row 1, column 'confidence': must be a number in [0, 1], got 1.7"
    )
