"""The performance paths give the same answers as the straightforward ones they replace."""

from __future__ import annotations

import math
import random
import warnings
from typing import Any

import numpy as np
import polars as pl
import pytest
from datasketch import HyperLogLog
from fastapi.testclient import TestClient
from sklearn.linear_model import SGDClassifier
from sklearn.pipeline import Pipeline

from distillguard.enforce.limiter import MemoryWindows
from distillguard.enforce.online import (
    FEATURES,
    BatchContentSignals,
    build_enforcer,
    exchange_table,
)
from distillguard.enforce.service import create_app
from distillguard.enforce.state import (
    EXACT_LIMIT,
    MAX_FAMILY_FIELDS,
    REESTIMATE_EVERY,
    MemoryState,
    Observation,
    _Sketch,
)
from distillguard.signals.capability import HashedNgrams, linear_proba

from .test_replay import _traffic


def test_sketch_matches_datasketch_updated_member_by_member() -> None:
    """Memoised register updates and skipped re-estimates give datasketch's own numbers."""
    rng = random.Random(11)
    sketch = _Sketch(8)
    ref = HyperLogLog(p=8)
    members: list[str] = []
    estimate, stale = 0, 0
    for i in range(3000):
        m = f"acct-{rng.randrange(900)}" if i % 3 else f"new-{i}"  # repeats and fresh members
        got = sketch.add(m)
        ref.update(m.encode())
        members.append(m)
        distinct = len(set(members))
        if distinct < EXACT_LIMIT and estimate == 0:
            assert got == distinct
            continue
        stale += 1
        if estimate == 0 or stale >= REESTIMATE_EVERY:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                estimate = max(EXACT_LIMIT, round(float(ref.count())))
            stale = 0
        assert got == estimate, i
    assert sketch.hll is not None and np.array_equal(sketch.hll.reg, ref.reg)


def test_family_overflow_feeds_no_maximum_like_redis() -> None:
    """Beyond MAX_FAMILY_FIELDS templates the rest pool in ``tpl:~other``, which is no template (as in the Lua script)."""
    state = MemoryState()
    for i in range(MAX_FAMILY_FIELDS):
        state.observe(Observation("a", i, {f"tpl:{i}": 1.0}))
    for i in range(50):  # 50 distinct new templates, all pooled
        view = state.observe(Observation("a", 100 + i, {f"tpl:new{i}": 1.0}))
    assert view.counters["tpl:~other"] == 50.0
    assert view.counters["tpl_top"] == 1.0


def test_row_by_row_scoring_agrees_with_the_policy_on_the_matrix() -> None:
    """The decision loop's scalar score and rules give the numpy scorer's and ``Policy.decide``'s answers."""
    from distillguard.core.config import load_config

    enforcer = build_enforcer(load_config(), with_limits=False)
    rng = np.random.default_rng(1)
    grid = [np.nan, 0.0, 0.3, 0.55, 0.7, 0.9, 1.0, 2, 3, 4, 5, 8, 12, 70, 400]
    values = rng.choice(grid, size=(3000, len(FEATURES)))
    values[:, :5] = np.where(rng.random((3000, 5)) < 0.5, rng.random((3000, 5)), values[:, :5])
    values = np.where(
        rng.random(values.shape) < 0.75, np.nan, values
    )  # sparse, so every action is reached
    ranks, scores, contrib = enforcer.decide_matrix(values)
    assert len(set(ranks.tolist())) >= 4  # the grid reaches several actions, suspend included
    for i in range(len(values)):
        for _ in range(2):  # the second time from the memo
            r, s, c = enforcer._score_one(values[i].tolist())
            assert np.allclose(c, contrib[i], rtol=0, atol=1e-12) and abs(s - scores[i]) < 1e-12
            near = any(abs(s - t) < 1e-9 for t in enforcer.policy.thresholds.values())
            assert near or r == ranks[i]


def test_service_path_and_replay_batches_write_the_same_changes(config: dict[str, Any]) -> None:
    """One check at a time (service) and 37-row batches (replay) change the same accounts the same way."""
    rows, metas = _traffic(seed=4)
    rows.sort(key=lambda r: (r["ts"], r["request_id"]))
    signals = BatchContentSignals(config, capability_model=False).compute(exchange_table(rows))
    one = build_enforcer(config, with_limits=False)
    singles = [
        d for i, r in enumerate(rows)
        for d in one.process([r], [metas[r["account_id"]]], signals.slice(i, 1)) if d.changed
    ]  # fmt: skip
    batched = build_enforcer(config, with_limits=False)
    changes = []
    for s in range(0, len(rows), 37):
        part = rows[s : s + 37]
        changes += batched.process(
            part, [metas[r["account_id"]] for r in part], signals.slice(s, 37), changes_only=True
        )
    assert singles and [d.to_json() for d in singles] == [d.to_json() for d in changes]


