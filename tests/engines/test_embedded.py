"""The embedded engine's memory: what it caches of held tables can be given back and read again."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from distillguard.engines.embedded import EmbeddedEngine


def _buffer_bytes(engine: EmbeddedEngine) -> int:
    row = engine.backend.raw_sql("SELECT sum(memory_usage_bytes) FROM duckdb_memory()").fetchone()
    return int(row[0])


def _limit(engine: EmbeddedEngine) -> float:
    """DuckDB's memory cap in bytes, from the rounded figure it reports ('953.6 MiB')."""
    shown = str(engine.backend.raw_sql("SELECT current_setting('memory_limit')").fetchone()[0])
    number, unit = shown.split()
    return float(number) * 2 ** (10 * ["KiB", "MiB", "GiB", "TiB"].index(unit) + 10)


@pytest.mark.parametrize("memory_limit", ["1GB", None])
def test_release_memory_evicts_held_tables_and_keeps_them_readable(
    tmp_path: Path, memory_limit: str | None
) -> None:
    engine = EmbeddedEngine(threads=1, memory_limit=memory_limit, database=tmp_path / "held.duckdb")
    limit = _limit(engine)
    n = 12_000_000  # well above the 16 MB the buffer pool is squeezed to
    source = engine.table("numbers", pa.table({"i": pa.array(range(n), pa.int64())}))
    scrambled = (source.i * 2_654_435_761) % 2_147_483_647  # defeats compression
    held = engine.cache(source.mutate(j=scrambled, w=scrambled.cast("float64") / n))
    total = held.aggregate(s=held.j.sum(), m=held.w.max())
    before = engine.to_arrow(total).to_pylist()
    cached = _buffer_bytes(engine)
    assert cached > 128 * 2**20  # the held table's blocks are in the buffer pool

    engine.release_memory()

    assert _buffer_bytes(engine) < cached / 4
    assert _limit(engine) == pytest.approx(limit, rel=0.01)  # the cap is back where it was
    assert engine.to_arrow(total).to_pylist() == before  # read back from disk, unchanged
    assert engine.to_arrow(held.aggregate(n=held.count())).to_pylist() == [{"n": n}]
