"""Online state backends: per-account counters and bounded distinct-count sketches, in memory or in Redis.

Both backends offer one operation, :meth:`StateBackend.observe`: apply an exchange's counter
increments to its account, add ``(group, member)`` pairs to distinct-count sketches, and return
the account's state after the update together with the sketches' estimates. A pair with the
empty member (:data:`COUNT_ONLY`) reads the sketch's estimate without adding to it. Everything one
exchange changes is applied in one step (a Lua script on Redis: one round trip, atomic), so
several service processes sharing a Redis see one consistent state.

Memory is bounded: the memory backend keeps at most ``max_accounts`` accounts and
``max_sketch_keys`` sketches (least recently used evicted; inside a replay batch, sketches
created by the batch wait for :meth:`MemoryState.settle` at its end); a sketch is an exact set
until it holds :data:`EXACT_LIMIT` members and a HyperLogLog (``datasketch``) after that. On
Redis, sketches are Redis's own HyperLogLogs (PFADD / PFCOUNT) and every key carries a TTL.

Replay folds a whole batch at once (:meth:`MemoryState.fold`: columnar, the same state and
answers as one exchange at a time); see the comment above it for how evictions stay exact.

Exception tree::

    DistillguardError
    └── StateUnavailable      the shared store cannot be reached (the fail mode decides)
"""

from __future__ import annotations

import bisect
import functools
import heapq
import itertools
import json
import operator
import threading
import warnings
from collections import OrderedDict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import polars as pl
import redis
from datasketch import HyperLogLog
from datasketch.hashfunc import sha1_hash32

from distillguard.core.errors import DistillguardError

#: Members a sketch holds exactly before it becomes a HyperLogLog.
EXACT_LIMIT = 64

#: Additions between two HyperLogLog estimates of one sketch (the estimate is cached between).
REESTIMATE_EVERY = 16

#: The member of a ``(group, member)`` pair that only reads the group's count.
COUNT_ONLY = ""

#: Counter fields whose running maximum over a family is kept (``cap:*`` -> ``cap_top``).
TOP_FAMILIES = {"cap:": "cap_top", "tpl:": "tpl_top"}

#: Distinct values of one family kept per account; the rest are counted as ``<family>~other``.
MAX_FAMILY_FIELDS = 32


class StateUnavailable(DistillguardError):
    """The shared state store could not be reached; the configured fail mode decides what happens."""


@dataclass(frozen=True)
class Observation:
    """What one exchange changes: counter increments and distinct-count memberships."""

    account_id: str
    ts_ms: int
    counters: Mapping[str, float]
    distinct: Sequence[tuple[str, str]] = ()
    # Retro-taint: ``(taint group, window bucket, cap, spread rank)`` for :func:`note_exit`, or None.
    exit: tuple[str, int, int, int] | None = None


@dataclass(slots=True)  # one per account held: no per-instance __dict__
class AccountView:
    """An account's online state after an update (or as stored)."""

    account_id: str
    counters: dict[str, float] = field(default_factory=dict)
    first_ms: int | None = None
    last_ms: int | None = None
    action_rank: int = 0
    cluster_id: str | None = None
    reasons: list[dict[str, Any]] = field(default_factory=list)
    distinct: dict[str, int] = field(default_factory=dict)
    # Retro-taint: ``[window bucket, taint group, ...]`` of the exits used while not spreading taint (memory backend).
    exits: list[Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "account_id": self.account_id,
            "counters": {k: self.counters[k] for k in sorted(self.counters)},
            "first_ms": self.first_ms,
            "last_ms": self.last_ms,
            "action_rank": self.action_rank,
            "cluster_id": self.cluster_id,
            "reasons": self.reasons,
        }


class StateBackend(Protocol):
    """Where the online state lives."""

    name: str

    def observe(self, obs: Observation) -> AccountView: ...

    def get(self, account_id: str) -> AccountView | None: ...

    def set_action(
        self, account_id: str, rank: int, cluster_id: str | None, reasons: list[dict[str, Any]]
    ) -> None: ...

    def ping(self) -> bool: ...

    def size(self) -> dict[str, int]: ...


# --------------------------------------------------------------------------- memory


@functools.lru_cache(maxsize=1 << 18)
def _hll_slot(member: str, p: int) -> tuple[int, int]:
    """``(register, rank)`` a member sets in a datasketch HyperLogLog of precision ``p`` (SHA-1 once per member)."""
    hv = sha1_hash32(member.encode())
    bits = hv >> p
    return hv & ((1 << p) - 1), (32 - p) - bits.bit_length() + 1


class _Sketch:
    """Exact set that turns into a HyperLogLog once it holds :data:`EXACT_LIMIT` members.

    Registers are datasketch's (same hash, same estimator) but updated here from a memoised
    ``(register, rank)`` per member, and an estimate is only recomputed when a register moved:
    the same numbers as calling ``update`` / ``count``, without hashing every repeat of a member.
    """

    __slots__ = ("dirty", "estimate", "exact", "hll", "p", "stale")

    def __init__(self, p: int) -> None:
        # A lone member is kept as the string itself ("" = none yet): most keys (an account's
        # address, a flood of new ids) never see a second member, and a set costs ~200 bytes.
        self.exact: set[str] | str | None = ""
        self.hll: HyperLogLog | None = None
        self.p = p
        self.estimate = 0
        self.stale = 0
        self.dirty = False

    def add(self, member: str) -> int:
        exact = self.exact
        if type(exact) is str:
            if not exact or exact == member:
                self.exact = member
                return 1
            self.exact = {exact, member}
            return 2
        if exact is not None:
            assert isinstance(exact, set)
            exact.add(member)
            if len(exact) < EXACT_LIMIT:
                return len(exact)
            self.hll = HyperLogLog(p=self.p)
            for m in exact:
                self._set(m)
            self.exact = None
        self._set(member)
        self.stale += 1
        # Estimating costs a pass over the registers; beyond EXACT_LIMIT members a count that
        # lags by fewer than REESTIMATE_EVERY additions changes no threshold that matters.
        if self.estimate == 0 or self.stale >= REESTIMATE_EVERY:
            if self.dirty or self.estimate == 0:  # unchanged registers give the same estimate
                self._reestimate()
            self.stale = 0
        return self.estimate

    def _reestimate(self) -> None:
        assert self.hll is not None
        with warnings.catch_warnings():
            # datasketch warns near its bias-correction threshold; the estimate is still usable.
            warnings.simplefilter("ignore", UserWarning)
            self.estimate = max(EXACT_LIMIT, round(float(self.hll.count())))
        self.dirty = False

    def count(self) -> int:
        """Current estimate without adding anything."""
        exact = self.exact
        if type(exact) is str:
            return 1 if exact else 0
        return len(exact) if exact is not None else self.estimate

    def _set(self, member: str) -> None:
        idx, rank = _hll_slot(member, self.p)
        reg = self.hll.reg  # type: ignore[union-attr]
        if rank > reg[idx]:
            reg[idx] = rank
            self.dirty = True


