"""Broken result files get errors naming file, row and column; the documented shapes are accepted."""

from __future__ import annotations

from pathlib import Path

import pytest

from distillguard.core.errors import InvalidInputError
from distillguard.evaluate.results import read_campaigns, read_decisions, read_verdicts


def problems(exc: pytest.ExceptionInfo[InvalidInputError]) -> list[str]:
    return [str(p) for p in exc.value.problems]


def test_verdicts_bad_action_duplicate_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "verdicts.jsonl"
    path.write_text(
        '{"account_id": "a", "action": "suspend"}\n'
        "\n"
        '{"account_id": "b", "action": "ban"}\n'
        '{"account_id": "a", "action": "allow"}\n'
        '{"action": "allow"}\n'
    )
    with pytest.raises(InvalidInputError) as info:
        read_verdicts(path)
    assert problems(info) == [
        "verdicts.jsonl, row 3, column 'action': 'ban' is not one of allow, monitor, throttle, challenge, suspend",
        "verdicts.jsonl, row 4, column 'account_id': account 'a' has more than one verdict",
        "verdicts.jsonl, row 5, column 'account_id': missing or null",
    ]


def test_verdicts_malformed_json_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "verdicts.jsonl"
    path.write_text('{"account_id": "a", "action": "suspend"}\n{"account_id": "b", \n')
    with pytest.raises(InvalidInputError) as info:
        read_verdicts(path)
    assert len(info.value.problems) == 1
    assert str(info.value.problems[0]).startswith("verdicts.jsonl, row 2: not valid JSON")


def test_blank_verdicts_file_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "verdicts.jsonl"
    path.write_text("\n\n")
    assert read_verdicts(path).height == 0


def test_decisions_parse_both_timestamp_forms_and_reject_others(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    path.write_text(
        '{"ts": "2026-05-04T09:12:03.120Z", "account_id": "a", "action": "suspend"}\n'
        '{"ts": 1777885955000, "account_id": "b", "action": "allow"}\n'
    )
    frame = read_decisions(path)
    assert frame["seq"].to_list() == [0, 1]
    assert [t.isoformat() for t in frame["ts"].to_list()] == [
        "2026-05-04T09:12:03.120000+00:00",
        "2026-05-04T09:12:35+00:00",
    ]
    path.write_text(
        '{"ts": "yesterday", "account_id": "a", "action": "suspend"}\n{"account_id": "a", "action": "allow"}\n'
    )
    with pytest.raises(InvalidInputError) as info:
        read_decisions(path)
    assert problems(info) == [
        "decisions.jsonl, row 1, column 'ts': 'yesterday' is neither RFC 3339 nor epoch milliseconds",
        "decisions.jsonl, row 2, column 'ts': missing or null",
    ]


def test_campaigns_shapes(tmp_path: Path) -> None:
    path = tmp_path / "campaigns.json"
    path.write_text('{"campaigns": [{"id": "K", "members": ["a", "b", "a"], "confidence": 1}]}')
    read = read_campaigns(path)
    assert read.clusters["account_id"].to_list() == ["a", "b"]  # a repeated member counts once
    assert read.info.row(0) == ("K", 2, 1.0)
    path.write_text(
        '[{"id": "K", "members": "a"}, {"id": "K", "members": []}, {"members": [], "confidence": "high"}, 3]'
    )
    with pytest.raises(InvalidInputError) as info:
        read_campaigns(path)
    assert problems(info) == [
        "campaigns.json, row 1, column 'members': must be a list of account_id strings",
        "campaigns.json, row 3, column 'confidence': must be a number or absent",
        "campaigns.json, row 3, column 'id': missing or not a non-empty string",
        "campaigns.json, row 4: each campaign must be a JSON object",
    ]
    path.write_text('{"clusters": []}')
    with pytest.raises(InvalidInputError, match="campaigns"):
        read_campaigns(path)
