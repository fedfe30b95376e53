"""Rate limits per account (by its current action), per cluster and per API key, on the ``limits`` library.

Storage follows the state backend: ``limits``' MemoryStorage in one process, its RedisStorage when
several service processes must share budgets. Moving windows, so a limiter never admits more
than its budget in any window. When Redis is down the caller switches to :attr:`Limiter.local`
(a process-local limiter with the configured fallback rate).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

import redis
from limits import RateLimitItem, parse
from limits.storage import MemoryStorage, RedisStorage, Storage
from limits.strategies import MovingWindowRateLimiter

from distillguard.core.verdict import Action
from distillguard.enforce.state import StateUnavailable

#: Seconds between sweeps of expired windows in the in-memory limit storage.
EXPIRY_SWEEP_SECONDS = 1.0


class QuietMemoryStorage(MemoryStorage):  # type: ignore[misc]
    """``limits``' MemoryStorage sweeping expired windows every :data:`EXPIRY_SWEEP_SECONDS`, not every 10 ms.

    The stock storage starts a timer thread 10 ms after a hit, and that thread walks every key
    under its lock: at thousands of checks a second over thousands of accounts it holds the GIL
    most of the time and was the main source of the decision service's tail latency. Moving
    windows compare timestamps on every read, so a slower sweep only frees memory later; it
    admits and refuses exactly the same requests.
    """

    def _MemoryStorage__schedule_expiry(self) -> None:  # overrides the name-mangled private hook
        if not self.timer.is_alive():
            self.timer = threading.Timer(EXPIRY_SWEEP_SECONDS, self._MemoryStorage__expire_events)  # type: ignore[attr-defined]
            self.timer.daemon = True
            self.timer.start()


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
        self.cluster = parse(cluster)
        self.api_key = parse(api_key)
        self.fallback = parse(fallback)
        storage: Storage
        if redis_url is not None:
            storage = RedisStorage(
                redis_url, key_prefix=f"{prefix}:lim", socket_timeout=timeout, socket_connect_timeout=timeout
            )
        else:
            storage = QuietMemoryStorage()
        self.storage = storage
        self.strategy = MovingWindowRateLimiter(storage)
        self.local = MovingWindowRateLimiter(QuietMemoryStorage())

    def _hit(self, strategy: MovingWindowRateLimiter, item: RateLimitItem, scope: str, key: str) -> LimitHit | None:
        if strategy.hit(item, scope, key):
            return None
        stats = strategy.get_window_stats(item, scope, key)
        return LimitHit(scope, str(item), max(1.0, math.ceil(stats.reset_time - time.time())))

    def check(self, action: Action, account_id: str, cluster_id: str | None, api_key_id: str | None) -> LimitHit | None:
        """Consume one unit from each applicable budget; the first refusal is returned (None: admitted)."""
        item = self.account.get(action.value)
        try:
            if item is not None and (hit := self._hit(self.strategy, item, "account", account_id)):
                return hit
            if cluster_id and (hit := self._hit(self.strategy, self.cluster, "cluster", cluster_id)):
                return hit
            if api_key_id and (hit := self._hit(self.strategy, self.api_key, "api_key", api_key_id)):
                return hit
        except (redis.RedisError, ConnectionError, TimeoutError) as exc:
            raise StateUnavailable(f"redis limit store unreachable: {exc}") from exc
        return None

    def check_fallback(self, account_id: str) -> LimitHit | None:
        """The process-local limit applied per account while the shared store is down."""
        return self._hit(self.local, self.fallback, "fallback", account_id)