def note_exit(view: AccountView, bucket: int, group: str, cap: int, spread_rank: int) -> None:
    """Remember an exit's taint group for retro-taint, at most ``cap`` per window bucket, while the
    account spreads no taint (below ``spread_rank``, or contained only through links)."""
    if view.action_rank >= spread_rank and not view.counters.get("taint_linked_only", 0.0) > 0.0:
        return
    ex = view.exits
    if ex is None or ex[0] != bucket:
        view.exits = [bucket, group]
    elif len(ex) <= cap and group not in ex:
        ex.append(group)


def take_exits(view: AccountView, bucket: int) -> list[str]:
    """The exits :func:`note_exit` remembered in this window bucket; forgets them."""
    ex = view.exits
    if ex is None:
        return []
    view.exits = None
    return ex[1:] if ex[0] == bucket else []


def apply_counters(counters: dict[str, float], increments: Mapping[str, float]) -> None:
    """Apply increments, keeping ``cap_top`` / ``tpl_top`` as running maxima of their families.

    A family field (``cap:*``, ``tpl:*``) beyond MAX_FAMILY_FIELDS distinct values goes to
    ``<family>~other``, which feeds no maximum.
    """
    for name, inc in increments.items():
        top = TOP_FAMILIES.get(name[:4])
        if top is None:
            counters[name] = counters.get(name, 0.0) + inc
        else:
            _apply_family(counters, name, inc, top)


def _apply_family(counters: dict[str, float], name: str, inc: float, top: str) -> None:
    """One increment of a family field (see :func:`apply_counters`)."""
    value = counters.get(name)
    if value is None:
        prefix = name[:4]
        seen = counters.get("#" + prefix, 0.0)
        if seen >= MAX_FAMILY_FIELDS:
            other = prefix + "~other"
            counters[other] = counters.get(other, 0.0) + inc
            return
        counters["#" + prefix] = seen + 1.0
        value = inc
    else:
        value += inc
    counters[name] = value
    counters[top] = max(counters.get(top, 0.0), value)


@dataclass(frozen=True)
class ExchangeColumns:
    """A batch of exchanges to fold in arrival order: one row of ``frame`` per exchange.

    Each exchange counts once (``n``, ``first_ms``, ``last_ms``) and adds its ``counters``
    (Float64 columns; null: not incremented), one to the field named in each ``families`` column
    (String, e.g. ``cap:coding``; null: none), and, per ``memberships`` column pair in order, its
    member to its group's sketch (null group or member: none). ``reads`` are counters returned
    as they stand after each exchange: ``n``, the ``counters``, or a family maximum (``cap_top``).
    """

    frame: pl.DataFrame
    account: str  # String column
    ts_ms: str  # Int64 column, epoch milliseconds
    counters: Mapping[str, str]  # counter -> column; no family fields
    families: Sequence[str]
    memberships: Sequence[tuple[str, str]]  # (group column, member column)
    reads: Sequence[str] = ()


@dataclass(frozen=True)
class Folded:
    """What :meth:`MemoryState.fold` returns, per exchange: the view, the read counters, the sketch counts."""

    views: list[AccountView]  # the stored object, current at that exchange (later updates included)
    values: np.ndarray  # (exchanges, reads): the ``reads`` after each exchange
    counts: (
        np.ndarray
    )  # (exchanges, memberships), int64: the group's count after the addition; 0 where none
    touched: (
        pl.DataFrame
    )  # ``group``, ``key`` = row * TOUCH_SLOTS + membership index of each sketch's last addition


#: Most exits an account remembers per window for retro-taint (``propagation.links.ip.retro_exits``).
MAX_RETRO_EXITS = 32

#: Positions per exchange in the touch keys of :class:`Folded` (memberships first; later positions
#: are free for additions the caller makes after the fold, e.g. taint).
TOUCH_SLOTS = 48
#: Positions kept free for the caller's additions after the fold (one per propagation kind, a spare,
#: and the exits a newly contained account taints retroactively).
_CALLER_SLOTS = 4 + MAX_RETRO_EXITS


def additions(batch: ExchangeColumns) -> pl.DataFrame:
    """Every sketch addition of a batch in order: ``key`` (row * TOUCH_SLOTS + membership index), ``group``, ``member``."""
    if len(batch.memberships) > TOUCH_SLOTS - _CALLER_SLOTS:
        raise ValueError(f"fold: at most {TOUCH_SLOTS - _CALLER_SLOTS} membership columns")
    row = pl.int_range(pl.len(), dtype=pl.Int64) * TOUCH_SLOTS
    parts = [
        batch.frame.select(
            (row + j).alias("key"),
            pl.col(g).cast(pl.String).alias("group"),
            pl.col(m).cast(pl.String).alias("member"),
        ).filter(pl.col("group").is_not_null() & pl.col("member").is_not_null())
        for j, (g, m) in enumerate(batch.memberships)
    ]
    if not parts:
        return pl.DataFrame(schema={"key": pl.Int64, "group": pl.String, "member": pl.String})
    return pl.concat(parts).sort("key")


def _last_touches(adds: pl.DataFrame) -> pl.DataFrame:
    """Each sketch's last addition (``group``, ``key``); an empty member only reads."""
    return adds.filter(pl.col("member") != COUNT_ONLY).group_by("group").agg(pl.col("key").max())


