"""Contract columns as checks: DuckDB SQL that turns raw values into typed ones plus an error text per row."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

import pyarrow as pa

from distillguard.core.schema import (
    LABEL_VALUES,
    NETWORK_KINDS_IN_INTEL,
    TS_TYPE,
    VERIFICATION_LEVELS,
)

Kind = Literal["string", "int", "count", "bool", "ts", "enum"]
Mode = Literal["json", "typed", "text"]

MISSING: Final = "required value is missing"
MISSING_COLUMN: Final = "required column is missing"
EMPTY_VALUE: Final = "required value is empty"
# Values shown inside messages are cut so one huge prompt cannot flood the report.
SHOW_CHARS: Final = 80
RFC3339: Final = r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$"


@dataclass(frozen=True)
class Column:
    """One contract column: its name, what values it accepts, and whether it must be present."""

    name: str
    kind: Kind
    required: bool = False
    allow_empty: bool = True
    choices: tuple[str, ...] = ()

    @property
    def arrow_type(self) -> pa.DataType:
        """The Arrow type values are normalised to."""
        return {
            "string": pa.string(),
            "enum": pa.string(),
            "int": pa.int64(),
            "count": pa.int64(),
            "bool": pa.bool_(),
            "ts": TS_TYPE,
        }[self.kind]

    @property
    def sql_type(self) -> str:
        """The DuckDB type of the checked value (timestamps travel as epoch milliseconds)."""
        return {
            "string": "VARCHAR",
            "enum": "VARCHAR",
            "int": "BIGINT",
            "count": "BIGINT",
            "bool": "BOOLEAN",
            "ts": "BIGINT",
        }[self.kind]

    def expectation(self) -> str:
        """What a wrong value is told it should have been."""
        if self.kind == "ts":
            return "not an RFC 3339 timestamp or epoch milliseconds: "
        if self.kind == "string":
            return "expected a string, got "
        if self.kind == "int":
            return "expected an integer, got "
        if self.kind == "count":
            return "expected an integer ≥ 0, got "
        if self.kind == "bool":
            return "expected true or false, got "
        return f"expected one of {', '.join(self.choices)}; got "


def _s(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


EXCHANGE_COLUMNS: Final[tuple[Column, ...]] = (
    Column("ts", "ts", required=True),
    Column("request_id", "string", required=True, allow_empty=False),
    Column("account_id", "string", required=True, allow_empty=False),
    Column("client_ip", "string", required=True, allow_empty=False),
    Column("model", "string", required=True, allow_empty=False),
    Column("prompt", "string", required=True),
    Column("input_tokens", "count", required=True),
    Column("output_tokens", "count", required=True),
    Column("api_key_id", "string"),
    Column("end_user_id", "string"),
    Column("user_agent", "string"),
    Column("system_prompt_sha256", "string"),
    Column("messages_count", "count"),
    Column("tools_count", "count"),
    Column("thinking", "bool"),
    Column("status", "int"),
    Column("latency_ms", "count"),
)

ACCOUNT_COLUMNS: Final[tuple[Column, ...]] = (
    Column("account_id", "string", required=True, allow_empty=False),
    Column("created_at", "ts"),
    Column("email_domain", "string"),
    Column("payment_fingerprint", "string"),
    Column("signup_ip", "string"),
    Column("country", "string"),
    Column("verification", "enum", choices=VERIFICATION_LEVELS),
    Column("tier", "string"),
)

IP_INTEL_COLUMNS: Final[tuple[Column, ...]] = (
    Column("cidr", "string", required=True, allow_empty=False),
    Column("asn", "count"),
    Column("asn_org", "string"),
    Column("kind", "enum", required=True, choices=NETWORK_KINDS_IN_INTEL),
)

LABEL_COLUMNS: Final[tuple[Column, ...]] = (
    Column("account_id", "string", required=True, allow_empty=False),
    Column("label", "enum", required=True, choices=LABEL_VALUES),
    Column("campaign", "string"),
    Column("persona", "string"),
)


def value_category(arrow_type: pa.DataType) -> str:
    """Coarse class of an Arrow type, which decides how a typed column is checked."""
    t = arrow_type
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "string"
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_floating(t):
        return "float"
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_timestamp(t):
        return "ts"
    if pa.types.is_null(t):
        return "null"
    return "other"


_ACCEPTS: Final[dict[str, frozenset[str]]] = {
    "string": frozenset({"string", "null"}),
    "enum": frozenset({"string", "null"}),
    "int": frozenset({"int", "float", "string", "null"}),
    "count": frozenset({"int", "float", "string", "null"}),
    "bool": frozenset({"bool", "string", "null"}),
    "ts": frozenset({"ts", "int", "string", "null"}),
}


def accepts(column: Column, category: str, mode: Mode) -> bool:
    """Whether a typed column of ``category`` can hold this contract column at all."""
    if category == "string" and column.kind not in ("string", "enum") and mode != "text":
        # Strings are parsed only from CSV (text) or for timestamps (RFC 3339 in Parquet).
        return column.kind == "ts"
    return category in _ACCEPTS[column.kind]


def _text_checks(col: Column, s: str, show: str) -> tuple[str, str]:
    """Value and error SQL for a column whose raw value is the VARCHAR expression ``s``."""
    exp = _s(col.expectation())
    if col.kind in ("string", "enum"):
        value = s
        bad = "FALSE"
        if col.kind == "enum":
            choices = ", ".join(_s(c) for c in col.choices)
            bad = f"{s} NOT IN ({choices})"
        if not col.allow_empty:
            return (
                value,
                f"CASE WHEN {s} = '' THEN {_s(EMPTY_VALUE)} WHEN {bad} THEN {exp} || {show} END",
            )
        return value, f"CASE WHEN {bad} THEN {exp} || {show} END"
    if col.kind in ("int", "count"):
        value = f"CASE WHEN regexp_full_match(trim({s}), '-?[0-9]+') THEN TRY_CAST(trim({s}) AS BIGINT) END"
    elif col.kind == "bool":
        value = f"CASE lower(trim({s})) WHEN 'true' THEN TRUE WHEN 'false' THEN FALSE END"
    else:
        value = (
            f"CASE WHEN regexp_full_match({s}, '[0-9]{{1,15}}') THEN TRY_CAST({s} AS BIGINT) "
            f"WHEN regexp_full_match({s}, {_s(RFC3339)}) THEN epoch_ms(TRY_CAST(upper({s}) AS TIMESTAMPTZ)) END"
        )
    return value, _bad_value(col, value, exp, show)


def _bad_value(col: Column, value: str, exp: str, show: str) -> str:
    if col.kind == "count":
        return f"CASE WHEN ({value}) IS NULL OR ({value}) < 0 THEN {exp} || {show} END"
    return f"CASE WHEN ({value}) IS NULL THEN {exp} || {show} END"


def _show(expr: str) -> str:
    return f"(CASE WHEN length({expr}) > {SHOW_CHARS} THEN left({expr}, {SHOW_CHARS}) || '…' ELSE {expr} END)"


def json_checks(col: Column, j: str) -> tuple[str, str]:
    """Value and error SQL for a column extracted as the JSON expression ``j`` (NULL if absent)."""
    t = f"json_type({j})"
    show = _show(f"CAST({j} AS VARCHAR)")
    exp = _s(col.expectation())
    text = f"({j} ->> '$')"
    if col.kind in ("string", "enum"):
        value, err = _text_checks(col, text, show)
        value = f"CASE WHEN {t} = 'VARCHAR' THEN {value} END"
        err = f"CASE WHEN {t} <> 'VARCHAR' THEN {exp} || {show} ELSE {err} END"
    elif col.kind in ("int", "count"):
        value = (
            f"CASE WHEN {t} IN ('UBIGINT', 'BIGINT') THEN TRY_CAST({text} AS BIGINT) "
            f"WHEN {t} = 'DOUBLE' AND TRY_CAST({text} AS DOUBLE) = floor(TRY_CAST({text} AS DOUBLE)) "
            f"THEN TRY_CAST(TRY_CAST({text} AS DOUBLE) AS BIGINT) END"
        )
        err = _bad_value(col, value, exp, show)
    elif col.kind == "bool":
        value = f"CASE WHEN {t} = 'BOOLEAN' THEN {text} = 'true' END"
        err = _bad_value(col, value, exp, show)
    else:
        value = (
            f"CASE WHEN {t} IN ('UBIGINT', 'BIGINT') THEN TRY_CAST({text} AS BIGINT) "
            f"WHEN {t} = 'VARCHAR' AND regexp_full_match({text}, {_s(RFC3339)}) "
            f"THEN epoch_ms(TRY_CAST(upper({text}) AS TIMESTAMPTZ)) END"
        )
        err = _bad_value(col, value, exp, show)
    return _with_missing(col, f"({j} IS NULL OR {t} = 'NULL')", value, err)


def typed_checks(col: Column, c: str, category: str, mode: Mode) -> tuple[str, str]:
    """Value and error SQL for a typed (Parquet) or text (CSV) column ``c`` of ``category``."""
    exp = _s(col.expectation())
    if category == "null":
        return _with_missing(col, "TRUE", f"CAST(NULL AS {col.sql_type})", "NULL")
    if category == "string":
        show = _show(f"CAST(to_json({c}) AS VARCHAR)")
        value, err = _text_checks(col, c, show)
    else:
        show = _show(f"CAST({c} AS VARCHAR)")
        if category == "float":
            value = f"CASE WHEN {c} = floor({c}) THEN TRY_CAST({c} AS BIGINT) END"
        elif category == "ts" and col.kind == "ts":
            value = f"epoch_ms({c})"
        elif category == "int":
            value = f"TRY_CAST({c} AS BIGINT)"
        else:  # bool
            value = c
        err = _bad_value(col, value, exp, show)
    return _with_missing(col, f"{c} IS NULL", value, err)


def _with_missing(col: Column, missing: str, value: str, err: str) -> tuple[str, str]:
    miss = _s(MISSING) if col.required else "NULL"
    return (
        f"CASE WHEN {missing} THEN NULL ELSE {value} END",
        f"CASE WHEN {missing} THEN {miss} ELSE {err} END",
    )


def json_select(columns: Sequence[Column], extras: Sequence[str] = ()) -> str:
    """SQL over ``src(row_no, line BLOB)``: row error, then per column value ``v{i}`` and error ``e{i}``.

    Each line is decoded and parsed once; the JSON values of every column come out of a
    single ``json_extract`` call.
    """
    names = [c.name for c in columns] + list(extras)
    paths = ", ".join(_s("$." + _ident(n)) for n in names)
    known = ", ".join(_s(c.name) for c in columns)
    parts = []
    for i, col in enumerate(columns):
        value, err = json_checks(col, f"j[{i + 1}]")
        parts.append(
            f"CAST({value} AS {col.sql_type}) AS v{i}, CASE WHEN e_row IS NULL THEN {err} END AS e{i}"
        )
    for k, _ in enumerate(extras):
        parts.append(f"j[{len(columns) + k + 1}] ->> '$' AS x{k}")
    return f"""
