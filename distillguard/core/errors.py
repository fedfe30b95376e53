"""One root error for distillguard, and the input problems that name file, row and column.

Exception tree::

    DistillguardError              every error this package raises on purpose
    ├── ConfigError                bad configuration or parameters (fail fast)
    └── InvalidInputError          input that breaks the data contract; carries every
                                   Problem found (file, row, column, message)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Problem:
    """One violation of the data contract, located as precisely as the input allows.

    ``row`` is 1-based over data rows (the header of a CSV is not a row; the first
    JSONL line is row 1); ``None`` when the problem concerns the whole file.
    ``column`` is ``None`` when the problem concerns the whole row or file.
    """

    file: str
    row: int | None
    column: str | None
    message: str

    def __str__(self) -> str:
        where = self.file
        if self.row is not None:
            where += f", row {self.row}"
        if self.column is not None:
            where += f", column {self.column!r}"
        return f"{where}: {self.message}"


class DistillguardError(Exception):
    """Root of every error distillguard raises on purpose."""


class ConfigError(DistillguardError):
    """Configuration or parameters that cannot work; the message says how to fix them."""


class InvalidInputError(DistillguardError):
    """Input that breaks the data contract. ``problems`` lists every problem found."""

    def __init__(self, problems: Sequence[Problem], *, truncated: int = 0) -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        self.truncated = truncated
        lines = [str(p) for p in self.problems]
        if truncated:
            lines.append(f"... and {truncated} more problems of the same kinds")
        super().__init__("\n".join(lines) if lines else "invalid input")
