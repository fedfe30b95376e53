"""Shared fixtures for the evidence tests: a small contract exchange table and a pristine case file."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from distillguard.core.schema import EXCHANGE_SCHEMA
from distillguard.evidence import CaseManifest, write_case

IP_KEY = bytes(range(32))
SIGNING_SEED = bytes(range(100, 132))
RUN_INFO = {
    "config_hash": "c" * 64,
    "detector_versions": {"template": "1.0.0", "velocity": "0.3.1"},
    "input_digests": {"exchanges.jsonl": "d" * 64},
}
CAMPAIGN = {"id": "camp-7", "members": ["acct-1", "acct-2", "acct-3"], "confidence": 0.93}
VERDICTS = [
    {
        "account_id": f"acct-{i}",
        "action": "suspend",
        "score": 0.9,
        "cluster_id": "camp-7",
        "reasons": [{"signal": "template", "value": 0.8, "detail": {"sample": ["r-0001"]}}],
    }
    for i in (1, 2, 3)
]
ADDRESSES = ["203.0.113.7", "2001:DB8::1", "198.51.100.23", "::ffff:192.0.2.1", "10.1.2.3"]
PROMPTS = [
    "Solve step by step: 17 * 23",
    "",
    "Écris un poème\nsur la mer",
    'quote " and \\ back',
    "数学 😀",
]


def signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(SIGNING_SEED)


def exchange_table(rows: int = 37) -> pa.Table:
    """A contract exchange table, deliberately not in (ts, request_id) order, with ties in ts."""
    start = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    order = [(i * 7) % rows for i in range(rows)]
    data = {
        "ts": [start + timedelta(milliseconds=1500 * (i // 2)) for i in order],
        "request_id": [f"r-{i:04d}" for i in order],
        "account_id": [f"acct-{1 + i % 3}" for i in order],
        "client_ip": [ADDRESSES[i % len(ADDRESSES)] for i in order],
        "model": ["model-large" if i % 4 else "model-small" for i in order],
        "prompt": [PROMPTS[i % len(PROMPTS)] + f" #{i}" * (i % 2) for i in order],
        "input_tokens": [100 + i for i in order],
        "output_tokens": [900 - i for i in order],
        "user_agent": [None if i % 3 else "sdk/1.2" for i in order],
        "thinking": [None if i % 5 == 0 else bool(i % 2) for i in order],
        "status": [200] * rows,
    }
    types = {f.name: f.type for f in EXCHANGE_SCHEMA}
    return pa.table({name: pa.array(values, types[name]) for name, values in data.items()})


def make_case(case_dir: Path, rows: int = 37) -> CaseManifest:
    return write_case(
        case_dir,
        campaign=CAMPAIGN,
        exchanges=exchange_table(rows),
        verdicts=VERDICTS,
        run_info=RUN_INFO,
        signing_key=signing_key(),
        ip_key=IP_KEY,
    )


@pytest.fixture(scope="session")
def pristine_case(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, CaseManifest]:
    case_dir = tmp_path_factory.mktemp("pristine") / "case"
    return case_dir, make_case(case_dir)


@pytest.fixture
def case_copy(pristine_case: tuple[Path, CaseManifest], tmp_path: Path) -> Path:
    copy = tmp_path / "case"
    shutil.copytree(pristine_case[0], copy)
    return copy
