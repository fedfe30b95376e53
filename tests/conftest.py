"""Suite-wide fixtures: keep every test's signing keys out of the user's home directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(autouse=True, scope="session")
def _private_key_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    key_dir = tmp_path_factory.mktemp("signing-keys")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DISTILLGUARD_KEY_DIR", str(key_dir))
        yield key_dir
