"""Quality floors on fresh simulator seeds no tuning or calibration ever used (style.md #5).

Each scenario is simulated into a temporary directory, run through ``detect`` and measured with
``evaluate_run``: the issue's bar (benign false positives, attack recall, exchange coverage,
every campaign found, cluster precision, no suspended hard negative) must hold. Seeds 4242+ are
reserved for this test; tuning used 1-99, calibration 50-55 (policy.calibration).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distillguard.core.config import load_config
from distillguard.evaluate import EvaluationReport, evaluate_run
from distillguard.evidence import read_manifest, verify_case
from distillguard.pipeline import detect
from distillguard.simulate import simulate

#: Personas the issue names: none of them may ever be suspended.
HARD_NEGATIVES = (
    "saas_backend",
    "coding_agent",
    "eval_lab",
    "university_class",
    "corporate",
    "vpn_user",
)

CASES = {
    "default": ("default", "small", 4242),
    "low-and-slow": ("low-and-slow", "small", 4243),
}


@pytest.fixture(scope="session", params=sorted(CASES))
def detected(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    scenario, scale, seed = CASES[request.param]
    root = tmp_path_factory.mktemp(f"quality-{request.param}")
    logdir, outdir = root / "log", root / "out"
    simulate(scenario, scale, seed, logdir)
    detect(logdir, outdir, load_config())
    return logdir, outdir


@pytest.fixture(scope="session")
def report(detected: tuple[Path, Path]) -> EvaluationReport:
    return evaluate_run(*detected)


def test_every_campaign_has_a_verifiable_case_file_named_in_the_report(
    detected: tuple[Path, Path],
) -> None:
    _, outdir = detected
    campaigns = json.loads((outdir / "campaigns.json").read_text())["campaigns"]
    page = (outdir / "report.html").read_text(encoding="utf-8")
    assert campaigns
    for campaign in campaigns:
        case_dir = outdir / "cases" / campaign["id"]
        verified = verify_case(case_dir)
        assert verified.ok, verified.failures
        assert read_manifest(case_dir).root in page


def test_benign_false_positive_rate(report: EvaluationReport) -> None:
    assert report.detect is not None
    acc = report.detect.accounts
    assert acc.benign_accounts > 500
    assert acc.flagged_benign / acc.benign_accounts <= 0.001


def test_no_hard_negative_is_suspended(report: EvaluationReport) -> None:
    assert report.detect is not None
    personas = report.detect.personas
    assert set(HARD_NEGATIVES) & set(personas)
    for name in HARD_NEGATIVES:
        if name in personas:
            assert personas[name].suspended == 0, name


def test_attack_recall_and_exchange_coverage(report: EvaluationReport) -> None:
    assert report.detect is not None
    acc = report.detect.accounts
    assert acc.attack_accounts > 0
    assert acc.flagged_attack / acc.attack_accounts >= 0.95
    assert acc.attack_exchanges_flagged / acc.attack_exchanges >= 0.99


def test_every_campaign_found_with_precise_clusters(report: EvaluationReport) -> None:
    assert report.detect is not None
    campaigns = report.detect.campaigns
    missed = [name for name, c in campaigns.items() if not c.found]
    assert campaigns and not missed, missed
    clusters = report.detect.clusters
    assert clusters is not None and clusters.weighted_precision is not None
    assert clusters.weighted_precision >= 0.99
