"""Fixtures for the engine tests: one local Spark session for the whole run (≈5 s to start)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(scope="session")
def spark_session() -> Iterator[Any]:
    """A local[2] Spark session on 127.0.0.1 with the engine's settings, stopped at the end."""
    if shutil.which("java") is None:
        pytest.skip("no Java runtime: run scripts/install_system_deps.sh (openjdk-17-jre-headless)")
    from distillguard.engines.spark import _local_session

    session = _local_session("local[2]", {"spark.sql.shuffle.partitions": "2"})
    session.sparkContext.setLogLevel("ERROR")
    try:
        yield session
    finally:
        session.stop()
