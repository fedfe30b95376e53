"""OpenTelemetry GenAI spans (OTLP JSON) mapped onto contract exchanges; see docs/otel-mapping.md.

Each OTLP export document is exploded into spans and every span is turned into one
contract-shaped JSON object inside DuckDB, so the ordinary exchange checks then apply
unchanged (errors name the span's 1-based position in the file as its row).
"""

from __future__ import annotations

from typing import Final

import duckdb
import pyarrow as pa

#: Semantic-conventions release the mapping follows (GenAI conventions, "development" status).
SEMCONV_VERSION: Final = "1.37.0"

#: Contract column <- span attributes tried in order (first present wins).
ATTRIBUTES: Final[dict[str, tuple[str, ...]]] = {
    "request_id": ("gen_ai.response.id",),
    "account_id": ("distillguard.account_id", "user.id", "enduser.id"),
    "client_ip": ("client.address",),
    "model": ("gen_ai.request.model", "gen_ai.response.model"),
    "input_tokens": ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens"),
    "output_tokens": ("gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens"),
    "api_key_id": ("distillguard.api_key_id",),
    "end_user_id": ("distillguard.end_user_id", "enduser.pseudo.id"),
    "user_agent": ("user_agent.original",),
    "status": ("http.response.status_code",),
}

# Function forms instead of the -> / ->> operators: inside a macro body DuckDB reads "->" as a lambda.
_MACROS: Final = """
CREATE OR REPLACE MACRO otel_value(v) AS
  CASE
    WHEN json_extract(v, '$.stringValue') IS NOT NULL THEN json_extract(v, '$.stringValue')
    WHEN json_extract(v, '$.intValue') IS NOT NULL THEN
      CASE WHEN json_type(json_extract(v, '$.intValue')) = 'VARCHAR'
           THEN coalesce(CAST(TRY_CAST(json_extract_string(v, '$.intValue') AS BIGINT) AS JSON),
                         json_extract(v, '$.intValue'))
           ELSE json_extract(v, '$.intValue') END
    WHEN json_extract(v, '$.boolValue') IS NOT NULL THEN json_extract(v, '$.boolValue')
    WHEN json_extract(v, '$.doubleValue') IS NOT NULL THEN json_extract(v, '$.doubleValue')
  END;
CREATE OR REPLACE MACRO otel_attr(attrs, k) AS
  otel_value(json_extract(list_filter(attrs, lambda a: json_extract_string(a, '$.key') = k)[1], '$.value'));
"""


def _first(keys: tuple[str, ...]) -> str:
    return "coalesce(" + ", ".join(f"otel_attr(attrs, '{k}')" for k in keys) + ")"


def _prompt_sql() -> str:
    """Text of the final user turn: ``gen_ai.input.messages`` (parts), else deprecated ``gen_ai.prompt``."""
    return """
    coalesce(
      CASE WHEN last_user IS NULL THEN NULL
           WHEN json_extract(last_user, '$.parts') IS NOT NULL THEN array_to_string(
             list_transform(
               list_filter(json_extract(last_user, '$.parts[*]'), lambda p: json_extract_string(p, '$.type') = 'text'),
               lambda p: json_extract_string(p, '$.content')),
             '\n')
           ELSE json_extract_string(last_user, '$.content') END,
      CASE WHEN prompt_raw IS NOT NULL AND NOT coalesce(json_valid(prompt_raw), FALSE) THEN prompt_raw END,
      '')
    """


