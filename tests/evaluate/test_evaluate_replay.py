"""Replay containment and collateral on hand-built decisions: the at-ts rule, ties, 95 % time."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from distillguard.evaluate import evaluate_run
from distillguard.evaluate.containment import ReplayMetrics

LABELS = [
    ("a1", "attack", "c1", "hydra"),
    ("a2", "attack", "c1", "hydra"),
    ("b1", "attack", "c2", "hydra"),
    ("s1", "benign", "", "saas_backend"),
    ("d1", "benign", "", "developer"),
]
EXCHANGES = {
    "a1": [10, 11, 12, 13, 14],  # suspended after its 3rd exchange
    "a2": [20, 21],
    "b1": [0, 1],  # never flagged
    "s1": [0, 5, 10, 15],
    "d1": [3],
}


def run(
    make_log: Callable[..., Path],
    make_results: Callable[..., Path],
    decisions: Sequence[tuple[float, str, str]],
) -> ReplayMetrics:
    report = evaluate_run(make_log(LABELS, EXCHANGES), make_results(decisions=decisions))
    assert report.replay is not None
    return report.replay


def test_suspended_after_third_of_five(
    make_log: Callable[..., Path], make_results: Callable[..., Path]
) -> None:
    replay = run(make_log, make_results, [(12.5, "a1", "suspend")])
    c1 = replay.campaigns["c1"]
    assert (c1.exchanges, c1.served) == (7, 3 + 2)  # a1 served 3 of 5; a2 never decided on = allow
    assert c1.served_share == pytest.approx(5 / 7)
    assert c1.seconds_to_first_flag == pytest.approx(2.5 * 60)
    assert c1.exchanges_before_first_flag == 3
    assert c1.accounts_flagged == 1
    assert c1.seconds_to_95pct_flagged is None  # 1 of 2 accounts never reaches 95 %


def test_decision_at_exactly_ts_applies_to_that_exchange(
    make_log: Callable[..., Path], make_results: Callable[..., Path]
) -> None:
    replay = run(make_log, make_results, [(12, "a1", "suspend")])
    assert replay.campaigns["c1"].served == 2 + 2
    assert replay.campaigns["c1"].exchanges_before_first_flag == 2


def test_throttle_is_flagged_but_served_and_last_decision_wins(
    make_log: Callable[..., Path], make_results: Callable[..., Path]
) -> None:
    decisions = [
        (10.5, "a1", "throttle"),  # flagged, still served
        (13, "a1", "monitor"),  # same ts: the later line wins (challenge)
        (13, "a1", "challenge"),
        (20, "a2", "suspend"),
    ]
    replay = run(make_log, make_results, decisions)
    c1 = replay.campaigns["c1"]
    # a1: 10 allow, 11 12 throttle -> served; 13 14 challenge -> not; a2: both suspended
    assert c1.served == 3
    assert c1.first_flag_ms is not None and c1.seconds_to_first_flag == pytest.approx(30)
    assert c1.exchanges_before_first_flag == 1
    assert c1.accounts_flagged == 2
    # 95 % of 2 accounts = 2 accounts, flagged at 10.5 and 20 -> 10 min after the first exchange
    assert c1.seconds_to_95pct_flagged == pytest.approx(10 * 60)
    assert replay.attack_exchanges == 9
    assert replay.attack_served_share == pytest.approx((3 + 2) / 9)  # b1 fully served


def test_unflagged_campaign_and_benign_collateral(
    make_log: Callable[..., Path], make_results: Callable[..., Path]
) -> None:
    decisions = [(5, "s1", "suspend"), (12, "s1", "allow"), (0, "d1", "monitor")]
    replay = run(make_log, make_results, decisions)
    c2 = replay.campaigns["c2"]
    assert (c2.served_share, c2.first_flag_ms, c2.seconds_to_first_flag) == (1.0, None, None)
    assert c2.exchanges_before_first_flag is None
    saas = replay.personas["saas_backend"]
    # s1 at 0 allow, 5 and 10 suspended, 15 allowed again
    assert (saas.exchanges, saas.not_served, saas.accounts_suspended, saas.accounts_flagged) == (
        4,
        2,
        1,
        1,
    )
    assert saas.collateral_share == pytest.approx(2 / 4)
    developer = replay.personas["developer"]
    assert (developer.not_served, developer.accounts_flagged) == (0, 0)  # monitor is neither
    assert replay.benign_collateral_share == pytest.approx(2 / 5)


def test_flag_before_first_exchange_counts_as_zero_time(
    make_log: Callable[..., Path], make_results: Callable[..., Path]
) -> None:
    replay = run(make_log, make_results, [(-5, "b1", "suspend")])
    c2 = replay.campaigns["c2"]
    assert (c2.served, c2.seconds_to_first_flag, c2.exchanges_before_first_flag) == (0, 0.0, 0)
    assert c2.seconds_to_95pct_flagged == 0.0


def test_no_decisions_means_everything_served(
    make_log: Callable[..., Path], make_results: Callable[..., Path]
) -> None:
    replay = run(make_log, make_results, [])
    assert replay.attack_served_share == 1.0
    assert replay.benign_collateral_share == 0.0
    assert replay.decisions == 0


def test_in_memory_table_and_parquet_dataset_agree(tmp_path: Path) -> None:
    """The two ways exchanges reach DuckDB (registered Arrow, DuckDB's Parquet reader) agree."""
    from datetime import UTC, datetime

    import polars as pl
    import pyarrow as pa
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq

    from distillguard.evaluate.containment import replay_metrics
    from distillguard.evaluate.metrics import normalize_labels

    def ms(minute: int) -> datetime:
        return datetime(2026, 1, 1, 0, minute, tzinfo=UTC)

    table = pa.table(
        {
            "account_id": ["a1"] * 4 + ["s1"] * 2,
            "ts": pa.array([ms(m) for m in (0, 1, 2, 3, 0, 9)], pa.timestamp("ms", tz="UTC")),
        }
    )
    pq.write_table(table, tmp_path / "part.parquet")
    labels = normalize_labels(
        pl.DataFrame(
            {
                "account_id": ["a1", "s1"],
                "label": ["attack", "benign"],
                "campaign": ["c1", None],
                "persona": ["hydra", "vpn_user"],
            }
        )
    )
    decisions = pl.DataFrame(
        {
            "seq": [0, 1],
            "ts": pl.Series([ms(2), ms(5)]).dt.cast_time_unit("ms"),
            "account_id": ["a1", "s1"],
            "action": ["suspend", "challenge"],
        }
    )
    in_memory = replay_metrics(table, labels, decisions)
    on_disk = replay_metrics(pads.dataset(tmp_path / "part.parquet"), labels, decisions)
    assert in_memory == on_disk
    assert in_memory.campaigns["c1"].served == 2
    assert in_memory.personas["vpn_user"].not_served == 1
