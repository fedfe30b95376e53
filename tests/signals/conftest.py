"""Session fixtures for signal tests: the capability model fitted (or loaded from cache) once."""

from __future__ import annotations

import pytest

from distillguard.signals.capability import CapabilityModel, load_model


@pytest.fixture(scope="session")
def capability_model() -> CapabilityModel:
    return load_model()
