"""Rate limits per account (by its current action), per cluster and per API key: moving windows, in memory or in Redis.

Rates are the ``limits`` library's strings (``600/minute``). Storage follows the state backend:
:class:`MemoryWindows` in one process, the ``limits`` library's RedisStorage when several service
processes must share budgets. Moving windows, so a limiter never admits more than its budget in
any window. When Redis is down the caller switches to :meth:`Limiter.check_fallback` (a
process-local limiter with the configured fallback rate).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import redis
from limits import RateLimitItem, parse
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter

from distillguard.core.verdict import Action
from distillguard.enforce.state import StateUnavailable

#: Idle keys (whole window expired) dropped per hit, least recently hit first: the memory of idle
#: accounts is returned as fast as new ones arrive, with no sweeper thread.
PRUNE_PER_HIT = 2


class Windows(Protocol):
    """A moving-window store: consume one unit of ``item`` for ``key``, or say how long until it admits again."""

    def hit(self, item: RateLimitItem, scope: str, key: str) -> float | None:
        """None: admitted (one unit consumed). Otherwise refused: seconds until the window admits again (>= 1)."""
        ...


class MemoryWindows:
    """Moving windows in process memory, with the admissions of ``limits``' MemoryStorage and no thread.

    ``limits``' MemoryStorage keeps every hit of a key in a list (newest first) and refuses a hit
    when the ``amount``-th newest is younger than the window; a timer thread sweeps expired hits
    by walking every key under its lock. At thousands of checks a second over thousands of
    accounts that sweep held the GIL for milliseconds at a time (the service's tail latency), and
    the library's generic path (key strings, per-key locks, an object per hit) was a measurable
    share of a check. Here a key keeps at most ``amount`` hit times (the check never reads an
    older one), expired ones are dropped on the key's next hit, and keys of a rate idle for a
    whole window are dropped a few per hit of that rate, least recently hit first (so a rate's
    keys never outnumber those hit within one window by much; a rate no longer hit keeps its last
    keys). Same admissions and the same ``retry_after`` as the library for the same clock readings
    (``tests/enforce/test_fast_paths.py``). Not thread-safe: the enforcer calls it under its lock.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        # Per rate: key -> hit times (oldest first), keys in least-recently-hit order. Equal rates
        # share their windows, as the library's keys (rate and identifiers) do.
        self._windows: dict[RateLimitItem, OrderedDict[tuple[str, str], deque[float]]] = {}
        # id(item) -> (its windows, window seconds, amount): no RateLimitItem hashing per hit.
        self._by_id: dict[int, tuple[OrderedDict[tuple[str, str], deque[float]], int, int]] = {}
        self._items: list[RateLimitItem] = []  # keeps the ids above unique

    def hit(self, item: RateLimitItem, scope: str, key: str) -> float | None:
        now = self.clock()
        rate = self._by_id.get(id(item))
        if rate is None:
            rate = self._by_id[id(item)] = (
                self._windows.setdefault(item, OrderedDict()),
                item.get_expiry(),
                item.amount,
            )
            self._items.append(item)
        windows, expiry, limit = rate
        floor = now - expiry
        k = (scope, key)
        hits = windows.get(k)
        if hits is None:
            hits = windows[k] = deque()
        else:
            windows.move_to_end(k)
        for _ in range(PRUNE_PER_HIT):
            oldest_key, oldest = next(iter(windows.items()))
            if oldest_key == k or (oldest and oldest[-1] >= floor):
                break
            del windows[oldest_key]
        if limit <= 0:
            return max(1.0, math.ceil(expiry))  # the library: no hit ever, the window starts now
        while hits and hits[0] < floor:
            hits.popleft()
        if len(hits) < limit:
            hits.append(now)
            return None
        # Refused: the window admits again when its oldest hit leaves it (the library reads the
        # window's start as the oldest hit strictly inside it; equal readings only in theory).
        start = next((t for t in hits if t > floor), None)
        return 1.0 if start is None else max(1.0, math.ceil(start + expiry - now))

    def size(self) -> int:
        """Keys held (for tests and memory checks)."""
        return sum(len(w) for w in self._windows.values())


class LibraryWindows:
    """The ``limits`` library's moving-window strategy over one of its storages (Redis)."""

    def __init__(self, strategy: MovingWindowRateLimiter) -> None:
        self.strategy = strategy

    def hit(self, item: RateLimitItem, scope: str, key: str) -> float | None:
        if self.strategy.hit(item, scope, key):
            return None
        stats = self.strategy.get_window_stats(item, scope, key)
        return max(1.0, math.ceil(stats.reset_time - time.time()))


@dataclass(frozen=True)
class LimitHit:
    """A limit that refused a request: which scope and how long until it admits again."""

    scope: str  # account, cluster, api_key or fallback
    limit: str
    retry_after: float


class Limiter:
    """Checks the account, cluster and API-key budgets of one request, in that order."""

    def __init__(
        self,
        account: Mapping[str, str],
        cluster: str,
        api_key: str,
        fallback: str,
        redis_url: str | None = None,
        prefix: str = "dg",
        timeout: float = 0.25,
    ) -> None:
        self.account = {k: parse(v) for k, v in account.items()}
        self._by_action = {a: self.account[a.value] for a in Action if a.value in self.account}
        self.cluster = parse(cluster)
        self.api_key = parse(api_key)
        self.fallback = parse(fallback)
        self.windows: Windows
        if redis_url is not None:
            storage = RedisStorage(
                redis_url,
                key_prefix=f"{prefix}:lim",
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
            )
            self.windows = LibraryWindows(MovingWindowRateLimiter(storage))
        else:
            self.windows = MemoryWindows()
        self.local = MemoryWindows()

    def check(
        self, action: Action, account_id: str, cluster_id: str | None, api_key_id: str | None
    ) -> LimitHit | None:
        """Consume one unit from each applicable budget; the first refusal is returned (None: admitted)."""
        item = self._by_action.get(action)
        hit = self.windows.hit
        try:
            if item is not None and (retry := hit(item, "account", account_id)) is not None:
                return LimitHit("account", str(item), retry)
            if cluster_id and (retry := hit(self.cluster, "cluster", cluster_id)) is not None:
                return LimitHit("cluster", str(self.cluster), retry)
            if api_key_id and (retry := hit(self.api_key, "api_key", api_key_id)) is not None:
                return LimitHit("api_key", str(self.api_key), retry)
        except (redis.RedisError, ConnectionError, TimeoutError) as exc:
            raise StateUnavailable(f"redis limit store unreachable: {exc}") from exc
        return None

    def check_fallback(self, account_id: str) -> LimitHit | None:
        """The process-local limit applied per account while the shared store is down."""
        retry = self.local.hit(self.fallback, "fallback", account_id)
        return None if retry is None else LimitHit("fallback", str(self.fallback), retry)
