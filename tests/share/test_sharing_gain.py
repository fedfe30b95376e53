"""The gain from sharing, end to end at small scale: provider B contains A's campaign sooner with A's indicators.

Runs ``scripts/measure_sharing_gain.py``'s experiment (two simulated providers sharing one
operation's exits and scaffolds, different accounts; A detects and exports, B imports) on the
test suite's own seeds, which no tuning used.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from distillguard.cli import app

ROOT = Path(__file__).resolve().parents[2]
SEED_A, SEED_B = 4242, 4243


def _script() -> Any:
    spec = importlib.util.spec_from_file_location(
        "measure_sharing_gain", ROOT / "scripts" / "measure_sharing_gain.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Registered, so the experiment's process pool can pickle its step functions by name.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    work = tmp_path_factory.mktemp("sharing-gain")
    # Small, not tiny: at tiny scale B's own online signals now contain the campaign after its
    # first four exchanges (4 of 3,082 served), with or without A's indicators; nothing is left
    # for sharing to gain there.
    figures = _script().measure(work, scale="small", seed_a=SEED_A, seed_b=SEED_B, jobs=2)
    return figures, work


def test_b_contains_the_campaign_sooner_with_a_s_indicators(
    experiment: tuple[dict[str, Any], Path],
) -> None:
    figures, _ = experiment
    assert figures["export"]["campaigns"] >= 1 and figures["store_rows"] > 0
    c = figures["campaign"]
    without = figures["replay"]["without"]["campaigns"][c]
    with_ = figures["replay"]["with"]["campaigns"][c]
    # Contained sooner: fewer attack exchanges served before containment. The first flag may
    # come no sooner: B's own signals flag a fresh head within minutes, and a peer match weighs
    # fully only after share.indicators.min_exchanges of an account's requests.
    assert with_["served"] < without["served"]
    assert with_["seconds_to_first_flag"] <= without["seconds_to_first_flag"]
    assert with_["exchanges_before_first_flag"] <= without["exchanges_before_first_flag"]
    # Sharing must not cost benign customers anything online.
    assert (
        figures["replay"]["with"]["benign_not_served"]
        <= figures["replay"]["without"]["benign_not_served"]
    )


def test_batch_verdicts_carry_peer_provenance_and_no_new_benign_flags(
    experiment: tuple[dict[str, Any], Path],
) -> None:
    figures, work = experiment
    batch = figures["batch"]
    assert (
        batch["with"]["accounts"]["flagged_benign"]
        <= batch["without"]["accounts"]["flagged_benign"]
    )
    assert (
        batch["with"]["accounts"]["flagged_attack"]
        >= batch["without"]["accounts"]["flagged_attack"]
    )
    assert (
        batch["without"]["verdicts_with_peer_reason"] == 0
        and batch["with"]["verdicts_with_peer_reason"] > 0
    )
    verdicts = [
        json.loads(line)
        for line in (work / "detect-b-with" / "verdicts.jsonl").read_text().splitlines()
    ]
    peer = [r for v in verdicts for r in v["reasons"] if r["signal"] == "peer_indicator"]
    assert peer
    for r in peer:
        d = r["detail"]
        assert d["peers"] == ["Provider A"] and d["indicators"] and d["sample_request_ids"]
        assert all(
            i["produced_at"] and i["imported_at"] and 0 <= i["confidence"] <= 100
            for i in d["indicators"]
        )
    run = json.loads((work / "detect-b-with" / "campaigns.json").read_text())["run"]
    assert "linking.peer_indicators" in run["detectors"]


def test_detect_refuses_a_missing_indicator_store(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["detect", str(tmp_path), "--out", str(tmp_path / "o"),
                                      "--indicators", str(tmp_path / "nope.parquet")])  # fmt: skip
    assert result.exit_code == 2
    assert "does not exist" in " ".join(result.output.split())
