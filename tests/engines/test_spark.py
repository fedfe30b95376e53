"""The Spark engine against the embedded one: same Ibis expressions, same tables, same detect outputs."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import ibis
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from distillguard.cli import app
from distillguard.core.config import load_config
from distillguard.core.errors import ConfigError
from distillguard.engines import open_engine
from distillguard.engines.embedded import EmbeddedEngine
from distillguard.engines.spark import SparkEngine, conf_from_env
from distillguard.pipeline import DetectResult, run_detect, write_outputs
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


def test_engine_leaves_a_shared_stage_directory_as_it_found_it(
    spark_session: Any, tmp_path: Path
) -> None:
    """On a cluster the stage directory is shared between runs: remove this run's files only
    (its held results included) and drop the views it made in the session, which outlives the engine."""
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "other-run").write_text("not ours")
    engine = SparkEngine(spark_session, stage_dir=str(shared))
    held = engine.cache(engine.table("t", _sample()).select("account_id"))
    assert engine.to_arrow(held).num_rows == 5
    view = held.op().name
    assert spark_session.catalog.tableExists(view)
    (engine.scratch / "part.parquet").write_bytes(b"signals")
    # The other run's, our staged table, our held result, our scratch.
    assert len(list(shared.iterdir())) == 4
    engine.close()
    assert [p.name for p in shared.iterdir()] == ["other-run"]
    assert not spark_session.catalog.tableExists(view)  # the held result's view was dropped


def _approx_equal(a: Any, b: Any, tol: float = 1e-9, where: str = "$") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{where}: keys {sorted(a)} != {sorted(b)}"]
        return [d for k in a for d in _approx_equal(a[k], b[k], tol, f"{where}.{k}")]
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
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
def campaign_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small default scenario: the benign personas and all four campaigns, ~113k exchanges.

    Spark's cost here is fixed per stage, not per row: this log costs the parity test ~10 s more
    than a tiny one-campaign log did (66 s against 58 s), and it exercises every campaign shape
    and the reseller and SaaS end users.
    """
    out = tmp_path_factory.mktemp("spark-log") / "log"
    simulate("default", "small", 4242, out)
    return out