def spans_sql() -> str:
    """SQL over ``src(row_no, line BLOB)`` of OTLP JSON documents -> ``(row_no, line BLOB, e_doc)``.

    ``row_no`` becomes the span's 1-based position in the file; a document that is not
    valid UTF-8 / JSON yields one row carrying ``e_doc`` and no span.
    """
    fields = [
        "'ts', CAST(TRY_CAST(json_extract_string(span, '$.startTimeUnixNano') AS HUGEINT) // 1000000 AS BIGINT)"
    ]
    for column, keys in ATTRIBUTES.items():
        expr = _first(keys)
        if column == "request_id":
            expr = f"coalesce({expr}, json_extract(span, '$.spanId'))"
        fields.append(f"'{column}', {expr}")
    fields += [
        f"'prompt', {_prompt_sql()}",
        "'messages_count', CASE WHEN msgs IS NOT NULL THEN json_array_length(msgs) END",
        "'tools_count', CASE WHEN tools IS NOT NULL THEN json_array_length(tools) END",
        "'latency_ms', CAST((TRY_CAST(json_extract_string(span, '$.endTimeUnixNano') AS HUGEINT)"
        " - TRY_CAST(json_extract_string(span, '$.startTimeUnixNano') AS HUGEINT)) // 1000000 AS BIGINT)",
        "'otel_trace_id', json_extract(span, '$.traceId')",
        "'otel_span_id', json_extract(span, '$.spanId')",
    ]
    return f"""
WITH d AS (SELECT row_no, rtrim(try(decode(line)), chr(13) || chr(10)) AS s FROM src),
docs AS (
  SELECT row_no, s,
    CASE WHEN s IS NULL THEN 'not valid UTF-8'
         WHEN NOT json_valid(s) THEN 'not valid JSON'
         WHEN json_type(s) <> 'OBJECT' THEN 'not a JSON object' END AS e_doc
  FROM d
),
lists AS (
  SELECT row_no, json_extract(s, '$.resourceSpans[*].scopeSpans[*].spans[*]') AS spans
  FROM docs WHERE e_doc IS NULL
),
sp AS (
  SELECT row_no AS doc_no, unnest(spans) AS span, unnest(generate_series(1, len(spans))) AS k FROM lists
),
a AS (SELECT doc_no, k, span, json_extract(span, '$.attributes[*]') AS attrs FROM sp),
b AS (
  SELECT *,
    otel_attr(attrs, 'gen_ai.input.messages') ->> '$' AS msgs_raw,
    otel_attr(attrs, 'gen_ai.prompt') ->> '$' AS prompt_raw,
    otel_attr(attrs, 'gen_ai.tool.definitions') ->> '$' AS tools_raw
  FROM a
),
c AS (
  SELECT *,
    CASE WHEN coalesce(json_valid(msgs_raw), FALSE) THEN CAST(msgs_raw AS JSON)
         WHEN coalesce(json_valid(prompt_raw), FALSE) THEN CAST(prompt_raw AS JSON) END AS msgs,
    CASE WHEN coalesce(json_valid(tools_raw), FALSE) THEN CAST(tools_raw AS JSON) END AS tools
  FROM b
),
e AS (
  SELECT *, list_filter(json_extract(msgs, '$[*]'), lambda m: json_extract_string(m, '$.role') = 'user')[-1] AS last_user FROM c
)
SELECT row_number() OVER (ORDER BY doc_no, k) AS row_no,
       encode(CAST(json_object({", ".join(fields)}) AS VARCHAR)) AS line,
       CAST(NULL AS VARCHAR) AS e_doc
FROM e
UNION ALL
SELECT row_no, NULL, e_doc FROM docs WHERE e_doc IS NOT NULL
"""


def install(con: duckdb.DuckDBPyConnection) -> None:
    """Define the SQL macros the span mapping uses on ``con``."""
    for stmt in _MACROS.split(";"):
        if stmt.strip():
            con.execute(stmt)


def spans_to_lines(con: duckdb.DuckDBPyConnection, src: pa.Table) -> pa.Table:
    """OTLP documents ``src(row_no, line)`` -> contract-shaped JSON lines, one per span."""
    install(con)
    con.register("src", src)
    try:
        return con.sql(spans_sql()).to_arrow_table()
    finally:
        con.unregister("src")
