"""Windowed sketch keys (``<kind>:<...>|<bucket>``) by window, so a time-ordered replay drops a window's sketches once it has passed."""

from __future__ import annotations

from collections.abc import Mapping

import polars as pl


class PassedWindows:
    """Remembers the windowed sketch keys a replay touched and names those whose window has passed.

    A windowed key is read only by exchanges whose own time falls in its bucket
    (``ts_ms // window_ms``). Replay takes exchanges in time order, so once a batch starts at
    ``now_ms`` every key of an earlier bucket is never read again: dropping it changes no count.
    Left to the LRU cap instead, those dead keys (one per account and 2-hour bucket for the
    countries alone) outnumber the live ones at the seed scale, and the cap then evicts live keys
    (an account's addresses, a card's holders) and plans evictions on every batch.
    """

    def __init__(self, window_ms: Mapping[str, float]) -> None:
        # key prefix (e.g. "cty:") -> window length in ms; a window of 0 keeps no sketch.
        self._window = {p: int(ms) for p, ms in window_ms.items() if ms > 0}
        self._held: dict[tuple[str, int], list[pl.Series]] = {}

    @property
    def active(self) -> bool:
        return bool(self._window)

    def note(self, groups: pl.Series) -> None:
        """Remember the windowed keys among a batch's sketch groups (any others are ignored)."""
        if not self._window:
            return
        uniq = groups.drop_nulls().unique()
        for prefix in self._window:
            keys = uniq.filter(uniq.str.starts_with(prefix))
            if keys.len() == 0:
                continue
            frame = pl.DataFrame({"key": keys}).with_columns(
                pl.col("key").str.extract(r"\|(-?\d+)$").cast(pl.Int64).alias("bucket")
            )
            for (bucket,), part in frame.drop_nulls("bucket").group_by(["bucket"]):
                self._held.setdefault((prefix, int(bucket)), []).append(part.get_column("key"))  # type: ignore[arg-type]

    def passed(self, now_ms: float) -> list[str]:
        """Keys of buckets wholly before ``now_ms`` (forgotten here once named)."""
        out: list[str] = []
        for prefix, bucket in list(self._held):
            if bucket < int(now_ms // self._window[prefix]):
                for keys in self._held.pop((prefix, bucket)):
                    out += keys.to_list()
        return out
