"""Stream a JSONL or JSONL.gz file as Arrow batches of raw lines with their line numbers.

Lines are cut with numpy over large byte chunks and wrapped as an Arrow ``BinaryArray``
from buffers, so no line ever becomes a Python object; decoding and JSON parsing happen
columnar downstream (see ``columns.json_select``).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

CHUNK_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class LineBatch:
    """Raw lines and their 1-based line numbers; blank lines are left out."""

    row_no: pa.Array
    lines: pa.Array

    def table(self) -> pa.Table:
        """As a ``src(row_no, line)`` table for the SQL checks."""
        return pa.table({"row_no": self.row_no, "line": self.lines})


class TruncatedInput(Exception):
    """The input ended early or is corrupt; ``last_row`` is the last complete line read."""

    def __init__(self, last_row: int, reason: str) -> None:
        super().__init__(reason)
        self.last_row = last_row
        self.reason = reason


class _Cut(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _chunks(path: Path, chunk_bytes: int) -> Iterator[bytes]:
    """Raw (decompressed) bytes of ``path``; raises ``_Cut`` after the last good byte of a bad gzip.

    zlib is driven directly (rather than ``gzip.open``) so the bytes decoded before a
    truncation are still delivered and the last complete row can be named exactly.
    """
    with path.open("rb") as fh:
        if not path.name.endswith(".gz"):
            while chunk := fh.read(chunk_bytes):
                yield chunk
            return
        dec = zlib.decompressobj(wbits=31)
        in_member = False
        while raw := fh.read(max(chunk_bytes // 8, 1 << 16)):
            while raw:
                try:
                    out = dec.decompress(raw)
                except zlib.error as exc:
                    raise _Cut(f"not a valid gzip file ({exc})") from exc
                in_member = True
                if out:
                    yield out
                if dec.eof:  # a concatenated gzip member may follow
                    raw = dec.unused_data
                    dec = zlib.decompressobj(wbits=31)
                    in_member = False
                else:
                    raw = b""
        if in_member and not dec.eof:
            raise _Cut("truncated gzip file")


def _batch(buf: bytes, first_row: int) -> tuple[LineBatch, int]:
    """Split ``buf`` (ending right after a newline, or at end of file) into lines.

    Each value keeps its trailing newline (JSON ignores it) so the offsets can point
    straight into ``buf`` without copying; blank lines are filtered out.
    """
    data = np.frombuffer(buf, dtype=np.uint8)
    ends = np.flatnonzero(data == 0x0A) + 1
    if len(data) and (len(ends) == 0 or ends[-1] != len(data)):
        ends = np.append(ends, len(data))  # last line without a trailing newline
    offsets = np.concatenate(([0], ends)).astype(np.int64)
    n = len(ends)
    lines = pa.LargeBinaryArray.from_buffers(
        pa.large_binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(buf)]
    )
    row_no = pa.array(np.arange(first_row, first_row + n, dtype=np.int64))
    lengths = np.diff(offsets)
    first = data[offsets[:-1]] if n else np.empty(0, np.uint8)
    blank = ((lengths == 1) & (first == 0x0A)) | ((lengths <= 2) & (first == 0x0D))
    if blank.any():
        keep = pa.array(~blank)
        lines, row_no = lines.filter(keep), row_no.filter(keep)
    return LineBatch(row_no, lines), first_row + n


def iter_lines(path: Path, chunk_bytes: int = CHUNK_BYTES) -> Iterator[LineBatch]:
    """Yield line batches of about ``chunk_bytes`` each; raise :class:`TruncatedInput` on a bad gzip.

    Complete lines decoded before a truncation are still yielded first.
    """
    next_row = 1
    carry = b""
    pending: list[bytes] = []
    size = 0
    try:
        for chunk in _chunks(path, chunk_bytes):
            pending.append(chunk)
            size += len(chunk)
            if size < chunk_bytes:
                continue
            buf = carry + b"".join(pending)
            pending, size = [], 0
            cut = buf.rfind(b"\n") + 1
            carry = buf[cut:]
            if cut:
                batch, next_row = _batch(buf[:cut], next_row)
                yield batch
    except _Cut as exc:
        buf = carry + b"".join(pending)
        cut = buf.rfind(b"\n") + 1
        if cut:
            batch, next_row = _batch(buf[:cut], next_row)
            yield batch
        raise TruncatedInput(
            next_row - 1, f"{exc.reason}; last complete row is {next_row - 1}"
        ) from exc
    buf = carry + b"".join(pending)
    if buf:
        batch, next_row = _batch(buf, next_row)
        yield batch
