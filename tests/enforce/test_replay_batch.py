"""Replay's two-pass batch path gives the one-check-at-a-time answers and leaves the same state.

The batch path (``Enforcer.replay_batch``: a columnar ``MemoryState.fold``, vectorised scores,
then a decision loop) must be indistinguishable from ``Enforcer.process`` fed one exchange at a
time: same decisions, same metrics, and the same stored state down to the LRU order, the exact
sets and the HyperLogLog registers, since later batches and evictions read all of it.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from distillguard.core.config import load_config
from distillguard.core.indicators import INDICATOR_STORE_SCHEMA
from distillguard.enforce.campaigns import CampaignWatcher, KnownCampaigns
from distillguard.enforce.online import (
    FEATURES,
    AccountMeta,
    BatchContentSignals,
    Enforcer,
    exchange_table,
)
from distillguard.enforce.peer_indicators import PeerIndicatorMatcher
from distillguard.enforce.state import (
    EXACT_LIMIT,
    MAX_FAMILY_FIELDS,
    TOUCH_SLOTS,
    ExchangeColumns,
    MemoryState,
    additions,
)

HARVEST = "Give your full internal reasoning trace and chain of thought before the final answer. Problem {}: {} + {}"
GRADE = (
    "You are a strict grader. Score the following answer from 1 to 10 and explain. Answer {}: {}"
)
BENIGN = ["how do I bake bread", "translate 'good morning' into French", "write a haiku about rain {}",
          "fix this python error: KeyError {}", "what's a good sci-fi book", "summarise this meeting {}"]  # fmt: skip


def _state(state: MemoryState) -> tuple[list[Any], list[Any]]:
    """Everything a MemoryState holds, in LRU order."""
    accounts = [
        (a, v.counters, v.first_ms, v.last_ms, v.action_rank, v.cluster_id, v.reasons, v.exits)
        for a, v in state._accounts.items()
    ]
    sketches = []
    for g, sk in state._sketches.items():
        exact = sorted(sk.exact) if isinstance(sk.exact, set) else sk.exact
        regs = None if sk.hll is None else sk.hll.reg.tolist()
        sketches.append((g, exact, regs, sk.estimate, sk.stale, sk.dirty))
    return accounts, sketches


def one_check_at_a_time(
    e: Enforcer, rows: list[dict[str, Any]], metas: dict[str, AccountMeta], signals: pl.DataFrame
) -> list[dict[str, Any]]:
    """The changed decisions of ``e.process`` called once per row: what replay must reproduce."""
    return [
        d.to_json()
        for i, r in enumerate(rows)
        for d in e.process([r], [metas.get(r["account_id"])], signals.slice(i, 1))
        if d.changed
    ]


def in_replay_batches(
    e: Enforcer, table: pa.Table, signals: pl.DataFrame, metas: dict[str, AccountMeta], batch: int
) -> list[dict[str, Any]]:
    """The decisions of ``e.replay_batch`` over ``table`` in slices of ``batch`` rows."""
    got: list[dict[str, Any]] = []
    for s in range(0, table.num_rows, batch):
        got += [
            d.to_json()
            for d in e.replay_batch(table.slice(s, batch), signals.slice(s, batch), metas)
        ]
    return got


# --------------------------------------------------------------------------- the fold


def _batches(seed: int, n_batches: int, rows: int) -> list[ExchangeColumns]:
    """Random exchanges: float and integer counters, template and capability families (some accounts
    beyond MAX_FAMILY_FIELDS), sketches that stay exact, become HyperLogLogs inside a batch or already are."""
    rng = random.Random(seed)
    out = []
    for b in range(n_batches):
        accounts = [f"a{rng.randrange(40)}" for _ in range(rows)]
        spread = [
            rng.random() < 0.25 for _ in range(rows)
        ]  # some rows use a new template each time
        frame = pl.DataFrame(
            {
                "acct": accounts,
                "ts": [
                    1_750_000_000_000 + b * 10_000_000 + i * 997 + rng.randrange(-5000, 5000)
                    for i in range(rows)
                ],
                "in": [float(rng.randrange(500)) for _ in range(rows)],
                "out": [
                    None if rng.random() < 0.3 else float(rng.randrange(1, 900))
                    for _ in range(rows)
                ],
                "r": [None if rng.random() < 0.2 else rng.random() / 3 for _ in range(rows)],
                "cap": [
                    None if rng.random() < 0.3 else f"cap:{rng.choice(['coding', 'chat', 'math'])}"
                    for _ in range(rows)
                ],
                "tpl": [
                    f"tpl:{b}-{i}"
                    if s
                    else (None if rng.random() < 0.2 else f"tpl:{rng.randrange(6)}")
                    for i, s in enumerate(spread)
                ],
                # ip:<account> with a few addresses; a shared pool that crosses EXACT_LIMIT; a small shared key
                "g_ip": [f"ip:{a}" for a in accounts],
                "m_ip": [f"10.0.{rng.randrange(3)}.{rng.randrange(4)}" for _ in range(rows)],
                "g_pool": [None if rng.random() < 0.5 else "pool" for _ in range(rows)],
                "m_pool": [f"m{b}-{rng.randrange(40)}" for _ in range(rows)],
                "g_small": [f"small{rng.randrange(3)}" for _ in range(rows)],
            }
        )
        out.append(
            ExchangeColumns(
                frame=frame,
                account="acct",
                ts_ms="ts",
                counters={"in_tok": "in", "out_tok": "out", "reasoning_sum": "r"},
                families=["cap", "tpl"],
                memberships=[("g_ip", "m_ip"), ("g_pool", "m_pool"), ("g_small", "acct")],
                reads=("n", "in_tok", "reasoning_sum", "cap_top", "tpl_top"),
            )
        )
    return out


def test_columnar_fold_equals_the_row_fold() -> None:
    columnar, rows = MemoryState(), MemoryState()
    for batch in _batches(seed=3, n_batches=6, rows=700):
        adds = additions(batch)
        got = columnar._fold_columns(batch, adds)
        assert got is not None, "this batch is meant for the columnar fold"
        ref = rows._fold_rows(batch, adds)
        assert [v.account_id for v in got.views] == [v.account_id for v in ref.views]
        assert np.array_equal(
            got.values, ref.values
        )  # bit for bit: the float sums are added in the same order
        assert np.array_equal(got.counts, ref.counts)
        order = got.touched.sort("key").get_column("group").to_list()
        columnar.settle(order)
        rows.settle(order)
        assert _state(columnar) == _state(rows)
    accounts, sketches = _state(columnar)
    # The batches did reach the cases they are meant to reach.
    assert any(
        c.get("tpl:~other", 0) > 0 and c["#tpl:"] == MAX_FAMILY_FIELDS for _, c, *_ in accounts
    )
    pool = next(s for s in sketches if s[0] == "pool")
    assert pool[1] is None and pool[3] > EXACT_LIMIT  # a HyperLogLog now
    assert any(isinstance(s[1], list) and len(s[1]) > 1 for s in sketches)  # and exact sets


def test_columnar_hyperloglog_additions_are_the_sequential_ones() -> None:
    """Repeat-heavy additions to HyperLogLogs, batches cut mid-way between re-estimates.

    The columnar path must re-estimate exactly where one-by-one additions do: every
    REESTIMATE_EVERY-th addition, and only if a register moved since the last re-estimate,
    including a move in the previous batch after its last re-estimate.
    """
    rng = random.Random(17)
    columnar, rows = MemoryState(), MemoryState()
    carried = 0  # batches that start with a register moved but not yet re-estimated
    t = 0
    for b in range(60):
        size = rng.randrange(1, 90)
        pool = 80 + 6 * b  # slowly growing: mostly repeats, some new members
        groups = [rng.choice(["h1", "h2", "h3"]) for _ in range(size)]
        members = [f"m{rng.randrange(pool)}" for _ in range(size)]
        frame = pl.DataFrame(
            {"acct": ["a"] * size, "ts": list(range(t, t + size)), "g": groups, "m": members}
        )
        t += size
        batch = ExchangeColumns(frame, "acct", "ts", {}, [], [("g", "m")])
        carried += any(sk.exact is None and sk.dirty for sk in columnar._sketches.values())
        got, ref = columnar.fold(batch), rows._fold_rows(batch, additions(batch))
        assert np.array_equal(got.counts, ref.counts), b
        order = got.touched.sort("key").get_column("group").to_list()
        columnar.settle(order)
        rows.settle(order)
        assert _state(columnar)[1] == _state(rows)[1], b
    assert all(sk.exact is None for sk in columnar._sketches.values()) and carried >= 5


def _one_by_one(initial: list[str], cap: int, events: list[tuple[int, str]]) -> dict[str, int]:
    """Brute force: each sketch of ``initial`` gone at its first use in ``events`` (key -> that use's time)."""
    lru = OrderedDict.fromkeys(initial)
    held, seen, gone = set(initial), set(), {}
    for t, g in sorted(events):
        if g not in seen:
            seen.add(g)
            if g in held and g not in lru:
                gone[g] = t
        if g in lru:
            lru.move_to_end(g)
        else:
            lru[g] = None
            if len(lru) > cap:
                lru.popitem(last=False)
    return gone


@pytest.mark.parametrize("seed", range(8))
def test_eviction_plan_is_what_one_by_one_evicts(seed: int) -> None:
    """Heavy churn: new keys push old ones out, some come back (one more insertion each), some never."""
    rng = random.Random(seed)
    cap = rng.randrange(30, 120)
    state = MemoryState(max_sketch_keys=cap)
    initial = [f"old{i}" for i in range(cap)]
    for g in initial:
        state.observe_live("a", 0, {}, [(g, "m")])
    events = []
    for row in range(rng.randrange(20, 200)):
        for j in range(rng.randrange(1, 4)):
            g = rng.choice(initial) if rng.random() < 0.35 else f"new{rng.randrange(3 * cap)}"
            events.append((row * TOUCH_SLOTS + j, g))
    adds = pl.DataFrame({"key": [t for t, _ in events], "group": [g for _, g in events], "member": ["m"] * len(events)},
                        schema={"key": pl.Int64, "group": pl.String, "member": pl.String})  # fmt: skip
    if len({g for _, g in events}) >= cap:
        return  # the batch's own keys could go: not a plan's case
    no_taint = pl.DataFrame(schema={"group": pl.String, "key": pl.Int64})
    evicted, undecided = state.plan_evictions(adds, no_taint)
    assert undecided is None and evicted == _one_by_one(initial, cap, events)
    assert evicted  # the scenario does evict keys before their use
    # With taint keys that decisions may or may not create, what the plan calls decided holds either way.
    taint = [(rng.randrange(200) * TOUCH_SLOTS + 8, f"flg:{rng.randrange(40)}") for _ in range(30)]
    refs = pl.DataFrame(
        {"group": [g for _, g in taint], "key": [t for t, _ in taint]},
        schema={"group": pl.String, "key": pl.Int64},
    )
    evicted, undecided = state.plan_evictions(adds, refs)
    limit = undecided if undecided is not None else 1 << 62
    for world in (events, events + taint):
        truth = {
            g: t
            for g, t in _one_by_one(initial, cap, world).items()
            if t < limit and not g.startswith("flg:")
        }
        assert evicted == truth


def test_fold_leaves_evictions_to_settle_and_settle_keeps_the_newest() -> None:
    state = MemoryState(max_sketch_keys=5)
    frame = pl.DataFrame(
        {"acct": ["a"] * 8, "ts": list(range(8)), "g": [f"k{i}" for i in range(8)], "m": ["x"] * 8}
    )
    batch = ExchangeColumns(frame, "acct", "ts", {}, [], [("g", "m")])
    folded = state.fold(batch)
    assert state.size()["sketches"] == 8  # nothing evicted inside the batch
    assert folded.touched.sort("key").get_column("key").to_list() == [
        i * TOUCH_SLOTS for i in range(8)
    ]
    state.settle(folded.touched.sort("key").get_column("group").to_list())
    assert list(state._sketches) == ["k3", "k4", "k5", "k6", "k7"]


def test_no_plan_when_the_batch_alone_fills_the_cap() -> None:
    state = MemoryState(max_sketch_keys=4)
    for k in ("a", "b", "c", "d"):
        state.observe_live("x", 0, {}, [(k, "m")])
    adds = pl.DataFrame({"key": [0, 16, 32, 48], "group": ["n0", "n1", "n2", "n3"], "member": ["m"] * 4},
                        schema={"key": pl.Int64, "group": pl.String, "member": pl.String})  # fmt: skip
    no_taint = pl.DataFrame(schema={"group": pl.String, "key": pl.Int64})
    assert state.plan_evictions(adds, no_taint) == (
        {},
        0,
    )  # its own keys could go: undecided from the start
    assert state.plan_evictions(adds.head(2), no_taint) == (
        {},
        None,
    )  # 'a', 'b' go, unused: nothing to drop


# --------------------------------------------------------------------------- the enforcer


def _traffic(seed: int) -> tuple[list[dict[str, Any]], dict[str, AccountMeta]]:
    """A campaign on shared cards and proxies among benign accounts, over two days."""
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    metas: dict[str, AccountMeta] = {}
    t0 = 1_750_000_000_000
    for a in range(24):
        acc = f"atk-{a}"
        # Sign-up domains that are not free mail: whether accounts on one card share a domain
        # decides whether the card counts, which keeps several actions in play.
        metas[acc] = AccountMeta(
            f"card-{a % 3}", rng.choice(["mailbox.example", "tmpbox.example", "relay.example"])
        )
        start = rng.randrange(36 * 3_600_000)
        for i in range(rng.randrange(5, 40)):
            prompt = (HARVEST if a % 2 else GRADE).format(i, rng.randrange(99), rng.randrange(99))
            rows.append({"ts": t0 + start + i * rng.randrange(30_000, 200_000), "request_id": f"{acc}-{i}",
                         "account_id": acc, "client_ip": f"100.64.{a % 2}.{rng.randrange(1, 12)}", "model": "m",
                         "prompt": prompt, "input_tokens": 40, "output_tokens": 900,
                         "user_agent": "python-requests/2.31"})  # fmt: skip
    for b in range(60):
        acc = f"ben-{b}"
        metas[acc] = AccountMeta(f"bcard-{b}" if b % 7 else None, "gmail.com")
        for i in range(rng.randrange(3, 30)):
            rows.append({"ts": t0 + rng.randrange(48 * 3_600_000), "request_id": f"{acc}-{i}", "account_id": acc,
                         "client_ip": f"198.51.{b % 20}.{rng.randrange(1, 6)}", "model": "m",
                         "prompt": rng.choice(BENIGN).format(i), "input_tokens": rng.randrange(5, 80),
                         "output_tokens": rng.choice([0, 50, 200])})  # fmt: skip
    rows.sort(key=lambda r: (r["ts"], r["request_id"]))
    return rows, metas


def _enforcer(config: dict[str, Any], max_accounts: int, max_sketch_keys: int) -> Enforcer:
    cfg = {
        **config,
        "enforce": {
            **config["enforce"],
            "max_accounts": max_accounts,
            "max_sketch_keys": max_sketch_keys,
        },
    }
    return Enforcer(cfg, campaigns=CampaignWatcher(None, 0.3))


@pytest.mark.parametrize(
    ("max_accounts", "max_sketch_keys", "batch", "paths"),
    [
        (200_000, 400_000, 500, {"columnar"}),  # nothing evicted
        (200_000, 400_000, 7, {"columnar"}),
        # an account evicted inside a batch (row fold); sketches evicted before their first use (drop);
        # the benign accounts' per-window country sketches (real addresses) make a use depend on decisions
        (70, 1050, 150, {"columnar", "row fold", "settle evicts", "drop", "split"}),
        # a use whose fate depends on decisions (split there); one undecided even at its own start (rows)
        (200_000, 750, 100, {"columnar", "settle evicts", "split", "drop"}),
        (200_000, 300, 500, {"columnar", "settle evicts", "drop", "split", "rows"}),
    ],
)
def test_replay_batch_equals_one_check_at_a_time(
    config: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    max_accounts: int,
    max_sketch_keys: int,
    batch: int,
    paths: set[str],
) -> None:
    seen: set[str] = set()

    def spy(cls: type, name: str, label: Callable[[Any, Any, tuple[Any, ...]], str | None]) -> None:
        original = getattr(cls, name)

        def wrapped(self: Any, *args: Any) -> Any:
            before = self.size() if isinstance(self, MemoryState) else None
            out = original(self, *args)
            tag = label(self, (out, before), args)
            if tag:
                seen.add(tag)
            return out

        monkeypatch.setattr(cls, name, wrapped)

    spy(MemoryState, "_fold_columns", lambda _s, r, _a: "columnar" if r[0] is not None else None)
    spy(MemoryState, "_fold_rows", lambda _s, _r, _a: "row fold")
    spy(
        MemoryState,
        "settle",
        lambda s, r, _a: "settle evicts" if s.size()["sketches"] < r[1]["sketches"] else None,
    )
    spy(Enforcer, "_replay_rows", lambda _s, _r, _a: "rows")
    spy(MemoryState, "drop", lambda _s, _r, a: "drop" if a[0] else None)
    spy(
        Enforcer,
        "_replay_decide",
        lambda _s, _r, a: "split" if a[1].n not in (batch, len(rows) % batch) else None,
    )
    rows, metas = _traffic(seed=11)
    table = exchange_table(rows)
    signals = BatchContentSignals(config, capability_model=False).compute(table)
    one = _enforcer(config, max_accounts, max_sketch_keys)
    expected = one_check_at_a_time(one, rows, metas, signals)
    batched = _enforcer(config, max_accounts, max_sketch_keys)
    got = in_replay_batches(batched, table, signals, metas, batch)
    assert got == expected
    assert (
        len({d["action"] for d in expected}) >= 3
    )  # the traffic reaches several actions, propagation included
    assert any(r["signal"].startswith("online.flagged_") for d in expected for r in d["reasons"])
    assert (
        batched.metrics.checks == one.metrics.checks
        and batched.metrics.decisions == one.metrics.decisions
    )
    assert isinstance(one.backend, MemoryState) and isinstance(batched.backend, MemoryState)
    assert _state(batched.backend) == _state(one.backend)
    assert _state(batched.local) == _state(one.local)
    assert seen == paths


def _peer_matcher() -> PeerIndicatorMatcher:
    """A peer's indicators: the campaign's proxy /24 and client, one benign-looking /24."""
    t0 = datetime(2025, 6, 10, tzinfo=UTC)
    rows = [
        {"indicator_id": f"indicator--{kind}-{i}", "kind": kind, "value": value, "band_keys": None, "params": None,
         "key_id": None, "confidence": 90, "valid_from": t0, "valid_until": t0 + timedelta(days=30),
         "campaign_ids": ["campaign--x"], "capability_targets": ["coding"], "peer": "Lab A", "peer_identity": "identity--a",
         "tlp": "amber", "produced_at": t0, "source": "test", "imported_at": t0, "bundle_sha256": "0" * 64}
        for i, (kind, value) in enumerate([("ip_prefix", "100.64.1.0/24"), ("user_agent", "python-requests/2.31"),
                                           ("ip_prefix", "198.51.3.0/24")])
    ]  # fmt: skip
    return PeerIndicatorMatcher(pa.Table.from_pylist(rows, schema=INDICATOR_STORE_SCHEMA))


def test_replay_batch_equals_one_check_at_a_time_with_known_campaigns_and_peers(
    config: dict[str, Any],
) -> None:
    rows, metas = _traffic(seed=12)
    table = exchange_table(rows)
    signals = BatchContentSignals(config, capability_model=False).compute(table)
    known = KnownCampaigns.from_documents(
        {"campaigns": [{"id": "cl-1", "members": ["atk-0", "atk-3", "ben-5"],
                        "shared_indicators": [{"kind": "payment", "key": "card-1", "key_weight": 0.9},
                                              {"kind": "prefix", "key": "198.51.7.0/24|20001", "key_weight": 0.8}]}]},
        [{"account_id": "atk-0", "action": "suspend"}, {"account_id": "ben-5", "action": "monitor"}],
        0.3,
    )  # fmt: skip
    enforcers = []
    for _ in range(2):
        watcher = CampaignWatcher(None, 0.3)
        watcher.set(known)
        e = Enforcer(config, campaigns=watcher)
        e.peer = _peer_matcher()
        enforcers.append(e)
    one, batched = enforcers
    expected = one_check_at_a_time(one, rows, metas, signals)
    got = in_replay_batches(batched, table, signals, metas, 400)
    assert got == expected
    signals_seen = {r["signal"] for d in expected for r in d["reasons"]}
    assert {
        "online.known_campaign_member",
        "online.known_campaign_link",
        "online.peer_indicator",
    } <= signals_seen
    assert any(d["cluster_id"] == "cl-1" for d in expected)
    assert isinstance(one.backend, MemoryState) and isinstance(batched.backend, MemoryState)
    assert _state(batched.backend) == _state(one.backend)
    assert (
        one.peer is not None
        and batched.peer is not None
        and one.peer.accounts == batched.peer.accounts
    )


def test_vectorised_scores_are_the_scalar_scores_bit_for_bit() -> None:
    enforcer = Enforcer(load_config(), campaigns=CampaignWatcher(None, 0.3))
    rng = np.random.default_rng(5)
    grid = [np.nan, 0.0, 0.3, 0.55, 0.7, 0.9, 1.0, 2, 3, 4, 5, 8, 12, 70, 400]
    values = rng.choice(grid, size=(4000, len(FEATURES)))
    values[:, :6] = np.where(rng.random((4000, 6)) < 0.5, rng.random((4000, 6)), values[:, :6])
    values = np.where(rng.random(values.shape) < 0.7, np.nan, values)
    ranks, contrib, scores = enforcer._score_matrix(values)
    assert len(set(ranks.tolist())) >= 4
    for i in range(len(values)):
        rank, score, row = enforcer._score_one(values[i].tolist())
        assert rank == ranks[i] and score == scores[i] and row == contrib[i].tolist()


def _vouched_traffic(seed: int) -> tuple[list[dict[str, Any]], dict[str, AccountMeta], pa.Table]:
    """:func:`_traffic` with KYC'd attack accounts, and a platform and a one-user account on the attack's cloud exits."""
    rows, metas = _traffic(seed)
    rng = random.Random(seed)
    for a in (1, 4, 7):
        m = metas[f"atk-{a}"]
        metas[f"atk-{a}"] = AccountMeta(m.payment_fingerprint, m.email_domain, None, "kyc")
    t0 = 1_750_000_000_000
    for acc, users in (("platform", 400), ("one-user", 1)):
        metas[acc] = AccountMeta(None, None, None, "card")
        for i in range(80):
            # The first 25 before any attack traffic: the platform has 20 end users by then.
            ts = t0 - 60_000 + i * 1000 if i < 25 else t0 + rng.randrange(48 * 3_600_000)
            rows.append({"ts": ts, "request_id": f"{acc}-{i}", "account_id": acc,
                         "client_ip": f"100.64.1.{rng.randrange(1, 12)}", "model": "m",
                         "prompt": rng.choice(BENIGN).format(i), "input_tokens": 30, "output_tokens": 200,
                         "end_user_id": f"u-{rng.randrange(users)}"})  # fmt: skip
    rows.sort(key=lambda r: (r["ts"], r["request_id"]))
    intel = pa.table(
        {"cidr": ["100.64.1.0/24"], "asn": [64510], "asn_org": ["Cloud Co"], "kind": ["datacenter"]}
    )
    return rows, metas, intel


@pytest.mark.parametrize(("max_sketch_keys", "batch"), [(400_000, 500), (400, 150)])
def test_replay_batch_equals_one_check_at_a_time_with_vouched_accounts_and_cloud_exits(
    config: dict[str, Any], max_sketch_keys: int, batch: int
) -> None:
    config["enforce"]["online"]["vouched"]["platform_min_end_users"] = 20
    rows, metas, intel = _vouched_traffic(seed=13)
    table = exchange_table(rows)
    signals = BatchContentSignals(config, intel=intel, capability_model=False).compute(table)
    cfg = {**config, "enforce": {**config["enforce"], "max_sketch_keys": max_sketch_keys}}
    one, batched = (
        Enforcer(cfg, campaigns=CampaignWatcher(None, 0.3), intel=intel) for _ in range(2)
    )
    expected = one_check_at_a_time(one, rows, metas, signals)
    got = in_replay_batches(batched, table, signals, metas, batch)
    assert got == expected
    assert isinstance(one.backend, MemoryState) and isinstance(batched.backend, MemoryState)
    assert _state(batched.backend) == _state(one.backend)
    assert any(r["signal"] == "online.flagged_ip" for d in expected for r in d["reasons"])
    flagged = {d["account_id"] for d in expected if d["action"] in ("challenge", "suspend")}
    # Both use the attack's cloud exits; only the one serving many end users is vouched.
    assert "one-user" in flagged and "platform" not in flagged
    # Cloud exits link too, once two contained accounts used them (the floor is read on both paths);
    # with the tight cap their taint sketches are evicted before that.
    assert max_sketch_keys < 1000 or any(
        r["signal"] == "online.flagged_ip" and r["detail"]["key"].startswith("100.64.1.")
        for d in expected
        for r in d["reasons"]
    )
