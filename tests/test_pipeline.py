"""Pipeline: linking → scoring → outputs on the synthetic world; only the hydras are acted on, byte-stable."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from linking.conftest import small_world_config  # type: ignore[import-not-found]
from linking.synth import (  # type: ignore[import-not-found]
    Synth,
    add_background,
    add_campus,
    add_corporate,
    add_hydra,
    add_saas,
    add_vpn,
)

from distillguard.core.verdict import Action
from distillguard.pipeline import detect_tables, write_outputs


def _run(out: Path) -> dict[str, bytes]:
    s = Synth(11)
    add_background(s)
    add_campus(s)
    add_corporate(s)
    add_vpn(s)
    add_saas(s)
    add_hydra(s)
    sig, acc = s.tables()
    df = pl.from_arrow(sig)
    assert isinstance(df, pl.DataFrame)
    feat = df.group_by("account_id").agg(n_exchanges=pl.len()).sort("account_id").to_arrow()
    result = detect_tables(sig, acc, feat, small_world_config(), {"exchanges": "0" * 64})
    write_outputs(result, out)
    flagged = {v.account_id.split("-")[0] for v in result.verdicts if v.action.is_flagged}
    assert flagged == {"hydra"}
    assert all(v.reasons for v in result.verdicts if v.action is not Action.ALLOW)
    campaigns = result.campaigns["campaigns"]
    assert len(campaigns) == 1 and campaigns[0]["n_accounts"] == 30
    assert campaigns[0]["shared_indicators"]
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def test_detect_outputs_are_correct_and_byte_identical(tmp_path: Path) -> None:
    first = _run(tmp_path / "a")
    second = _run(tmp_path / "b")
    assert first == second
    assert set(first) == {
        "campaign_edges.parquet",
        "campaigns.json",
        "report.html",
        "verdicts.jsonl",
    }
    run = json.loads(first["campaigns.json"])["run"]
    assert run["config_hash"] and "cluster.linkage" in run["detectors"]
    for line in first["verdicts.jsonl"].decode().splitlines():
        v = json.loads(line)
        assert 0.0 <= v["score"] <= 1.0
        assert all(r["detail"]["sample_request_ids"] for r in v["reasons"])


def test_detect_reads_and_checks_the_log_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import distillguard.ingest as ingest
    from distillguard.core.config import load_config
    from distillguard.pipeline import detect
    from distillguard.simulate import simulate

    simulate("default", "tiny", 4242, tmp_path / "log")
    real = ingest.load_log
    calls: list[Path] = []

    def counted(path: Path, config: Any) -> Any:
        calls.append(path)
        return real(path, config)

    monkeypatch.setattr(ingest, "load_log", counted)
    detect(tmp_path / "log", tmp_path / "out", load_config(None))
    assert calls == [tmp_path / "log"]
    assert (tmp_path / "out" / "report.html").stat().st_size > 0
    assert any((tmp_path / "out" / "cases").iterdir())
