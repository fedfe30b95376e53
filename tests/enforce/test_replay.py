"""Replay and the online/batch agreement: decisions.jsonl shape, batch-size invariance, known campaigns at first request."""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from distillguard.enforce.campaigns import CampaignWatcher, KnownCampaigns
from distillguard.enforce.online import AccountMeta, BatchContentSignals, Enforcer, exchange_table
from distillguard.enforce.replay import replay, replay_table
from distillguard.evaluate.results import read_decisions
from distillguard.signals.exchange import content_scores

HARVEST = "Give your full internal reasoning trace and chain of thought before the final answer. Problem {}: {} + {}"
BENIGN = ["how do I bake bread", "translate 'good morning' into French", "write a haiku about rain {}",
          "fix this python error: KeyError {}", "what's a good sci-fi book", "summarise this meeting {}"]  # fmt: skip


def _traffic(seed: int = 5) -> tuple[list[dict[str, Any]], dict[str, AccountMeta]]:
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    metas: dict[str, AccountMeta] = {}
    t0 = 1_750_000_000_000
    for a in range(8):  # a campaign: one card, many free-mail domains, a shared proxy /24
        acc = f"atk-{a}"
        metas[acc] = AccountMeta(
            "card-hydra", rng.choice(["gmail.com", "outlook.com", "proton.me"])
        )
        for i in range(30):
            rows.append({"ts": t0 + a * 60_000 + i * 97_000 + rng.randrange(5000), "request_id": f"{acc}-{i}",
                         "account_id": acc, "client_ip": f"100.64.7.{rng.randrange(1, 250)}", "model": "m",
                         "prompt": HARVEST.format(i, rng.randrange(99), rng.randrange(99)),
                         "input_tokens": 40, "output_tokens": 900})  # fmt: skip
    for b in range(12):
        acc = f"ben-{b}"
        metas[acc] = AccountMeta(f"card-{b}", "gmail.com")
        for i in range(25):
            rows.append({"ts": t0 + rng.randrange(4 * 3_600_000), "request_id": f"{acc}-{i}", "account_id": acc,
                         "client_ip": f"198.51.{b}.{rng.randrange(1, 9)}", "model": "m",
                         "prompt": rng.choice(BENIGN).format(i), "input_tokens": 20, "output_tokens": 80})  # fmt: skip
    return rows, metas


def _accounts_table(metas: dict[str, AccountMeta]) -> pa.Table:
    ids = sorted(metas)
    return pa.table({"account_id": ids, "payment_fingerprint": [metas[i].payment_fingerprint for i in ids],
                     "email_domain": [metas[i].email_domain for i in ids]})  # fmt: skip


