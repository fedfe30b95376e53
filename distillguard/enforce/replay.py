"""Replay: feed a log directory through the online path in time order and write ``decisions.jsonl`` (contract §3).

Exchanges are sorted by ``(ts, request_id)`` and cut into micro-batches; each batch's content
signals are computed once, vectorised (per-prompt and per-address results carried over batches),
in a thread one batch ahead, while :meth:`Enforcer.replay_batch` folds the current batch into the
embedded state, scores it at once and takes its decisions in order — the decisions one check at
a time would take (see :mod:`distillguard.enforce.online`). A decision line is written each time
an account's action changes. Rate limits are not applied: they run on the wall clock, and replay
measures what the *actions* contain.

Known campaigns (``--campaigns RESULTDIR``, the output of an earlier ``detect``) are loaded
before the first exchange, as a live service would hold them.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from distillguard.core.atomic import atomic_path
from distillguard.core.duckdb_backend import connect_raw
from distillguard.core.exchange_sql import ExchangeSource, exchanges_view
from distillguard.core.schema import EXCHANGE_COLUMNS
from distillguard.enforce.campaigns import CampaignWatcher
from distillguard.enforce.online import (
    AccountMeta,
    BatchContentSignals,
    ContentSignals,
    Decision,
    Enforcer,
)
from distillguard.enforce.settings import EnforceSettings

DECISIONS_FILE = "decisions.jsonl"


@dataclass(frozen=True)
class ReplaySummary:
    """What a replay did, for the CLI and the benchmark."""

    exchanges: int
    decisions: int
    accounts: int
    seconds: float
    path: Path

    @property
    def rate(self) -> float:
        return self.exchanges / self.seconds if self.seconds > 0 else float("inf")


def decision_line(d: Decision) -> str:
    """One ``decisions.jsonl`` line: ``{ts, account_id, action, cluster_id, reasons}``."""
    ts = (
        datetime.fromtimestamp(d.ts_ms / 1000, tz=UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )
    doc = {"ts": ts, "account_id": d.account_id, "action": d.action.value, "cluster_id": d.cluster_id,
           "reasons": list(d.reasons)}  # fmt: skip
    return json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n"


def account_metas(accounts: pa.Table | None) -> dict[str, AccountMeta]:
    """Account id -> :class:`AccountMeta` from the log's accounts table (columnar read)."""
    if accounts is None or accounts.num_rows == 0:
        return {}
    cols = accounts.column_names

    def col(name: str) -> list[Any]:
        return accounts[name].to_pylist() if name in cols else [None] * accounts.num_rows

    created = (
        pc.cast(accounts["created_at"], pa.int64()).to_pylist()
        if "created_at" in cols
        else [None] * accounts.num_rows
    )
    return {
        str(a): AccountMeta(p, e, c, v)
        for a, p, e, c, v in zip(
            col("account_id"),
            col("payment_fingerprint"),
            col("email_domain"),
            created,
            col("verification"),
            strict=True,
        )
    }


def sorted_batches(exchanges: pa.Table, rows: int) -> Iterator[pa.Table]:
    """The exchanges in ``(ts, request_id)`` order, ``rows`` at a time (a table held in memory)."""
    ordered = exchanges.sort_by([("ts", "ascending"), ("request_id", "ascending")])
    for start in range(0, ordered.num_rows, rows):
        yield ordered.slice(start, rows)


