"""Replay drops the sketches of windows time has passed: no count changes, far fewer sketches held."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from distillguard.core.config import load_config
from distillguard.enforce.campaigns import CampaignWatcher
from distillguard.enforce.online import BatchContentSignals, Enforcer
from distillguard.enforce.replay import replay_table
from distillguard.enforce.settings import EnforceSettings
from distillguard.enforce.state import MemoryState
from distillguard.enforce.windows import PassedWindows
from distillguard.ingest import load_log
from distillguard.ingest.log import Log
from distillguard.simulate import simulate

WINDOWED = re.compile(r"^(pfx|sip|net|cty):.*\|(-?\d+)$")


@pytest.fixture(scope="module")
def tiny_log(tmp_path_factory: pytest.TempPathFactory) -> Log:
    out = simulate("default", "tiny", 4243, tmp_path_factory.mktemp("sim") / "log").out
    return load_log(out, load_config())


def _replay(
    log: Log, out: Path, cap: int, batch_rows: int, expire: bool = True
) -> tuple[bytes, Enforcer]:
    config = load_config()
    settings = dataclasses.replace(EnforceSettings.from_config(config), max_sketch_keys=cap)
    enforcer = Enforcer(
        config, campaigns=CampaignWatcher(None, 0.3), settings=settings, intel=log.ip_intel
    )
    if not expire:
        enforcer.drop_passed_windows = lambda now_ms: 0  # type: ignore[method-assign]
    content = BatchContentSignals(config, intel=log.ip_intel, carry_over=True)
    out.mkdir()
    replay_table(
        log.exchanges, log.accounts, enforcer, out, batch_rows, content, False, signal_rows=4000
    )
    return (out / "decisions.jsonl").read_bytes(), enforcer


def _windowed(backend: MemoryState) -> list[tuple[str, int]]:
    return [(m.group(1), int(m.group(2))) for k in backend._sketches if (m := WINDOWED.match(k))]


def test_passed_windows_names_each_past_key_once_and_keeps_the_current_bucket() -> None:
    windows = PassedWindows({"cty:": 7_200_000.0, "sip:": 86_400_000.0, "pfx:": 0.0})
    windows.note(
        pl.Series(["cty:a|0", "cty:b|1", "sip:1.2.3.4|0", "ip:a", "tpl:9", "pfx:p|0", None])
    )
    windows.note(pl.Series(["cty:a|0", "cty:c|2"]))
    assert sorted(windows.passed(7_200_000.0)) == ["cty:a|0", "cty:a|0"]  # bucket 1 is current
    assert windows.passed(7_200_000.0) == []  # named once
    assert sorted(windows.passed(86_400_000.0)) == ["cty:b|1", "cty:c|2", "sip:1.2.3.4|0"]
    assert not PassedWindows({"cty:": 0.0}).active


def test_replay_drops_passed_windows_without_changing_a_decision(
    tiny_log: Log, tmp_path: Path
) -> None:
    kept, with_drops = _replay(tiny_log, tmp_path / "drop", 10**9, 1000)
    every, without = _replay(tiny_log, tmp_path / "keep", 10**9, 1000, expire=False)
    assert kept == every and kept  # dropped keys were never read again
    assert isinstance(with_drops.backend, MemoryState) and isinstance(without.backend, MemoryState)
    held, all_keys = with_drops.backend.size()["sketches"], without.backend.size()["sketches"]
    assert held * 3 < all_keys
    # What is left of the windowed sketches is the last signal block's buckets, nothing older.
    ts = np.sort(tiny_log.exchanges.to_table(columns=["ts"]).column("ts").cast("int64").to_numpy())
    last_block_ms = int(ts[((len(ts) - 1) // 4000) * 4000])
    window = {"cty": 7_200_000, "pfx": 3_600_000, "sip": 86_400_000, "net": 86_400_000}
    left = _windowed(with_drops.backend)
    assert left and all(b >= last_block_ms // window[k] for k, b in left)
    assert any(b < last_block_ms // window[k] for k, b in _windowed(without.backend))


def test_under_a_binding_cap_decisions_do_not_depend_on_the_batch_size(
    tiny_log: Log, tmp_path: Path
) -> None:
    small, e_small = _replay(tiny_log, tmp_path / "b997", 2500, 997)
    large, _ = _replay(tiny_log, tmp_path / "b4000", 2500, 4000)
    assert small == large and small
    assert isinstance(e_small.backend, MemoryState)
    assert e_small.backend.size()["sketches"] <= 2500
