"""Detect-side metrics, end to end through evaluate_run, on the hand-built scenario in conftest."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from distillguard.core.errors import DistillguardError, InvalidInputError
from distillguard.evaluate import evaluate_run, write_evaluation

from .conftest import LABELS

VERDICTS = {
    "a1": "suspend",
    "a2": "throttle",
    "a3": "monitor",  # monitor is not flagged
    "b1": "challenge",
    "b2": "allow",
    "s1": "suspend",  # a hard negative suspended
    "u1": "monitor",
}
CAMPAIGNS = {
    "campaigns": [
        {"id": "K1", "members": ["a1", "a2", "a3", "s1"], "confidence": 0.9},
        # mixed: one of c1, one of c2, one benign; the c1/c2 tie resolves to the first name
        {"id": "K2", "members": ["b1", "a1", "d1"], "confidence": 0.4, "extra": "ignored"},
    ]
}


def test_account_metrics_by_hand(
    make_log: Callable[..., Path], make_results: Callable[..., Path]
) -> None:
    report = evaluate_run(make_log(), make_results(verdicts=VERDICTS, campaigns=CAMPAIGNS))
    h = report.headline()
    # flagged attack: a1, a2, b1 of 5 attack accounts; flagged: those + s1
    assert h["account_recall"] == pytest.approx(3 / 5)
    assert h["account_precision"] == pytest.approx(3 / 4)
    # benign: d1 s1 s2 u1 e1; s1 flagged, u1 monitored
    assert h["benign_false_positive_rate"] == pytest.approx(1 / 5)
    assert h["benign_monitor_rate"] == pytest.approx(1 / 5)
    assert report.detect is not None
    assert report.detect.accounts.benign_any_action_rate == pytest.approx(2 / 5)
    # attack exchanges 5+3+2+4+4 = 18, of flagged accounts a1 5 + a2 3 + b1 4 = 12
    assert h["exchange_recall"] == pytest.approx(12 / 18)
    assert h["hard_negative_suspensions"] == 1


def test_personas_and_hard_negatives(
    make_log: Callable[..., Path], make_results: Callable[..., Path]
) -> None:
    report = evaluate_run(make_log(), make_results(verdicts=VERDICTS))
    assert report.detect is not None
    personas = report.detect.personas
    saas = personas["saas_backend"]
    assert (saas.accounts, saas.flagged, saas.suspended, saas.exchanges) == (2, 1, 1, 4)
    assert saas.false_positive_rate == pytest.approx(1 / 2)
    assert saas.actions == {"allow": 1, "monitor": 0, "throttle": 0, "challenge": 0, "suspend": 1}
    assert personas["university_class"].actions["monitor"] == 1
    assert personas["university_class"].false_positive_rate == 0.0
    assert personas["developer"].hard_negative is False
    # hard negatives absent from the labels are still listed, with an undefined rate
    assert personas["reseller"].accounts == 0
    assert personas["reseller"].false_positive_rate is None
    # attack accounts' persona does not become a benign persona row
    assert "hydra" not in personas


def test_campaigns_and_cluster_precision(
    make_log: Callable[..., Path], make_results: Callable[..., Path]
) -> None:
    report = evaluate_run(make_log(), make_results(verdicts=VERDICTS, campaigns=CAMPAIGNS))
    assert report.detect is not None and report.detect.clusters is not None
    c1, c2 = report.detect.campaigns["c1"], report.detect.campaigns["c2"]
    assert c1.account_recall == pytest.approx(2 / 3)
    assert c1.exchange_recall == pytest.approx(8 / 10)
    assert c2.account_recall == pytest.approx(1 / 2)
    assert c2.exchange_recall == pytest.approx(4 / 8)
    # K1 is 3/4 c1 -> finds c1; K2 is 1/3 of anything -> finds nothing
    assert (c1.found, c1.found_by, c1.best_cluster, c1.best_cluster_overlap) == (
        True,
        ["K1"],
        "K1",
        3,
    )
    assert (c2.found, c2.found_by, c2.best_cluster, c2.best_cluster_overlap) == (False, [], "K2", 1)
    clusters = {c.cluster_id: c for c in report.detect.clusters.clusters}
    assert clusters["K1"].precision == pytest.approx(3 / 4)
    assert (clusters["K1"].benign_members, clusters["K1"].finds) == (1, "c1")
    assert clusters["K2"].precision == pytest.approx(1 / 3)
    assert (clusters["K2"].best_campaign, clusters["K2"].finds) == ("c1", None)
    # member-weighted: (3 + 1) / (4 + 3)
    assert report.detect.clusters.weighted_precision == pytest.approx(4 / 7)
    h = report.headline()
    assert (h["campaigns_found"], h["campaigns_total"]) == (1, 2)


def test_campaigns_as_top_level_list_and_majority_is_strict(
    make_log: Callable[..., Path], make_results: Callable[..., Path]
) -> None:
    # exactly half is not a majority
    campaigns = [{"id": "K", "members": ["b1", "b2", "d1", "s1"]}, {"id": "L", "members": []}]
    report = evaluate_run(make_log(), make_results(campaigns=campaigns))
    assert report.detect is not None and report.detect.clusters is not None
    by_id = {c.cluster_id: c for c in report.detect.clusters.clusters}
    assert by_id["K"].precision == pytest.approx(1 / 2)
    assert by_id["K"].finds is None and by_id["K"].confidence is None
    assert by_id["L"].precision is None  # empty reported campaign: undefined, and weighs nothing
    assert report.detect.clusters.weighted_precision == pytest.approx(2 / 4)
    assert report.detect.campaigns["c2"].found is False
    # without verdicts.jsonl every account is allow
    assert report.headline()["account_recall"] == 0.0
    assert report.inputs == {"verdicts": False, "campaigns": True, "decisions": False}


def test_no_campaigns_file_means_found_is_undefined(
    make_log: Callable[..., Path], make_results: Callable[..., Path]
) -> None:
    report = evaluate_run(make_log(), make_results(verdicts=VERDICTS))
    assert report.detect is not None
    assert report.detect.campaigns["c1"].found is None
    assert report.headline()["cluster_precision"] is None
    assert report.replay is None


def test_no_attacks(make_log: Callable[..., Path], make_results: Callable[..., Path]) -> None:
    benign = [label for label in LABELS if label[1] == "benign"]
    exchanges = {"d1": [0], "s1": [1, 2], "s2": [3], "u1": [4], "e1": [5]}
    report = evaluate_run(make_log(benign, exchanges), make_results(verdicts={"s1": "throttle"}))
    h = report.headline()
    assert h["account_recall"] is None  # undefined, not 0
    assert h["exchange_recall"] is None
    assert h["account_precision"] == 0.0  # one flagged, none of them attack
    assert h["benign_false_positive_rate"] == pytest.approx(1 / 5)
    assert report.detect is not None and report.detect.campaigns == {}


def test_every_account_flagged(
    make_log: Callable[..., Path], make_results: Callable[..., Path]
) -> None:
    report = evaluate_run(
        make_log(), make_results(verdicts={label[0]: "challenge" for label in LABELS})
    )
    h = report.headline()
    assert h["account_recall"] == 1.0
    assert h["account_precision"] == pytest.approx(5 / 10)
    assert h["benign_false_positive_rate"] == 1.0
    assert h["exchange_recall"] == 1.0


def test_empty_verdicts_file(
    make_log: Callable[..., Path], make_results: Callable[..., Path]
) -> None:
    report = evaluate_run(make_log(), make_results(verdicts={}))
    h = report.headline()
    assert report.inputs["verdicts"] is True
    assert h["account_recall"] == 0.0
    assert h["account_precision"] is None  # nothing flagged: undefined
    assert h["benign_false_positive_rate"] == 0.0


def test_accounts_without_exchanges_and_unlabelled_traffic(
    make_log: Callable[..., Path], make_results: Callable[..., Path]
) -> None:
    labels = [*LABELS, ("a4", "attack", "c1", "hydra")]
    exchanges = {
        "a1": [0, 1],
        "x9": [2, 3, 4],
    }  # x9 has no label; most labelled accounts sent nothing
    report = evaluate_run(make_log(labels, exchanges), make_results(verdicts={"a1": "suspend"}))
    cov = report.coverage
    assert (cov.exchanges, cov.labelled_exchanges, cov.unlabelled_exchanges) == (5, 2, 3)
    assert (cov.unlabelled_accounts_in_log, cov.labelled_accounts_without_exchanges) == (1, 10)
    assert report.headline()["account_recall"] == pytest.approx(1 / 6)
    assert report.headline()["exchange_recall"] == 1.0


def test_unlabelled_account_in_results_is_an_error(
    make_log: Callable[..., Path], make_results: Callable[..., Path]
) -> None:
    resultdir = make_results(
        verdicts={"a1": "suspend", "zz": "suspend"},
        campaigns=[{"id": "K", "members": ["a1", "yy"]}],
    )
    with pytest.raises(InvalidInputError) as info:
        evaluate_run(make_log(), resultdir)
    texts = [str(p) for p in info.value.problems]
    assert texts == [
        "campaigns.json, row 1, column 'members': account 'yy' is not in labels.csv"
        " (results of another log, or incomplete labels?)",
        "verdicts.jsonl, row 2, column 'account_id': account 'zz' is not in labels.csv"
        " (results of another log, or incomplete labels?)",
    ]


def test_missing_labels_is_a_clear_error(
    make_log: Callable[..., Path], make_results: Callable[..., Path]
) -> None:
    with pytest.raises(
        DistillguardError, match=r"has no labels\.csv: evaluation needs ground truth"
    ):
        evaluate_run(make_log(labels=None), make_results(verdicts=VERDICTS))


def test_empty_result_dir_is_a_clear_error(make_log: Callable[..., Path], tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DistillguardError, match=r"holds none of verdicts\.jsonl"):
        evaluate_run(make_log(), tmp_path / "empty")


def test_written_json_is_machine_readable(
    make_log: Callable[..., Path], make_results: Callable[..., Path], tmp_path: Path
) -> None:
    report = evaluate_run(make_log(), make_results(verdicts=VERDICTS, campaigns=CAMPAIGNS))
    json_path, md_path = write_evaluation(report, tmp_path / "eval")
    data = json.loads(json_path.read_text())
    assert data["format"] == "distillguard-evaluation/1"
    assert data["headline"]["account_recall"] == pytest.approx(0.6)
    assert data["detect"]["campaigns"]["c1"]["exchange_recall"] == pytest.approx(0.8)
    assert data["detect"]["hard_negative_suspensions"]["saas_backend"] == {
        "accounts": 2,
        "suspended": 1,
    }
    assert data["detect"]["clusters"]["clusters"][1]["cluster_id"] == "K2"
    assert data["replay"] is None
    markdown = md_path.read_text()
    assert markdown.index("## Headline") < markdown.index("## Campaigns")
    assert "| attack-account recall | 60.0 % (3/5) |" in markdown
