"""The embedded engine: an in-process DuckDB behind Ibis, holding Arrow tables and Parquet datasets."""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import duckdb
import ibis.expr.types as ir
import pyarrow as pa
import pyarrow.dataset as pads

from distillguard.core.duckdb_backend import connect_ibis
from distillguard.core.engine import release_arrow_memory, trace_call, tracing


class EmbeddedEngine:
    """Registers Arrow inputs as named tables and materialises Ibis expressions back to Arrow.

    The same expressions run unchanged on another Ibis backend (Spark), so stages take
    ``ir.Table`` arguments and never touch DuckDB directly.
    """

    def __init__(
        self,
        threads: int | None = None,
        memory_limit: str | None = None,
        database: str | Path | None = None,
    ) -> None:
        # With ``database`` (a file in a scratch folder) the tables a stage caches live in that
        # file, so DuckDB can evict them from memory under its cap; an in-memory database must
        # keep every cached table resident, which ran out of memory at the seed scale.
        self._database = database
        self._held = itertools.count()
        self.backend: Any = connect_ibis(":memory:" if database is None else database)
        if database is not None:
            spill = Path(database).with_suffix(".spill")
            self.backend.raw_sql(f"SET temp_directory = '{spill.as_posix()}'")
        if threads is not None:
            self.backend.raw_sql(f"SET threads = {int(threads)}")
        if memory_limit is not None:
            self.backend.raw_sql(f"SET memory_limit = '{memory_limit}'")
        # The cap release_memory() sets back: as configured, or DuckDB's own default as it reads
        # it (RESET after a SET did not restore the default).
        self._memory_limit = memory_limit or str(
            self.backend.raw_sql("SELECT current_setting('memory_limit')").fetchone()[0]
        )
        # Frees DuckDB from keeping row order in large intermediates; every expression a stage
        # materialises ends in an ORDER BY, so no result depends on it.
        self.backend.raw_sql("SET preserve_insertion_order = false")

    def table(self, name: str, data: pa.Table | pads.Dataset) -> ir.Table:
        """Expose ``data`` (not copied) as table ``name``."""
        self.backend.con.register(name, data)
        return self.backend.table(name)

    def cache(self, expr: ir.Table) -> ir.Table:
        """Materialise ``expr`` once as a table of this engine's database (evictable when file-backed)."""
        started = time.perf_counter()
        name = f"held_{next(self._held)}"
        self.backend.create_table(name, expr, temp=self._database is None)
        trace_call("cache", started, memory=self._duckdb_memory())
        return self.backend.table(name)

    def to_arrow(self, expr: ir.Table) -> pa.Table:
        """Execute ``expr`` and return the result as an Arrow table."""
        started = time.perf_counter()
        result: pa.Table = self.backend.to_pyarrow(expr)
        trace_call("to_arrow", started, result.num_rows, memory=self._duckdb_memory())
        return result

    def release_memory(self) -> None:
        """Evict DuckDB's buffer pool: lowering its cap makes it drop the cached blocks of held
        tables (on disk already when file-backed), and the process's resident memory falls at
        once; the cap is then set back. At the seed scale reading the strong edges back left
        7 GiB of held edge sums cached while linking's graph step needed that memory. Arrow's
        freed pages go back too (:func:`release_arrow_memory`)."""
        release_arrow_memory()
        if self._database is None:
            return  # in memory, held tables live in the buffer pool: evicting them means spilling
        started = time.perf_counter()
        try:
            self.backend.raw_sql("SET memory_limit = '16MB'")
        except duckdb.Error:
            pass  # blocks pinned by an open result stay; the rest has been evicted
        finally:
            self.backend.raw_sql(f"SET memory_limit = '{self._memory_limit}'")
        trace_call("release", started, memory=self._duckdb_memory())

    def _duckdb_memory(self) -> str:
        """What DuckDB's buffer manager holds, for the trace (only when tracing: it is a query)."""
        if not tracing():
            return ""
        used = self.backend.raw_sql(
            "SELECT sum(memory_usage_bytes), sum(temporary_storage_bytes) FROM duckdb_memory()"
        ).fetchone()
        return f"duckdb {used[0] / 2**30:.1f} GiB, spilled {used[1] / 2**30:.1f} GiB"
