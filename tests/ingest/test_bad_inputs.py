"""Each class of broken input gives an exact, stable error naming file, row and column."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distillguard.core.errors import InvalidInputError
from distillguard.ingest import load_log, read_labels


def _rows(logdir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (logdir / "exchanges.jsonl").read_text().splitlines()]


def _write(logdir: Path, rows: list[dict[str, Any]]) -> None:
    (logdir / "exchanges.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _edit(fn: Callable[[list[dict[str, Any]]], None]) -> Callable[[Path], None]:
    def apply(logdir: Path) -> None:
        rows = _rows(logdir)
        fn(rows)
        _write(logdir, rows)

    return apply


def _set(row: int, key: str, value: Any) -> Callable[[Path], None]:
    return _edit(lambda rows: rows[row - 1].__setitem__(key, value))


def _append(name: str, text: str) -> Callable[[Path], None]:
    def apply(logdir: Path) -> None:
        with (logdir / name).open("a") as fh:
            fh.write(text)

    return apply


def _missing_everywhere(logdir: Path) -> None:
    rows = _rows(logdir)
    for r in rows:
        del r["model"]
    _write(logdir, rows)


def _parquet_without(column: str) -> Callable[[Path], None]:
    def apply(logdir: Path) -> None:
        table = pa.Table.from_pylist([{**r, "ts": 0} for r in _rows(logdir)])
        (logdir / "exchanges.jsonl").unlink()
        pq.write_table(table.drop_columns([column]), logdir / "exchanges.parquet")

    return apply


def _parquet_with_string_tokens(logdir: Path) -> None:
    table = pa.Table.from_pylist([{**r, "ts": 0} for r in _rows(logdir)])
    table = table.set_column(
        table.schema.get_field_index("input_tokens"),
        "input_tokens",
        table.column("input_tokens").cast(pa.string()),
    )
    (logdir / "exchanges.jsonl").unlink()
    pq.write_table(table, logdir / "exchanges.parquet")


def _empty(logdir: Path) -> None:
    (logdir / "exchanges.jsonl").write_bytes(b"")


def _truncated_gzip(logdir: Path) -> None:
    rows = [dict(r, request_id=f"r{i}") for i, r in enumerate(_rows(logdir) * 200)]
    data = gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode())
    (logdir / "exchanges.jsonl").unlink()
    (logdir / "exchanges.jsonl.gz").write_bytes(data[: len(data) // 2])


def _non_utf8(logdir: Path) -> None:
    lines = (logdir / "exchanges.jsonl").read_bytes().split(b"\n")
    lines[1] = lines[1].replace(b"Summarise", b"Summ\xe9rise")
    (logdir / "exchanges.jsonl").write_bytes(b"\n".join(lines))


CASES: list[tuple[str, Callable[[Path], None], list[str]]] = [
    (
        "bad timestamp",
        _set(3, "ts", "yesterday"),
        [
            "exchanges.jsonl, row 3, column 'ts': not an RFC 3339 timestamp or epoch milliseconds: \"yesterday\""
        ],
    ),
    (
        "timestamp without offset",
        _set(1, "ts", "2026-05-04T09:12:03"),
        [
            "exchanges.jsonl, row 1, column 'ts': not an RFC 3339 timestamp or epoch milliseconds: \"2026-05-04T09:12:03\""
        ],
    ),
    (
        "wrong type",
        _set(2, "input_tokens", "412"),
        ["exchanges.jsonl, row 2, column 'input_tokens': expected an integer ≥ 0, got \"412\""],
    ),
    (
        "negative count",
        _set(4, "output_tokens", -1),
        ["exchanges.jsonl, row 4, column 'output_tokens': expected an integer ≥ 0, got -1"],
    ),
    (
        "null required value",
        _set(5, "request_id", None),
        ["exchanges.jsonl, row 5, column 'request_id': required value is missing"],
    ),
    (
        "bad IP",
        _set(4, "client_ip", "999.1.1.1"),
        ["exchanges.jsonl, row 4, column 'client_ip': not an IPv4 or IPv6 address: \"999.1.1.1\""],
    ),
    (
        "duplicate request_id",
        _set(5, "request_id", "req-0002"),
        [
            "exchanges.jsonl, row 5, column 'request_id': duplicate request_id \"req-0002\", first seen at row 2"
        ],
    ),
    (
        "account missing from accounts",
        _set(1, "account_id", "acct-ghost"),
        [
            "exchanges.jsonl, row 1, column 'account_id': account \"acct-ghost\" is not in the accounts file"
        ],
    ),
    (
        "required column missing from every JSON row",
        _missing_everywhere,
        ["exchanges.jsonl, column 'model': required column is missing"],
    ),
    (
        "required column missing from Parquet",
        _parquet_without("prompt"),
        ["exchanges.parquet, column 'prompt': required column is missing"],
    ),
    (
        "wrong column type in Parquet",
        _parquet_with_string_tokens,
        ["exchanges.parquet, column 'input_tokens': wrong type: expected integers, found string"],
    ),
    ("empty file", _empty, ["exchanges.jsonl: file is empty"]),
    (
        "truncated gzip",
        _truncated_gzip,
        ["exchanges.jsonl.gz: truncated gzip file; last complete row is {N}"],
    ),
    ("non-UTF-8 line", _non_utf8, ["exchanges.jsonl, row 2: not valid UTF-8"]),
    (
        "broken JSON",
        _append("exchanges.jsonl", '{"ts": 1, "request_id"\n'),
        ['exchanges.jsonl, row 6: not valid JSON: {"ts": 1, "request_id"'],
    ),
    (
        "bad CIDR",
        _append("ip_intel.csv", "10.0.0.0/33,1,x,vpn\n10.0.0.1/8,1,x,vpn\n"),
        [
            "ip_intel.csv, row 7, column 'cidr': not a CIDR network: \"10.0.0.0/33\"",
            "ip_intel.csv, row 8, column 'cidr': host bits set in CIDR network: \"10.0.0.1/8\"",
        ],
    ),
    (
        "bad network kind",
        _append("ip_intel.csv", "10.0.0.0/8,1,x,cloud\n"),
        [
            "ip_intel.csv, row 7, column 'kind': expected one of residential, mobile, business, education,"
            ' datacenter, vpn, proxy, tor; got "cloud"'
        ],
    ),
    (
        "bad verification and short CSV row",
        _append(
            "accounts.csv",
            "acct-z,2026-01-01T00:00:00Z,x.io,pf,1.2.3.4,US,passport,t1\nacct-q,oops\n",
        ),
        [
            "accounts.csv, row 6, column 'verification': expected one of none, email, phone, card, kyc; got \"passport\"",
            "accounts.csv, row 7: expected 8 fields, found 2",
        ],
    ),
]


@pytest.mark.parametrize(("name", "breaker", "expected"), CASES, ids=[c[0] for c in CASES])
def test_exact_error_text(
    example: Path,
    config: dict[str, Any],
    name: str,
    breaker: Callable[[Path], None],
    expected: list[str],
) -> None:
    breaker(example)
    work = Path(config["ingest"]["work_dir"])
    with pytest.raises(InvalidInputError) as info:
        load_log(example, config)
    got = [str(p) for p in info.value.problems]
    if "{N}" in expected[0]:
        assert len(got) == 1 and got[0].startswith(expected[0].split("{N}")[0])
        last = int(got[0].rsplit(" ", 1)[1])
        assert 0 < last < 1000  # some rows decoded before the cut, not all
    else:
        assert got == expected
    # Nothing half-staged is left behind.
    assert not work.exists() or not any(work.iterdir())


def test_problems_are_capped_per_kind(example: Path, config: dict[str, Any]) -> None:
    rows = [dict(r) for r in _rows(example) * 10]
    for i, r in enumerate(rows):
        r["request_id"] = f"r{i}"
        r["ts"] = "never"
    _write(example, rows)
    config["ingest"]["max_problems_per_kind"] = 3
    with pytest.raises(InvalidInputError) as info:
        load_log(example, config)
    assert [p.row for p in info.value.problems] == [1, 2, 3]
    assert info.value.truncated == 47


def test_labels_attack_needs_campaign(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_text("account_id,label,campaign,persona\na,attack,,x\nb,bogus,,y\nc,benign,,z\n")
    with pytest.raises(InvalidInputError) as info:
        read_labels(path)
    assert [str(p) for p in info.value.problems] == [
        "labels.csv, row 1, column 'campaign': an attack label needs a campaign",
        "labels.csv, row 2, column 'label': expected one of benign, attack; got \"bogus\"",
    ]


def test_no_exchanges_file(tmp_path: Path, config: dict[str, Any]) -> None:
    with pytest.raises(InvalidInputError) as info:
        load_log(tmp_path, config)
    assert str(info.value.problems[0]).endswith(
        "no exchanges: expected one of exchanges.parquet, exchanges/, exchanges.jsonl, exchanges.jsonl.gz,"
        " otel_spans.json, otel_spans.jsonl, otel_spans.jsonl.gz"
    )