class TimeOrderedExchanges:
    """A log's exchanges in ``(ts, request_id)`` order, read a time range at a time.

    The whole log is never held: at the seed scale its prompts alone decode to more than this
    machine's 23 GiB. A first pass counts the exchanges per minute (``ts`` only); the minutes are
    then grouped into ranges of about ``read_rows`` exchanges, and each range is read, sorted
    and handed out in batches of ``rows`` — the same batches as slicing the fully sorted table.
    Logs written a day per file (the simulator's, most providers' exports) are read once: DuckDB
    skips the row groups whose ``ts`` statistics lie outside the range.
    """

    def __init__(
        self,
        source: ExchangeSource,
        columns: Sequence[str] | None = None,
        read_rows: int = 1_000_000,
    ) -> None:
        # Default: the contract's exchange columns the log has.
        names = source.schema.names
        self.columns = (
            list(columns) if columns is not None else [c for c in EXCHANGE_COLUMNS if c in names]
        )
        self.read_rows = max(1, read_rows)
        self._con = connect_raw()
        exchanges_view(self._con, source, "exchanges", self.columns)
        self.schema = pa.schema([source.schema.field(c) for c in self.columns])
        minutes = self._con.execute(
            "SELECT epoch_ms(ts) // 60000 AS m, count(*) AS n FROM exchanges GROUP BY m ORDER BY m"
        ).fetchnumpy()
        self._minutes = np.asarray(minutes["m"], dtype=np.int64)
        self._counts = np.asarray(minutes["n"], dtype=np.int64)
        self.rows = int(self._counts.sum())
        self.accounts = int(
            self._con.execute("SELECT count(DISTINCT account_id) FROM exchanges").fetchone()[0]  # type: ignore[index]
        )

    def ranges(self) -> list[tuple[int, int]]:
        """``[start, end)`` in epoch ms, each about ``read_rows`` exchanges (whole minutes)."""
        out: list[tuple[int, int]] = []
        if self._minutes.size == 0:
            return out
        cum = np.cumsum(self._counts)
        start = 0
        while start < self._minutes.size:
            base = cum[start - 1] if start else 0
            # The last minute that keeps the range within read_rows (at least one minute).
            end = max(start + 1, int(np.searchsorted(cum, base + self.read_rows, side="right")))
            lo = int(self._minutes[start]) * 60_000
            hi = int(self._minutes[end - 1] + 1) * 60_000
            out.append((lo, hi))
            start = end
        return out

    def batches(self, rows: int) -> Iterator[pa.Table]:
        held: pa.Table | None = None
        select = ", ".join('"' + c.replace('"', '""') + '"' for c in self.columns)
        for lo, hi in self.ranges():
            chunk = self._con.execute(
                f"SELECT {select} FROM exchanges WHERE ts >= ? AND ts < ? ORDER BY ts, request_id",
                [_utc(lo), _utc(hi)],
            ).to_arrow_table()
            # DuckDB answers in its own types (microsecond timestamps, ...): back to the log's.
            chunk = chunk.cast(self.schema)
            held = chunk if held is None else pa.concat_tables([held, chunk])
            start = 0
            while held.num_rows - start >= rows:
                yield held.slice(start, rows)
                start += rows
            held = held.slice(start)
        if held is not None and held.num_rows:
            yield held

    def close(self) -> None:
        self._con.close()


#: Sketch room replay gives each account of the log (``ip:``, ``pay:``, ``paydom:``, ``eu:`` keys).
SKETCHES_PER_ACCOUNT = 4


def _first_ms(batch: pa.Table) -> int:
    """The earliest ``ts`` of a time-ordered batch, in epoch ms."""
    first = batch.column("ts")[0]
    return (
        int(first.value)
        if first.type.unit == "ms"
        else int(pc.cast(first, pa.timestamp("ms")).value)
    )


def _utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def _signal_batches(
    blocks: Iterator[pa.Table], content: ContentSignals | None, batch_rows: int
) -> Iterator[tuple[pa.Table, Any, bool]]:
    """``(batch, content signals, first batch of its block)``: each block's signals computed in a thread one block ahead, cut into batches.

    The signal stage is mostly polars / numpy / scikit-learn (GIL released), so on two cores it
    overlaps the state loop. One worker thread, submitted in order: the template index still
    sees the blocks in time order. Template ids depend on which prompts are labelled together
    (one-hop LSH within a block, anchors across blocks), so the blocks are the fixed
    ``signal_rows`` slices of the log and decision batches are cut inside them: the batch size
    changes no template id, and so no decision.
    """
    step = max(1, batch_rows)

    def cut(block: pa.Table, signals: Any) -> Iterator[tuple[pa.Table, Any, bool]]:
        for start in range(0, block.num_rows, step):
            yield (
                block.slice(start, step),
                (None if signals is None else signals.slice(start, step)),
                start == 0,
            )

    if content is None:
        for block in blocks:
            yield from cut(block, None)
        return
    with ThreadPoolExecutor(1, thread_name_prefix="replay-signals") as pool:
        pending: Future[Any] | None = None
        previous: pa.Table | None = None
        for block in blocks:
            nxt = pool.submit(content.compute, block)
            if pending is not None:
                assert previous is not None
                yield from cut(previous, pending.result())
            pending, previous = nxt, block
        if pending is not None:
            assert previous is not None
            yield from cut(previous, pending.result())