class MemoryState:
    """The embedded backend: one process, LRU-bounded, thread-safe."""

    name = "memory"

    def __init__(
        self, max_accounts: int = 200_000, max_sketch_keys: int = 400_000, hll_precision: int = 8
    ) -> None:
        if max_accounts < 1 or max_sketch_keys < 1:
            raise ValueError("max_accounts and max_sketch_keys must be >= 1")
        self.max_accounts = max_accounts
        self.max_sketch_keys = max_sketch_keys
        self.p = hll_precision
        self._accounts: OrderedDict[str, AccountView] = OrderedDict()
        self._sketches: OrderedDict[str, _Sketch] = OrderedDict()
        self._lock = threading.Lock()

    def observe(self, obs: Observation) -> AccountView:
        with self._lock:
            view, counts = self._observe(obs.account_id, obs.ts_ms, obs.counters, obs.distinct)
            return AccountView(
                view.account_id, dict(view.counters), view.first_ms, view.last_ms,
                view.action_rank, view.cluster_id, list(view.reasons), counts,
            )  # fmt: skip

    def observe_live(
        self,
        account_id: str,
        ts_ms: int,
        counters: Mapping[str, float],
        distinct: Sequence[tuple[str, str]],
    ) -> tuple[AccountView, dict[str, int]]:
        """:meth:`observe` without copies: the stored view itself (valid until the next update) and the sketch counts.

        For a caller that reads the view at once under its own lock (the enforcer's batch loop):
        copying ~100 counters per exchange was most of the cost of an update.
        """
        with self._lock:
            return self._observe(account_id, ts_ms, counters, distinct)

    def _observe(
        self,
        account_id: str,
        ts_ms: int,
        increments: Mapping[str, float],
        distinct: Sequence[tuple[str, str]],
    ) -> tuple[AccountView, dict[str, int]]:
        accounts = self._accounts
        view = accounts.get(account_id)
        if view is None:
            view = AccountView(account_id)
            accounts[account_id] = view
            if len(accounts) > self.max_accounts:
                accounts.popitem(last=False)
        else:
            accounts.move_to_end(account_id)
        apply_counters(view.counters, increments)
        if increments.get("n"):
            view.first_ms = ts_ms if view.first_ms is None else min(view.first_ms, ts_ms)
            view.last_ms = ts_ms if view.last_ms is None else max(view.last_ms, ts_ms)
        counts: dict[str, int] = {}
        sketches = self._sketches
        for group, member in distinct:
            sketch = sketches.get(group)
            if member == COUNT_ONLY:
                counts[group] = 0 if sketch is None else sketch.count()
                continue
            if sketch is None:
                sketch = _Sketch(self.p)
                sketches[group] = sketch
                if len(sketches) > self.max_sketch_keys:
                    sketches.popitem(last=False)
            else:
                sketches.move_to_end(group)
            counts[group] = sketch.add(member)
        return view, counts

    # -- batches (replay): everything that does not depend on decisions first ------------
    #
    # A batch is folded at once (:meth:`fold`), then decided exchange by exchange by the caller,
    # which may read (:meth:`peek`) and add to (:meth:`add_deferred`) the sketches whose content
    # depends on the decisions (taint). Sketch evictions wait until :meth:`settle`, which leaves
    # the same LRU order and the same survivors as one-by-one updates (the LRU keeps the most
    # recently touched keys, whenever it evicts). Near the cap the caller first asks
    # :meth:`plan_evictions` which sketches one by one would evict before the batch uses them,
    # drops those (:meth:`drop`) and stops the batch where that depends on decisions: so every
    # read inside the batch is the one-by-one read.

    def fold(self, batch: ExchangeColumns, adds: pl.DataFrame | None = None) -> Folded:
        """Fold a batch of exchanges in order, with the same state and answers as :meth:`observe_live` one at a time.

        Columnar (per-account cumulative sums, first-occurrence counts of exact sketches; only
        HyperLogLog sketches are updated an addition at a time, their estimate being refreshed
        every :data:`REESTIMATE_EVERY` additions) unless an account would be evicted inside the
        batch or the batch has what only the row loop handles. Sketches are not evicted before
        :meth:`settle`, and their LRU order is only right once it has run.
        """
        adds = additions(batch) if adds is None else adds
        with self._lock:
            folded = self._fold_columns(batch, adds)
            return folded if folded is not None else self._fold_rows(batch, adds)

    def _fold_rows(self, batch: ExchangeColumns, adds: pl.DataFrame) -> Folded:
        """The reference fold: the row loop of :meth:`_observe`, without sketch evictions."""
        f = batch.frame
        n = f.height
        plain_names = list(batch.counters)
        none_row: tuple[None, ...] = ()
        incs = (
            zip(*(f.get_column(c).to_list() for c in batch.counters.values()), strict=True)
            if plain_names
            else itertools.repeat(none_row, n)
        )
        fams = (
            zip(*(f.get_column(c).to_list() for c in batch.families), strict=True)
            if batch.families
            else itertools.repeat(none_row, n)
        )
        groups = (
            zip(*(f.get_column(g).to_list() for g, _ in batch.memberships), strict=True)
            if batch.memberships
            else itertools.repeat(none_row, n)
        )
        members = (
            zip(*(f.get_column(m).to_list() for _, m in batch.memberships), strict=True)
            if batch.memberships
            else itertools.repeat(none_row, n)
        )
        read_names = tuple(batch.reads)
        zeros = (0.0,) * len(read_names)
        views: list[AccountView] = []
        values: list[tuple[float, ...]] = []
        counts: list[list[int]] = []
        accounts, sketches = self._accounts, self._sketches
        max_accounts, p = self.max_accounts, self.p
        for account, ts_ms, row_incs, row_fams, row_groups, row_members in zip(
            f.get_column(batch.account).to_list(),
            f.get_column(batch.ts_ms).to_list(),
            incs,
            fams,
            groups,
            members,
            strict=True,
        ):
            view = accounts.get(account)
            if view is None:
                view = AccountView(account)
                accounts[account] = view
                if len(accounts) > max_accounts:
                    accounts.popitem(last=False)
            else:
                accounts.move_to_end(account)
            c = view.counters
            c["n"] = c.get("n", 0.0) + 1.0
            for name, inc in zip(plain_names, row_incs, strict=True):
                if inc is not None:
                    apply_counters(c, {name: inc})
            for field_name in row_fams:
                if field_name is not None:
                    apply_counters(c, {field_name: 1.0})
            first, last = view.first_ms, view.last_ms
            view.first_ms = ts_ms if first is None else min(first, ts_ms)
            view.last_ms = ts_ms if last is None else max(last, ts_ms)
            row_counts = []
            for group, member in zip(row_groups, row_members, strict=True):
                if group is None or member is None:
                    row_counts.append(0)
                    continue
                sketch = sketches.get(group)
                if member == COUNT_ONLY:
                    row_counts.append(0 if sketch is None else sketch.count())
                    continue
                if sketch is None:
                    sketch = _Sketch(p)
                    sketches[group] = sketch
                else:
                    sketches.move_to_end(group)
                row_counts.append(sketch.add(member))
            counts.append(row_counts)
            values.append(tuple(map(c.get, read_names, zeros)))
            views.append(view)
        return Folded(
            views,
            np.array(values, dtype=np.float64).reshape(n, len(read_names)),
            np.array(counts, dtype=np.int64).reshape(n, len(batch.memberships)),
            _last_touches(adds),
        )

    def _fold_columns(self, batch: ExchangeColumns, adds: pl.DataFrame) -> Folded | None:
        """The columnar fold, or None when only the row loop gives the one-by-one answer."""
        f = batch.frame
        n = f.height
        accounts = self._accounts
        acct = f.get_column(batch.account)
        uniq: list[str] = acct.unique(maintain_order=True).to_list()
        # Each distinct account is looked up once; everything after works on its index in ``uniq``.
        stored: list[AccountView | None] = list(map(accounts.get, uniq))
        if len(accounts) + stored.count(None) > self.max_accounts:
            return None  # an account is evicted inside the batch: the row loop evicts it when one by one would
        if "n" in batch.counters or any(k[:4] in TOP_FAMILIES for k in batch.counters):
            return None
        if adds.height and (adds.get_column("member") == COUNT_ONLY).any():
            return None
        fams: list[tuple[str, str, str]] = []  # (column, prefix, maximum)
        for col in batch.families:
            fields = f.get_column(col).drop_nulls()
            if fields.len() == 0:
                continue
            prefixes = fields.str.slice(0, 4).unique().to_list()
            if (
                len(prefixes) != 1
                or prefixes[0] not in TOP_FAMILIES
                or any(prefixes[0] == p for _, p, _ in fams)
            ):
                return None
            if (fields == prefixes[0] + "~other").any():
                return None
            fams.append((col, prefixes[0], TOP_FAMILIES[prefixes[0]]))
        tops = set(TOP_FAMILIES.values())
        if any(r != "n" and r not in batch.counters and r not in tops for r in batch.reads):
            return None

        # Accounts: the views (new ones created), in the order each exchange sees them.
        held = [v is not None for v in stored]
        view_list = [AccountView(a) if v is None else v for a, v in zip(uniq, stored, strict=True)]
        accounts.update((a, v) for a, v, h in zip(uniq, view_list, held, strict=True) if not h)
        at = acct.replace_strict(
            uniq, list(range(len(uniq))), return_dtype=pl.Int64
        ).to_numpy()  # row -> uniq index
        by_index = np.empty(len(uniq), dtype=object)
        by_index[:] = view_list
        views: list[AccountView] = by_index[at].tolist()
        counters = [v.counters for v in view_list]
        code = pl.Series("_a", at)

        # Counters: cumulative sums per account, each starting from the stored value, so the
        # additions happen in the same order (and give the same floats) as one by one.
        names = ["n", *batch.counters]
        zeros = (0.0,) * len(names)
        prior = np.array(
            [tuple(map(c.get, names, zeros)) if h else zeros for c, h in zip(counters, held, strict=True)],
            dtype=np.float64,
        ).reshape(len(uniq), len(names))  # fmt: skip
        cols = [f"c{j}" for j in range(len(names))]
        head = pl.DataFrame(
            {
                "_a": np.arange(len(uniq), dtype=np.int64),
                **{c: prior[:, j] for j, c in enumerate(cols)},
            }
        )
        body = f.select(
            code,
            pl.lit(1.0, dtype=pl.Float64).alias("c0"),
            *(
                pl.col(col).cast(pl.Float64).fill_null(0.0).alias(cols[j + 1])
                for j, col in enumerate(batch.counters.values())
            ),
        )
        cum = (
            pl.concat([head, body])
            .select(pl.col(c).cum_sum().over("_a") for c in cols)
            .slice(len(uniq))
            .to_numpy()
        )
        per_account = f.select(
            code,
            pl.int_range(pl.len(), dtype=pl.Int64).alias("_i"),
            pl.col(batch.ts_ms).alias("_ts"),
            *(pl.col(col).is_not_null().alias(f"h{j + 1}") for j, col in enumerate(batch.counters.values())),
        ).group_by("_a").agg(
            pl.col("_i").max().alias("_last"), pl.col("_ts").min().alias("_lo"), pl.col("_ts").max().alias("_hi"),
            *(pl.col(f"h{j + 1}").any() for j in range(len(batch.counters))),
        ).sort("_a")  # fmt: skip

        # Family fields (cap:*, tpl:*): which are admitted under MAX_FAMILY_FIELDS, their running
        # counts, and each account's running maximum.
        top_reads: dict[str, np.ndarray] = {}
        for col, prefix, top in fams:
            before = np.array([c.get(top, 0.0) for c in counters], dtype=np.float64)[at]
            rows = f.select(
                pl.int_range(pl.len(), dtype=pl.Int64).alias("_i"),
                code,
                pl.col(col).alias("_f"),
            ).filter(pl.col("_f").is_not_null())
            rows = rows.with_columns(
                (pl.int_range(pl.len(), dtype=pl.Int64).over(["_a", "_f"]) + 1).alias("_k")
            )
            pairs = rows.group_by(["_a", "_f"], maintain_order=True).agg(
                pl.col("_i").min().alias("_first"), pl.len().alias("_cnt")
            )
            # Per account, fields in the order they first appear: one by one admits a new field while
            # fewer than MAX_FAMILY_FIELDS are held, and pools the rest in <family>~other.
            admitted: list[bool] = []
            base: list[float] = []
            seen_key, other = "#" + prefix, prefix + "~other"
            for j, name, cnt in zip(
                pairs.get_column("_a").to_list(),
                pairs.get_column("_f").to_list(),
                pairs.get_column("_cnt").to_list(),
                strict=True,
            ):
                c = counters[j]
                value = c.get(name)
                if value is None:
                    seen = c.get(seen_key, 0.0)
                    if seen >= MAX_FAMILY_FIELDS:
                        c[other] = c.get(other, 0.0) + cnt
                        admitted.append(False)
                        base.append(0.0)
                        continue
                    c[seen_key] = seen + 1.0
                    value = 0.0
                admitted.append(True)
                base.append(value)
                c[name] = value + cnt
                c[top] = max(c.get(top, 0.0), value + cnt)
            info = pl.DataFrame(
                {"_first": pairs.get_column("_first"), "_adm": admitted, "_base": base},
                schema={"_first": pl.Int64, "_adm": pl.Boolean, "_base": pl.Float64},
            )
            hit = (
                rows.with_columns(pl.col("_i").min().over(["_a", "_f"]).alias("_first"))
                .join(info, on="_first", how="left")
                .filter(pl.col("_adm"))
                .select("_i", (pl.col("_base") + pl.col("_k").cast(pl.Float64)).alias("_v"))
            )
            v = np.full(n, -np.inf)
            v[hit.get_column("_i").to_numpy()] = hit.get_column("_v").to_numpy()
            running = (
                pl.DataFrame({"_a": at, "_v": v})
                .select(pl.col("_v").cum_max().over("_a"))
                .to_series()
                .to_numpy()
            )
            top_reads[top] = np.where(running > before, running, before)

        # Sketches: an exact set's count is its size so far, so it only needs which additions are
        # new members; a HyperLogLog (or a set that becomes one in this batch) goes addition by addition.
        counts = np.zeros((n, len(batch.memberships)), dtype=np.int64)
        touched = self._fold_sketches(adds, counts) if adds.height else _last_touches(adds)

        values = np.empty((n, len(batch.reads)), dtype=np.float64)
        for k, name in enumerate(batch.reads):
            if name in names:
                values[:, k] = cum[:, names.index(name)]
            elif name in top_reads:
                values[:, k] = top_reads[name]
            else:  # a maximum no field of this batch feeds
                values[:, k] = np.array([c.get(name, 0.0) for c in counters], dtype=np.float64)[at]

        # Write back what one-by-one updates leave: counters, first/last, family fields, LRU order.
        # A counter nothing was added to keeps its value (its sum is that value plus zeros), so
        # only the added ones are written: per pattern of added counters, one update per account.
        last = per_account.get_column("_last").to_numpy()
        final = cum[last]
        added = np.ones((len(uniq), len(names)), dtype=bool)
        for j in range(1, len(names)):
            added[:, j] = per_account.get_column(f"h{j}").to_numpy()
        # Patterns as integers where they fit (np.unique over rows is ~100x slower).
        bits = (
            added @ (1 << np.arange(len(names), dtype=np.int64))
            if len(names) < 63
            else np.unique(added, axis=0, return_inverse=True)[1].reshape(-1)
        )
        _, first_of, which = np.unique(bits, return_index=True, return_inverse=True)
        for p, pattern in enumerate(added[first_of]):
            members = np.flatnonzero(which == p)
            written = [k for k, w in zip(names, pattern.tolist(), strict=True) if w]
            rows_out = final[np.ix_(members, np.flatnonzero(pattern))].tolist()
            for j, row in zip(members.tolist(), rows_out, strict=True):
                counters[j].update(zip(written, row, strict=True))
        for view, lo, hi in zip(
            view_list,
            per_account.get_column("_lo").to_list(),
            per_account.get_column("_hi").to_list(),
            strict=True,
        ):
            first, last_ms = view.first_ms, view.last_ms
            view.first_ms = lo if first is None else min(first, lo)
            view.last_ms = hi if last_ms is None else max(last_ms, hi)
        move = accounts.move_to_end
        for j in np.argsort(last).tolist():
            move(uniq[j])
        return Folded(views, values, counts, touched)

    def _fold_sketches(self, adds: pl.DataFrame, counts: np.ndarray) -> pl.DataFrame:
        """The sketch part of :meth:`_fold_columns`: ``counts[row, membership]`` of every addition; returns
        :attr:`Folded.touched` (no addition only reads here)."""
        sketches, p = self._sketches, self.p
        unique = adds.get_column("group").unique(maintain_order=True)
        groups: list[str] = unique.to_list()
        # Each key is looked up once; the rest works on its index (in order of first addition)
        # with column operations, and touches Python objects only to change them.
        stored: list[_Sketch | None] = list(map(sketches.get, groups))
        held: list[str | set[str] | None] = [None] * len(groups)  # exact sets held before the batch
        size = np.zeros(len(groups), dtype=np.int64)
        # Kinds of key: an exact set (or none yet); addition by addition (a HyperLogLog without an
        # estimate yet, and below a set that becomes one in this batch); a HyperLogLog.
        exact_set, sequential, hll = 0, 1, 2
        kind = np.zeros(len(groups), dtype=np.int8)
        for i, sketch in enumerate(stored):
            if sketch is None:
                continue
            members = sketch.exact
            if members is None:
                kind[i] = hll if sketch.estimate else sequential
            else:
                held[i] = members
                size[i] = (1 if members else 0) if isinstance(members, str) else len(members)
        adds = adds.select(
            "key",
            "member",
            pl.col("group").replace_strict(unique, np.arange(len(groups)), return_dtype=pl.Int64).alias("_g"),
        ).with_columns(pl.struct("_g", "member").is_first_distinct().alias("_first"))  # fmt: skip
        g_all = adds.get_column("_g").to_numpy()
        last = np.zeros(len(groups), dtype=np.int64)
        np.maximum.at(last, g_all, adds.get_column("key").to_numpy())
        touched = pl.DataFrame({"group": unique, "key": last})
        in_hll = kind[g_all] == hll
        if in_hll.any():
            which = np.flatnonzero(kind == hll)
            local = np.zeros(len(groups), dtype=np.int64)
            local[which] = np.arange(len(which))
            self._fold_hll(
                adds.filter(pl.Series(in_hll)).with_columns(pl.Series("_g", local[g_all[in_hll]])),
                [s for i in which.tolist() if (s := stored[i]) is not None],
                counts,
            )
        rest = np.flatnonzero(~in_hll)  # rows of ``adds`` still to fold
        if rest.size == 0:
            return touched
        member = adds.get_column("member")
        keys = adds.get_column("key").to_numpy()[rest]
        g = g_all[rest]
        # New members of sets: first additions of a member, except one a set held before the batch has.
        new = adds.get_column("_first").to_numpy()[rest] & (kind[g] == exact_set)
        known = np.flatnonzero(new & (size[g] > 0))
        if known.size:
            had = [
                (h == m if isinstance(h, str) else h is not None and m in h)
                for h, m in zip(
                    map(held.__getitem__, g[known].tolist()),
                    member.gather(rest[known]).to_list(),
                    strict=True,
                )
            ]
            new[known[np.array(had, dtype=bool)]] = False
        # A set that reaches EXACT_LIMIT in this batch becomes a HyperLogLog: addition by addition.
        crossing = (kind == exact_set) & (
            size + np.bincount(g[new], minlength=len(groups)) >= EXACT_LIMIT
        )
        in_seq = ((kind == sequential) | crossing)[g]
        # A set's count is its size so far: per key in addition order (a stable sort keeps it).
        run = np.flatnonzero(~in_seq)
        order = run[np.argsort(g[run], kind="stable")]
        g_run, new_run = g[order], new[order].astype(np.int64)
        starts = np.flatnonzero(np.diff(g_run, prepend=-1))  # (empty when no set is added to)
        total = np.cumsum(new_run)
        before = np.repeat(total[starts] - new_run[starts], np.diff(np.r_[starts, len(order)]))
        counts[keys[order] // TOUCH_SLOTS, keys[order] % TOUCH_SLOTS] = size[g_run] + total - before
        # Sets' new members, grouped per key; keys new to the state in order of first addition.
        grow = order[new_run.astype(bool)]
        if grow.size:
            g_grow = g[grow]
            bounds = np.flatnonzero(np.r_[True, g_grow[1:] != g_grow[:-1], True]).tolist()
            added: list[str] = member.gather(rest[grow]).to_list()
            created: list[tuple[str, _Sketch]] = []
            for i, lo, hi in zip(
                g_grow[bounds[:-1]].tolist(), bounds[:-1], bounds[1:], strict=True
            ):
                sketch = stored[i]
                if sketch is None:
                    sketch = _Sketch(p)
                    sketch.exact = added[lo] if hi - lo == 1 else set(added[lo:hi])
                    created.append((groups[i], sketch))
                    continue
                current = sketch.exact
                if isinstance(current, str):
                    joined = [current, *added[lo:hi]] if current else added[lo:hi]
                    sketch.exact = joined[0] if len(joined) == 1 else set(joined)
                else:
                    assert current is not None
                    current.update(added[lo:hi])
            sketches.update(created)
        seq = np.flatnonzero(in_seq)
        for key, i, m in zip(
            keys[seq].tolist(), g[seq].tolist(), member.gather(rest[seq]).to_list(), strict=True
        ):
            sketch = sketches.get(groups[i])
            if sketch is None:
                sketch = _Sketch(p)
                sketches[groups[i]] = sketch
            counts[key // TOUCH_SLOTS, key % TOUCH_SLOTS] = sketch.add(m)
        return touched

    def _fold_hll(self, adds: pl.DataFrame, sk: list[_Sketch], counts: np.ndarray) -> None:
        """Additions to sketches that are HyperLogLogs already: :meth:`_Sketch.add`'s answers and end state, columnar.

        An addition raises a register if its rank beats the register as it stood (before the
        batch, or raised earlier in it); every REESTIMATE_EVERY-th addition re-estimates if a
        register moved since the last one, with datasketch's own count on the registers as they
        stand at that addition. Only those re-estimates run one at a time. ``adds``: ``key``,
        ``member`` and ``_g``, the sketch's index in ``sk``.
        """
        p, every = self.p, REESTIMATE_EVERY
        members = adds.get_column("member").unique().to_list()
        slots = [_hll_slot(m, p) for m in members]
        regs = [s.hll.reg for s in sk]  # type: ignore[union-attr]
        reg0 = np.stack(regs).astype(np.int64)
        stale0 = np.array([s.stale for s in sk], dtype=np.int64)
        e = (
            adds.join(
                pl.DataFrame({"member": members, "_idx": [s[0] for s in slots], "_rank": [s[1] for s in slots]},
                             schema={"member": pl.String, "_idx": pl.Int64, "_rank": pl.Int64}),
                on="member", how="left",
            )
            .sort(["_g", "key"])
            .with_columns(
                pl.int_range(1, pl.len() + 1, dtype=pl.Int64).over("_g").alias("_k"),
                pl.col("_rank").cum_max().shift(1).over(["_g", "_idx"]).fill_null(-1).alias("_prev"),
            )
        )  # fmt: skip
        g_of = e.get_column("_g").to_numpy()
        idx = e.get_column("_idx").to_numpy()
        rank = e.get_column("_rank").to_numpy()
        k = e.get_column("_k").to_numpy()
        raised = rank > np.maximum(reg0[g_of, idx], e.get_column("_prev").to_numpy())
        st = stale0[g_of]
        segment = (st + k - 1) // every  # re-estimates strictly before this addition
        check = (st + k) % every == 0
        start = np.searchsorted(
            g_of, np.arange(len(sk))
        )  # each sketch's first addition (sorted by sketch)
        end = np.append(start[1:], len(g_of))
        # A re-estimate runs if a register moved since the previous one (or before the batch, for the first).
        seg_key = g_of * (int(k.max()) + 1) + segment
        uniq_seg, inverse = np.unique(seg_key, return_inverse=True)
        seg_moved = np.zeros(len(uniq_seg), dtype=bool)
        np.logical_or.at(seg_moved, inverse, raised)
        moved = seg_moved[inverse]
        dirty0 = np.array([s.dirty for s in sk], dtype=bool)
        moved |= (segment == 0) & dirty0[g_of]
        est0 = np.array([s.estimate for s in sk], dtype=np.int64)
        rerun = np.flatnonzero(check & moved)
        answer = np.full(len(g_of), -1, dtype=np.int64)
        done = start.copy()  # additions already applied to each sketch's registers
        for pos in rerun.tolist():
            g = int(g_of[pos])
            lo = int(done[g])
            np.maximum.at(regs[g], idx[lo : pos + 1], rank[lo : pos + 1].astype(regs[g].dtype))
            done[g] = pos + 1
            sk[g]._reestimate()
            answer[pos] = sk[g].estimate
        # Each addition answers the estimate as of the sketch's last re-estimate (before the batch if none).
        at = np.arange(len(g_of))
        last = np.maximum.accumulate(np.where(answer >= 0, at, -1))
        answer = np.where(last >= start[g_of], answer[np.maximum(last, 0)], est0[g_of])
        keys = e.get_column("key").to_numpy()
        counts[keys // TOUCH_SLOTS, keys % TOUCH_SLOTS] = answer
        for g, sketch in enumerate(sk):
            lo, hi = int(start[g]), int(end[g])
            np.maximum.at(regs[g], idx[done[g] : hi], rank[done[g] : hi].astype(regs[g].dtype))
            total = int(stale0[g]) + hi - lo
            checks = total // every
            # dirty: a register moved after the last re-estimate point (or at all, if none came)
            after = lo + checks * every - int(stale0[g]) if checks else lo
            sketch.dirty = bool(raised[after:hi].any()) or (checks == 0 and bool(dirty0[g]))
            sketch.stale = total % every

    def peek(self, group: str) -> int:
        """A sketch's count, neither adding to it nor refreshing its place (the empty member of :meth:`observe`)."""
        with self._lock:
            sketch = self._sketches.get(group)
            return 0 if sketch is None else sketch.count()

    def add_deferred(self, group: str, member: str) -> int:
        """Add a member during a batch: nothing is evicted, and the LRU order is left to :meth:`settle`."""
        with self._lock:
            sketch = self._sketches.get(group)
            if sketch is None:
                sketch = _Sketch(self.p)
                self._sketches[group] = sketch
            elif (
                sketch.exact == member
            ):  # _Sketch.add's answer for its one member, without the call
                return 1
            return sketch.add(member)

    def present(self, groups: Iterable[str]) -> set[str]:
        """The given sketch keys that exist."""
        with self._lock:
            sketches = self._sketches
            return {g for g in groups if g in sketches}

    def settle(self, order: Iterable[str] = ()) -> None:
        """End a batch: make the given sketches newest in that order (oldest first), then evict down to the cap."""
        with self._lock:
            sketches = self._sketches
            move = sketches.move_to_end
            for group in order:
                move(group)
            while len(sketches) > self.max_sketch_keys:
                sketches.popitem(last=False)

    def plan_evictions(
        self, adds: pl.DataFrame, taint: pl.DataFrame
    ) -> tuple[dict[str, int], int | None]:
        """Which sketches one-by-one updates evict before a batch first uses them, as far as that is settled.

        ``adds``: the batch's additions (:func:`additions`); ``taint``: keys the decisions may read
        or add to (``group``, ``key`` of the earliest moment) — whether they are created or touched
        depends on the decisions. Evictions follow insertions beyond the cap, oldest first,
        skipping sketches already touched in the batch; a sketch evicted before its first use
        comes back empty at that use, one more insertion. The frontier is simulated with no taint
        insertion and with every possible one at its earliest; more insertions only evict more
        and sooner, so a sketch both evict before its first use is evicted, and one neither does
        is not.

        Returns ``(evicted, undecided)``: the sketches evicted before their first use (-> that
        use's key) and the key of the first use whose fate the decisions could change (None: all
        settled). Up to ``undecided``, dropping those sketches now and deferring every other
        eviction to :meth:`settle` reads exactly what one by one would.
        """
        with self._lock:
            sketches = self._sketches
            cap = self.max_sketch_keys
            first = adds.group_by("group").agg(pl.col("key").min())
            tfirst = taint.group_by("group").agg(pl.col("key").min())
            if first.height + tfirst.height >= cap:
                return {}, 0  # the batch's own sketches could be evicted within it
            if len(sketches) + first.height + tfirst.height <= cap:
                return {}, None
            # Membership tests mapped over whole columns: a batch names ~100k keys at the seed scale.
            groups: list[str] = first.get_column("group").to_list()
            times: list[int] = first.get_column("key").to_list()
            inside = list(map(sketches.__contains__, groups))
            used = dict(itertools.compress(zip(groups, times, strict=True), inside))
            new = [t for t, h in zip(times, inside, strict=True) if not h]
            groups = tfirst.get_column("group").to_list()
            times = tfirst.get_column("key").to_list()
            inside = list(map(sketches.__contains__, groups))
            held_taint = set(itertools.compress(groups, inside))
            new_taint = [t for t, h in zip(times, inside, strict=True) if not h]
            fewest, stop_f = self._frontier(sorted(new), used, held_taint)
            most, stop_m = self._frontier(sorted(new + new_taint), used, held_taint)
            unsettled = [t for k, t in most.items() if k not in fewest] + [
                t for k, t in fewest.items() if k not in most
            ]
            undecided = min(
                [*unsettled, *(s for s in (stop_f, stop_m) if s is not None)], default=None
            )
            return {
                k: t
                for k, t in fewest.items()
                if k in most and (undecided is None or t < undecided)
            }, undecided

    def _frontier(
        self, inserts: list[int], used: Mapping[str, int], taint: Collection[str]
    ) -> tuple[dict[str, int], int | None]:
        """Sketches evicted before their first use when new ones arrive at ``inserts``, and where the simulation had to stop.

        It stops at an eviction that reaches a taint key (whether decisions touched it first
        decides what is evicted from then on). Each insertion beyond the cap evicts the oldest
        key not yet touched; most of those are neither used nor taint and only consume an
        insertion each, so runs of them are skipped at once and only the others are simulated.
        """
        sketches = self._sketches
        # The first insertions fit under the cap.
        pos = min(len(inserts), max(0, self.max_sketch_keys - len(sketches)))
        back: list[int] = []  # (heap) evicted sketches coming back empty at their first use
        evicted: dict[str, int] = {}

        def skip(count: int) -> bool:
            """Consume ``count`` insertions, each evicting a key of no interest; False if they run out."""
            nonlocal pos
            while count and back:
                upto = min(bisect.bisect_right(inserts, back[0], pos), pos + count)
                count -= upto - pos
                pos = upto
                if count:  # the insertions up to back[0] are used: it comes back next
                    heapq.heappop(back)
                    count -= 1
            if count > len(inserts) - pos:
                pos = len(inserts)
                return False
            pos += count
            return True

        def upcoming() -> int:
            """The next insertion (one is left)."""
            if pos == len(inserts) or (back and back[0] < inserts[pos]):
                return back[0]
            return inserts[pos]

        oldest = iter(sketches)
        while True:
            pending = len(inserts) - pos + len(back)
            if pending == 0:
                return evicted, None
            chunk = list(itertools.islice(oldest, pending + 64))
            if not chunk:  # nothing left to evict at the next insertion
                return evicted, upcoming()
            marked = map(
                operator.or_, map(used.__contains__, chunk), map(taint.__contains__, chunk)
            )
            done = 0
            for j in itertools.compress(range(len(chunk)), marked):
                if not skip(j - done):
                    return evicted, None
                done = j + 1
                key = chunk[j]
                if pos == len(inserts) and not back:
                    return evicted, None
                t = upcoming()
                if key in taint:
                    return evicted, t
                first_use = used[key]
                if first_use < t:
                    continue  # already touched: no longer among the oldest
                evicted[key] = first_use
                skip(1)
                heapq.heappush(back, first_use)  # comes back empty when first used
            if not skip(len(chunk) - done):
                return evicted, None

    def drop(self, groups: Iterable[str]) -> None:
        """Remove sketches (ones :meth:`plan_evictions` found evicted before their first use)."""
        with self._lock:
            for g in groups:
                self._sketches.pop(g, None)

    def get(self, account_id: str) -> AccountView | None:
        with self._lock:
            view = self._accounts.get(account_id)
            if view is None:
                return None
            return AccountView(
                view.account_id, dict(view.counters), view.first_ms, view.last_ms,
                view.action_rank, view.cluster_id, list(view.reasons),
            )  # fmt: skip

    def set_action(
        self, account_id: str, rank: int, cluster_id: str | None, reasons: list[dict[str, Any]]
    ) -> None:
        with self._lock:
            view = self._accounts.get(account_id)
            if view is None:
                view = AccountView(account_id)
                self._accounts[account_id] = view
            view.action_rank, view.cluster_id, view.reasons = rank, cluster_id, list(reasons)

    def pending_exits(self, account_id: str) -> list[str]:
        """The exits an account remembers for retro-taint (:func:`note_exit`), whatever their window."""
        view = self._accounts.get(account_id)
        ex = view.exits if view is not None else None
        return [] if ex is None else ex[1:]

    def ping(self) -> bool:
        return True

    def size(self) -> dict[str, int]:
        return {"accounts": len(self._accounts), "sketches": len(self._sketches)}


# --------------------------------------------------------------------------- redis

# KEYS[1] account hash, KEYS[2] its retro-taint exits (a hash: "#b" the window bucket, one field per
# taint group), KEYS[3..] sketch keys.
# ARGV: ttl, ts_ms, n_incs, (field, inc)*, max_family_fields, exit group ("" none), exit bucket,
# exit cap, spread rank, then one member per sketch key.
_OBSERVE_LUA = """
local acct = KEYS[1]
local ttl = tonumber(ARGV[1])
local ts = tonumber(ARGV[2])
local n_incs = tonumber(ARGV[3])
local maxf = tonumber(ARGV[4 + 2 * n_incs])
local fam = {["cap:"] = "cap_top", ["tpl:"] = "tpl_top"}
local has_n = false
for i = 0, n_incs - 1 do
  local f = ARGV[4 + 2 * i]
  local inc = ARGV[5 + 2 * i]
  if f == "n" then has_n = true end
  local prefix = string.sub(f, 1, 4)
  local top = fam[prefix]
  if top and redis.call("HEXISTS", acct, f) == 0 then
    local nf = tonumber(redis.call("HINCRBY", acct, "#" .. prefix, 0))
    if nf >= maxf then
      f = prefix .. "~other"
      top = nil
    else
      redis.call("HINCRBY", acct, "#" .. prefix, 1)
    end
  end
  local v = tonumber(redis.call("HINCRBYFLOAT", acct, f, inc))
  if top then
    local cur = tonumber(redis.call("HGET", acct, top) or "0")
    if v > cur then redis.call("HSET", acct, top, v) end
  end
end
if has_n then
  local first = redis.call("HGET", acct, "first_ms")
  if (not first) or ts < tonumber(first) then redis.call("HSET", acct, "first_ms", ts) end
  local last = redis.call("HGET", acct, "last_ms")
  if (not last) or ts > tonumber(last) then redis.call("HSET", acct, "last_ms", ts) end
end
redis.call("EXPIRE", acct, ttl)
local xg = ARGV[5 + 2 * n_incs]
if xg ~= "" then
  -- note_exit: only while the account spreads no taint
  local action = tonumber(redis.call("HGET", acct, "action") or "0")
  local linked = tonumber(redis.call("HGET", acct, "taint_linked_only") or "0")
  if action < tonumber(ARGV[8 + 2 * n_incs]) or linked > 0 then
    local xk = KEYS[2]
    local xb = ARGV[6 + 2 * n_incs]
    if redis.call("HGET", xk, "#b") ~= xb then
      redis.call("DEL", xk)
      redis.call("HSET", xk, "#b", xb)
    end
    if redis.call("HLEN", xk) <= tonumber(ARGV[7 + 2 * n_incs]) then redis.call("HSET", xk, xg, 1) end
    redis.call("EXPIRE", xk, ttl)
  end
end
local counts = {}
local base = 9 + 2 * n_incs
for k = 3, #KEYS do
  local member = ARGV[base + k - 3]
  if member ~= "" then
    redis.call("PFADD", KEYS[k], member)
    redis.call("EXPIRE", KEYS[k], ttl)
  end
  counts[#counts + 1] = redis.call("PFCOUNT", KEYS[k])
end
return {redis.call("HGETALL", acct), counts}
"""

_META_FIELDS = ("first_ms", "last_ms", "action", "cluster", "reasons")


def _parse_hash(account_id: str, flat: Sequence[Any]) -> AccountView:
    raw = {_s(flat[i]): _s(flat[i + 1]) for i in range(0, len(flat), 2)}
    view = AccountView(account_id)
    for name, value in raw.items():
        if name in _META_FIELDS:
            continue
        view.counters[name] = float(value)
    view.first_ms = int(float(raw["first_ms"])) if "first_ms" in raw else None
    view.last_ms = int(float(raw["last_ms"])) if "last_ms" in raw else None
    view.action_rank = int(raw.get("action", "0"))
    view.cluster_id = raw.get("cluster") or None
    view.reasons = json.loads(raw["reasons"]) if "reasons" in raw else []
    return view


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisState:
    """Shared state in Redis: one hash per account, one HyperLogLog per sketch key, all with a TTL."""

    name = "redis"

    def __init__(
        self, url: str, prefix: str = "dg", ttl_seconds: int = 30 * 86400, timeout: float = 0.25
    ) -> None:
        self.prefix = prefix
        self.ttl = ttl_seconds
        self.client = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, health_check_interval=0
        )
        self._observe = self.client.register_script(_OBSERVE_LUA)

    def _acct(self, account_id: str) -> str:
        return f"{self.prefix}:a:{account_id}"

    def _exits(self, account_id: str) -> str:
        return f"{self.prefix}:x:{account_id}"

    def take_exits(self, account_id: str, bucket: int) -> list[str]:
        """:func:`take_exits` on the stored exits (sorted: a Redis hash keeps no order)."""
        key = self._exits(account_id)
        pipe = self.client.pipeline(transaction=True)
        pipe.hgetall(key)
        pipe.delete(key)
        raw, _ = self._call(pipe.execute)
        fields = {_s(k): _s(v) for k, v in raw.items()}
        if fields.pop("#b", None) != str(bucket):
            return []
        return sorted(fields)

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except redis.RedisError as exc:
            raise StateUnavailable(f"redis state store unreachable: {exc}") from exc

    def observe(self, obs: Observation) -> AccountView:
        keys = [self._acct(obs.account_id), self._exits(obs.account_id)] + [
            f"{self.prefix}:s:{g}" for g, _ in obs.distinct
        ]
        argv: list[Any] = [self.ttl, obs.ts_ms, len(obs.counters)]
        for name, inc in obs.counters.items():
            argv += [name, repr(float(inc))]
        argv.append(MAX_FAMILY_FIELDS)
        argv += list(obs.exit) if obs.exit is not None else ["", 0, 0, 0]
        argv += [m for _, m in obs.distinct]
        flat, counts = self._call(self._observe, keys=keys, args=argv)
        view = _parse_hash(obs.account_id, flat)
        view.distinct = {g: int(c) for (g, _), c in zip(obs.distinct, counts, strict=True)}
        return view

    def get(self, account_id: str) -> AccountView | None:
        flat = self._call(self.client.execute_command, "HGETALL", self._acct(account_id))
        if not flat:
            return None
        if isinstance(flat, dict):
            flat = [x for kv in flat.items() for x in kv]
        return _parse_hash(account_id, flat)

    def set_action(
        self, account_id: str, rank: int, cluster_id: str | None, reasons: list[dict[str, Any]]
    ) -> None:
        key = self._acct(account_id)
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(
            key,
            mapping={"action": rank, "cluster": cluster_id or "", "reasons": json.dumps(reasons)},
        )
        pipe.expire(key, self.ttl)
        self._call(pipe.execute)

    def ping(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False

    def size(self) -> dict[str, int]:
        return {"keys": int(self._call(self.client.dbsize))}
