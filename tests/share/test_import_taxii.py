"""Import: validation rejects bad bundles with located errors; TAXII round trip through medallion; matching at a peer."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from distillguard.cli import app
from distillguard.core.errors import DistillguardError, InvalidInputError
from distillguard.core.indicators import GroupKey, match_indicators, read_indicator_store
from distillguard.share.api import export_campaigns, import_bundle
from distillguard.share.importer import ImportLimits, import_bytes
from distillguard.share.sketch import SketchParameterError, SketchParams, sketch_prompts
from distillguard.share.stix import dumps
from distillguard.share.taxii import TaxiiTarget

from .conftest import Taxii
from .synth import CAMPAIGN_TEMPLATE, CAMPAIGN_UA, PROXY_PREFIX, ProviderLog

NOW = datetime(2026, 6, 3, tzinfo=UTC)
LATER = datetime(2026, 6, 4, tzinfo=UTC)


@pytest.fixture(scope="module")
def bundle_a(provider_a: tuple[ProviderLog, Path], group_key: GroupKey) -> dict:
    log, results = provider_a
    return export_campaigns(results, log.logdir, group_key, producer="Lab A", created=NOW).bundle


def test_import_keeps_provenance(bundle_a: dict, group_key: GroupKey) -> None:
    res = import_bytes(dumps(bundle_a).encode(), "a.json", key=group_key, imported_at=LATER)
    rows = res.rows.to_pylist()
    assert res.peers == ("Lab A",)
    assert {r["kind"] for r in rows} == {
        "ip_prefix",
        "asn",
        "user_agent",
        "ip",
        "payment",
        "email_domain",
        "template",
    }
    assert all(r["peer"] == "Lab A" and r["confidence"] == 95 and r["tlp"] == "amber" for r in rows)
    assert all(
        r["imported_at"] == LATER and r["source"] == "a.json" and r["campaign_ids"] for r in rows
    )
    assert {r["capability_targets"][0] for r in rows} == {"math"}
    ua = next(r for r in rows if r["kind"] == "user_agent")
    assert ua["value"] == CAMPAIGN_UA


def _problems(data: bytes, limits: ImportLimits | None = None) -> list[str]:
    with pytest.raises(InvalidInputError) as info:
        import_bytes(data, "peer.json", limits=limits)
    return [str(p) for p in info.value.problems]


def test_malformed_and_oversized_bundles_are_rejected(bundle_a: dict) -> None:
    assert _problems(b'{"type": "bundle",\n "objects": [}') == [
        "peer.json, row 2: not valid JSON: Expecting value (line 2, column 14)"
    ]
    text = dumps(bundle_a).encode()
    assert _problems(text, ImportLimits(max_bytes=1000)) == [
        f"peer.json: bundle is {len(text)} bytes, above the import limit of 1000 bytes"
    ]
    assert _problems(text, ImportLimits(max_objects=3)) == [
        f"peer.json, column 'objects': bundle has {len(bundle_a['objects'])} objects, above the import limit of 3"
    ]
    broken = json.loads(text)
    pos, obj = next((i, o) for i, o in enumerate(broken["objects"], 1) if o["type"] == "indicator")
    obj["confidence"] = 300
    assert any(
        p.startswith(f"peer.json, row {pos}, column 'confidence': STIX 2.1:")
        for p in _problems(json.dumps(broken).encode())
    )
    orphan = json.loads(text)
    orphan["objects"] = [o for o in orphan["objects"] if o["type"] != "identity"]
    msgs = _problems(json.dumps(orphan).encode())
    assert msgs and all("created_by_ref" in m and "provenance" in m for m in msgs)
    sk = json.loads(text)
    pos, obj = next(
        (i, o)
        for i, o in enumerate(sk["objects"], 1)
        if o["type"] == "x-distillguard-template-sketch"
    )
    obj["band_keys"] = obj["band_keys"][:-1]
    assert _problems(json.dumps(sk).encode()) == [
        f"peer.json, row {pos}, column 'band_keys': sketch has {obj['bands'] - 1} band keys; its parameters say bands={obj['bands']}"
    ]


def test_sketches_refuse_other_parameters() -> None:
    p = [
        CAMPAIGN_TEMPLATE.format(item="what is 3 times 4?"),
        CAMPAIGN_TEMPLATE.format(item="what is 7 times 9?"),
    ]
    a, b = sketch_prompts(p)
    assert a is not None and b is not None and a.matches(b) and a.jaccard(b) > 0.5
    (c,) = sketch_prompts(p[:1], SketchParams(num_perm=40, bands=20))
    assert c is not None
    with pytest.raises(SketchParameterError, match="different parameters"):
        a.jaccard(c)
    (d,) = sketch_prompts(["Write a poem about the first snow of winter."])
    assert d is not None and not a.matches(d)


def test_taxii_round_trip_and_match_at_peer(
    taxii_server: Taxii, provider_a: tuple[ProviderLog, Path], group_key: GroupKey, tmp_path: Path
) -> None:
    log, results = provider_a
    a = TaxiiTarget(taxii_server.collection_url, "lab-a", "secret-a")
    summary = export_campaigns(
        results, log.logdir, group_key, producer="Lab A", taxii=a, created=NOW
    )
    assert summary.published is not None and summary.published.failure_count == 0
    assert (
        summary.published.success_count == len(summary.bundle["objects"]) - 1
    )  # all but the extension definition
    store = tmp_path / "indicators.parquet"
    b = TaxiiTarget(taxii_server.collection_url, "lab-b", "secret-b")
    imported = import_bundle(store, taxii=b, key=group_key, imported_at=LATER)
    assert imported.peers == ("Lab A",)
    table = read_indicator_store(store)
    direct = import_bytes(dumps(summary.bundle).encode(), "x", imported_at=LATER).rows
    key_cols = ["indicator_id", "kind", "value"]
    assert sorted(table.select(key_cols).to_pylist(), key=str) == sorted(
        direct.select(key_cols).to_pylist(), key=str
    )
    # Provider B's own traffic: a new account behind the same proxy prefix and scaffold, a benign one elsewhere.
    (sk,) = sketch_prompts([CAMPAIGN_TEMPLATE.format(item="what is 12 times 31?")])
    assert sk is not None
    obs = [
        ("b-new-1", "ip_prefix", f"{PROXY_PREFIX}.0/24"),
        ("b-new-1", "ip", f"{PROXY_PREFIX}.77"),
        ("b-user", "ip_prefix", "81.2.69.0/24"),
        ("b-user", "user_agent", "python-sdk/0.52.0"),
    ]
    obs += [("b-new-2", "template_band", f"{i}:{k}") for i, k in enumerate(sk.hex_keys())]
    observations = pa.table({"account_id": [o[0] for o in obs], "kind": [o[1] for o in obs],
                             "value": [o[2] for o in obs], "n": [1] * len(obs),
                             "first_ts": pa.array([LATER] * len(obs), pa.timestamp("ms", tz="UTC"))})  # fmt: skip
    hits = match_indicators(
        table, observations, key=group_key, at=LATER, template_params=SketchParams().as_dict()
    )
    matched = {(r["account_id"], r["kind"]) for r in hits.to_pylist()}
    assert ("b-new-1", "ip_prefix") in matched and ("b-new-2", "template") in matched
    assert not any(acc == "b-user" for acc, _ in matched)
    assert all(r["peer"] == "Lab A" and r["confidence"] == 95 for r in hits.to_pylist())
    # Other sketch parameters never compare; expired indicators never match.
    other = match_indicators(
        table, observations, key=group_key, at=LATER, template_params={"num_perm": 1}
    )
    assert ("b-new-2", "template") not in {(r["account_id"], r["kind"]) for r in other.to_pylist()}
    assert (
        match_indicators(
            table, observations, key=group_key, at=datetime(2030, 1, 1, tzinfo=UTC)
        ).num_rows
        == 0
    )


def test_taxii_wrong_password_is_a_clear_error(taxii_server: Taxii, tmp_path: Path) -> None:
    with pytest.raises(DistillguardError, match=r"refused the credentials \(HTTP 401\)"):
        import_bundle(
            tmp_path / "s.parquet", taxii=TaxiiTarget(taxii_server.collection_url, "lab-b", "nope")
        )


def test_cli_keygen_export_import(provider_a: tuple[ProviderLog, Path], tmp_path: Path) -> None:
    log, results = provider_a
    runner = CliRunner()
    key = tmp_path / "group.key"
    assert runner.invoke(app, ["share", "keygen", str(key)]).exit_code == 0
    assert runner.invoke(app, ["share", "keygen", str(key)]).exit_code == 2
    bundle = tmp_path / "bundle.json"
    r = runner.invoke(app, ["share", "export", "--results", str(results), "--log", str(log.logdir),
                            "--key-file", str(key), "--producer", "Lab A", "--out", str(bundle)])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "withheld" in r.output
    store = tmp_path / "ind.parquet"
    r = runner.invoke(
        app, ["share", "import", str(bundle), "--store", str(store), "--key-file", str(key)]
    )
    assert r.exit_code == 0, r.output
    assert read_indicator_store(store).num_rows > 0
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2")
    r = runner.invoke(app, ["share", "import", str(bad), "--store", str(store)])
    assert r.exit_code == 2
