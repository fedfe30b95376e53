"""Tiny hand-built log and result directories for the evaluation tests."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

T0 = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)


def at(minutes: float) -> datetime:
    """A time ``minutes`` after T0."""
    return T0 + timedelta(minutes=minutes)


def rfc3339(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def epoch_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


#: (account_id, label, campaign, persona)
Label = tuple[str, str, str, str]


def write_log(
    root: Path,
    labels: Sequence[Label] | None,
    exchanges: Mapping[str, Sequence[float]],
) -> Path:
    """A log dir: ``exchanges`` maps account → minutes after T0 of each of its exchanges.

    Timestamps alternate between RFC 3339 strings and epoch milliseconds, as the contract allows.
    """
    logdir = root / "log"
    logdir.mkdir()
    lines = []
    n = 0
    for account, minutes in exchanges.items():
        for m in minutes:
            n += 1
            moment = at(m)
            lines.append(
                {
                    "ts": rfc3339(moment) if n % 2 else epoch_ms(moment),
                    "request_id": f"req-{n:05d}",
                    "account_id": account,
                    "client_ip": "81.2.69.160",
                    "model": "model-large",
                    "prompt": "hello",
                    "input_tokens": 10,
                    "output_tokens": 20,
                }
            )
    (logdir / "exchanges.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    accounts = sorted({a for a in exchanges} | {label[0] for label in labels or ()})
    with (logdir / "accounts.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["account_id", "created_at", "verification"])
        for account in accounts:
            writer.writerow([account, "2026-01-01T00:00:00Z", "email"])
    if labels is not None:
        with (logdir / "labels.csv").open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["account_id", "label", "campaign", "persona"])
            writer.writerows(labels)
    return logdir


def write_results(
    root: Path,
    verdicts: Mapping[str, str] | None = None,
    campaigns: Any = None,
    decisions: Iterable[tuple[float, str, str]] | None = None,
) -> Path:
    """A result dir: verdicts account → action; campaigns as given (JSON-able);
    decisions as (minutes after T0, account, action) in file order."""
    resultdir = root / "results"
    resultdir.mkdir(exist_ok=True)
    if verdicts is not None:
        (resultdir / "verdicts.jsonl").write_text(
            "".join(
                json.dumps(
                    {
                        "account_id": a,
                        "action": act,
                        "score": 0.9,
                        "cluster_id": None,
                        "reasons": [{"signal": "s", "value": 1, "detail": {}}],
                    }
                )
                + "\n"
                for a, act in verdicts.items()
            )
        )
    if campaigns is not None:
        (resultdir / "campaigns.json").write_text(json.dumps(campaigns))
    if decisions is not None:
        (resultdir / "decisions.jsonl").write_text(
            "".join(
                json.dumps(
                    {
                        "ts": rfc3339(at(m)),
                        "account_id": a,
                        "action": act,
                        "cluster_id": None,
                        "reasons": [],
                    }
                )
                + "\n"
                for m, a, act in decisions
            )
        )
    return resultdir


# The standard scenario: two campaigns and benign personas, some of them hard negatives.
LABELS: list[Label] = [
    ("a1", "attack", "c1", "hydra"),
    ("a2", "attack", "c1", "hydra"),
    ("a3", "attack", "c1", "hydra"),
    ("b1", "attack", "c2", "hydra"),
    ("b2", "attack", "c2", "hydra"),
    ("d1", "benign", "", "developer"),
    ("s1", "benign", "", "saas_backend"),
    ("s2", "benign", "", "saas_backend"),
    ("u1", "benign", "", "university_class"),
    ("e1", "benign", "", "eval_lab"),
]
EXCHANGES: dict[str, list[float]] = {
    "a1": [0, 1, 2, 3, 4],
    "a2": [10, 11, 12],
    "a3": [20, 21],
    "b1": [5, 6, 7, 8],
    "b2": [30, 31, 32, 33],
    "d1": [0, 50],
    "s1": [1, 2, 3],
    "s2": [4],
    "u1": [40, 41],
    "e1": [45],
}


@pytest.fixture
def make_log(tmp_path: Path) -> Callable[..., Path]:
    def make(
        labels: Sequence[Label] | None = LABELS,
        exchanges: Mapping[str, Sequence[float]] = EXCHANGES,
    ) -> Path:
        return write_log(tmp_path, labels, exchanges)

    return make


@pytest.fixture
def make_results(tmp_path: Path) -> Callable[..., Path]:
    def make(**kwargs: Any) -> Path:
        return write_results(tmp_path, **kwargs)

    return make
