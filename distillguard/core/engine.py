"""What a stage needs from an execution engine: name Arrow inputs as tables, materialise expressions."""

from __future__ import annotations

import logging
import resource
import sys
import time
from pathlib import Path
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

    def release_memory(self) -> None:
        """Give back the memory the engine keeps only as a cache of what it holds (it reads it
        back when asked), before a step that needs the memory outside the engine."""
        ...


_trace = logging.getLogger("distillguard.engine")


def release_arrow_memory() -> None:
    """Hand the pages Arrow's allocator still keeps from freed buffers back to the OS now.

    The package lets mimalloc keep freed pages for a few seconds so batches reuse them (see
    ``distillguard/__init__.py``); at the end of a stage nothing will, and the next stage (DuckDB
    under its own cap, or the graph step) needs that memory.
    """
    started = time.perf_counter()
    pa.default_memory_pool().release_unused()
    trace_call("release_arrow", started)


def tracing() -> bool:
    """Whether engine calls are being traced (``DISTILLGUARD_LOG=debug``)."""
    return _trace.isEnabledFor(logging.DEBUG)


def process_memory() -> str:
    """This process's resident memory now and at its peak so far, for the trace."""
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return f"peak {peak_gib:.1f} GiB"
    now_gib = pages * resource.getpagesize() / 2**30
    return f"rss {now_gib:.1f} GiB, peak {peak_gib:.1f} GiB"


def trace_call(verb: str, started: float, rows: int | None = None, memory: str = "") -> None:
    """Log one engine call at DEBUG: the verb, the stage function that made it, its wall time,
    and the process's memory (with what the engine reports of its own in ``memory``).

    Where a seed-scale run spends its time is a question of which of linking's ~60 queries is
    slow; the stage progress bars only say "linking". Enabled with ``DISTILLGUARD_LOG=debug``.
    """
    if not tracing():
        return
    elapsed = time.perf_counter() - started
    # Two frames up: past the engine's own method, at the stage that called it.
    caller = sys._getframe(2)
    where = f"{caller.f_code.co_qualname}:{caller.f_lineno}"
    shown = "" if rows is None else f" {rows:,} rows"
    held = f", {memory}" if memory else ""
    _trace.debug("%s %s %.2f s%s (%s%s)", verb, where, elapsed, shown, process_memory(), held)
