"""What a stage needs from an execution engine: name Arrow inputs as tables, materialise expressions."""

from __future__ import annotations

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
