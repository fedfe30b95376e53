"""DuckDB connections read times as UTC instants: same epochs as Ibis' stock compiler, none of its per-row calendar cast, and no host time zone."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import ibis
import numpy as np
import pyarrow as pa

from distillguard.core.duckdb_backend import connect_ibis


def _instants() -> pa.Table:
    rng = np.random.default_rng(11)
    start = datetime(1969, 12, 31, 23, 0, tzinfo=UTC)
    offsets = rng.integers(0, 60 * 365 * 86_400_000, size=2_000)
    stamps = [start + timedelta(milliseconds=int(ms)) for ms in offsets]
    return pa.table({"ts": pa.array(stamps, pa.timestamp("ms", tz="UTC"))})


def _epochs(backend: ibis.BaseBackend, data: pa.Table) -> pa.Table:
    t = backend.create_table("instants", data, overwrite=True)  # type: ignore[attr-defined]
    e = t.ts.epoch_seconds()
    result: pa.Table = backend.to_pyarrow(  # type: ignore[attr-defined]
        t.select(
            sec=e.cast("float64"),
            hour=((e // 3600) % 24).cast("int64"),
            day=(e // 86400).cast("int64"),
        )
    )
    return result


def test_epochs_match_the_stock_compiler_bit_for_bit_without_the_calendar_cast() -> None:
    data = _instants()
    ours, stock = connect_ibis(), ibis.duckdb.connect()
    assert _epochs(ours, data).equals(_epochs(stock, data))
    t = ours.create_table("instants", data, overwrite=True)
    compiled = str(ours.compile(t.select(e=t.ts.epoch_seconds())))
    assert "EPOCH_US" in compiled.upper() and "AS TIMESTAMP)" not in compiled.upper()


def test_raw_connections_ignore_the_host_time_zone() -> None:
    probe = (
        "from distillguard.core.duckdb_backend import connect_raw\n"
        "import duckdb\n"
        "q = \"select epoch_ms(date_trunc('hour', TIMESTAMPTZ '2026-06-01 00:10:00+00'))\"\n"
        "print(connect_raw().sql(q).fetchone()[0], duckdb.connect().sql(q).fetchone()[0])\n"
    )
    env = {**os.environ, "TZ": "Asia/Kolkata"}
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    )
    ours, host = (int(v) for v in out.stdout.split())
    hour = int(datetime(2026, 6, 1, tzinfo=UTC).timestamp() * 1000)
    assert ours == hour
    assert host == hour - 30 * 60 * 1000  # what a plain connection gives there
