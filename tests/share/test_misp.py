"""MISP export: one event per campaign, loadable by pymisp, the STIX export's indicators, no customer data."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pymisp import MISPEvent
from typer.testing import CliRunner

from distillguard.cli import app
from distillguard.core.indicators import GroupKey
from distillguard.ingest import load_log
from distillguard.share.harvest import Harvest, ShareOptions, harvest, read_campaigns
from distillguard.share.misp import (
    KEYED_OBJECT,
    SKETCH_OBJECT,
    build_events,
    dumps,
    export_misp,
    to_document,
)
from distillguard.share.stix import KEYED_TYPE, SKETCH_TYPE, TLP, build_bundle

from .synth import (
    CAMPAIGN_UA,
    PROXY_PREFIX,
    VPN_PREFIX,
    WEAK_PREFIX,
    ProviderLog,
    assert_no_customer_data,
)

NOW = datetime(2026, 6, 3, tzinfo=UTC)


def _export(provider: tuple[ProviderLog, Path], key: GroupKey, **kw: Any) -> dict[str, Any]:
    log, results = provider
    return export_misp(results, log.logdir, key, producer="Lab A", created=NOW, **kw).document


@pytest.fixture(scope="module")
def harvested(provider_a: tuple[ProviderLog, Path]) -> Harvest:
    log, results = provider_a
    return harvest(load_log(log.logdir), read_campaigns(results / "campaigns.json"), ShareOptions())


@pytest.fixture(scope="module")
def document(provider_a: tuple[ProviderLog, Path], group_key: GroupKey) -> dict[str, Any]:
    return _export(provider_a, group_key)


def _events(doc: dict[str, Any]) -> list[MISPEvent]:
    out = []
    for item in doc["response"]:
        ev = MISPEvent()
        ev.load(json.dumps(item))
        out.append(ev)
    return out


def _objects(ev: MISPEvent, name: str) -> list[Any]:
    return [o for o in ev.objects if o.name == name]


def _values(obj: Any, relation: str) -> list[str]:
    return [a.value for a in obj.attributes if a.object_relation == relation]


def test_events_load_back_and_carry_the_campaign_indicators(
    document: dict[str, Any], group_key: GroupKey
) -> None:
    events = _events(document)
    assert len(events) == 1  # the 0.4-confidence campaign is below the floor
    ev = events[0]
    assert ev.info.startswith("distillation campaign ") and "math" in ev.info
    assert ev.date.isoformat() == "2026-06-01"
    assert (int(ev.threat_level_id), int(ev.analysis), int(ev.distribution)) == (1, 2, 1)
    tags = {t.name for t in ev.tags}
    assert "tlp:amber" in tags
    assert ev.Orgc.name == "Lab A"
    by_type: dict[str, set[str]] = {}
    for a in ev.attributes:
        by_type.setdefault(a.type, set()).add(a.value)
    assert by_type["ip-dst"] == {f"{PROXY_PREFIX}.0/24"}
    assert by_type["AS"] == {"64512"}
    assert by_type["user-agent"] == {CAMPAIGN_UA}
    keyed = {_values(o, "identifier-type")[0]: o for o in _objects(ev, KEYED_OBJECT)}
    assert set(keyed) == {"ip", "payment", "email_domain"}
    for o in keyed.values():
        assert _values(o, "key-id") == [group_key.key_id]
        digests = [a for a in o.attributes if a.object_relation == "digest"]
        assert digests and all(re.fullmatch(r"[0-9a-f]{64}", a.value) for a in digests)
        assert all(group_key.key_id in a.comment for a in digests)
    sketches = _objects(ev, SKETCH_OBJECT)
    assert sketches
    for o in sketches:
        bands = int(_values(o, "bands")[0])
        keys = [a for a in o.attributes if a.object_relation == "band-key"]
        assert len(keys) == bands
        assert all(f"seed={_values(o, 'seed')[0]}" in a.comment for a in keys)


def test_misp_and_stix_exports_carry_the_same_indicators(
    harvested: Harvest, document: dict[str, Any], group_key: GroupKey
) -> None:
    bundle = build_bundle(harvested, group_key, producer="Lab A", created=NOW)
    ev = _events(document)[0]
    stix_digests = {
        (o["identifier_type"], d)
        for o in bundle["objects"]
        if o["type"] == KEYED_TYPE
        for d in o["digests"]
    }
    misp_digests = {
        (_values(o, "identifier-type")[0], d)
        for o in _objects(ev, KEYED_OBJECT)
        for d in _values(o, "digest")
    }
    assert misp_digests == stix_digests
    stix_bands = {tuple(o["band_keys"]) for o in bundle["objects"] if o["type"] == SKETCH_TYPE}
    misp_bands = {tuple(_values(o, "band-key")) for o in _objects(ev, SKETCH_OBJECT)}
    assert misp_bands == stix_bands
    campaign = next(o for o in bundle["objects"] if o["type"] == "campaign")
    assert campaign["id"] == f"campaign--{ev.uuid}"
    indicators = sum(o["type"] == "indicator" for o in bundle["objects"])
    assert indicators == sum(a.type in ("ip-dst", "AS", "user-agent") for a in ev.attributes)


def test_one_event_per_campaign_each_with_only_its_own_indicators(
    provider_a: tuple[ProviderLog, Path], group_key: GroupKey
) -> None:
    log, results = provider_a
    h = harvest(
        load_log(log.logdir),
        read_campaigns(results / "campaigns.json"),
        ShareOptions(min_confidence=0.3),
    )
    events = _events(
        to_document(build_events(h, group_key, producer="Lab A", tlp="green", created=NOW))
    )
    assert len(events) == 2 and len({e.uuid for e in events}) == 2
    prefixes = [{a.value for a in e.attributes if a.type == "ip-dst"} for e in events]
    assert {f"{PROXY_PREFIX}.0/24"} in prefixes and {f"{WEAK_PREFIX}.0/24"} in prefixes
    for e in events:
        assert "tlp:green" in {t.name for t in e.tags} and int(e.distribution) == 2
    weak = next(
        e
        for e in events
        if {a.value for a in e.attributes if a.type == "ip-dst"} == {f"{WEAK_PREFIX}.0/24"}
    )
    assert (int(weak.threat_level_id), int(weak.analysis)) == (3, 1)  # confidence 0.4
    main = next(e for e in events if e is not weak)
    bands = [
        {tuple(_values(o, "band-key")) for o in _objects(e, SKETCH_OBJECT)} for e in (weak, main)
    ]
    assert bands[0] and bands[1] and not bands[0] & bands[1]  # each its own scaffolds
    pays = [
        {
            d
            for o in _objects(e, KEYED_OBJECT)
            if _values(o, "identifier-type") == ["payment"]
            for d in _values(o, "digest")
        }
        for e in (weak, main)
    ]
    assert pays[0] == set(group_key.digests("payment", [log.payments[a] for a in log.weak_members]))
    assert pays[1] == set(
        group_key.digests("payment", [log.payments[a] for a in log.campaign_members])
    )


def test_no_customer_data_in_misp_export(
    provider_a: tuple[ProviderLog, Path], group_key: GroupKey
) -> None:
    log, _ = provider_a
    assert_no_customer_data(dumps(_export(provider_a, group_key)), log)


def test_benign_accounts_contribute_nothing(
    provider_a: tuple[ProviderLog, Path], document: dict[str, Any], group_key: GroupKey
) -> None:
    log, _ = provider_a
    doc = document
    text = dumps(doc)
    assert (
        f"{VPN_PREFIX}." not in text and "64513" not in text
    )  # the VPN exit benign users share, and its ASN
    assert "python-sdk" not in text
    ev = _events(doc)[0]
    keyed = {
        _values(o, "identifier-type")[0]: set(_values(o, "digest"))
        for o in _objects(ev, KEYED_OBJECT)
    }
    benign = log.benign
    assert not keyed["payment"] & set(
        group_key.digests("payment", [log.payments[a] for a in benign])
    )
    assert keyed["payment"] == set(
        group_key.digests("payment", [log.payments[a] for a in log.campaign_members])
    )
    benign_ips = sorted({ip for a in benign for ip in log.account_ips[a]})
    assert not keyed["ip"] & set(group_key.digests("ip", benign_ips))
    assert not keyed["email_domain"] & set(group_key.digests("email_domain", ["gmail.com"]))


def test_export_is_deterministic(
    provider_a: tuple[ProviderLog, Path], document: dict[str, Any], group_key: GroupKey
) -> None:
    assert dumps(_export(provider_a, group_key)) == dumps(document)


def test_cli_writes_misp_and_refuses_bad_input(
    provider_a: tuple[ProviderLog, Path], group_key: GroupKey, tmp_path: Path
) -> None:
    log, results = provider_a
    key_file = tmp_path / "group.key"
    group_key.save(key_file)
    base = [
        "share",
        "export",
        "--log",
        str(log.logdir),
        "--key-file",
        str(key_file),
        "--producer",
        "Lab A",
    ]
    target = tmp_path / "events.json"
    ok = CliRunner().invoke(
        app, [*base, "--results", str(results), "--format", "misp", "--out", str(target)]
    )
    assert ok.exit_code == 0, ok.output
    assert "1 MISP event" in ok.output
    assert len(_events(json.loads(target.read_text()))) == 1

    empty = tmp_path / "no-results"
    empty.mkdir()
    missing = CliRunner().invoke(
        app, [*base, "--results", str(empty), "--format", "misp", "--out", str(tmp_path / "x.json")]
    )
    assert missing.exit_code == 2
    # Rich wraps at the terminal width, even inside a path.
    assert f"{empty}/campaigns.json:cannotread:Nosuchfile" in "".join(missing.output.split())
    assert not (tmp_path / "x.json").exists()

    no_out = CliRunner().invoke(app, [*base, "--results", str(results), "--format", "misp"])
    assert no_out.exit_code == 2 and "--out FILE" in " ".join(no_out.output.split())
    bad = CliRunner().invoke(
        app, [*base, "--results", str(results), "--format", "csv", "--out", str(target)]
    )
    assert bad.exit_code == 2 and "choose stix or misp" in " ".join(bad.output.split())
    tlp = CliRunner().invoke(
        app,
        [
            *base,
            "--results",
            str(results),
            "--format",
            "misp",
            "--out",
            str(target),
            "--tlp",
            "purple",
        ],
    )
    assert tlp.exit_code == 2 and "unknown TLP" in " ".join(tlp.output.split())


@pytest.mark.parametrize("tlp", ["clear", "green", "amber", "red"])
def test_tlp_tag_matches_the_stix_marking(
    harvested: Harvest, group_key: GroupKey, tlp: str
) -> None:
    ev = _events(
        to_document(build_events(harvested, group_key, producer="Lab A", tlp=tlp, created=NOW))
    )[0]
    tag = next(t.name for t in ev.tags if t.name.startswith("tlp:"))
    # stix2 ships TLP 1.0 markings, where WHITE is what TLP 2.0 (and MISP's tag) calls CLEAR.
    assert tag == str(TLP[tlp].name).lower().replace("tlp:white", "tlp:clear")