def test_linear_proba_is_sklearns_predict_proba() -> None:
    texts = [f"{verb} the {noun} number {i}" for i, (verb, noun) in enumerate(
        (v, n) for v in ("write", "translate", "summarise", "grade") for n in ("essay", "code", "poem", "table"))]  # fmt: skip
    labels = [t.split()[0] for t in texts]
    model = SGDClassifier(loss="log_loss", alpha=1e-4, max_iter=20, tol=None, random_state=0)
    pipeline = Pipeline([("features", HashedNgrams(n_features=2**12)), ("model", model)]).fit(
        pl.Series(texts, dtype=pl.String), labels
    )
    probe = pl.Series([*texts, "write a table", "", "grade this poem please"], dtype=pl.String)
    assert np.array_equal(linear_proba(pipeline, probe), pipeline.predict_proba(probe))


def test_record_route_validates_and_names_the_field(config: dict[str, Any]) -> None:
    enforcer = build_enforcer(config)
    client = TestClient(create_app(enforcer, api_key=None))
    bad = client.post(
        "/v1/record", json={"request_id": "r", "account_id": "a", "output_tokens": -1}
    )
    assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "output_tokens"
    nested = client.post("/v1/check", json={"request_id": "r", "account_id": "a", "client_ip": "192.0.2.1",
                                            "model": "m", "account": {"colour": "red"}})  # fmt: skip
    assert nested.status_code == 422 and nested.json()["detail"][0]["field"] == "account.colour"
    ok = client.post("/v1/check", json={"request_id": "r", "account_id": "a", "client_ip": "192.0.2.1", "model": "m",
                                        "ts": 1_750_000_000_000, "account": {"payment_fingerprint": "c"}})  # fmt: skip
    assert ok.status_code == 200 and ok.json()["action"] == "allow"
    assert client.post(
        "/v1/record", json={"request_id": "r", "account_id": "a", "output_tokens": 7}
    ).json() == {"ok": True}
    view = enforcer.account("a")
    assert view is not None and view.counters["out_tok"] == 7.0 and view.counters["n"] == 1.0


class _Clock:
    """A settable wall clock, read by both limiters under comparison (and by the library's sweeper thread)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


def test_memory_windows_admit_and_refuse_like_the_limits_library(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Same admissions and retry_after as ``limits``' MemoryStorage moving windows, hit for hit, on one clock."""
    import limits.storage.memory as library_memory
    from limits import parse
    from limits.storage import MemoryStorage
    from limits.strategies import MovingWindowRateLimiter

    clock = _Clock(1_750_000_000.0)
    monkeypatch.setattr(library_memory, "time", clock)
    library = MovingWindowRateLimiter(MemoryStorage())
    windows = MemoryWindows(clock=clock.time)
    # Equal rates under two names share a window in the library (its keys carry the rate only).
    items = [
        parse("3/second"),
        parse("5/minute"),
        parse("5 per 1 minute"),
        parse("2 per 10 seconds"),
        parse("0/hour"),
    ]
    rng = random.Random(5)
    answers = []
    for step in range(6000):
        # Bursts at one instant, small steps and gaps longer than every window; no step lands a hit
        # exactly on a window's edge (the library itself is inconsistent there, sweep or not).
        clock.now += rng.choice(
            [
                0.0,
                0.0,
                rng.uniform(0.0, 0.4),
                rng.uniform(0.0, 3.0),
                rng.uniform(50.0, 70.0) * (step % 500 == 0),
            ]
        )
        item = rng.choice(items)
        scope, key = rng.choice(["account", "cluster"]), f"k{rng.randrange(7)}"
        got = windows.hit(item, scope, key)
        if library.hit(item, scope, key):
            want = None
        else:
            want = max(
                1.0, math.ceil(library.get_window_stats(item, scope, key).reset_time - clock.now)
            )
        assert got == want and type(got) is type(want), (step, item, key)
        answers.append(got)
    assert (
        answers.count(None) > 1000 and len(answers) - answers.count(None) > 1000
    )  # both answers well exercised
    assert windows.size() >= 15
    clock.now += 3600.0
    for i in range(50):  # keys idle for a whole window go as new ones arrive, a few per hit
        windows.hit(items[i % len(items)], "account", f"new{i}")
    held = {key for rate in windows._windows.values() for _, key in rate}
    assert held and all(key.startswith("new") for key in held)
