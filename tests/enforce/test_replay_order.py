"""Replay reads a log a time range at a time: the same batches, in the same order, as sorting it whole."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from distillguard.core.schema import EXCHANGE_COLUMNS
from distillguard.enforce.replay import TimeOrderedExchanges, sorted_batches

T0 = 1_750_000_000_000


def _log(tmp_path: Path, n: int = 600, files: int = 3) -> pads.Dataset:
    """Exchanges over three hours, written unsorted across several files (ties on ts included)."""
    rng = np.random.default_rng(7)
    ts = T0 + rng.integers(0, 3 * 3_600_000, size=n)
    ts[::7] = ts[0]  # many exchanges in one millisecond: request_id breaks the tie
    table = pa.table(
        {
            "ts": pa.array(ts, pa.timestamp("ms", tz="UTC")),
            "request_id": pa.array([f"r{int(x):06d}" for x in rng.permutation(n)]),
            "account_id": pa.array([f"a{int(x)}" for x in rng.integers(0, 40, size=n)]),
            "client_ip": pa.array(["203.0.113.7"] * n),
            "model": pa.array(["m"] * n),
            "prompt": pa.array([f"prompt {i} " * 5 for i in range(n)]),
            "input_tokens": pa.array(rng.integers(1, 500, size=n), pa.int64()),
        }
    )
    folder = tmp_path / "exchanges"
    folder.mkdir()
    for k in range(files):
        pq.write_table(table.take(np.arange(k, n, files)), folder / f"part-{k}.parquet")
    return pads.dataset(folder, format="parquet")


@pytest.mark.parametrize("read_rows", [1, 37, 10_000])
def test_time_ranges_give_the_batches_of_the_sorted_whole(tmp_path: Path, read_rows: int) -> None:
    dataset = _log(tmp_path)
    columns = [c for c in EXCHANGE_COLUMNS if c in dataset.schema.names]
    whole = list(sorted_batches(dataset.to_table(columns=columns), 50))
    ordered = TimeOrderedExchanges(dataset, columns, read_rows)
    assert ordered.rows == 600 and ordered.accounts == len(
        set(dataset.to_table()["account_id"].to_pylist())
    )
    if read_rows < 600:
        assert len(ordered.ranges()) > 1
    got = list(ordered.batches(50))
    ordered.close()
    assert [b.num_rows for b in got] == [b.num_rows for b in whole]
    assert all(a.equals(b) for a, b in zip(got, whole, strict=True))  # values and types


def test_ranges_are_whole_minutes_covering_every_exchange(tmp_path: Path) -> None:
    dataset = _log(tmp_path)
    ordered = TimeOrderedExchanges(dataset, read_rows=100)
    ranges = ordered.ranges()
    ordered.close()
    assert all(lo % 60_000 == 0 and hi % 60_000 == 0 and lo < hi for lo, hi in ranges)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(ranges))
    ts = dataset.to_table(columns=["ts"])["ts"].cast(pa.int64()).to_numpy()
    assert ranges[0][0] <= ts.min() and ts.max() < ranges[-1][1]


def test_an_empty_log_gives_no_batch(tmp_path: Path) -> None:
    dataset = _log(tmp_path)
    empty = dataset.to_table().slice(0, 0)
    ordered = TimeOrderedExchanges(empty, read_rows=10)
    assert ordered.rows == 0 and ordered.ranges() == [] and list(ordered.batches(5)) == []
