"""Collects contract problems, capped per (file, column, kind) so a broken 30M-row file stays readable."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.compute as pc

from distillguard.core.errors import InvalidInputError, Problem


class ProblemCollector:
    """Gathers every problem found; keeps the first ``cap`` per kind and counts the rest."""

    def __init__(self, cap: int) -> None:
        self.cap = max(1, int(cap))
        self._kept: dict[tuple[str, str | None, str], list[Problem]] = defaultdict(list)
        self._counts: dict[tuple[str, str | None, str], int] = defaultdict(int)

    def add(self, problem: Problem, kind: str = "") -> None:
        """Record one problem under ``kind`` (defaults to its message)."""
        key = (problem.file, problem.column, kind or problem.message)
        self._counts[key] += 1
        if len(self._kept[key]) < self.cap:
            self._kept[key].append(problem)

    def add_rows(
        self,
        file: str,
        column: str | None,
        kind: str,
        rows: pa.Array | pa.ChunkedArray,
        messages: pa.Array | pa.ChunkedArray,
    ) -> None:
        """Record one problem per element of ``rows``; only the first few become Python objects."""
        total = len(rows)
        if total == 0:
            return
        key = (file, column, kind)
        room = self.cap - len(self._kept[key])
        if room > 0:
            head_rows = rows.slice(0, room).to_pylist()
            head_msgs = messages.slice(0, room).to_pylist()
            self._kept[key].extend(
                Problem(file, r, column, str(m)) for r, m in zip(head_rows, head_msgs, strict=True)
            )
        self._counts[key] += total

    def add_counted(
        self,
        file: str,
        column: str | None,
        kind: str,
        rows: pa.Array | pa.ChunkedArray,
        messages: pa.Array | pa.ChunkedArray,
        total: int,
    ) -> None:
        """Record ``total`` problems of which only the first (``rows``/``messages``) were fetched."""
        if total <= 0:
            return
        self.add_rows(file, column, kind, rows, messages)
        self._counts[(file, column, kind)] += total - len(rows)

    def add_where(
        self,
        file: str,
        column: str | None,
        kind: str,
        row_no: pa.Array | pa.ChunkedArray,
        messages: pa.Array | pa.ChunkedArray,
    ) -> None:
        """Record a problem for each row whose message is not null."""
        mask = pc.is_valid(messages)
        if not pc.any(mask).as_py():
            return
        self.add_rows(file, column, kind, pc.filter(row_no, mask), pc.filter(messages, mask))

    def count(self, file: str, column: str | None, kind: str) -> int:
        """How many problems of one kind were recorded."""
        return self._counts.get((file, column, kind), 0)

    def replace_kind(self, file: str, column: str | None, kind: str, problem: Problem) -> None:
        """Swap every problem of one kind for a single summarising one."""
        key = (file, column, kind)
        self._kept.pop(key, None)
        self._counts.pop(key, None)
        self.add(problem)

    def extend(self, problems: Iterable[Problem]) -> None:
        """Record several problems, each its own kind."""
        for problem in problems:
            self.add(problem)

    @property
    def problems(self) -> list[Problem]:
        """Kept problems, sorted by file, row, column."""
        kept = [p for ps in self._kept.values() for p in ps]
        return sorted(
            kept,
            key=lambda p: (p.file, p.row if p.row is not None else -1, p.column or "", p.message),
        )

    @property
    def truncated(self) -> int:
        """Problems counted but not kept."""
        return sum(self._counts[k] - len(self._kept[k]) for k in self._counts)

    def __bool__(self) -> bool:
        return bool(self._counts)

    def raise_if_any(self) -> None:
        """Raise :class:`InvalidInputError` with everything collected, if anything was."""
        if self._counts:
            raise InvalidInputError(self.problems, truncated=self.truncated)
