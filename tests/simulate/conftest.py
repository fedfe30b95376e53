"""Shared fixtures for the simulator tests: one tiny default run per session (generation costs seconds)."""

from __future__ import annotations

from pathlib import Path

import pytest

from distillguard.simulate import SimulationSummary, simulate


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> SimulationSummary:
    return simulate("default", "tiny", 7, tmp_path_factory.mktemp("sim") / "log")


@pytest.fixture(scope="session")
def tiny_dir(tiny_run: SimulationSummary) -> Path:
    return tiny_run.out
