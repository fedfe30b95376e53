"""The golden scenario: detection on a fixed simulated log reproduces the committed outputs exactly.

The golden file is written only by ``scripts/regenerate_golden.py``; a failure here means
detection behaviour changed — regenerate on purpose, never edit the file by hand.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _script():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(
        "regenerate_golden", ROOT / "scripts" / "regenerate_golden.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_detect_reproduces_the_golden_scenario(tmp_path: Path) -> None:
    script = _script()
    expected = json.loads(script.GOLDEN.read_text(encoding="utf-8"))
    actual = script.run(tmp_path)
    assert actual["campaigns"] == expected["campaigns"]
    assert actual["actions"] == expected["actions"]
    assert actual["verdicts_sha256"] == expected["verdicts_sha256"]
    assert expected["campaigns"], "the golden scenario must contain detected campaigns"
