"""The fast paths (JSONL one-parse chunks, Parquet checked in place) agree with the exact checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distillguard.core.errors import InvalidInputError
from distillguard.ingest import load_log

N = 3000


def _row(i: int) -> dict[str, Any]:
    return {
        "ts": 1_767_225_600_000 + i,
        "request_id": f"r{i}",
        "account_id": f"a{i % 7}",
        "client_ip": f"10.0.{i % 200}.{i % 250}" if i % 5 else f"2001:db8::{i:x}",
        "model": "m",
        "prompt": "" if i % 4 == 0 else f"prompt {i}",
        "input_tokens": i,
        "output_tokens": 2 * i,
        "thinking": i % 2 == 0,
    }


def _jsonl(logdir: Path, rows: list[dict[str, Any]]) -> None:
    logdir.mkdir(exist_ok=True)
    (logdir / "exchanges.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _parts(logdir: Path, rows: list[dict[str, Any]]) -> None:
    (logdir / "exchanges").mkdir(parents=True)
    table = pa.Table.from_pylist(rows)
    ts = pa.array([r["ts"] for r in rows], pa.int64()).cast(pa.timestamp("ms", tz="UTC"))
    table = table.set_column(0, "ts", ts)
    half = table.num_rows // 2
    pq.write_table(table.slice(0, half), logdir / "exchanges" / "part-0.parquet")
    pq.write_table(table.slice(half), logdir / "exchanges" / "part-1.parquet")


def _small_chunks(config: dict[str, Any]) -> dict[str, Any]:
    # Several JSONL chunks, so one bad chunk sits between clean ones.
    config["ingest"]["jsonl_chunk_bytes"] = 40_000
    return config


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("input_tokens", "412", "column 'input_tokens': expected an integer ≥ 0, got \"412\""),
        ("input_tokens", -3, "column 'input_tokens': expected an integer ≥ 0, got -3"),
        ("account_id", 5, "column 'account_id': expected a string, got 5"),
        (
            "ts",
            "yesterday",
            "column 'ts': not an RFC 3339 timestamp or epoch milliseconds: \"yesterday\"",
        ),
        (
            "client_ip",
            "10.0.0.256",
            "column 'client_ip': not an IPv4 or IPv6 address: \"10.0.0.256\"",
        ),
        (
            "request_id",
            "r17",
            "column 'request_id': duplicate request_id \"r17\", first seen at row 18",
        ),
    ],
)
def test_one_bad_jsonl_row_in_the_middle_is_named_exactly(
    tmp_path: Path, config: dict[str, Any], key: str, value: Any, expected: str
) -> None:
    rows = [_row(i) for i in range(N)]
    rows[1733][key] = value
    _jsonl(tmp_path / "log", rows)
    with pytest.raises(InvalidInputError) as info:
        load_log(tmp_path / "log", _small_chunks(config))
    assert [str(p) for p in info.value.problems] == [f"exchanges.jsonl, row 1734, {expected}"]


def test_clean_jsonl_fast_path_matches_parquet_and_keeps_extras(
    tmp_path: Path, config: dict[str, Any]
) -> None:
    rows = [_row(i) for i in range(N)]
    rows[2500]["region"] = "eu"  # an extra column in one late chunk only
    rows[10]["api_key_id"] = None  # a known key holding null
    _jsonl(tmp_path / "j", rows)
    _parts(tmp_path / "p", [_row(i) for i in range(N)])
    got = load_log(tmp_path / "j", _small_chunks(config)).exchange_table()
    ref = load_log(tmp_path / "p", config).exchange_table()
    assert got.column("region").to_pylist().count("eu") == 1
    assert got.drop_columns(["region"]).sort_by("request_id").equals(ref.sort_by("request_id"))


def test_canonical_parquet_parts_are_read_in_place(tmp_path: Path, config: dict[str, Any]) -> None:
    _parts(tmp_path / "p", [_row(i) for i in range(N)])
    log = load_log(tmp_path / "p", config)
    assert sorted(log.exchanges.files) == sorted(
        str(p) for p in (tmp_path / "p" / "exchanges").glob("*.parquet")
    )
    assert log.exchanges.count_rows() == N
    again = load_log(tmp_path / "p", config)  # validated once, remembered by digest
    assert again.exchanges.files == log.exchanges.files


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("model", "", "exchanges/part-1.parquet, row 234, column 'model': required value is empty"),
        (
            "client_ip",
            "bogus",
            "exchanges/part-1.parquet, row 234, column 'client_ip': not an IPv4 or IPv6 address: \"bogus\"",
        ),
        (
            "request_id",
            "r3",
            "exchanges/part-1.parquet, row 234, column 'request_id': duplicate request_id \"r3\", first seen at exchanges/part-0.parquet row 4",
        ),
        (
            "input_tokens",
            -1,
            "exchanges/part-1.parquet, row 234, column 'input_tokens': expected an integer ≥ 0, got -1",
        ),
    ],
)
def test_one_bad_parquet_row_in_the_middle_is_named_exactly(
    tmp_path: Path, config: dict[str, Any], key: str, value: Any, expected: str
) -> None:
    rows = [_row(i) for i in range(N)]
    rows[N // 2 + 233][key] = value
    _parts(tmp_path / "p", rows)
    with pytest.raises(InvalidInputError) as info:
        load_log(tmp_path / "p", config)
    assert [str(p) for p in info.value.problems] == [expected]


def test_parquet_problem_counts_beyond_the_cap(tmp_path: Path, config: dict[str, Any]) -> None:
    rows = [_row(i) for i in range(N)]
    for r in rows[100:200]:
        r["model"] = ""
    _parts(tmp_path / "p", rows)
    config["ingest"]["max_problems_per_kind"] = 3
    with pytest.raises(InvalidInputError) as info:
        load_log(tmp_path / "p", config)
    assert [p.row for p in info.value.problems] == [101, 102, 103]
    assert info.value.truncated == 97
