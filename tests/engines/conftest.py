"""Fixtures for the engine tests: one small local Spark session for the whole run, tuned for short jobs."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any, Final

import pytest

#: On top of the engine's local settings (UTC, UI off, loopback, AQE). The tests' queries touch
#: a few thousand rows each, so what costs is fixed per-stage work: JIT, task launch, shuffles.
TEST_CONF: Final = {
    # Two partitions, not one: results must not depend on how rows are split between tasks.
    "spark.sql.shuffle.partitions": "2",
    "spark.default.parallelism": "2",
    "spark.ui.enabled": "false",
    "spark.driver.memory": "2g",
    # A JVM that lives a minute gains nothing from C2: compiling with C1 only roughly halved the
    # parity test's Spark run on a loaded 2-core machine (140 s -> 76 s). Not for real runs.
    "spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC",
}


@pytest.fixture(scope="session")
def spark_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A local[2] Spark session on 127.0.0.1 with the engine's settings, stopped at the end."""
    if shutil.which("java") is None:
        pytest.skip("no Java runtime: run scripts/install_system_deps.sh (openjdk-17-jre-headless)")
    from distillguard.engines.spark import _local_session

    # Catalog calls create the warehouse directory, by default in the working directory.
    warehouse = tmp_path_factory.mktemp("spark-warehouse")
    session = _local_session("local[2]", {**TEST_CONF, "spark.sql.warehouse.dir": str(warehouse)})
    try:
        yield session
    finally:
        session.stop()
