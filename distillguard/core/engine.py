"""What a stage needs from an execution engine: name Arrow inputs as tables, materialise expressions."""

from __future__ import annotations

import logging
import sys
import time
from typing import Protocol

import ibis.expr.types as ir
import pyarrow as pa
import pyarrow.dataset as pads


class Engine(Protocol):
    """An Ibis backend behind three verbs, so stages never name DuckDB or Spark.

    Implementations live in ``distillguard.engines`` (embedded DuckDB; Spark later).
    """

    def table(self, name: str, data: pa.Table | pads.Dataset) -> ir.Table: ...

    def cache(self, expr: ir.Table) -> ir.Table:
        """``expr`` computed once and kept by the engine, for a result several queries read."""
        ...

    def to_arrow(self, expr: ir.Table) -> pa.Table: ...


_trace = logging.getLogger("distillguard.engine")


def trace_call(verb: str, started: float, rows: int | None = None) -> None:
    """Log one engine call at DEBUG: the verb, the stage function that made it, its wall time.

    Where a seed-scale run spends its time is a question of which of linking's ~60 queries is
    slow; the stage progress bars only say "linking". Enabled with ``DISTILLGUARD_LOG=debug``.
    """
    if not _trace.isEnabledFor(logging.DEBUG):
        return
    elapsed = time.perf_counter() - started
    # Two frames up: past the engine's own method, at the stage that called it.
    caller = sys._getframe(2)
    where = f"{caller.f_code.co_qualname}:{caller.f_lineno}"
    shown = "" if rows is None else f" {rows:,} rows"
    _trace.debug("%s %s %.2f s%s", verb, where, elapsed, shown)
