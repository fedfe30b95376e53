"""Enforcement: consumes exchanges as they arrive (plus the latest detect results) and produces actions, limits and decisions."""
