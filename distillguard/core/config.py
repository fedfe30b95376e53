"""Configuration: packaged defaults overlaid with a user's YAML file, and a stable hash of the result."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from distillguard.core.errors import ConfigError


def _merge(base: dict[str, Any], override: Mapping[str, Any], path: str = "") -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        where = f"{path}.{key}" if path else key
        if key not in base:
            raise ConfigError(
                f"unknown configuration key {where!r}; known keys here: {sorted(base)}"
            )
        if isinstance(base[key], dict) and isinstance(value, Mapping):
            merged[key] = _merge(base[key], value, where)
        else:
            merged[key] = value
    return merged


def default_config() -> dict[str, Any]:
    """The packaged defaults (``distillguard/core/defaults.yaml``)."""
    text = (
        resources.files("distillguard.core").joinpath("defaults.yaml").read_text(encoding="utf-8")
    )
    loaded = yaml.safe_load(text) or {}
    if not isinstance(loaded, dict):
        raise ConfigError("packaged defaults.yaml must be a mapping")
    return loaded


def load_config(path: str | Path | None = None) -> dict[str, Any]:
    """Defaults, overlaid with the YAML file at ``path`` if given. Unknown keys are errors."""
    config = default_config()
    if path is None:
        return config
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from exc
    try:
        user = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"configuration file {path} is not valid YAML: {exc}") from exc
    if not isinstance(user, Mapping):
        raise ConfigError(f"configuration file {path} must hold a mapping at the top level")
    return _merge(config, user)


def config_hash(config: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON form of ``config``; recorded in every output."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
