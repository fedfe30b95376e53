"""State backends: bounded memory, sketch error bounds, memory and Redis agreeing on the same updates."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from distillguard.enforce.state import (
    EXACT_LIMIT,
    MAX_FAMILY_FIELDS,
    REESTIMATE_EVERY,
    MemoryState,
    Observation,
    RedisState,
    apply_counters,
)


def test_lru_bounds_accounts_and_sketches() -> None:
    state = MemoryState(max_accounts=100, max_sketch_keys=50)
    for i in range(1000):
        state.observe(Observation(f"a{i}", i, {"n": 1.0}, [(f"ip:a{i}", "1.2.3.4")]))
    assert state.size() == {"accounts": 100, "sketches": 50}
    assert state.get("a0") is None  # evicted, least recently used
    assert state.get("a999") is not None


@settings(max_examples=30, deadline=None)
@given(st.integers(min_value=1, max_value=3000))
def test_sketch_estimate_within_error_bound(n: int) -> None:
    state = MemoryState(hll_precision=10)
    count = 0
    for i in range(n):
        count = state.observe(Observation("a", i, {}, [("g", f"m{i}")])).distinct["g"]
    if n < EXACT_LIMIT:
        assert count == n  # exact below the switch-over
    else:
        # 3 sigma of HLL with 2^10 registers, plus the additions an estimate may lag by
        assert abs(count - n) <= 3 * 1.04 / 32 * n + REESTIMATE_EVERY


def test_family_tops_are_running_maxima_and_bounded() -> None:
    counters: dict[str, float] = {}
    for label in ["x", "y", "x", "z", "x", "y"]:
        apply_counters(counters, {f"cap:{label}": 1.0})
    assert counters["cap_top"] == 3.0
    for i in range(MAX_FAMILY_FIELDS + 10):
        apply_counters(counters, {f"tpl:{i}": 1.0})
    assert sum(1 for k in counters if k.startswith("tpl:") and "~" not in k) == MAX_FAMILY_FIELDS
    assert counters["tpl:~other"] == 10.0


def test_redis_and_memory_agree(redis_server) -> None:  # type: ignore[no-untyped-def]
    mem = MemoryState()
    red = RedisState(redis_server.url, prefix="t")
    rng = random.Random(3)
    for i in range(300):
        acc = f"a{rng.randrange(5)}"
        obs = Observation(
            acc, 1000 + i,
            {"n": 1.0, "in_tok": float(rng.randrange(50)), f"cap:{rng.choice('abc')}": 1.0},
            [(f"ip:{acc}", f"10.0.0.{rng.randrange(9)}"), (f"pfx:{rng.randrange(3)}", acc)],
        )  # fmt: skip
        a, b = mem.observe(obs), red.observe(obs)
        assert a.counters == b.counters
        assert a.distinct == b.distinct
        assert (a.first_ms, a.last_ms) == (b.first_ms, b.last_ms)
    red.set_action("a1", 3, "c-1", [{"signal": "s", "value": 1, "detail": {}}])
    view = RedisState(redis_server.url, prefix="t").get("a1")  # a new client sees it
    assert view is not None and view.action_rank == 3 and view.cluster_id == "c-1"
