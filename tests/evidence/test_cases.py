"""Case files written from detect's outputs: one per campaign, verifiable, byte-identical on rerun."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from distillguard.core.schema import EXCHANGE_SCHEMA
from distillguard.evidence import generate_signing_key, verify_case
from distillguard.evidence.cases import CASES_DIR, signing_key_from_config, write_campaign_cases


def _exchanges() -> pa.Table:
    rows = []
    for i, account in enumerate(["a1", "a2", "a3", "benign"] * 3):
        rows.append(
            {
                "ts": datetime(2026, 6, 1, 0, i, tzinfo=UTC),
                "request_id": f"r{i}",
                "account_id": account,
                "client_ip": f"73.162.44.{i}",
                "model": "m",
                "prompt": f"prompt {i}",
                "input_tokens": 10,
                "output_tokens": 20,
            }
        )
    return pa.Table.from_pylist(rows, schema=EXCHANGE_SCHEMA)


def _outdir(tmp_path: Path) -> Path:
    out = tmp_path / "results"
    out.mkdir(parents=True)
    campaigns = {
        "campaigns": [
            {"id": "C-one", "members": ["a1", "a2"], "confidence": 0.9},
            {"id": "C-two", "members": ["a3"], "confidence": 0.8},
        ],
        "run": {"config_hash": "abc", "detectors": {"d": "1.0"}, "input_digests": {"x": "00"}},
    }
    (out / "campaigns.json").write_text(json.dumps(campaigns))
    verdicts = [
        {"account_id": a, "action": "suspend", "score": 0.9, "cluster_id": "C", "reasons": []}
        for a in ("a1", "a2", "a3")
    ]
    (out / "verdicts.jsonl").write_text("".join(json.dumps(v) + "\n" for v in verdicts))
    return out


def test_one_verifiable_case_per_campaign_with_only_its_members(tmp_path: Path) -> None:
    out = _outdir(tmp_path)
    summary = write_campaign_cases(_exchanges(), out, {}, signing_key=generate_signing_key())
    assert sorted(summary.roots) == ["C-one", "C-two"]
    for case_dir, _root in summary.roots.values():
        report = verify_case(case_dir)
        assert report.ok, report.failures
    one = json.loads((out / CASES_DIR / "C-one" / "manifest.json").read_text())
    assert one["counts"]["exchanges"] == 6
    assert one["counts"]["accounts"] == 2
    stored = pq.read_table(out / CASES_DIR / "C-one" / "exchanges.parquet")
    assert set(stored["account_id"].to_pylist()) == {"a1", "a2"}


def test_rerun_with_the_same_key_is_byte_identical(tmp_path: Path) -> None:
    key = generate_signing_key()
    out = _outdir(tmp_path)
    first = write_campaign_cases(_exchanges(), out, {}, signing_key=key)
    before = {p: p.read_bytes() for p in (out / CASES_DIR).rglob("*") if p.is_file()}
    second = write_campaign_cases(_exchanges(), out, {}, signing_key=key)
    after = {p: p.read_bytes() for p in (out / CASES_DIR).rglob("*") if p.is_file()}
    assert first.roots == second.roots
    assert before == after


def test_default_key_is_created_once_and_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DISTILLGUARD_KEY_DIR", str(tmp_path / "keys"))
    first = signing_key_from_config({"evidence": {"signing_key_file": None}})
    second = signing_key_from_config({})
    assert (tmp_path / "keys" / "signing-key.pem").exists()
    assert first.public_key().public_bytes_raw() == second.public_key().public_bytes_raw()


def test_a_campaign_over_the_cap_commits_each_members_earliest_share(tmp_path: Path) -> None:
    out = _outdir(tmp_path)
    config = {"evidence": {"case_max_exchanges": 4}}
    summary = write_campaign_cases(_exchanges(), out, config, signing_key=generate_signing_key())
    one_dir = out / CASES_DIR / "C-one"
    assert verify_case(summary.roots["C-one"][0]).ok
    one = json.loads((one_dir / "manifest.json").read_text())
    # C-one has 6 exchanges over 2 members: each keeps its earliest 4 // 2 = 2.
    assert one["scope"]["per_account"] == 2
    assert one["scope"]["campaign_exchanges"] == 6
    assert one["counts"]["exchanges"] == 4
    stored = pq.read_table(one_dir / "exchanges.parquet")
    expected = {
        a: sorted(r["request_id"] for r in _exchanges().to_pylist() if r["account_id"] == a)
        for a in ("a1", "a2")
    }
    by_account: dict[str, list[str]] = {}
    for row in stored.select(["account_id", "request_id", "ts"]).sort_by("ts").to_pylist():
        by_account.setdefault(row["account_id"], []).append(row["request_id"])
    first_two = {a: sorted(ids, key=lambda r: int(r[1:]))[:2] for a, ids in expected.items()}
    assert by_account == first_two
    # Under the cap nothing is cut and the manifest carries no scope.
    two = json.loads((out / CASES_DIR / "C-two" / "manifest.json").read_text())
    assert "scope" not in two and two["counts"]["exchanges"] == 3


@pytest.mark.parametrize("config", [{}, {"evidence": {"case_max_exchanges": 4}}])
def test_a_parquet_log_in_row_groups_gives_the_same_cases_as_the_table(
    tmp_path: Path, config: dict[str, dict[str, int]]
) -> None:
    exchanges = _exchanges()
    logdir = tmp_path / "log"
    logdir.mkdir()
    # Row groups of 3 rows, so that the cap's earliest rows sit in some row groups only.
    pq.write_table(exchanges.slice(0, 7), logdir / "part-000.parquet", row_group_size=3)
    pq.write_table(exchanges.slice(7), logdir / "part-001.parquet", row_group_size=3)
    key = generate_signing_key()
    from_table = _outdir(tmp_path / "table")
    from_files = _outdir(tmp_path / "files")
    write_campaign_cases(exchanges, from_table, config, signing_key=key)
    write_campaign_cases(pads.dataset(logdir), from_files, config, signing_key=key)

    def files(out: Path) -> dict[Path, bytes]:
        root = out / CASES_DIR
        return {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}

    assert files(from_files) == files(from_table)
    assert len(files(from_table)) > 0
