"""The Spark engine against the embedded one: same Ibis expressions, same tables, same detect outputs."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import ibis
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from distillguard.cli import app
from distillguard.core.config import load_config
from distillguard.engines.embedded import EmbeddedEngine
from distillguard.engines.spark import SparkEngine
from distillguard.pipeline import detect
from distillguard.simulate import simulate


def _sample() -> pa.Table:
    ms = pa.timestamp("ms", tz="UTC")
    base = datetime(2026, 3, 1, 23, 59, 59, 750, tzinfo=UTC).timestamp() * 1000
    return pa.table(
        {
            "account_id": pa.array(["b", "a", "b", "a", None], pa.string()),
            "ts": pa.array([int(base) + i * 1250 for i in range(5)], ms),
            "template_id": pa.array([2**64 - 1, 7, None, 2**63 + 5, 7], pa.uint64()),
            "x": pa.array([0.1, 0.2, None, 0.4, 0.5], pa.float64()),
        }
    )


def _query(t: Any) -> Any:
    agg = t.group_by("account_id").agg(
        n=t.count(),
        first=t.ts.min(),
        span=t.ts.epoch_seconds().max().cast("float64")
        - t.ts.epoch_seconds().min().cast("float64"),
        top=t.template_id.max(),
        day=t.ts.date().min(),
        hour=t.ts.hour().max(),
        mean_x=t.x.mean(),
    )
    keyed = t.filter(t.template_id.notnull()).mutate(key=t.template_id.cast("string"))
    keys = keyed.group_by("key").agg(k=keyed.count())
    return agg.order_by("account_id"), keys.order_by("key")


def test_tables_come_back_with_the_embedded_types_and_values(spark_session: Any) -> None:
    """uint64 ids, millisecond UTC instants, nulls: Spark's answer equals DuckDB's exactly."""
    data = _sample()
    with SparkEngine(spark_session) as spark:
        results = []
        for engine in (EmbeddedEngine(), spark):
            exprs = _query(engine.table("sample", data))
            results.append([engine.to_arrow(e) for e in exprs])
    for embedded, sparked in zip(*results, strict=True):
        assert sparked.schema == embedded.schema
        assert sparked.equals(embedded), (sparked.to_pylist(), embedded.to_pylist())
    # The fractional second survives (Spark's unix_timestamp alone would drop it).
    assert results[1][0].column("span").to_pylist()[0] == pytest.approx(2.5)
    keys = set(results[1][1].column("key").to_pylist())
    assert str(2**64 - 1) in keys and str(2**63 + 5) in keys


def test_engine_closes_what_it_started_only(spark_session: Any) -> None:
    engine = SparkEngine(spark_session)
    stage = Path(engine.stage_dir)
    engine.table("t", _sample())
    assert stage.is_dir()
    engine.close()
    assert not stage.exists()
    # The caller's session is left running for the caller.
    assert spark_session.range(3).count() == 3


def _approx_equal(a: Any, b: Any, tol: float = 1e-9, where: str = "$") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{where}: keys {sorted(a)} != {sorted(b)}"]
        return [d for k in a for d in _approx_equal(a[k], b[k], tol, f"{where}.{k}")]
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{where}: {len(a)} != {len(b)} items"]
        return [
            d
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            for d in _approx_equal(x, y, tol, f"{where}[{i}]")
        ]
    if isinstance(a, float) and isinstance(b, float | int):
        return [] if math.isclose(a, b, rel_tol=0, abs_tol=tol) else [f"{where}: {a} != {b}"]
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]


@pytest.fixture(scope="module")
def small_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("spark-log") / "log"
    simulate("default", "tiny", 4242, out)
    return out


def test_detect_on_spark_matches_embedded(
    spark_session: Any, small_log: Path, tmp_path: Path
) -> None:
    """Verdicts (accounts, actions, clusters, scores, reasons) and campaigns are the same."""
    config = load_config()
    embedded = detect(small_log, tmp_path / "embedded", config)
    sparked = detect(small_log, tmp_path / "spark", config, engine="spark")
    assert embedded.verdicts and embedded.campaigns["campaigns"], "scenario must exercise linking"
    a = {v.account_id: v.to_json() for v in embedded.verdicts}
    b = {v.account_id: v.to_json() for v in sparked.verdicts}
    assert sorted(a) == sorted(b)
    assert [a[k]["action"] for k in sorted(a)] == [b[k]["action"] for k in sorted(b)]
    assert _approx_equal(a, b) == []
    assert _approx_equal(embedded.campaigns, sparked.campaigns) == []
    # What is written is the same too: the campaign edges the report draws, row for row.
    assert embedded.campaign_edges is not None and sparked.campaign_edges is not None
    assert sparked.campaign_edges.equals(embedded.campaign_edges)
    written = json.loads((tmp_path / "spark" / "campaigns.json").read_text())
    assert (
        _approx_equal(written, json.loads((tmp_path / "embedded" / "campaigns.json").read_text()))
        == []
    )
    # The caller's session survived detect (the engine only stops sessions it started).
    assert spark_session.range(2).count() == 2


def test_cli_rejects_an_unknown_engine(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["detect", str(tmp_path), "--out", str(tmp_path / "o"), "--engine", "flink"]
    )
    assert result.exit_code == 2
    assert "embedded or spark" in result.output


def test_ibis_compiles_epoch_seconds_fractionally() -> None:
    from distillguard.engines.spark import _compiler

    t = ibis.table({"ts": "timestamp('UTC', 3)"}, name="t")
    sql = _compiler().to_sqlglot(t.select(s=t.ts.epoch_seconds())).sql("spark")
    assert "UNIX_MICROS" in sql.upper()
