"""Scenarios, scales and the evasion knobs of each attack campaign, with ``--set campaign.knob=value`` parsing."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from distillguard.core.errors import ConfigError

CAMPAIGNS: Final = ("june2026", "reasoning_harvester", "pivot", "varied")


@dataclass(frozen=True)
class Knobs:
    """How one campaign behaves and how hard it tries to look benign.

    ``accounts`` of 0 keeps the scale's default count.
    """

    accounts: int = 0  # accounts in the campaign (0: the scale's default)
    rate: float = 26.0  # mean exchanges per account per active day
    proxy_rotation: float = 0.7  # share of requests sent from a fresh exit of the shared pool
    paraphrase: float = 0.2  # share of prompts whose scaffold wording is reworded
    timing_jitter: float = 600.0  # seconds of noise around the campaign's shared schedule
    cover_traffic: float = 0.05  # share of benign-looking prompts mixed in
    account_age_days: float = 0.0  # accounts created this long (median) before first use
    volume_cap: int = 0  # max exchanges per account per day (0: no cap)
    distinct_cards: bool = False  # every account pays with its own card
    # Days of the window before the campaign starts: its first exchanges land on traffic the
    # online path has already seen (a replay otherwise begins cold at the campaign's start).
    start_day: float = 0.0
    ipv6_share: float = 0.05  # share of exits that are IPv6
    # >0: the exit pool is drawn from this seed, not the run's, so runs with different seeds (two
    # providers) see the same operation's infrastructure with different accounts and cards.
    infra_seed: int = 0

    def check(self, campaign: str) -> None:
        """Reject values that cannot work, naming the knob and the valid range."""
        unit = ("proxy_rotation", "paraphrase", "cover_traffic", "ipv6_share")
        for name in unit:
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{campaign}.{name}={value}: must be between 0 and 1")
        for name in ("accounts", "volume_cap", "infra_seed"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{campaign}.{name}={getattr(self, name)}: must be >= 0")
        for name in ("rate", "timing_jitter", "account_age_days", "start_day"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{campaign}.{name}={getattr(self, name)}: must be >= 0")


KNOB_NAMES: Final = tuple(f.name for f in dataclasses.fields(Knobs))

#: Default knobs per campaign (the ``default`` scenario).
DEFAULT_KNOBS: Final[dict[str, Knobs]] = {
    "june2026": Knobs(rate=25.6, proxy_rotation=0.8, paraphrase=0.15, cover_traffic=0.05),
    "reasoning_harvester": Knobs(
        rate=60.0, proxy_rotation=0.2, timing_jitter=20.0, cover_traffic=0.0
    ),
    "pivot": Knobs(rate=400.0, proxy_rotation=0.3, paraphrase=0.1, cover_traffic=0.02),
    "varied": Knobs(
        rate=40.0,
        proxy_rotation=0.4,
        paraphrase=0.5,
        cover_traffic=0.15,
        account_age_days=60.0,
        distinct_cards=True,
    ),
}

#: The maximum-evasion variant of june2026 used by the ``low-and-slow`` scenario.
LOW_AND_SLOW: Final = Knobs(
    rate=18.0,
    proxy_rotation=1.0,
    paraphrase=0.9,
    timing_jitter=3600.0,
    cover_traffic=0.3,
    account_age_days=120.0,
    volume_cap=26,
    distinct_cards=True,
    ipv6_share=0.1,
)


@dataclass(frozen=True)
class Scenario:
    """Which campaigns run (with which knobs) beside the benign population."""

    name: str
    description: str
    campaigns: Mapping[str, Knobs]


SCENARIOS: Final[dict[str, Scenario]] = {
    "default": Scenario(
        "default", "benign population plus all four campaigns", dict(DEFAULT_KNOBS)
    ),
    "benign": Scenario("benign", "benign population only (no attacks)", {}),
    "low-and-slow": Scenario(
        "low-and-slow",
        "benign population plus june2026 at maximum evasion",
        {"june2026": LOW_AND_SLOW},
    ),
    **{
        c: Scenario(c, f"benign population plus the {c} campaign", {c: DEFAULT_KNOBS[c]})
        for c in CAMPAIGNS
    },
}


@dataclass(frozen=True)
class Scale:
    """Size of a run: days simulated and a size class the personas/campaigns key their counts on."""

    name: str
    days: int
    description: str


SCALES: Final[dict[str, Scale]] = {
    "tiny": Scale("tiny", 3, "unit tests: ~15k exchanges over 3 days"),
    "small": Scale("small", 7, "tests and demo: ~100-150k exchanges over 7 days"),
    "medium": Scale("medium", 14, "~2M exchanges over 14 days"),
    "seed": Scale("seed", 45, "the June 2026 scale: ~57M exchanges over 45 days, streamed"),
}


def _parse(campaign: str, knob: str, raw: str, current: object) -> object:
    where = f"{campaign}.{knob}={raw!r}"
    if isinstance(current, bool):
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{where}: expected true or false")
    try:
        return int(raw) if isinstance(current, int) else float(raw)
    except ValueError:
        kind = "an integer" if isinstance(current, int) else "a number"
        raise ConfigError(f"{where}: expected {kind}") from None


def resolve(scenario: str, overrides: Mapping[str, str] | None = None) -> dict[str, Knobs]:
    """The scenario's campaigns with ``campaign.knob=value`` overrides applied and checked."""
    if scenario not in SCENARIOS:
        raise ConfigError(f"unknown scenario {scenario!r}; choose one of {', '.join(SCENARIOS)}")
    knobs = dict(SCENARIOS[scenario].campaigns)
    for key, raw in sorted((overrides or {}).items()):
        campaign, dot, knob = key.partition(".")
        valid = [f"{c}.{k}" for c in knobs for k in KNOB_NAMES]
        if not dot or campaign not in knobs or knob not in KNOB_NAMES:
            listing = ", ".join(valid) if valid else "none (this scenario has no campaigns)"
            raise ConfigError(
                f"unknown setting {key!r} for scenario {scenario!r}; valid keys: {listing}"
            )
        value = _parse(campaign, knob, raw, getattr(knobs[campaign], knob))
        knobs[campaign] = dataclasses.replace(knobs[campaign], **{knob: value})  # type: ignore[arg-type]
    for campaign, k in knobs.items():
        k.check(campaign)
    return knobs


def parse_sets(items: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``["a.b=1", ...]`` -> ``{"a.b": "1"}``; an item without ``=`` is an error."""
    out: dict[str, str] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"--set {item!r}: expected campaign.knob=value")
        out[key.strip()] = value.strip()
    return out
