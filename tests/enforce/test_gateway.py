"""Gateway: forwards allowed Messages / Chat Completions requests (streams passed through), refuses the rest, logs all."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.testclient import TestClient

from distillguard.enforce.gateway import create_gateway, parse_request
from distillguard.enforce.online import build_enforcer

from .conftest import free_port


def _upstream() -> FastAPI:
    app = FastAPI()

    @app.post("/v1/messages")
    async def messages(request: Request) -> Any:
        body = await request.json()
        if body.get("stream"):

            async def events() -> Any:
                for part in ("Hel", "lo"):
                    yield f"event: content_block_delta\ndata: {json.dumps({'delta': {'text': part}})}\n\n".encode()
                yield b'event: message_delta\ndata: {"usage": {"output_tokens": 42}}\n\n'

            return StreamingResponse(events(), media_type="text/event-stream")
        return JSONResponse(
            {
                "content": [{"type": "text", "text": "hi"}],
                "usage": {"input_tokens": 9, "output_tokens": 5},
            }
        )

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        return JSONResponse(
            {
                "choices": [{"message": {"content": "ok"}}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 7},
            }
        )

    return app


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(_upstream(), host="127.0.0.1", port=port, log_level="error")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=5)


def _log(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (path / "exchanges.jsonl").read_text().splitlines()]


def test_forwards_and_streams_and_logs(
    upstream: str, tmp_path: Path, config: dict[str, Any]
) -> None:
    app = create_gateway(build_enforcer(config), upstream, tmp_path, trust_forwarded_for=True)
    with TestClient(app) as client:
        _forward_checks(client, tmp_path)


def _forward_checks(client: TestClient, tmp_path: Path) -> None:
    headers = {
        "x-api-key": "sk-test-1",
        "user-agent": "anthropic-python/0.40",
        "x-forwarded-for": "203.0.113.5",
    }
    msg = {"model": "claude-x", "max_tokens": 10, "system": "be brief",
           "messages": [{"role": "user", "content": "hello there"}]}  # fmt: skip
    plain = client.post("/v1/messages", json=msg, headers=headers)
    assert plain.status_code == 200 and plain.json()["content"][0]["text"] == "hi"
    with client.stream(
        "POST", "/v1/messages", json={**msg, "stream": True}, headers=headers
    ) as resp:
        chunks = b"".join(resp.iter_raw())
    assert resp.status_code == 200 and b"Hel" in chunks and b"output_tokens" in chunks
    chat = client.post("/v1/chat/completions", headers={"authorization": "Bearer sk-openai"},
                       json={"model": "gpt-x", "user": "end-7", "messages": [{"role": "user", "content": "yo"}]})  # fmt: skip
    assert chat.status_code == 200 and chat.json()["choices"][0]["message"]["content"] == "ok"
    rows = _log(tmp_path)
    assert [r["status"] for r in rows] == [200, 200, 200]
    assert [r["output_tokens"] for r in rows] == [5, 42, 7]
    assert rows[0]["prompt"] == "hello there" and rows[0]["system_prompt_sha256"] is not None
    assert rows[2]["end_user_id"] == "end-7" and rows[0]["account_id"] != rows[2]["account_id"]
    assert rows[0]["client_ip"] == "203.0.113.5" and rows[2]["client_ip"] == "0.0.0.0"
    # The log is a contract log directory: it loads with the project's own reader.
    from distillguard.ingest import load_log

    assert load_log(tmp_path).exchanges.count_rows() == 3


def test_refuses_with_429_and_403(upstream: str, tmp_path: Path, config: dict[str, Any]) -> None:
    config["enforce"]["limits"]["account"]["allow"] = "2/minute"
    enforcer = build_enforcer(config)
    with TestClient(create_gateway(enforcer, upstream, tmp_path)) as client:
        _refusal_checks(client, enforcer, tmp_path)


def _refusal_checks(client: TestClient, enforcer: Any, tmp_path: Path) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "q"}]}
    codes = [
        client.post("/v1/chat/completions", json=body, headers={"authorization": "Bearer k"})
        for _ in range(3)
    ]
    assert [c.status_code for c in codes] == [200, 200, 429]
    assert (
        codes[2].json()["error"]["type"] == "rate_limit_error" and "retry-after" in codes[2].headers
    )
    enforcer.backend.set_action(
        "suspended-acct", 4, None, [{"signal": "analyst", "value": 1, "detail": {}}]
    )
    denied = client.post(
        "/v1/messages",
        json=body,
        headers={"x-api-key": "k2", "x-distillguard-account": "suspended-acct"},
    )
    assert denied.status_code == 403
    assert denied.json() == {"type": "error", "error": {"type": "account_suspended",
                                                        "message": "this account is suspended pending review"}}  # fmt: skip
    enforcer.backend.set_action(
        "chal-acct", 3, None, [{"signal": "analyst", "value": 1, "detail": {}}]
    )
    chal = client.post(
        "/v1/messages",
        json=body,
        headers={"x-api-key": "k3", "x-distillguard-account": "chal-acct"},
    )
    assert chal.status_code == 403 and chal.json()["error"]["type"] == "challenge_required"
    assert [r["status"] for r in _log(tmp_path)] == [200, 200, 429, 403, 403]
    bad = client.post("/v1/messages", content=b"[1,2]", headers={"x-api-key": "k"})
    assert bad.status_code == 400


def test_parse_request_shapes() -> None:
    anthropic = parse_request("/v1/messages", {"model": "c", "thinking": {"type": "enabled"}, "tools": [{}, {}],
                                               "metadata": {"user_id": "u1"},
                                               "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}]},
                                                            {"role": "assistant", "content": "b"},
                                                            {"role": "user", "content": "c"}]})  # fmt: skip
    assert (
        anthropic["prompt"] == "c"
        and anthropic["thinking"] is True
        and anthropic["tools_count"] == 2
    )
    assert anthropic["messages_count"] == 3 and anthropic["end_user_id"] == "u1"
