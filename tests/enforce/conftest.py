"""Fixtures for the online path: a real redis-server on loopback, small configs, exchange rows."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from distillguard.core.config import load_config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A redis-server process on 127.0.0.1:port that tests can stop and start again."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.tmp = tmp
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no",
             "--dir", str(self.tmp)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if client.ping():
                    return
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed: run scripts/install_system_deps.sh")
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def config() -> dict[str, Any]:
    cfg = load_config()
    cfg["enforce"]["online"]["capability_model"] = False
    cfg["enforce"]["redis_retry_seconds"] = 0.5
    return cfg


def row(
    i: int,
    account: str,
    ip: str = "203.0.113.7",
    prompt: str = "",
    ts0: int = 1_750_000_000_000,
    **extra: Any,
) -> dict[str, Any]:
    """One contract exchange as a dict (seconds apart)."""
    return {"ts": ts0 + i * 1000, "request_id": f"r{i}-{account}", "account_id": account, "client_ip": ip,
            "model": "m-1", "prompt": prompt, "input_tokens": 12, "output_tokens": 0, **extra}  # fmt: skip


@pytest.fixture
def mkrow() -> Any:
    return row


def checked_one_by_one(e: Any, rows: list[dict[str, Any]], intel: Any) -> list[dict[str, Any]]:
    """The changed decisions of ``rows`` checked one at a time with their content signals (no model)."""
    from distillguard.enforce.online import BatchContentSignals, exchange_table

    signals = BatchContentSignals(e.config, intel=intel, capability_model=False).compute(
        exchange_table(rows)
    )
    return [
        d.to_json()
        for i, r in enumerate(rows)
        for d in e.process([r], None, signals.slice(i, 1))
        if d.changed
    ]
