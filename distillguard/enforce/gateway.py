"""Gateway mode: a reverse proxy in front of an Anthropic- or OpenAI-compatible API that checks every request.

``POST /v1/messages`` (Anthropic Messages) and ``POST /v1/chat/completions`` (OpenAI Chat
Completions) are parsed into contract exchange fields and checked with the :class:`Enforcer`;
what is allowed is forwarded unchanged (streamed responses are passed through chunk by chunk),
the rest is answered with 429 (rate limit, ``Retry-After``) or 403 (``challenge_required`` /
``account_suspended``) and a JSON error in the API's own error shape. Every exchange — served
or refused — is appended to ``LOGDIR/exchanges.jsonl`` in the data contract. Other paths are
forwarded unchecked.

The account is taken from the ``x-distillguard-account`` header when a trusted front sets it,
otherwise from the API key (its SHA-256 prefix), which is also the ``api_key_id``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from distillguard.core.verdict import Action
from distillguard.enforce.online import Enforcer
from distillguard.enforce.service import BodyLimit, ContentWorker

_HOP = {"host", "content-length", "connection", "keep-alive", "transfer-encoding", "te", "trailer",
        "upgrade", "proxy-authorization", "proxy-connection", "accept-encoding"}  # fmt: skip
_USAGE_OUT = re.compile(rb'"(?:output_tokens|completion_tokens)"\s*:\s*(\d+)')
_USAGE_IN = re.compile(rb'"(?:input_tokens|prompt_tokens)"\s*:\s*(\d+)')


def _text(content: Any) -> str:
    """Text of a message's content: a string, or the text blocks of a list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            b.get("text", "")
            for b in content
            if isinstance(b, dict) and b.get("type") in ("text", "input_text")
        )
    return ""


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def parse_request(path: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """Contract exchange fields from a Messages or Chat Completions request body."""
    raw_messages = body.get("messages")
    messages: list[Any] = raw_messages if isinstance(raw_messages, list) else []
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    prompt = _text(users[-1].get("content")) if users else ""
    system: str | None = None
    end_user: str | None = None
    thinking: bool | None = None
    if path.endswith("/messages"):
        sys_field = body.get("system")
        system = _text(sys_field) if sys_field else None
        meta = body.get("metadata")
        end_user = (
            str(meta.get("user_id")) if isinstance(meta, dict) and meta.get("user_id") else None
        )
        thinking = (
            isinstance(body.get("thinking"), dict) and body["thinking"].get("type") == "enabled"
        )
    else:
        sys_msgs = [
            m for m in messages if isinstance(m, dict) and m.get("role") in ("system", "developer")
        ]
        system = _text(sys_msgs[0].get("content")) if sys_msgs else None
        end_user = str(body["user"]) if body.get("user") else None
        thinking = bool(body.get("reasoning_effort")) or None
    tools = body.get("tools")
    return {
        "model": str(body.get("model") or ""),
        "prompt": prompt,
        "messages_count": len(messages),
        "tools_count": len(tools) if isinstance(tools, list) else 0,
        "thinking": thinking,
        "end_user_id": end_user,
        "system_prompt_sha256": _sha(system) if system else None,
        # Rough estimate until the upstream reports usage: about four characters per token.
        "input_tokens": max(
            1,
            sum(len(_text(m.get("content"))) if isinstance(m, dict) else 0 for m in messages) // 4,
        ),
    }


class ExchangeLog:
    """Appends contract exchange lines to ``LOGDIR/exchanges.jsonl`` (one ``write`` per line, O_APPEND)."""

    def __init__(self, logdir: Path) -> None:
        logdir.mkdir(parents=True, exist_ok=True)
        self.path = logdir / "exchanges.jsonl"
        self._lock = threading.Lock()

    def append(self, row: Mapping[str, Any]) -> None:
        line = (json.dumps(row, sort_keys=True, separators=(",", ":")) + "\n").encode()
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)