WITH d AS (SELECT row_no, rtrim(try(decode(line)), chr(13) || chr(10)) AS s FROM src),
r AS (
  SELECT row_no, s,
    CASE WHEN s IS NULL THEN 'not valid UTF-8'
         WHEN NOT json_valid(s) THEN 'not valid JSON: ' || {_show("s")}
         WHEN json_type(s) <> 'OBJECT' THEN 'not a JSON object: ' || {_show("s")} END AS e_row
  FROM d
),
x AS (
  SELECT row_no, e_row,
    json_extract(CASE WHEN e_row IS NULL THEN s END, [{paths}]) AS j,
    list_filter(json_keys(CASE WHEN e_row IS NULL THEN s END), lambda k: NOT list_contains([{known}], k)) AS unknown_keys
  FROM r
)
SELECT row_no, e_row, unknown_keys, {", ".join(parts)} FROM x
"""


def typed_select(
    columns: Sequence[Column], categories: dict[str, str], mode: Mode, extras: Sequence[str] = ()
) -> str:
    """SQL over ``src(row_no, <columns>)`` for typed or CSV input; absent columns are all-null."""
    parts = []
    for i, col in enumerate(columns):
        cat = categories.get(col.name, "null")
        if cat == "skip":  # absent or wrongly typed: reported once for the whole column
            value, err = "NULL", "CAST(NULL AS VARCHAR)"
        elif cat == "null":
            value, err = typed_checks(col, "NULL", "null", mode)
        else:
            value, err = typed_checks(col, _ident(col.name), cat, mode)
        parts.append(f"CAST({value} AS {col.sql_type}) AS v{i}, {err} AS e{i}")
    for k, name in enumerate(extras):
        parts.append(f"{_ident(name)} AS x{k}")
    return f"SELECT row_no, {', '.join(parts)} FROM src"


def _fast_json_value(col: Column, r: str) -> tuple[str, str]:
    """Value and "clean" SQL for the raw JSON text ``r`` (NULL when absent or null) of one column.

    Anything the fast path is not sure about is "not clean", never guessed: such a chunk is
    re-checked by :func:`json_select`, which names every problem exactly.
    """
    absent = "TRUE" if not col.required else "FALSE"
    if col.kind in ("string", "enum"):
        value = f"({r} ->> '$')"
        ok = f"left({r}, 1) = '\"'"
        if not col.allow_empty:
            ok += f" AND {value} <> ''"
        if col.kind == "enum":
            ok += f" AND {value} IN ({', '.join(_s(c) for c in col.choices)})"
    elif col.kind in ("int", "count"):
        num = "'[0-9]+'" if col.kind == "count" else "'-?[0-9]+'"
        value = f"TRY_CAST(CAST({r} AS VARCHAR) AS BIGINT)"
        ok = f"regexp_full_match(CAST({r} AS VARCHAR), {num}) AND {value} IS NOT NULL"
    elif col.kind == "bool":
        value = f"(CAST({r} AS VARCHAR) = 'true')"
        ok = f"CAST({r} AS VARCHAR) IN ('true', 'false')"
    else:
        text = f"({r} ->> '$')"
        value = (
            f"CASE WHEN left({r}, 1) = '\"' THEN epoch_ms(TRY_CAST(upper({text}) AS TIMESTAMPTZ)) "
            f"WHEN regexp_full_match(CAST({r} AS VARCHAR), '-?[0-9]+') THEN TRY_CAST(CAST({r} AS VARCHAR) AS BIGINT) END"
        )
        ok = f"(left({r}, 1) <> '\"' OR regexp_full_match({text}, {_s(RFC3339)})) AND ({value}) IS NOT NULL"
    return (
        f"CASE WHEN {r} IS NULL THEN NULL ELSE {value} END",
        f"CASE WHEN {r} IS NULL THEN {absent} ELSE coalesce({ok}, FALSE) END",
    )


def json_fast_select(columns: Sequence[Column], extras: Sequence[str] = ()) -> str:
    """SQL over ``src(row_no, s VARCHAR)``: typed ``v{i}``, extras ``x{k}``, and per row ``clean``/``known``.

    One JSON parse per line (``json_transform`` into raw JSON values) instead of the
    several of :func:`json_select`; ``clean`` is true only where the row has no problem
    at all, ``known`` only where every key is a contract column or a listed extra.
    """
    names = [c.name for c in columns] + list(extras)
    struct = json.dumps(dict.fromkeys(names, "JSON"))
    # Every key is known when the object has no more keys than known columns with a value
    # (a key holding null is counted by neither side's... only by json_keys: then the
    # caller lists the keys exactly).
    present = " + ".join(f"CAST({_ident(n)} IS NOT NULL AS INTEGER)" for n in names)
    values, oks = [], []
    for i, col in enumerate(columns):
        value, ok = _fast_json_value(col, _ident(col.name))
        values.append(f"CAST({value} AS {col.sql_type}) AS v{i}")
        oks.append(ok)
    for k, name in enumerate(extras):
        values.append(f"{_ident(name)} ->> '$' AS x{k}")
    return f"""
WITH x AS (
  SELECT row_no AS __dgf_row, starts_with(s, '{{') AS __dgf_obj, len(json_keys(s)) AS __dgf_n,
         unnest(json_transform(s, {_s(struct)}))
  FROM src
)
SELECT __dgf_row AS row_no, __dgf_n = {present} AS known,
       __dgf_obj AND {" AND ".join(oks)} AS clean, {", ".join(values)}
FROM x
"""
