"""The canonical, disclosable form of an exchange that case files commit to, and canonical JSON.

A *committed record* is one exchange reduced to the contract's exchange columns
with its two sensitive fields replaced by hashes:

* ``prompt`` → ``prompt_sha256`` = hex SHA-256 of the prompt's UTF-8 bytes, so
  whoever holds the prompt text can confirm it and nobody else learns it;
* ``client_ip`` → ``client_ip_hmac`` = hex HMAC-SHA256 under the case's IP key of
  the address in its compressed text form (``ipaddress``; RFC 5952 for IPv6).
  A plain hash of an IPv4 address is reversed by trying all 2³² of them, hence
  the key.

Every other contract column is kept as it is; ``ts`` becomes RFC 3339 UTC with
milliseconds (``2026-01-02T03:04:05.678Z``); absent optional values are
explicit ``null``. The record is serialised as RFC 8785 (JCS) JSON in UTF-8:
keys sorted, no whitespace. The committed record carries no raw prompt and no
raw address, so the very bytes hashed into the Merkle tree can be handed to a
third party, who recomputes the same leaf.

Encoding is columnar (polars ``struct.json_encode``, whose output for these
value types — strings, integers below 2⁵³, booleans, nulls — equals JCS; the
tests check it against the ``rfc8785`` package); only the two hashes are
per-row ``hashlib``/``hmac`` calls.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
from collections.abc import Mapping
from datetime import UTC
from typing import Any, Final

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import rfc8785

from distillguard.core.errors import InvalidInputError, Problem
from distillguard.core.schema import EXCHANGE_REQUIRED_COLUMNS, EXCHANGE_SCHEMA

RECORD_SCHEME: Final = "distillguard-exchange/1"
#: Fields of a committed record, in contract order (serialised with sorted keys).
RECORD_FIELDS: Final[tuple[str, ...]] = tuple(
    {"prompt": "prompt_sha256", "client_ip": "client_ip_hmac"}.get(name, name)
    for name in EXCHANGE_SCHEMA.names
)
TS_FORMAT: Final = "%Y-%m-%dT%H:%M:%S%.3fZ"
#: JCS writes numbers as IEEE doubles; integers beyond this would not round-trip.
MAX_SAFE_INTEGER: Final = 2**53 - 1
IP_KEY_BYTES: Final = 32
_IP_KEY_ID_LABEL: Final = b"distillguard ip-key id v1"
_MAX_PROBLEMS: Final = 20
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_CANONICAL_IPV4: Final = rf"^{_OCTET}(?:\.{_OCTET}){{3}}$"


def canonical_json(value: Any) -> bytes:
    """RFC 8785 (JCS) canonical JSON of ``value`` as UTF-8 bytes.

    Raises ``TypeError``/``ValueError`` (from ``rfc8785``) for values JSON cannot hold.

    ``rfc8785`` is pure Python and was most of the time spent writing the verdicts of a
    seed-scale run's case files (25,000 documents). Where the standard library's C encoder
    already writes JCS bytes (see ``_jcs_ready``) it does the work; anything else, and every
    error, goes through ``rfc8785``.
    """
    ready = _jcs_ready(value)
    if ready is not _NOT_READY:
        try:
            return json.dumps(
                ready, ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False
            ).encode("utf-8")
        except (UnicodeEncodeError, ValueError):
            pass
    return rfc8785.dumps(value)


_NOT_READY: Final = object()
_JCS_FIXED_FLOAT_MIN: Final = 1e-4


def _jcs_ready(value: Any) -> Any:
    """``value`` with integral floats as ints, or ``_NOT_READY`` where ``json.dumps`` differs.

    For plain dicts with ASCII string keys, lists, strings, bools, None, safe integers
    and floats, ``json.dumps`` (sorted keys, no spaces, no ASCII escaping) writes what JCS
    writes: the same escapes, and for a float both print the shortest round-trip digits. They
    differ only in layout. ECMAScript writes an integral float as an integer, which the
    conversion here handles (up to 2⁵³, where the integer's digits are the shortest ones). Python uses an exponent below 1e-4, where ECMAScript uses one
    only below 1e-6, so such values are left to ``rfc8785``. Non-ASCII keys are too, because
    JCS sorts keys by UTF-16 code units and Python sorts by code points.
    """
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return value
    if kind is int:
        return value if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER else _NOT_READY
    if kind is float:
        magnitude = abs(value)
        if magnitude.is_integer():
            return int(value) if magnitude <= MAX_SAFE_INTEGER else _NOT_READY
        return value if magnitude >= _JCS_FIXED_FLOAT_MIN else _NOT_READY
    if kind is dict:
        ready_dict: dict[str, Any] = {}
        for key, item in value.items():
            if type(key) is not str or not key.isascii():
                return _NOT_READY
            ready_item = _jcs_ready(item)
            if ready_item is _NOT_READY:
                return _NOT_READY
            ready_dict[key] = ready_item
        return ready_dict
    if kind is list or kind is tuple:
        ready_list = []
        for item in value:
            ready_item = _jcs_ready(item)
            if ready_item is _NOT_READY:
                return _NOT_READY
            ready_list.append(ready_item)
        return ready_list
    return _NOT_READY


def sha256_hex(data: bytes) -> str:
    """Lower-case hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def prompt_sha256(prompt: str) -> str:
    """The committed form of a prompt: hex SHA-256 of its UTF-8 bytes."""
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


def normalise_ip(address: str) -> str:
    """The text form of an IP address that is keyed-hashed; ``ValueError`` if it is not one."""
    return ipaddress.ip_address(address.strip()).compressed


def ip_hmac(ip_key: bytes, address: str) -> str:
    """The committed form of a client IP: hex HMAC-SHA256 under ``ip_key`` of the normalised address."""
    return hmac.digest(ip_key, normalise_ip(address).encode("ascii"), "sha256").hex()


def ip_key_id(ip_key: bytes) -> str:
    """A public identifier of an IP key that reveals nothing about it (an HMAC of a fixed label)."""
    return hmac.digest(ip_key, _IP_KEY_ID_LABEL, "sha256").hex()


def check_ip_key(ip_key: bytes) -> None:
    """Reject IP keys too short to stop a dictionary attack over the address space."""
    if len(ip_key) < 16:
        raise ValueError(
            f"the IP key must be at least 16 random bytes (got {len(ip_key)}); "
            "use secrets.token_bytes(32)"
        )


def normalise_exchanges(table: pa.Table, source: str = "exchanges") -> pa.Table:
    """``table`` reduced to the contract's exchange columns, in order, with contract types.

    Missing optional columns become nulls; columns outside the contract are dropped
    (the committed record covers the contract only). Raises
    :class:`InvalidInputError` naming row and column for missing or null required
    values, uncastable columns, duplicate ``request_id`` and integers beyond 2⁵³.
    """
    problems: list[Problem] = []
    missing = [name for name in EXCHANGE_REQUIRED_COLUMNS if name not in table.column_names]
    problems.extend(Problem(source, None, name, "required column is missing") for name in missing)
    columns: list[pa.Array | pa.ChunkedArray] = []
    for field in EXCHANGE_SCHEMA:
        if field.name not in table.column_names:
            columns.append(pa.nulls(table.num_rows, field.type))
            continue
        column = table.column(field.name)
        try:
            column = column.cast(field.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            problems.append(
                Problem(source, None, field.name, f"cannot be read as {field.type}: {exc}")
            )
            column = pa.nulls(table.num_rows, field.type)
        columns.append(column)
        if field.name in EXCHANGE_REQUIRED_COLUMNS and column.null_count:
            row = _first_row(pc.is_null(column))
            problems.append(Problem(source, row, field.name, "required value is null"))
        if pa.types.is_integer(field.type) and len(column) - column.null_count:
            bounds = pc.min_max(column)
            low, high = bounds["min"].as_py(), bounds["max"].as_py()
            if low < -MAX_SAFE_INTEGER or high > MAX_SAFE_INTEGER:
                mask = pc.greater(pc.abs(column), MAX_SAFE_INTEGER)
                problems.append(
                    Problem(
                        source,
                        _first_row(mask),
                        field.name,
                        "integer beyond ±2^53 cannot be committed",
                    )
                )
    if not missing:
        ids = table.column("request_id").cast(pa.string())
        if pc.count_distinct(ids, mode="all").as_py() != len(ids):
            counts = pc.value_counts(ids)
            duplicated = counts.field("values").filter(pc.greater(counts.field("counts"), 1))
            row = _first_row(pc.is_in(ids, value_set=duplicated))
            problems.append(
                Problem(
                    source, row, "request_id", f"request_id {duplicated[0].as_py()!r} is not unique"
                )
            )
    if problems:
        raise InvalidInputError(
            problems[:_MAX_PROBLEMS], truncated=max(0, len(problems) - _MAX_PROBLEMS)
        )
    return pa.Table.from_arrays(columns, schema=EXCHANGE_SCHEMA)


def _first_row(mask: pa.Array | pa.ChunkedArray) -> int:
    index = pc.index(mask, True).as_py()
    return int(index) + 1


def committed_records(exchanges: pa.Table, ip_key: bytes, source: str = "exchanges") -> pa.Array:
    """The committed record (canonical JSON text) of every row of a normalised exchange table.

    ``exchanges`` must already have :data:`EXCHANGE_SCHEMA` (see :func:`normalise_exchanges`).
    Raises :class:`InvalidInputError` naming the rows whose ``client_ip`` is not an address.
    """
    check_ip_key(ip_key)
    prompts = exchanges.column("prompt").to_pylist()
    prompt_hashes = [hashlib.sha256(p.encode("utf-8")).hexdigest() for p in prompts]
    ip_hashes = _ip_hashes(exchanges.column("client_ip"), ip_key, source)
    frame = pl.from_arrow(exchanges.drop_columns(["prompt", "client_ip"]))
    assert isinstance(frame, pl.DataFrame)
    frame = frame.with_columns(
        pl.col("ts").dt.strftime(TS_FORMAT),
        pl.Series("prompt_sha256", prompt_hashes, dtype=pl.String),
        pl.Series("client_ip_hmac", ip_hashes),
    )
    encoded = frame.select(pl.struct(sorted(RECORD_FIELDS)).struct.json_encode().alias("record"))
    return encoded.to_series().to_arrow().cast(pa.string())


def _ip_hashes(column: pa.ChunkedArray, ip_key: bytes, source: str) -> pa.Array:
    """Keyed hashes of a column of addresses, computed once per distinct address.

    Requests from one address repeat, so hashing the dictionary of distinct values
    and taking by index is much cheaper than hashing every row; dotted quads that
    are already in canonical form skip the slow ``ipaddress`` parse.
    """
    encoded = pc.dictionary_encode(column.combine_chunks())
    distinct = encoded.dictionary
    canonical_v4 = pc.match_substring_regex(distinct, _CANONICAL_IPV4).to_pylist()
    hashes: list[str | None] = []
    problems: list[Problem] = []
    for position, (address, plain) in enumerate(
        zip(distinct.to_pylist(), canonical_v4, strict=True)
    ):
        try:
            text = address if plain else normalise_ip(address)
        except ValueError:
            row = int(pc.index(encoded.indices, position).as_py()) + 1
            problems.append(Problem(source, row, "client_ip", f"{address!r} is not an IP address"))
            hashes.append(None)
            continue
        hashes.append(hmac.digest(ip_key, text.encode("ascii"), "sha256").hex())
    if problems:
        problems.sort()
        raise InvalidInputError(
            problems[:_MAX_PROBLEMS], truncated=max(0, len(problems) - _MAX_PROBLEMS)
        )
    return pc.take(pa.array(hashes, pa.string()), encoded.indices)


def record_from_values(values: Mapping[str, Any], ip_key: bytes) -> bytes:
    """The committed record of one exchange given as a mapping of contract column values.

    The slow, obviously-correct reference for :func:`committed_records` (used by tests
    and by a verifier who holds a raw exchange); ``ts`` must be a timezone-aware datetime.
    """
    record: dict[str, Any] = {}
    for name in EXCHANGE_SCHEMA.names:
        value: Any = values.get(name)
        if name == "prompt":
            record["prompt_sha256"] = prompt_sha256(value)
        elif name == "client_ip":
            record["client_ip_hmac"] = ip_hmac(ip_key, value)
        elif name == "ts":
            utc = value.astimezone(UTC)
            record["ts"] = utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"
        else:
            record[name] = value
    return canonical_json(record)