def _written(result: DetectResult, out: Path) -> tuple[list[Any], Any]:
    """verdicts.jsonl and campaigns.json as ``detect`` writes them, parsed."""
    write_outputs(result, out)
    lines = (out / "verdicts.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(x) for x in lines], json.loads((out / "campaigns.json").read_text())


def test_detect_on_spark_matches_embedded(
    spark_session: Any, campaign_log: Path, tmp_path: Path
) -> None:
    """The relational stages on Spark give the embedded engine's verdicts and campaigns.

    ``run_detect`` is the whole chain up to the outputs (ingest, signals, features, linking,
    scoring, evidence sampling) without the case files and report, which read only its results
    and the log and run in Python whatever the engine.
    """
    config = load_config()
    embedded = run_detect(campaign_log, config)
    with SparkEngine(spark_session) as engine:
        sparked = run_detect(campaign_log, config, engine)
    assert len(embedded.verdicts) >= 100 and len(embedded.campaigns["campaigns"]) >= 4, (
        "the scenario must link accounts into its four campaigns"
    )
    a = {v.account_id: v.to_json() for v in embedded.verdicts}
    b = {v.account_id: v.to_json() for v in sparked.verdicts}
    assert sorted(a) == sorted(b)
    assert [a[k]["action"] for k in sorted(a)] == [b[k]["action"] for k in sorted(b)]
    assert _approx_equal(a, b) == []
    assert _approx_equal(embedded.campaigns, sparked.campaigns) == []
    # The campaign edges the report draws, row for row.
    assert embedded.campaign_edges is not None and sparked.campaign_edges is not None
    assert embedded.campaign_edges.num_rows > 0
    assert sparked.campaign_edges.equals(embedded.campaign_edges)
    # And the files as written (rounded, sorted) are the same documents.
    assert (
        _approx_equal(_written(embedded, tmp_path / "e"), _written(sparked, tmp_path / "s")) == []
    )
    # The caller's session survived (the engine only stops sessions it started).
    assert spark_session.range(2).count() == 2


def test_local_settings_from_the_environment_are_parsed_and_bad_pairs_named() -> None:
    text = " spark.driver.memory=12g,spark.sql.shuffle.partitions=64  a.b=x=y "
    assert conf_from_env(text) == {
        "spark.driver.memory": "12g",
        "spark.sql.shuffle.partitions": "64",
        "a.b": "x=y",
    }
    assert conf_from_env(None) == {} == conf_from_env("")
    for bad in ("spark.driver.memory", "=12g"):
        with pytest.raises(ConfigError, match="not key=value"):
            conf_from_env(f"spark.ui.enabled=false {bad}")


def test_approx_equal_reports_what_differs() -> None:
    """The parity check above can fail: a score off by more than 1e-9, an action, a key."""
    a = {"x": [{"score": 0.5, "action": "throttle"}], "n": 1}
    assert _approx_equal(a, {"x": [{"score": 0.5 + 1e-12, "action": "throttle"}], "n": 1}) == []
    assert _approx_equal(a, {"x": [{"score": 0.5 + 1e-8, "action": "throttle"}], "n": 1}) == [
        f"$.x[0].score: 0.5 != {0.5 + 1e-8}"
    ]
    assert _approx_equal(a, {"x": [{"score": 0.5, "action": "suspend"}], "n": 1}) == [
        "$.x[0].action: 'throttle' != 'suspend'"
    ]
    assert _approx_equal(a, {"x": [], "n": 1}) == ["$.x: 1 != 0 items"]
    assert _approx_equal(a, {"x": a["x"]}) == ["$: keys ['n', 'x'] != ['x']"]


def test_open_engine_joins_the_running_session(spark_session: Any) -> None:
    """``detect --engine spark`` under spark-submit uses that session and leaves it running."""
    with open_engine("spark") as engine:
        assert isinstance(engine, SparkEngine)
        assert engine.session.sparkContext.applicationId == spark_session.sparkContext.applicationId
        stage = Path(engine.stage_dir)
        n = engine.to_arrow(engine.table("t", _sample()).count().as_table())
        assert n.column(0).to_pylist() == [5]
    assert not stage.exists()
    assert spark_session.range(3).count() == 3


_PROBE = """
import json, sys
from distillguard.engines.spark import SparkEngine
with SparkEngine() as engine:
    conf = engine.session.conf
    seen = {
        "master": engine.session.sparkContext.master,
        "partitions": conf.get("spark.sql.shuffle.partitions"),
        "stage": engine.stage_dir,
        "zone": conf.get("spark.sql.session.timeZone"),
    }
with open(sys.argv[1], "w") as fh:
    json.dump(seen, fh)
"""


@pytest.mark.slow
def test_spark_submit_settings_are_the_ones_used(tmp_path: Path) -> None:
    """Under spark-submit the engine runs where it was submitted, with the submitted settings.

    Not the local defaults: a ``--master yarn`` job must not quietly run ``local[*]`` on the driver.
    """
    if shutil.which("java") is None:
        pytest.skip("no Java runtime")
    import pyspark

    probe, seen, stage = tmp_path / "probe.py", tmp_path / "seen.json", tmp_path / "stage"
    probe.write_text(_PROBE)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYSPARK_GATEWAY")}
    env.update(PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
    env.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    conf = {
        "spark.sql.shuffle.partitions": "3",
        "spark.distillguard.stageDir": str(stage),
        "spark.ui.enabled": "false",
        "spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC",
    }
    cmd = [str(Path(pyspark.__file__).parent / "bin" / "spark-submit"), "--master", "local[1]"]
    cmd += [arg for k, v in conf.items() for arg in ("--conf", f"{k}={v}")]
    done = subprocess.run(
        [*cmd, str(probe), str(seen)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(seen.read_text()) == {
        "master": "local[1]",
        "partitions": "3",
        "stage": str(stage),
        "zone": "UTC",
    }


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
