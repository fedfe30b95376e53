"""Regenerate the golden detection scenario (tests/golden/): the only way those files may change.

Usage: python scripts/regenerate_golden.py. Simulates the `default` scenario at `tiny` scale
with seed 77, runs `detect` on it and records digests of its outputs plus a readable summary.
Run it only when a change to detection is intended, and say why in the commit.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from distillguard.core.atomic import write_text_atomic
from distillguard.core.config import load_config
from distillguard.pipeline import run_detect, write_outputs
from distillguard.simulate import simulate

SCENARIO, SCALE, SEED = "default", "tiny", 77
GOLDEN = Path(__file__).resolve().parents[1] / "tests" / "golden" / "tiny-default-77.json"


def golden_summary(logdir: Path, outdir: Path) -> dict[str, object]:
    """What the golden file pins: output digests, actions per account, campaign memberships."""
    import hashlib

    verdicts = [json.loads(line) for line in (outdir / "verdicts.jsonl").read_text().splitlines()]
    campaigns = json.loads((outdir / "campaigns.json").read_text())["campaigns"]
    return {
        "scenario": [SCENARIO, SCALE, SEED],
        "verdicts_sha256": hashlib.sha256((outdir / "verdicts.jsonl").read_bytes()).hexdigest(),
        "actions": {v["account_id"]: v["action"] for v in verdicts},
        "campaigns": {c["id"]: sorted(c["members"]) for c in campaigns},
    }


def run(workdir: Path) -> dict[str, object]:
    logdir, outdir = workdir / "log", workdir / "out"
    simulate(SCENARIO, SCALE, SEED, logdir)
    config = load_config()
    write_outputs(run_detect(logdir, config), outdir)
    return golden_summary(logdir, outdir)


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        summary = run(Path(tmp))
    write_text_atomic(GOLDEN, json.dumps(summary, indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