def _error(
    path: str, status: int, kind: str, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    if path.endswith("/messages"):
        body: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": message}}
    else:
        body = {"error": {"type": kind, "code": kind, "message": message}}
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


def create_gateway(
    enforcer: Enforcer,
    upstream: str,
    logdir: Path,
    *,
    trust_forwarded_for: bool = False,
    timeout: float = 300.0,
    worker: ContentWorker | None = None,
) -> Any:
    """The gateway ASGI app forwarding to ``upstream`` (e.g. ``https://api.anthropic.com``)."""
    app = FastAPI(title="distillguard gateway", version="1")
    log = ExchangeLog(logdir)
    clients: dict[str, httpx.AsyncClient] = {}

    async def _open() -> None:
        # Created on the server's own event loop (startup), closed at shutdown.
        clients["upstream"] = httpx.AsyncClient(base_url=upstream.rstrip("/"), timeout=timeout)

    async def _close() -> None:
        await clients.pop("upstream").aclose()

    app.router.on_startup.append(_open)
    app.router.on_shutdown.append(_close)

    def identity(request: Request) -> tuple[str, str | None, str]:
        key = (
            request.headers.get("x-api-key")
            or request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        )
        key_id = _sha(key)[:16] if key else None
        account = request.headers.get("x-distillguard-account") or (
            f"key-{key_id}" if key_id else "anonymous"
        )
        ip = request.client.host if request.client else "0.0.0.0"
        if trust_forwarded_for and request.headers.get("x-forwarded-for"):
            ip = request.headers["x-forwarded-for"].split(",")[0].strip()
        try:
            ip = str(ipaddress.ip_address(ip))
        except ValueError:
            ip = "0.0.0.0"  # the contract needs an address; a peer without one is logged as unspecified
        return account, key_id, ip

    async def forward(request: Request, body: bytes, on_done: Any = None) -> Response:
        client = clients["upstream"]
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() not in _HOP and not k.lower().startswith("x-distillguard")
        }
        upstream_req = client.build_request(
            request.method,
            request.url.path,
            params=request.query_params,
            headers=headers,
            content=body,
        )
        resp = await client.send(upstream_req, stream=True)
        out_headers = {
            k: v
            for k, v in resp.headers.items()
            if k.lower() not in _HOP and k.lower() != "content-encoding"
        }

        async def relay() -> AsyncIterator[bytes]:
            tail = b""
            try:
                async for chunk in resp.aiter_raw():
                    tail = (tail + chunk)[-8192:]
                    yield chunk
            finally:
                await resp.aclose()
                if on_done is not None:
                    on_done(resp.status_code, tail)

        return StreamingResponse(relay(), status_code=resp.status_code, headers=out_headers)

    async def checked(request: Request) -> Response:
        path = request.url.path
        start = time.perf_counter()
        raw = await request.body()
        try:
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise ValueError("body must be a JSON object")
        except ValueError as exc:
            return _error(
                path, 400, "invalid_request_error", f"request body is not a JSON object: {exc}"
            )
        account, key_id, ip = identity(request)
        row = {
            "ts": int(time.time() * 1000),
            "request_id": request.headers.get("x-request-id") or f"dg-{uuid.uuid4().hex}",
            "account_id": account,
            "client_ip": ip,
            "api_key_id": key_id,
            "user_agent": request.headers.get("user-agent"),
            "output_tokens": 0,
            **parse_request(path, body),
        }
        decision = enforcer.process([row])[0]
        if worker is not None and row["prompt"]:
            worker.submit(dict(row), None)

        def done(status: int, tail: bytes) -> None:
            out = _USAGE_OUT.findall(tail)
            inp = _USAGE_IN.findall(tail)
            row["output_tokens"] = int(out[-1]) if out else 0
            if inp:
                row["input_tokens"] = int(inp[-1])
            row["status"] = status
            row["latency_ms"] = int((time.perf_counter() - start) * 1000)
            log.append(row)
            enforcer.record(account, row["ts"], row["output_tokens"])

        if decision.retry_after is not None:
            done(429, b"")
            return _error(path, 429, "rate_limit_error",
                          f"rate limit ({decision.limited_by}); retry after {decision.retry_after:.0f} s",
                          {"retry-after": str(int(decision.retry_after))})  # fmt: skip
        if decision.action is Action.CHALLENGE:
            done(403, b"")
            return _error(path, 403, "challenge_required",
                          "additional verification is required for this account before further requests",
                          {"x-distillguard-action": "challenge"})  # fmt: skip
        if decision.action is Action.SUSPEND:
            done(403, b"")
            return _error(path, 403, "account_suspended", "this account is suspended pending review",
                          {"x-distillguard-action": "suspend"})  # fmt: skip
        return await forward(request, raw, done)

    @app.post("/v1/messages")
    async def messages(request: Request) -> Response:
        return await checked(request)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        return await checked(request)

    @app.api_route("/{rest:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
    async def passthrough(request: Request, rest: str) -> Response:
        return await forward(request, await request.body())

    return BodyLimit(app, max(enforcer.settings.max_body_bytes, 4 * 1024 * 1024))
