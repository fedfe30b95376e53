"""Shared helpers for the ingest tests: a copy of the example log and a private staging dir."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

EXAMPLE = Path(__file__).resolve().parents[3] / "shared" / "spec" / "example-log"


@pytest.fixture
def config(tmp_path: Path) -> dict[str, Any]:
    return {
        "ingest": {
            "work_dir": str(tmp_path / "work"),
            "max_problems_per_kind": 20,
            "batch_rows": 1000,
        }
    }


@pytest.fixture
def example(tmp_path: Path) -> Path:
    """A writable copy of shared/spec/example-log."""
    dest = tmp_path / "log"
    shutil.copytree(EXAMPLE, dest)
    for p in dest.iterdir():
        p.chmod(0o644)
    return dest