def replay_table(
    exchanges: ExchangeSource | TimeOrderedExchanges,
    accounts: pa.Table | None,
    enforcer: Enforcer,
    out: Path,
    batch_rows: int,
    content: ContentSignals | None = None,
    progress: bool = True,
    read_rows: int = 1_000_000,
    signal_rows: int = 50_000,
) -> ReplaySummary:
    """Replay a log's exchanges (a table or a dataset) through ``enforcer``; write ``out/decisions.jsonl`` atomically.

    Exchanges are read ``read_rows`` at a time in time order (:class:`TimeOrderedExchanges`), so
    memory does not grow with the log. Content signals are computed ``signal_rows`` exchanges at
    a time and decisions taken ``batch_rows`` at a time within those blocks (at most
    ``signal_rows``): the decisions depend on ``signal_rows``, never on ``batch_rows``.
    """
    metas = account_metas(accounts)
    start = time.perf_counter()
    n_dec = 0
    ordered = (
        exchanges
        if isinstance(exchanges, TimeOrderedExchanges)
        else TimeOrderedExchanges(exchanges, read_rows=read_rows)
    )
    try:
        with atomic_path(out / DECISIONS_FILE) as staged, staged.open("w", encoding="utf-8") as fh, Progress(
            TextColumn("replay"), BarColumn(), TextColumn("{task.completed:,}/{task.total:,} exchanges"),
            TimeElapsedColumn(), transient=True, disable=not progress,
        ) as bar:  # fmt: skip
            task = bar.add_task("replay", total=ordered.rows)
            blocks = ordered.batches(max(1, signal_rows))
            for batch, signals, first_of_block in _signal_batches(blocks, content, batch_rows):
                if first_of_block:
                    enforcer.drop_passed_windows(_first_ms(batch))
                changes = enforcer.replay_batch(batch, signals, metas)
                fh.writelines(decision_line(d) for d in changes)
                n_dec += len(changes)
                bar.advance(task, batch.num_rows)
    finally:
        ordered.close()
    return ReplaySummary(
        ordered.rows, n_dec, ordered.accounts, time.perf_counter() - start, out / DECISIONS_FILE
    )


def replay(
    logdir: str | Path,
    outdir: str | Path,
    config: Mapping[str, Any],
    campaigns: str | Path | None = None,
    progress: bool = True,
) -> ReplaySummary:
    """``distillguard replay LOGDIR --out OUTDIR``: the whole log through the embedded online path."""
    from distillguard.ingest import load_log

    settings = EnforceSettings.from_config(config)
    log = load_log(Path(logdir), config)
    ordered = TimeOrderedExchanges(log.exchanges, read_rows=settings.replay_read_rows)
    if ordered.accounts > settings.max_accounts:
        # Every account of the log is held, as by a service sized for that population: evicting
        # one forgets its action and counters (a suspended account would come back fresh), and
        # past the cap every batch would take the row-by-row fold (the seed scale's 676k
        # accounts against 200k: ~6k exchanges/s instead of ~25k).
        settings = dataclasses.replace(settings, max_accounts=ordered.accounts)
    if SKETCHES_PER_ACCOUNT * ordered.accounts > settings.max_sketch_keys:
        # Likewise its lasting sketches: per account at most its addresses, its card (holders
        # and their domains) and its end users, plus the addresses contained accounts tainted.
        # Windowed sketches are dropped once their window has passed, so they need no room.
        settings = dataclasses.replace(
            settings, max_sketch_keys=SKETCHES_PER_ACCOUNT * ordered.accounts
        )
    cdir = Path(campaigns) if campaigns is not None else settings.campaigns_dir
    watcher = CampaignWatcher(cdir, settings.min_key_weight, reload_seconds=float("inf"))
    content = BatchContentSignals(
        config, intel=log.ip_intel, capability_model=settings.capability_model, carry_over=True
    )
    enforcer = Enforcer(config, campaigns=watcher, settings=settings, intel=log.ip_intel)
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    return replay_table(
        ordered,
        log.accounts,
        enforcer,
        out,
        settings.replay_batch_rows,
        content,
        progress,
        signal_rows=settings.replay_signal_rows,
    )
