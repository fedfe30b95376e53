"""load_log on the example log and on every supported form of the contract."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from distillguard.cli import app
from distillguard.core.schema import EXCHANGE_SCHEMA
from distillguard.ingest import Log, load_log, lookup
from distillguard.ingest.validate import validate_logdir

from .conftest import EXAMPLE


def _sorted(table: pa.Table) -> pa.Table:
    return table.sort_by("request_id")


def test_example_log_loads(config: dict[str, Any]) -> None:
    log = load_log(EXAMPLE, config)
    assert isinstance(log, Log)
    assert log.exchanges.schema.names[: len(EXCHANGE_SCHEMA)] == EXCHANGE_SCHEMA.names
    table = log.exchange_table()
    assert table.num_rows == 5
    assert table.schema.field("ts").type == pa.timestamp("ms", tz="UTC")
    # Row 2 carries epoch milliseconds, the others RFC 3339: both normalise to UTC.
    ts = {r["request_id"]: r["ts"] for r in table.select(["request_id", "ts"]).to_pylist()}
    assert ts["req-0002"].isoformat() == "2026-05-04T09:12:35+00:00"
    assert ts["req-0001"].isoformat() == "2026-05-04T09:12:03.120000+00:00"
    assert log.accounts.num_rows == 5
    assert log.labels is not None and log.labels.num_rows == 5
    assert set(log.digests) == {"exchanges.jsonl", "accounts.csv", "ip_intel.csv", "labels.csv"}
    kinds = lookup(table.column("client_ip"), log.ip_intel).column("kind").to_pylist()
    # 73.162.44.9 sits in the /24 proxy row nested inside the /8 residential one.
    by_ip = dict(zip(table.column("client_ip").to_pylist(), kinds, strict=True))
    assert by_ip["73.162.44.9"] == "proxy"
    assert by_ip["2a02:8108:1140:7e00::5"] == "residential"


def test_example_summary(config: dict[str, Any]) -> None:
    summary = validate_logdir(EXAMPLE, config)
    assert summary.rows == 5
    assert summary.accounts_in_exchanges == 5
    assert summary.content_share == pytest.approx(0.8)
    assert summary.unknown_ip_share == 0.0
    assert summary.first_ts == "2026-05-04T09:12:03.120Z"
    assert summary.models == {"model-large-2026-04": 4, "model-small-2026-01": 1}


def test_cli_validate(tmp_path: Path, config: dict[str, Any]) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps(config))
    runner = CliRunner()
    ok = runner.invoke(app, ["validate", str(EXAMPLE), "--config", str(cfg)])
    assert ok.exit_code == 0, ok.output
    assert "80.0%" in ok.output
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "exchanges.jsonl").write_text('{"ts": "yesterday"}\n')
    res = runner.invoke(app, ["validate", str(bad), "--config", str(cfg)])
    assert res.exit_code == 2
    assert "Traceback" not in res.output


def _forms(example_table: pa.Table, root: Path) -> dict[str, Path]:
    """The same exchanges written in each supported form."""
    rows = example_table.to_pylist()
    for r in rows:
        r["ts"] = int(r["ts"].timestamp() * 1000)
    text = "".join(json.dumps({k: v for k, v in r.items() if v is not None}) + "\n" for r in rows)
    out: dict[str, Path] = {}
    for name in ("parquet", "parts", "jsonl", "jsonl.gz"):
        d = root / name
        d.mkdir()
        out[name] = d
    pq.write_table(example_table, out["parquet"] / "exchanges.parquet")
    (out["parts"] / "exchanges").mkdir()
    pq.write_table(example_table.slice(0, 2), out["parts"] / "exchanges" / "part-0.parquet")
    pq.write_table(example_table.slice(2), out["parts"] / "exchanges" / "part-1.parquet")
    (out["jsonl"] / "exchanges.jsonl").write_text(text)
    (out["jsonl.gz"] / "exchanges.jsonl.gz").write_bytes(gzip.compress(text.encode()))
    return out


def test_every_form_reads_to_the_same_table(tmp_path: Path, config: dict[str, Any]) -> None:
    reference = _sorted(load_log(EXAMPLE, config).exchange_table())
    for name, logdir in _forms(reference, tmp_path).items():
        got = _sorted(load_log(logdir, config).exchange_table())
        assert got.equals(reference), name


def test_extra_columns_are_kept(tmp_path: Path, config: dict[str, Any]) -> None:
    (tmp_path / "exchanges.jsonl").write_text(
        '{"ts": 1, "request_id": "a", "account_id": "x", "client_ip": "1.2.3.4", "model": "m", "prompt": "",'
        ' "input_tokens": 1, "output_tokens": 2, "region": "eu"}\n'
        '{"ts": 2, "request_id": "b", "account_id": "x", "client_ip": "::1", "model": "m", "prompt": "p",'
        ' "input_tokens": 1, "output_tokens": 2}\n'
    )
    table = load_log(tmp_path, config).exchange_table()
    assert table.column_names[-1] == "region"
    assert table.column("region").to_pylist() == ["eu", None]
    assert table.column("api_key_id").null_count == 2


def test_staging_is_reused_and_never_written_into_logdir(
    example: Path, config: dict[str, Any]
) -> None:
    before = sorted(p.name for p in example.iterdir())
    first = load_log(example, config)
    second = load_log(example, config)
    assert first.exchanges.files == second.exchanges.files
    assert sorted(p.name for p in example.iterdir()) == before


def test_otel_spans_map_onto_the_contract(tmp_path: Path, config: dict[str, Any]) -> None:
    def attr(key: str, value: Any) -> dict[str, Any]:
        if isinstance(value, int):
            return {"key": key, "value": {"intValue": str(value)}}
        return {"key": key, "value": {"stringValue": value}}

    messages = json.dumps(
        [
            {"role": "system", "parts": [{"type": "text", "content": "be brief"}]},
            {"role": "user", "parts": [{"type": "text", "content": "first"}]},
            {"role": "assistant", "parts": [{"type": "text", "content": "ok"}]},
            {"role": "user", "parts": [{"type": "text", "content": "explain LPM"}]},
        ]
    )
    span = {
        "traceId": "5b8efff798038103d269b633813fc60c",
        "spanId": "eee19b7ec3c1b174",
        "name": "chat model-large",
        "startTimeUnixNano": "1777885923120000000",
        "endTimeUnixNano": "1777885925120000000",
        "attributes": [
            attr("gen_ai.operation.name", "chat"),
            attr("gen_ai.request.model", "model-large"),
            attr("gen_ai.usage.input_tokens", 12),
            attr("gen_ai.usage.output_tokens", 34),
            attr("gen_ai.input.messages", messages),
            attr("client.address", "2001:db8::7"),
            attr("user.id", "acct-1"),
            attr("user_agent.original", "sdk/1.0"),
            attr("http.response.status_code", 200),
        ],
    }
    doc = {
        "resourceSpans": [
            {
                "resource": {"attributes": []},
                "scopeSpans": [{"scope": {"name": "x"}, "spans": [span]}],
            }
        ]
    }
    (tmp_path / "otel_spans.jsonl").write_text(json.dumps(doc) + "\n")
    row = load_log(tmp_path, config).exchange_table().to_pylist()[0]
    assert row["ts"].isoformat() == "2026-05-04T09:12:03.120000+00:00"
    assert (row["request_id"], row["account_id"], row["client_ip"], row["model"]) == (
        "eee19b7ec3c1b174",
        "acct-1",
        "2001:db8::7",
        "model-large",
    )
    assert (row["prompt"], row["input_tokens"], row["output_tokens"]) == ("explain LPM", 12, 34)
    assert (row["messages_count"], row["latency_ms"], row["status"], row["user_agent"]) == (
        4,
        2000,
        200,
        "sdk/1.0",
    )