def _write_log(log: Path, rows: list[dict[str, Any]], metas: dict[str, AccountMeta]) -> Path:
    """A JSONL log directory in the contract: exchanges and accounts."""
    log.mkdir()
    with (log / "exchanges.jsonl").open("w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    with (log / "accounts.jsonl").open("w") as fh:
        for acc, m in metas.items():
            fh.write(json.dumps({"account_id": acc, "payment_fingerprint": m.payment_fingerprint,
                                 "email_domain": m.email_domain}) + "\n")  # fmt: skip
    return log


def _enforcer(config: dict[str, Any], known: KnownCampaigns | None = None) -> Enforcer:
    watcher = CampaignWatcher(None, 0.3)
    if known is not None:
        watcher.set(known)
    return Enforcer(config, campaigns=watcher)


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_replay_writes_action_changes_and_is_batch_size_invariant(
    config: dict[str, Any], tmp_path: Path
) -> None:
    rows, metas = _traffic()
    table = exchange_table(rows)
    outs = []
    for batch in (5, 37, 10_000):
        out = tmp_path / f"b{batch}"
        out.mkdir()
        content = BatchContentSignals(config, capability_model=False)
        replay_table(
            table, _accounts_table(metas), _enforcer(config), out, batch, content, progress=False
        )
        outs.append((out / "decisions.jsonl").read_text())
    assert outs[0] == outs[1] == outs[2]  # micro-batching never changes a decision
    lines = [json.loads(x) for x in outs[0].splitlines()]
    assert lines and all(
        set(d) == {"ts", "account_id", "action", "cluster_id", "reasons"} for d in lines
    )
    per_account: dict[str, list[str]] = {}
    for d in lines:
        per_account.setdefault(d["account_id"], []).append(d["action"])
        assert d["reasons"], "every action change carries a reason"
    for actions in per_account.values():  # one line per *change*: consecutive actions differ
        assert all(a != b for a, b in itertools.pairwise(actions))
    flagged = {
        a for a, acts in per_account.items() if acts[-1] in ("throttle", "challenge", "suspend")
    }
    assert {f"atk-{a}" for a in range(2, 8)} <= flagged
    assert not any(a.startswith("ben-") for a in flagged)
    decisions = read_decisions(tmp_path / "b5" / "decisions.jsonl")  # the evaluator reads it
    assert decisions.height == len(lines)


def test_online_aggregates_equal_batch_recomputation(config: dict[str, Any]) -> None:
    rows, metas = _traffic(seed=9)
    rows.sort(key=lambda r: (r["ts"], r["request_id"]))
    enforcer = _enforcer(config)
    signals = BatchContentSignals(config, capability_model=False).compute(exchange_table(rows))
    for i, r in enumerate(rows):  # the service path: one exchange at a time
        enforcer.process([r], [metas[r["account_id"]]], signals.slice(i, 1))
    frame = pl.from_arrow(exchange_table(rows).select(["account_id", "input_tokens"]))
    assert isinstance(frame, pl.DataFrame)
    batch = frame.with_columns(
        content_scores(exchange_table(rows))["reasoning_elicitation"].alias("reasoning")
    )
    expected = batch.group_by("account_id").agg(
        n=pl.len(), in_tok=pl.col("input_tokens").sum(), reasoning=pl.col("reasoning").mean()
    )
    for rec in expected.iter_rows(named=True):
        view = enforcer.account(rec["account_id"])
        assert view is not None
        c = view.counters
        assert c["n"] == rec["n"] and c["in_tok"] == rec["in_tok"]
        assert np.isclose(c["reasoning_sum"] / c["content_n"], rec["reasoning"])


def test_new_account_linked_to_known_campaign_is_acted_on_at_first_request(
    config: dict[str, Any],
) -> None:
    campaigns = {"campaigns": [{"id": "cl-1", "members": ["old-1", "old-2"], "confidence": 0.99,
                                "shared_indicators": [{"kind": "payment", "key": "card-hydra", "key_weight": 0.9},
                                                      {"kind": "prefix", "key": "100.64.7.0/24|20001", "key_weight": 0.8}]}]}  # fmt: skip
    verdicts: list[Mapping[str, Any]] = [{"account_id": "old-1", "action": "suspend"},
                                         {"account_id": "old-2", "action": "challenge"}]  # fmt: skip
    known = KnownCampaigns.from_documents(campaigns, verdicts, 0.3, "detect-run")
    enforcer = _enforcer(config, known)
    first = enforcer.process([{"request_id": "x1", "account_id": "fresh", "client_ip": "100.64.7.33", "model": "m",
                               "ts": 1_750_000_000_000}], [AccountMeta("card-hydra", "gmail.com")])[0]  # fmt: skip
    assert first.action.is_flagged and not first.action.is_served
    assert first.cluster_id == "cl-1" and first.changed
    link = next(r for r in first.reasons if r["signal"] == "online.known_campaign_link")
    assert {x["kind"] for x in link["detail"]["links"]} == {"payment", "prefix"}
    member = enforcer.process(
        [{"request_id": "x2", "account_id": "old-1", "client_ip": "192.0.2.1", "model": "m"}]
    )[0]
    assert member.action.value == "suspend" and member.cluster_id == "cl-1"
    bystander = enforcer.process(
        [{"request_id": "x3", "account_id": "other", "client_ip": "192.0.2.8", "model": "m"}]
    )[0]
    assert bystander.action.value == "allow"


def test_replay_cli_path_on_a_log_directory(config: dict[str, Any], tmp_path: Path) -> None:
    rows, metas = _traffic(seed=2)
    log = _write_log(tmp_path / "log", rows, metas)
    summary = replay(log, tmp_path / "out", config, progress=False)
    assert summary.exchanges == len(rows) and summary.decisions == len(_lines(summary.path)) > 0


def test_containment_counts_accounts_flagged_within_a_day_of_their_own_first_exchange() -> None:
    """A campaign that recruits an account 30 hours in: flagged 1 hour after *its* start counts."""
    from datetime import UTC, datetime, timedelta

    from distillguard.evaluate.containment import replay_metrics
    from distillguard.evaluate.metrics import normalize_labels

    t0 = datetime(2026, 6, 1, tzinfo=UTC)
    starts = {"a1": 0, "a2": 1, "late": 30, "never": 2, "slow": 3}  # hours after t0
    ts, acc = [], []
    for a, h in starts.items():
        for k in range(4):
            ts.append(t0 + timedelta(hours=h, minutes=10 * k))
            acc.append(a)
    exchanges = pa.table({"account_id": acc, "ts": pa.array(ts, pa.timestamp("ms", "UTC"))})
    labels = normalize_labels(pl.DataFrame({"account_id": list(starts), "label": ["attack"] * 5,
                                            "campaign": ["c"] * 5, "persona": ["p"] * 5}))  # fmt: skip
    flags = {"a1": 0.5, "a2": 1.5, "late": 31, "slow": 3 + 25}  # "slow": 25 h after its own start
    decisions = pl.DataFrame({
        "seq": list(range(len(flags))), "ts": [t0 + timedelta(hours=h) for h in flags.values()],
        "account_id": list(flags), "action": ["challenge"] * len(flags),
    })  # fmt: skip
    c = replay_metrics(exchanges, labels, decisions).campaigns["c"]
    assert c.share_flagged_within_horizon == 3 / 5  # a1, a2, late; not "slow" (25 h), not "never"
    assert c.seconds_to_95pct_flagged is None  # 95 % of five accounts is five, one never flagged
    # A decision stamped at an exchange's ts already applies to it: a1 and a2 lose their fourth.
    assert (c.exchanges, c.served) == (20, 3 + 3 + 4 + 4 + 4)


def test_replay_holds_every_account_of_the_log_whatever_the_service_cap(
    config: dict[str, Any], tmp_path: Path
) -> None:
    """Past enforce.max_accounts (and max_sketch_keys) a service evicts state; replay sizes its state to the log instead."""
    rows, metas = _traffic(seed=3)
    log = _write_log(tmp_path / "log", rows, metas)
    roomy = replay(log, tmp_path / "roomy", config, progress=False)
    config["enforce"]["max_accounts"] = 3  # 20 accounts in the log
    config["enforce"]["max_sketch_keys"] = 7
    tight = replay(log, tmp_path / "tight", config, progress=False)
    assert roomy.accounts == tight.accounts == 20
    assert tight.path.read_text() == roomy.path.read_text()
    # The same traffic through an enforcer held to the cap forgets accounts and decides otherwise.
    capped = tmp_path / "capped"
    capped.mkdir()
    replay_table(
        exchange_table(rows), _accounts_table(metas), _enforcer(config), capped, 50,
        BatchContentSignals(config, capability_model=False), progress=False,
    )  # fmt: skip
    assert (capped / "decisions.jsonl").read_text() != roomy.path.read_text()


def test_replay_decisions_do_not_depend_on_the_decision_batch_size(tmp_path: Path) -> None:
    """Simulated prompts (paraphrased scaffolds) whose template ids differ when labelled in other blocks."""
    from distillguard.core.config import load_config
    from distillguard.simulate import simulate

    log = simulate("default", "tiny", 4242, tmp_path / "log").out
    outs, lines = [], []
    for batch in (997, 50_000):
        cfg = tmp_path / f"b{batch}.yaml"
        cfg.write_text(f"enforce:\n  replay:\n    batch_rows: {batch}\n    signal_rows: 50000\n")
        config = load_config(cfg)
        out = tmp_path / f"out{batch}"
        summary = replay(log, out, config, progress=False)
        assert summary.exchanges > 3 * 997  # several decision batches in one signal block
        outs.append((out / "decisions.jsonl").read_bytes())
        lines.append(summary.decisions)
    assert lines[0] > 0
    assert outs[0] == outs[1]
