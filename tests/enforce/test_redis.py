"""Redis backend: two service processes share limits and actions; fail modes when Redis stops; restarts keep state."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from distillguard.enforce.online import build_enforcer

from .conftest import RedisServer, free_port


def _serve(cfg: Path, url: str, port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "distillguard", "serve", "-c", str(cfg), "--backend", "redis", "--redis-url", url,
         "--port", str(port), "--insecure-no-auth"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


def _wait(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(proc.stderr.read().decode() if proc.stderr else "service exited")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=0.5).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError("service did not start")


def _body(i: int, account: str = "shared-acct") -> dict[str, Any]:
    return {
        "request_id": f"r{i}",
        "account_id": account,
        "client_ip": "198.51.100.9",
        "model": "m-1",
    }


@pytest.mark.slow
def test_two_service_processes_share_limits(redis_server: RedisServer, tmp_path: Path) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"enforce": {"online": {"capability_model": False},
                                               "limits": {"account": {"allow": "4/minute"}}}}))  # fmt: skip
    ports = [free_port(), free_port()]
    procs = [_serve(cfg, redis_server.url, p) for p in ports]
    try:
        for port, proc in zip(ports, procs, strict=True):
            _wait(port, proc)
        answers = []
        for i in range(8):  # alternate between the two processes
            port = ports[i % 2]
            answers.append(
                httpx.post(f"http://127.0.0.1:{port}/v1/check", json=_body(i), timeout=5).json()
            )
        admitted = [a["retry_after"] is None for a in answers]
        assert admitted == [True] * 4 + [False] * 4  # one budget of 4, whichever process answers
        state = httpx.get(f"http://127.0.0.1:{ports[0]}/v1/accounts/shared-acct", timeout=5).json()
        assert state["counters"]["n"] == 8.0  # both processes' exchanges in one state
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)


@pytest.mark.parametrize("mode", ["open", "closed"])
def test_fail_mode_when_redis_stops_mid_run(
    redis_server: RedisServer, config: dict[str, Any], mode: str
) -> None:
    config["enforce"]["fail_mode"] = mode
    config["enforce"]["fallback_limit"] = "3/minute"
    enforcer = build_enforcer(config, backend="redis", redis_url=redis_server.url)
    row = {
        "request_id": "r",
        "account_id": "a",
        "client_ip": "198.51.100.9",
        "model": "m",
        "ts": 1_750_000_000_000,
    }
    assert enforcer.process([row])[0].retry_after is None
    redis_server.stop()
    during = [enforcer.process([{**row, "request_id": f"d{i}"}])[0] for i in range(5)]
    if mode == "open":
        assert [d.retry_after is None for d in during] == [True, True, True, False, False]
        assert during[3].limited_by == "fallback"
    else:
        assert all(
            d.retry_after is not None and d.limited_by == "state_unavailable" for d in during
        )
    assert enforcer.metrics.state_errors >= 1
    redis_server.start()  # an empty Redis on the same port: the service recovers by itself
    time.sleep(config["enforce"]["redis_retry_seconds"] + 0.1)
    after = enforcer.process([{**row, "request_id": "after"}])[0]
    assert after.retry_after is None
    assert enforcer.backend.ping()


def test_restart_keeps_actions_and_limits(
    redis_server: RedisServer, config: dict[str, Any]
) -> None:
    # "hot" shares the contained accounts' address, so it may be at monitor: limit both.
    config["enforce"]["limits"]["account"]["allow"] = "2/minute"
    config["enforce"]["limits"]["account"]["monitor"] = "2/minute"
    first = build_enforcer(config, backend="redis", redis_url=redis_server.url)
    rows = [{"request_id": f"r{i}", "account_id": f"n{i}", "client_ip": "198.51.100.9", "model": "m",
             "ts": 1_750_000_000_000 + i} for i in range(6)]  # fmt: skip
    from distillguard.enforce.online import AccountMeta

    metas = [AccountMeta("card-Z", f"d{i}.com") for i in range(6)]
    decisions = [first.process([r], [m])[0] for r, m in zip(rows, metas, strict=True)]
    flagged = [d for d in decisions if d.action.rank > 0]
    assert flagged, "shared card across six domains must raise an action"
    hot = {"request_id": "h", "account_id": "hot", "client_ip": "198.51.100.9", "model": "m"}
    assert [first.process([hot])[0].retry_after is None for _ in range(2)] == [True, True]
    del first  # "restart": a new process state, the same Redis
    second = build_enforcer(config, backend="redis", redis_url=redis_server.url)
    view = second.account(flagged[-1].account_id)
    assert view is not None and view.action_rank == flagged[-1].action.rank
    assert second.process([hot])[0].limited_by == "account"
