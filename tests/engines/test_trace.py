"""The engine call trace: each materialisation logged with the stage function that asked for it."""

from __future__ import annotations

import logging
import subprocess
import sys

import ibis
import ibis.expr.types as ir
import pyarrow as pa
import pytest

from distillguard.engines.embedded import EmbeddedEngine


def _stage_that_counts(engine: EmbeddedEngine, table: ir.Table) -> pa.Table:
    held = engine.cache(table.group_by("k").agg(n=ibis._.count()))
    return engine.to_arrow(held.order_by("k"))


def test_each_engine_call_is_logged_with_its_caller_and_rows(
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine = EmbeddedEngine(threads=1)
    table = engine.table("t", pa.table({"k": ["a", "b", "a"]}))
    with caplog.at_level(logging.DEBUG, logger="distillguard.engine"):
        result = _stage_that_counts(engine, table)
    assert result.num_rows == 2
    lines = [r.getMessage() for r in caplog.records if r.name == "distillguard.engine"]
    assert len(lines) == 2
    assert lines[0].startswith("cache _stage_that_counts:")
    assert lines[1].startswith("to_arrow _stage_that_counts:") and " 2 rows (" in lines[1]
    # Memory beside each call: the process's, and what DuckDB's buffer manager holds.
    assert all("GiB" in line and "duckdb " in line for line in lines)


def test_nothing_is_logged_unless_asked(caplog: pytest.LogCaptureFixture) -> None:
    engine = EmbeddedEngine(threads=1)
    table = engine.table("t", pa.table({"k": ["a"]}))
    with caplog.at_level(logging.INFO, logger="distillguard.engine"):
        _stage_that_counts(engine, table)
    assert not [r for r in caplog.records if r.name == "distillguard.engine"]


def test_an_unknown_log_level_is_a_usage_error() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "distillguard", "--help"],
        env={"DISTILLGUARD_LOG": "chatty", "PATH": ""},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert "DISTILLGUARD_LOG='chatty'" in done.stderr
