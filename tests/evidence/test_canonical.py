"""Committed records: the columnar encoder equals an RFC 8785 reference; bad input is named precisely."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from distillguard.core.errors import InvalidInputError
from distillguard.core.schema import EXCHANGE_SCHEMA
from distillguard.evidence.canonical import (
    RECORD_FIELDS,
    canonical_json,
    committed_records,
    ip_hmac,
    normalise_exchanges,
    prompt_sha256,
    record_from_values,
)

from .conftest import IP_KEY, exchange_table

EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30)
maybe_text = st.none() | text
maybe_int = st.none() | st.integers(0, 2**53 - 1)
addresses = st.ip_addresses().map(str)


@st.composite
def exchange_rows(draw: st.DrawFn) -> dict[str, object]:
    return {
        "ts": EPOCH + timedelta(milliseconds=draw(st.integers(0, 10**12))),
        "request_id": draw(text),
        "account_id": draw(text),
        "client_ip": draw(addresses),
        "model": draw(text),
        "prompt": draw(text),
        "input_tokens": draw(st.integers(0, 2**53 - 1)),
        "output_tokens": draw(st.integers(0, 2**40)),
        "api_key_id": draw(maybe_text),
        "end_user_id": draw(maybe_text),
        "user_agent": draw(maybe_text),
        "system_prompt_sha256": draw(maybe_text),
        "messages_count": draw(maybe_int),
        "tools_count": draw(maybe_int),
        "thinking": draw(st.none() | st.booleans()),
        "status": draw(maybe_int),
        "latency_ms": draw(maybe_int),
    }


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(exchange_rows(), min_size=1, max_size=8, unique_by=lambda r: r["request_id"]))
def test_columnar_records_equal_rfc8785_reference(rows: list[dict[str, object]]) -> None:
    table = pa.Table.from_pylist(rows, schema=EXCHANGE_SCHEMA)
    encoded = committed_records(normalise_exchanges(table), IP_KEY).to_pylist()
    for row, record in zip(rows, encoded, strict=True):
        assert record.encode("utf-8") == record_from_values(row, IP_KEY)
        parsed = json.loads(record)
        assert tuple(sorted(parsed)) == tuple(sorted(RECORD_FIELDS))
        assert rfc8785.dumps(parsed) == record.encode("utf-8")


def test_record_carries_hashes_not_raw_values() -> None:
    table = normalise_exchanges(exchange_table(5))
    records = [json.loads(r) for r in committed_records(table, IP_KEY).to_pylist()]
    for raw, record in zip(table.to_pylist(), records, strict=True):
        assert "prompt" not in record and "client_ip" not in record
        assert record["prompt_sha256"] == prompt_sha256(raw["prompt"])
        assert record["client_ip_hmac"] == ip_hmac(IP_KEY, raw["client_ip"])
        assert record["ts"].endswith("Z") and len(record["ts"]) == len("2026-03-01T12:00:00.000Z")


def test_equivalent_address_spellings_share_a_hash_and_keys_differ() -> None:
    assert ip_hmac(IP_KEY, "2001:DB8:0:0::1") == ip_hmac(IP_KEY, "2001:db8::1")
    assert ip_hmac(IP_KEY, "192.0.2.1") != ip_hmac(bytes(32), "192.0.2.1")


def test_known_prompt_hash() -> None:
    assert prompt_sha256("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert (
        prompt_sha256("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


def test_missing_null_duplicate_and_oversized_values_are_named() -> None:
    table = exchange_table(6)
    with pytest.raises(InvalidInputError) as missing:
        normalise_exchanges(table.drop_columns(["model"]))
    assert str(missing.value) == "exchanges, column 'model': required column is missing"

    prompts = table.column("prompt").to_pylist()
    prompts[3] = None
    with pytest.raises(InvalidInputError) as null:
        normalise_exchanges(table.set_column(5, "prompt", pa.array(prompts, pa.string())))
    assert str(null.value) == "exchanges, row 4, column 'prompt': required value is null"

    ids = table.column("request_id").to_pylist()
    ids[4] = ids[1]
    with pytest.raises(InvalidInputError) as dup:
        normalise_exchanges(table.set_column(1, "request_id", pa.array(ids)))
    assert (
        str(dup.value)
        == f"exchanges, row 2, column 'request_id': request_id {ids[1]!r} is not unique"
    )

    tokens = table.column("input_tokens").to_pylist()
    tokens[2] = 2**60
    with pytest.raises(InvalidInputError) as big:
        normalise_exchanges(table.set_column(6, "input_tokens", pa.array(tokens, pa.int64())))
    assert (
        str(big.value)
        == "exchanges, row 3, column 'input_tokens': integer beyond ±2^53 cannot be committed"
    )


def test_bad_address_is_named() -> None:
    table = exchange_table(4)
    ips = table.column("client_ip").to_pylist()
    ips[1] = "not-an-ip"
    bad = normalise_exchanges(table.set_column(3, "client_ip", pa.array(ips)))
    with pytest.raises(InvalidInputError) as exc:
        committed_records(bad, IP_KEY)
    assert (
        str(exc.value) == "exchanges, row 2, column 'client_ip': 'not-an-ip' is not an IP address"
    )


def test_short_ip_key_is_rejected() -> None:
    with pytest.raises(ValueError, match="at least 16 random bytes"):
        committed_records(normalise_exchanges(exchange_table(2)), b"short")


def test_worked_example_in_docs() -> None:
    """The numbers in docs/evidence.md's worked example."""
    from distillguard.evidence.merkle import MerkleTree

    prompts = [
        "Solve step by step: 17 * 23",
        "Explain your reasoning: 2^10",
        "Think carefully: is 91 prime?",
    ]
    records = [
        record_from_values(
            {
                "ts": datetime(2026, 3, 1, 12, 0, 0, 250000, tzinfo=UTC),
                "request_id": f"r-{i}",
                "account_id": "acct-1",
                "client_ip": "203.0.113.7",
                "model": "model-large",
                "prompt": prompt,
                "input_tokens": 12,
                "output_tokens": 480,
            },
            IP_KEY,
        )
        for i, prompt in enumerate(prompts)
    ]
    tree = MerkleTree.from_leaves(records)
    assert json.loads(records[0])["client_ip_hmac"].startswith("9df8158b5794e6e8")
    assert tree.leaf(1).hex() == "207c9cea9abd79aa53752530b17e8d0ae1b16c9a98c87eec4b754f73945a6c53"
    assert tree.root.hex() == "89144c344c14723438f1e0083a12386498bed7ad53e48eb6ec61161951b5c2de"
    assert tree.inclusion_proof(1) == [tree.leaf(0), tree.leaf(2)]


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53) + 1, 2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(value=json_values)
def test_canonical_json_equals_the_rfc8785_package(value: object) -> None:
    assert canonical_json(value) == rfc8785.dumps(value)


@pytest.mark.parametrize(
    "value",
    [
        1.0,
        -0.0,
        2.0**53,
        2.0**60,
        1e16,
        1e21,
        1e22,
        123.456,
        0.0001,
        0.00001234,
        1e-7,
        5e-324,
        1.7976931348623157e308,
        {"\ue000": 1, "\U0001f600": 2, "a": 3},
        {"b": [1.5, {"a": '\u2028\x7f\x00\n"\\'}], "a": None},
        ("tuple", True),
    ],
)
def test_canonical_json_layouts_where_python_and_jcs_differ(value: object) -> None:
    assert canonical_json(value) == rfc8785.dumps(value)


@pytest.mark.parametrize(
    "value", [float("nan"), float("inf"), 2**53, {1: "key not a string"}, "\ud800"]
)
def test_canonical_json_refuses_what_jcs_cannot_hold(value: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        canonical_json(value)
