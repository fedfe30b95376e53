"""The package keeps Arrow's allocator from handing memory back between batches, unless told."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

_PROBE = "import distillguard, pyarrow, os; print(os.environ.get('MIMALLOC_PURGE_DELAY'))"


def _purge_delay_seen(**env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k != "MIMALLOC_PURGE_DELAY"}
    out = subprocess.run(
        [sys.executable, "-c", _PROBE],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def test_importing_distillguard_keeps_freed_arrow_memory_for_reuse() -> None:
    assert _purge_delay_seen() == "10000"


@pytest.mark.parametrize("setting", ["10", "-1"])
def test_an_explicit_purge_delay_in_the_environment_wins(setting: str) -> None:
    assert _purge_delay_seen(MIMALLOC_PURGE_DELAY=setting) == setting
