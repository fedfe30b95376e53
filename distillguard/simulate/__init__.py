"""Simulation: seeded benign personas and attack campaigns in, a contract log directory with ground-truth labels out."""

from distillguard.simulate.engine import SimulationSummary, simulate
from distillguard.simulate.knobs import (
    CAMPAIGNS,
    KNOB_NAMES,
    SCALES,
    SCENARIOS,
    Knobs,
    parse_sets,
    resolve,
)

__all__ = [
    "CAMPAIGNS",
    "KNOB_NAMES",
    "SCALES",
    "SCENARIOS",
    "Knobs",
    "SimulationSummary",
    "parse_sets",
    "resolve",
    "simulate",
]
