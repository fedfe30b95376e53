"""Shared fixtures for linking tests: one synthetic world with named look-alikes and planted hydras."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pytest

from distillguard.core.config import load_config
from distillguard.engines.embedded import EmbeddedEngine
from distillguard.linking import LinkResult, link
from distillguard.linking.edges import edge_expressions

from .synth import Synth, add_background, add_campus, add_corporate, add_hydra, add_saas, add_vpn


def small_world_config() -> dict[str, Any]:
    """Defaults, except the df-share cap: the toy world has ~200 accounts, not thousands."""
    config = load_config()
    config["linking"]["max_df_share"] = 0.5
    return config


@pytest.fixture(scope="session")
def world() -> tuple[pa.Table, pa.Table]:
    s = Synth(3)
    add_background(s)
    add_campus(s)
    add_corporate(s)
    add_vpn(s)
    add_saas(s)
    add_hydra(s)
    add_hydra(s, 12, 10, "hyb")
    return s.tables()


@pytest.fixture(scope="session")
def linked(world: tuple[pa.Table, pa.Table]) -> LinkResult:
    sig, acc = world
    engine = EmbeddedEngine()
    return link(
        engine, engine.table("signals", sig), engine.table("accounts", acc), small_world_config()
    )


@pytest.fixture(scope="session")
def all_edges(world: tuple[pa.Table, pa.Table]) -> pa.Table:
    """Every edge of the world, weak ones included (``link`` keeps only strong and in-cluster ones)."""
    sig, acc = world
    engine = EmbeddedEngine()
    edges, _ = edge_expressions(
        engine.table("signals", sig), engine.table("accounts", acc), small_world_config()
    )
    return engine.to_arrow(edges).drop_columns(["code_a", "code_b"])
