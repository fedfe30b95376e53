"""Conformance suite over every registered exchange-level and account-level detector (style.md, tests that can fail #1)."""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from distillguard.core.detector import KEY_COLUMNS, Detections, Detector, Level
from distillguard.core.schema import EXCHANGE_OPTIONAL, EXCHANGE_SCHEMA
from distillguard.features import REGISTRY as ACCOUNT_REGISTRY
from distillguard.signals import REGISTRY as EXCHANGE_REGISTRY
from distillguard.signals.capability import load_model
from distillguard.signals.exchange import NetworkKindDetector, exchange_signals
from distillguard.signals.template import TemplateIndex

INTEL = pa.table(
    {
        "cidr": ["81.2.69.0/24", "34.64.0.0/10", "73.0.0.0/8", "73.162.44.0/24", "2a02:8108::/32"],
        "asn": pa.array([20712, 396982, 7922, 7922, 3209], pa.int64()),
        "asn_org": ["A&A", "GOOGLE", "COMCAST", "COMCAST", "Vodafone"],
        "kind": ["residential", "datacenter", "residential", "proxy", "residential"],
    }
)
PROMPTS = (
    "Here is a problem and its completed answer. Write out the internal reasoning behind this completed answer step by step: {n}",
    "Rate the following response on a scale of 1 to 10 for helpfulness. Output only the score. Response {n}",
    "Rewrite the following assistant response so that it is harmless: answer {n}",
    "Why does my pytest fixture run twice when I use autouse in conftest number {n}?",
    "Translate into French: the meeting {n} moved to Thursday.",
    "",
)
IPS = ("81.2.69.160", "34.120.8.19", "73.162.44.9", "2a02:8108:1140:7e00::5", "8.8.8.8")


@lru_cache(maxsize=1)
def exchanges() -> pa.Table:
    rng = np.random.default_rng(11)
    n = 240
    account = rng.integers(0, 8, n)
    cols: dict[str, Any] = {
        "ts": pa.array(
            1_780_000_000_000 + np.sort(rng.integers(0, 5 * 86_400_000, n)),
            pa.timestamp("ms", tz="UTC"),
        ),
        "request_id": [f"req-{i:04d}" for i in range(n)],
        "account_id": [f"acct-{a}" for a in account.tolist()],
        "client_ip": [IPS[i] for i in rng.integers(0, len(IPS), n).tolist()],
        "model": ["m-new" if x else "m-old" for x in (rng.random(n) < 0.3).tolist()],
        "prompt": [
            PROMPTS[(a + j) % len(PROMPTS)].format(n=j)
            for j, a in zip(rng.integers(0, 3, n).tolist(), account.tolist(), strict=True)
        ],
        "input_tokens": pa.array(rng.integers(10, 500, n), pa.int64()),
        "output_tokens": pa.array(rng.integers(10, 3000, n), pa.int64()),
        "end_user_id": [f"u{x}" for x in rng.integers(0, 3, n).tolist()],
        "thinking": pa.array(rng.random(n) < 0.5),
    }
    table = pa.table(cols)
    for f in EXCHANGE_SCHEMA:
        if f.name not in table.column_names:
            table = table.append_column(f.name, pa.nulls(n, f.type))
    return table.select(EXCHANGE_SCHEMA.names).cast(EXCHANGE_SCHEMA)


@lru_cache(maxsize=1)
def signals() -> pa.Table:
    return exchange_signals(exchanges(), model=load_model(), index=TemplateIndex(), intel=INTEL)


ACCOUNTS = pa.table(
    {
        "account_id": [f"acct-{i}" for i in range(8)],
        "created_at": pa.array(
            [1_779_900_000_000 - i * 40 * 86_400_000 for i in range(8)],
            pa.timestamp("ms", tz="UTC"),
        ),
        "verification": ["none", "email", "phone", "card", "kyc", "email", None, "none"],
    }
)


def _make(registry: dict[str, Any], name: str) -> Detector:
    cls = registry[name]
    if cls is NetworkKindDetector:
        return NetworkKindDetector(INTEL)
    if registry is ACCOUNT_REGISTRY:
        account_detector: Detector = cls(accounts=ACCOUNTS)
        return account_detector
    instance: Detector = cls()
    return instance


CASES = [("exchange", n) for n in sorted(EXCHANGE_REGISTRY)] + [
    ("account", n) for n in sorted(ACCOUNT_REGISTRY)
]


