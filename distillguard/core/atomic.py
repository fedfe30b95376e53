"""Atomic output: write to a temporary sibling, then rename, so no reader sees a half-written file."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success rename it over ``target``.

    Works for files and directories. On any exception the temporary is removed and
    ``target`` is left exactly as it was.
    """
    target_path = Path(target)
    target_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(
        tempfile.mkdtemp(prefix=f".{target_path.name}.", suffix=".tmp", dir=target_path.parent)
    )
    staged = tmp / target_path.name
    try:
        yield staged
        if target_path.is_dir() and not target_path.is_symlink():
            old = tmp / (target_path.name + ".old")
            os.replace(target_path, old)
        os.replace(staged, target_path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text_atomic(target: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``target`` atomically."""
    with atomic_path(target) as staged:
        staged.write_text(text, encoding="utf-8")


def write_bytes_atomic(target: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``target`` atomically."""
    with atomic_path(target) as staged:
        staged.write_bytes(data)
