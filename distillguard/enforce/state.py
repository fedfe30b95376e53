"""Online state backends: per-account counters and bounded distinct-count sketches, in memory or in Redis.

Both backends offer one operation, :meth:`StateBackend.observe`: apply an exchange's counter
increments to its account, add ``(group, member)`` pairs to distinct-count sketches, and return
the account's state after the update together with the sketches' estimates. A pair with the
empty member (:data:`COUNT_ONLY`) reads the sketch's estimate without adding to it. Everything one
exchange changes is applied in one step (a Lua script on Redis: one round trip, atomic), so
several service processes sharing a Redis see one consistent state.

Memory is bounded: the memory backend keeps at most ``max_accounts`` accounts and
``max_sketch_keys`` sketches (least recently used evicted); a sketch is an exact set until it
holds :data:`EXACT_LIMIT` members and a HyperLogLog (``datasketch``) after that. On Redis,
sketches are Redis's own HyperLogLogs (PFADD / PFCOUNT) and every key carries a TTL.

Exception tree::

    DistillguardError
    └── StateUnavailable      the shared store cannot be reached (the fail mode decides)
"""

from __future__ import annotations

import functools
import json
import threading
import warnings
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

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

    def set_action(self, account_id: str, rank: int, cluster_id: str | None, reasons: list[dict[str, Any]]) -> None: ...

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
                assert self.hll is not None
                with warnings.catch_warnings():
                    # datasketch warns near its bias-correction threshold; the estimate is still usable.
                    warnings.simplefilter("ignore", UserWarning)
                    self.estimate = max(EXACT_LIMIT, round(float(self.hll.count())))
                self.dirty = False
            self.stale = 0
        return self.estimate

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


def apply_counters(counters: dict[str, float], increments: Mapping[str, float]) -> None:
    """Apply increments, keeping ``cap_top`` / ``tpl_top`` as running maxima of their families.

    A family field (``cap:*``, ``tpl:*``) beyond MAX_FAMILY_FIELDS distinct values goes to
    ``<family>~other``, which feeds no maximum.
    """
    for name, inc in increments.items():
        top = TOP_FAMILIES.get(name[:4])
        if top is None:
            counters[name] = counters.get(name, 0.0) + inc
            continue
        value = counters.get(name)
        if value is None:
            prefix = name[:4]
            seen = counters.get("#" + prefix, 0.0)
            if seen >= MAX_FAMILY_FIELDS:
                other = prefix + "~other"
                counters[other] = counters.get(other, 0.0) + inc
                continue
            counters["#" + prefix] = seen + 1.0
            value = inc
        else:
            value += inc
        counters[name] = value
        counters[top] = max(counters.get(top, 0.0), value)


class MemoryState:
    """The embedded backend: one process, LRU-bounded, thread-safe."""

    name = "memory"

    def __init__(self, max_accounts: int = 200_000, max_sketch_keys: int = 400_000, hll_precision: int = 8) -> None:
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
        self, account_id: str, ts_ms: int, counters: Mapping[str, float], distinct: Sequence[tuple[str, str]]
    ) -> tuple[AccountView, dict[str, int]]:
        """:meth:`observe` without copies: the stored view itself (valid until the next update) and the sketch counts.

        For a caller that reads the view at once under its own lock (the enforcer's batch loop):
        copying ~100 counters per exchange was most of the cost of an update.
        """
        with self._lock:
            return self._observe(account_id, ts_ms, counters, distinct)

    def _observe(
        self, account_id: str, ts_ms: int, increments: Mapping[str, float], distinct: Sequence[tuple[str, str]]
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

    def get(self, account_id: str) -> AccountView | None:
        with self._lock:
            view = self._accounts.get(account_id)
            if view is None:
                return None
            return AccountView(
                view.account_id, dict(view.counters), view.first_ms, view.last_ms,
                view.action_rank, view.cluster_id, list(view.reasons),
            )  # fmt: skip

    def set_action(self, account_id: str, rank: int, cluster_id: str | None, reasons: list[dict[str, Any]]) -> None:
        with self._lock:
            view = self._accounts.get(account_id)
            if view is None:
                view = AccountView(account_id)
                self._accounts[account_id] = view
            view.action_rank, view.cluster_id, view.reasons = rank, cluster_id, list(reasons)

    def ping(self) -> bool:
        return True

    def size(self) -> dict[str, int]:
        return {"accounts": len(self._accounts), "sketches": len(self._sketches)}


# --------------------------------------------------------------------------- redis

# KEYS[1] account hash, KEYS[2..] sketch keys.
# ARGV: ttl, ts_ms, n_incs, (field, inc)*, max_family_fields, then one member per sketch key.
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
local counts = {}
local base = 5 + 2 * n_incs
for k = 2, #KEYS do
  local member = ARGV[base + k - 2]
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

    def __init__(self, url: str, prefix: str = "dg", ttl_seconds: int = 30 * 86400, timeout: float = 0.25) -> None:
        self.prefix = prefix
        self.ttl = ttl_seconds
        self.client = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, health_check_interval=0
        )
        self._observe = self.client.register_script(_OBSERVE_LUA)

    def _acct(self, account_id: str) -> str:
        return f"{self.prefix}:a:{account_id}"

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except redis.RedisError as exc:
            raise StateUnavailable(f"redis state store unreachable: {exc}") from exc

    def observe(self, obs: Observation) -> AccountView:
        keys = [self._acct(obs.account_id)] + [f"{self.prefix}:s:{g}" for g, _ in obs.distinct]
        argv: list[Any] = [self.ttl, obs.ts_ms, len(obs.counters)]
        for name, inc in obs.counters.items():
            argv += [name, repr(float(inc))]
        argv.append(MAX_FAMILY_FIELDS)
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

    def set_action(self, account_id: str, rank: int, cluster_id: str | None, reasons: list[dict[str, Any]]) -> None:
        key = self._acct(account_id)
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(key, mapping={"action": rank, "cluster": cluster_id or "", "reasons": json.dumps(reasons)})
        pipe.expire(key, self.ttl)
        self._call(pipe.execute)

    def ping(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False

    def size(self) -> dict[str, int]:
        return {"keys": int(self._call(self.client.dbsize))}