@pytest.fixture(params=CASES, ids=[f"{k}:{n}" for k, n in CASES])
def case(request: pytest.FixtureRequest) -> tuple[Detector, pa.Table, tuple[str, ...]]:
    kind, name = request.param
    if kind == "exchange":
        return _make(EXCHANGE_REGISTRY, name), exchanges(), tuple(f.name for f in EXCHANGE_OPTIONAL)
    optional = ("end_user_id", "api_key_id", "user_agent", "thinking", "tools_count", "system_prompt_sha256",
                "capability", "capability_conf", "reasoning_elicitation", "grader_use", "rewrite_request",
                "template_id", "scaffold_hash", "asn", "ip_prefix")  # fmt: skip
    return _make(ACCOUNT_REGISTRY, name), signals(), optional


_BASE: dict[str, Detections] = {}


def _base(det: Detector) -> Detections:
    """The detector's result on the shared input, computed once per detector (keeps the suite fast)."""
    if det.info.id not in _BASE:
        table = exchanges() if det.info.level is Level.EXCHANGE else signals()
        _BASE[det.info.id] = det.score(table)
    return _BASE[det.info.id]


def _keyed(det: Detector, result: Detections) -> dict[tuple[Any, ...], float | None]:
    scores = result.scores
    keys = KEY_COLUMNS[det.info.level]
    rows = zip(*(scores[k].to_pylist() for k in keys), scores["score"].to_pylist(), strict=True)
    return {tuple(r[:-1]): r[-1] for r in rows}


def _by_key(det: Detector, table: pa.Table) -> dict[tuple[Any, ...], float | None]:
    return _keyed(det, det.score(table))


def _same(a: dict[tuple[Any, ...], float | None], b: dict[tuple[Any, ...], float | None]) -> bool:
    if a.keys() != b.keys():
        return False
    return all((x is None and y is None) or (x is not None and y is not None and math.isclose(x, y, abs_tol=1e-12))
               for x, y in ((a[k], b[k]) for k in a))  # fmt: skip


def test_metadata(case: tuple[Detector, pa.Table, tuple[str, ...]]) -> None:
    det, _, _ = case
    assert det.info.level in (Level.EXCHANGE, Level.ACCOUNT)
    assert det.info.falsepositives and det.info.runbook and det.info.description
    assert type(det).__doc__ and "benign" in type(det).__doc__.lower()


def test_deterministic_and_input_not_mutated(
    case: tuple[Detector, pa.Table, tuple[str, ...]],
) -> None:
    det, table, _ = case
    before = table.take(np.arange(table.num_rows))  # a deep-enough copy for equality
    first = _by_key(det, table)
    assert table.equals(before)
    assert _same(first, _keyed(det, _base(det)))


def test_row_order_irrelevant(case: tuple[Detector, pa.Table, tuple[str, ...]]) -> None:
    det, table, _ = case
    order = np.random.default_rng(5).permutation(table.num_rows)
    assert _same(_keyed(det, _base(det)), _by_key(det, table.take(order)))


def test_scores_in_unit_interval_keys_unique(
    case: tuple[Detector, pa.Table, tuple[str, ...]],
) -> None:
    det, _, _ = case
    scores = _base(det).scores
    keys = KEY_COLUMNS[det.info.level]
    assert {*keys, "score", "value", "abstain_reason"} <= set(scores.column_names)
    key_rows = list(zip(*(scores[k].to_pylist() for k in keys), strict=True))
    assert len(key_rows) == len(set(key_rows))
    values = scores["score"].to_pylist()
    assert any(v is not None for v in values), "detector abstained on everything in a rich input"
    for v, reason in zip(values, scores["abstain_reason"].to_pylist(), strict=True):
        assert (v is None) == (reason is not None)
        assert v is None or 0.0 <= v <= 1.0


def test_missing_optional_columns_abstain_not_crash(
    case: tuple[Detector, pa.Table, tuple[str, ...]],
) -> None:
    det, table, optional = case
    stripped = table.drop_columns([c for c in optional if c in table.column_names])
    scores = det.score(stripped).scores
    for v in scores["score"].to_pylist():
        assert v is None or 0.0 <= v <= 1.0


def test_evidence_points_at_existing_rows(case: tuple[Detector, pa.Table, tuple[str, ...]]) -> None:
    det, table, _ = case
    result = _base(det)
    request_ids = set(table["request_id"].to_pylist())
    first_key = set(result.scores[KEY_COLUMNS[det.info.level][0]].to_pylist())
    for key, item in result.evidence.items():
        assert key in first_key
        assert set(item.get("sample_request_ids", [])) <= request_ids
