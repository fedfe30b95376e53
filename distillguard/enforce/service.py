"""The HTTP decision service (FastAPI): check, record, account state, health, Prometheus metrics, OpenAPI.

Requests are authenticated with a bearer key from configuration (constant-time comparison) and
bounded in size before they are read; malformed or oversized requests get a 4xx with a clear
JSON error and never touch the state. ``POST /v1/check`` and ``/v1/record`` are answered by :class:`FastRoutes` (plain
ASGI, msgspec validation with the same constraints as the pydantic models, which remain the
OpenAPI schema); the other routes are FastAPI's. ``distillguard serve`` runs uvicorn with
:class:`FastHttpProtocol`, which calls the same handlers straight from the HTTP parser for the
plain case and hands everything else to ASGI. Content signals (classifier, templates) are computed off
the request path: prompts are queued and folded into the state in micro-batches by a worker
thread, so a check costs a state update and a score, not a model call.
"""

from __future__ import annotations

import asyncio
import hmac
import queue
import re
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Annotated, Any, ClassVar

import msgspec
import polars as pl
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from distillguard.core.verdict import ACTIONS
from distillguard.enforce.online import (
    LATENCY_BUCKETS,
    AccountMeta,
    ContentSignals,
    Enforcer,
    _ts_ms,
    exchange_table,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class AccountIn(BaseModel):
    """Account facts the caller may attach (contract ``accounts`` columns)."""

    model_config = ConfigDict(extra="forbid")
    payment_fingerprint: str | None = Field(None, max_length=256)
    email_domain: str | None = Field(None, max_length=256)
    created_at: int | str | None = None
    verification: str | None = Field(None, pattern="^(none|email|phone|card|kyc)$")


class CheckIn(BaseModel):
    """One exchange as it arrives (contract exchange fields; ``prompt`` optional)."""

    model_config = ConfigDict(extra="forbid")
    request_id: str = Field(..., min_length=1, max_length=256)
    account_id: str = Field(..., min_length=1, max_length=256)
    client_ip: str = Field(..., min_length=2, max_length=64)
    model: str = Field(..., min_length=1, max_length=256)
    ts: int | str | None = Field(None, description="RFC 3339 or epoch ms; default: now")
    prompt: str | None = None
    input_tokens: int = Field(0, ge=0)
    api_key_id: str | None = Field(None, max_length=256)
    end_user_id: str | None = Field(None, max_length=256)
    user_agent: str | None = Field(None, max_length=512)
    system_prompt_sha256: str | None = Field(None, max_length=128)
    messages_count: int | None = Field(None, ge=0)
    tools_count: int | None = Field(None, ge=0)
    thinking: bool | None = None
    account: AccountIn | None = None


class CheckOut(BaseModel):
    """The decision: act on ``action``; do not serve while ``retry_after`` is set."""

    request_id: str
    account_id: str
    action: str = Field(
        ..., description=f"one of {', '.join(ACTIONS)}; challenge = route to step-up verification"
    )
    score: float
    cluster_id: str | None
    reasons: list[dict[str, Any]]
    retry_after: float | None
    limited_by: str | None


class RecordIn(BaseModel):
    """A completed exchange: its token counts (and the prompt if the check did not carry it)."""

    model_config = ConfigDict(extra="forbid")
    request_id: str = Field(..., min_length=1, max_length=256)
    account_id: str = Field(..., min_length=1, max_length=256)
    ts: int | str | None = None
    input_tokens: int | None = Field(None, ge=0)
    output_tokens: int = Field(..., ge=0)
    status: int | None = Field(None, ge=100, le=599)
    latency_ms: int | None = Field(None, ge=0)


class BodyLimit:
    """ASGI middleware: refuse bodies over ``max_bytes`` with 413 before the app reads them."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared < 0 or declared > self.max_bytes:
                    await _too_large(send, self.max_bytes)
                    return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge()
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await _too_large(send, self.max_bytes)


class _TooLarge(Exception):
    pass


async def _too_large(send: Send, max_bytes: int) -> None:
    body = f'{{"error":"request_too_large","detail":"body exceeds {max_bytes} bytes"}}'.encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})


# --------------------------------------------------------------------------- hot path

# The check and record routes are served by a plain ASGI handler with msgspec structs: FastAPI's
# dependency injection and pydantic validation cost ~10x the decision itself. The pydantic models
# above stay the documented schema (OpenAPI); these structs carry the same constraints, and
# ``tests/enforce/test_service.py`` runs every malformed-input case through this path.
_Id = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
_Short = Annotated[str, msgspec.Meta(max_length=256)]
_Count = Annotated[int, msgspec.Meta(ge=0)]


class _AccountMsg(msgspec.Struct, forbid_unknown_fields=True):
    payment_fingerprint: _Short | None = None
    email_domain: _Short | None = None
    created_at: int | str | None = None
    verification: Annotated[str, msgspec.Meta(pattern="^(none|email|phone|card|kyc)$")] | None = (
        None
    )


class _CheckMsg(msgspec.Struct, forbid_unknown_fields=True):
    request_id: _Id
    account_id: _Id
    client_ip: Annotated[str, msgspec.Meta(min_length=2, max_length=64)]
    model: _Id
    ts: int | str | None = None
    prompt: str | None = None
    input_tokens: _Count = 0
    api_key_id: _Short | None = None
    end_user_id: _Short | None = None
    user_agent: Annotated[str, msgspec.Meta(max_length=512)] | None = None
    system_prompt_sha256: Annotated[str, msgspec.Meta(max_length=128)] | None = None
    messages_count: _Count | None = None
    tools_count: _Count | None = None
    thinking: bool | None = None
    account: _AccountMsg | None = None


class _RecordMsg(msgspec.Struct, forbid_unknown_fields=True):
    request_id: _Id
    account_id: _Id
    output_tokens: _Count
    ts: int | str | None = None
    input_tokens: _Count | None = None
    status: Annotated[int, msgspec.Meta(ge=100, le=599)] | None = None
    latency_ms: _Count | None = None


_CHECK_DECODER = msgspec.json.Decoder(_CheckMsg)
_RECORD_DECODER = msgspec.json.Decoder(_RecordMsg)
_ENCODE = msgspec.json.Encoder().encode
_JSON_HEADERS = [(b"content-type", b"application/json")]
_MISSING = re.compile(r"missing required field `([^`]+)`")
_UNKNOWN = re.compile(r"unknown field `([^`]+)`")
_AT = re.compile(r" - at `\$\.?([^`]*)`")


def validation_problem(exc: msgspec.DecodeError) -> dict[str, str]:
    """``{field, message}`` from a msgspec error: the dotted field path (``account.verification``)."""
    message = str(exc)
    at = _AT.search(message)
    path = at.group(1) if at else ""
    named = _MISSING.search(message) or _UNKNOWN.search(message)
    if named:
        path = f"{path}.{named.group(1)}" if path else named.group(1)
    path = re.sub(r"\[(\d+)\]", r".\1", path)
    text = _AT.sub("", message) if at else message
    if not isinstance(exc, msgspec.ValidationError):
        text = f"JSON decode error: {text}"
    return {"field": path, "message": text}


class FastRoutes:
    """ASGI: ``POST /v1/check`` and ``POST /v1/record`` without the framework; everything else to ``app``."""

    def __init__(
        self, app: ASGIApp, enforcer: Enforcer, expected: bytes | None, worker: ContentWorker | None
    ) -> None:
        self.app = app
        self.enforcer = enforcer
        self.expected = expected
        self.worker = worker
        self.max_prompt = enforcer.settings.max_prompt_chars

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            handler = self.route(scope["path"])
            if handler is not None:
                await self._serve(scope, receive, send, handler)
                return
        await self.app(scope, receive, send)

    def route(self, path: str) -> Callable[[bytes], tuple[int, bytes]] | None:
        """The handler of a ``POST`` to ``path`` (None: not one of the fast routes)."""
        if path == "/v1/check":
            return self._check
        if path == "/v1/record":
            return self._record
        return None

    async def _serve(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        handler: Callable[[bytes], tuple[int, bytes]],
    ) -> None:
        if self.expected is not None and not self._authorised(scope):
            self.enforcer.metrics.rejected += 1
            body = b'{"error":"http_error","detail":"missing or wrong bearer key"}'
            await _respond(send, 401, body, [(b"www-authenticate", b"Bearer")])
            return
        chunks = []
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        status, body = handler(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        await _respond(send, status, body)

    def _authorised(self, scope: Scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization":
                return self.authorised(value)
        return self.authorised(None)

    def authorised(self, authorization: bytes | None) -> bool:
        """Whether the first ``Authorization`` header's value carries the key (always, with auth off)."""
        if self.expected is None:
            return True
        if authorization is None:
            return False
        scheme, _, token = authorization.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(token, self.expected)

    def _invalid(self, exc: msgspec.DecodeError) -> tuple[int, bytes]:
        self.enforcer.metrics.rejected += 1
        return 422, _ENCODE({"error": "invalid_request", "detail": [validation_problem(exc)]})

    def _check(self, raw: bytes) -> tuple[int, bytes]:
        try:
            msg = _CHECK_DECODER.decode(raw)
        except msgspec.DecodeError as exc:
            return self._invalid(exc)
        if msg.prompt is not None and len(msg.prompt) > self.max_prompt:
            self.enforcer.metrics.rejected += 1
            return 413, _ENCODE(
                {"error": "http_error", "detail": f"prompt exceeds {self.max_prompt} characters"}
            )
        start = time.perf_counter()
        row = msgspec.structs.asdict(msg)
        account = row.pop("account")
        meta = None
        if account is not None:
            meta = AccountMeta(
                account.payment_fingerprint, account.email_domain,
                _ts_ms(account.created_at) if account.created_at is not None else None, account.verification,
            )  # fmt: skip
        decision = self.enforcer.process([row], [meta])[0]
        if self.worker is not None and msg.prompt:
            self.worker.submit(row, meta)
        _observe_latency(self.enforcer, time.perf_counter() - start)
        return 200, _ENCODE(decision.to_json())

    def _record(self, raw: bytes) -> tuple[int, bytes]:
        try:
            msg = _RECORD_DECODER.decode(raw)
        except msgspec.DecodeError as exc:
            return self._invalid(exc)
        self.enforcer.record(msg.account_id, msg.ts, msg.output_tokens, msg.input_tokens)
        return 200, b'{"ok":true}'


async def _respond(
    send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    headers = [*_JSON_HEADERS, (b"content-length", str(len(body)).encode())]
    if extra:
        headers += extra
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class FastHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol answering the fast routes as soon as a request is parsed.

    Through ASGI every check also paid for a task, a scope, receive and send coroutines, header
    validation and two writes (a few tens of µs of CPU, and a loop iteration of latency). Here
    ``on_message_complete`` calls :class:`FastRoutes`' own handler and writes the response (the
    same bytes ASGI would send) at once, in one write.
    Only the plain case takes this path: ``POST`` to a fast route, authorised, a
    ``Content-Length`` within ``max_body_bytes``, HTTP/1.1 keep-alive, no ``Expect``, nothing in
    flight on the connection, no access log. Everything else (401, 413 before reading, pipelined
    requests behind a slow one, chunked bodies, other routes) goes through ASGI unchanged.
    :func:`http_protocol` binds the class to one app; ``tests/enforce/test_service.py`` checks
    both paths answer byte for byte alike on a real server.
    """

    routes: ClassVar[FastRoutes]
    max_bytes: ClassVar[int]
    answered: ClassVar[int] = 0  # requests answered here, not through ASGI (tests read it)
    _fast: Callable[[bytes], tuple[int, bytes]] | None = None
    _chunks: list[bytes]
    _head_src: object = None
    _head: dict[int, bytes]

    def on_message_begin(self) -> None:
        self._fast = None
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        handler = self._fast_route()
        if handler is None:
            super().on_headers_complete()
            return
        self._fast = handler
        self._chunks = []

    def _fast_route(self) -> Callable[[bytes], tuple[int, bytes]] | None:
        parser = self.parser
        if (
            parser.get_method() != b"POST"
            or self.root_path
            or self.access_log
            or self.expect_100_continue
        ):
            return None
        try:
            path = self.url.decode("ascii")
        except UnicodeDecodeError:
            return None
        handler = self.routes.route(path)
        if handler is None or parser.get_http_version() != "1.1" or not parser.should_keep_alive():
            return None
        cycle = self.cycle
        if (
            (cycle is not None and not cycle.response_complete)
            or self.pipeline
            or self.flow.write_paused
        ):
            return None  # keep responses in request order; let a slow reader apply back-pressure
        if self.limit_concurrency is not None:
            return None
        length = authorization = None
        for name, value in self.headers:
            if name == b"content-length":
                if length is not None:
                    return None
                length = value
            elif name == b"transfer-encoding" or name == b"upgrade":
                return None
            elif name == b"authorization" and authorization is None:
                authorization = value
        if length is None or not length.isdigit() or int(length) > self.max_bytes:
            return None
        if not self.routes.authorised(authorization):
            return None
        return handler

    def on_body(self, body: bytes) -> None:
        if self._fast is not None:
            self._chunks.append(body)
            return
        super().on_body(body)

    def on_message_complete(self) -> None:
        handler = self._fast
        if handler is None:
            super().on_message_complete()
            return
        self._fast = None
        chunks = self._chunks
        try:
            status, body = handler(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        except Exception as exc:
            self.logger.error("Exception in ASGI application\n", exc_info=exc)
            self.transport.write(b"".join([STATUS_LINE[500], self._default_headers(),
                b"content-type: text/plain; charset=utf-8\r\ncontent-length: 21\r\nconnection: close\r\n\r\n",
                b"Internal Server Error"]))  # fmt: skip
            self.transport.close()
            return
        self.transport.write(
            b"".join([self._status_head(status), str(len(body)).encode(), b"\r\n\r\n", body])
        )
        self.server_state.total_requests += 1
        type(self).answered += 1
        self._unset_keepalive_if_required()
        if not self.transport.is_closing():
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

    def _default_headers(self) -> bytes:
        return b"".join(
            b"%s: %s\r\n" % (name.lower(), value)
            for name, value in self.server_state.default_headers
        )

    def _status_head(self, status: int) -> bytes:
        """Status line and headers up to the content length's value, as ASGI's send builds them."""
        # uvicorn replaces the default headers (the date) once a second: the cache follows.
        source = self.server_state.default_headers
        cls = type(self)
        if cls._head_src is not source:
            cls._head_src, cls._head = source, {}
        head = cls._head.get(status)
        if head is None:
            head = cls._head[status] = b"".join(
                [
                    STATUS_LINE[status],
                    self._default_headers(),
                    b"content-type: application/json\r\ncontent-length: ",
                ]
            )
        return head


def http_protocol(app: Any) -> type[asyncio.Protocol] | str:
    """uvicorn's ``http`` setting for ``app``: :class:`FastHttpProtocol` bound to its fast routes, else ``auto``."""
    routes = app.app if isinstance(app, BodyLimit) else None
    if not isinstance(routes, FastRoutes):
        return "auto"
    return type(
        "BoundFastHttpProtocol", (FastHttpProtocol,), {"routes": routes, "max_bytes": app.max_bytes}
    )


class ContentWorker:
    """Folds queued prompts into the state in micro-batches, off the request path."""

    def __init__(
        self,
        enforcer: Enforcer,
        content: ContentSignals,
        max_batch: int = 512,
        interval: float = 0.05,
    ) -> None:
        self.enforcer = enforcer
        self.content = content
        self.max_batch = max_batch
        self.interval = interval
        self.queue: queue.Queue[tuple[dict[str, Any], AccountMeta | None]] = queue.Queue(
            maxsize=100_000
        )
        self.dropped = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="content-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def submit(self, row: dict[str, Any], meta: AccountMeta | None) -> None:
        try:
            self.queue.put_nowait((row, meta))
        except queue.Full:
            self.dropped += 1  # bounded memory beats completeness; counted in /metrics

    def drain(self) -> int:
        """Process everything queued now (tests call this to avoid sleeping)."""
        items: list[tuple[dict[str, Any], AccountMeta | None]] = []
        while len(items) < self.max_batch:
            try:
                items.append(self.queue.get_nowait())
            except queue.Empty:
                break
        if items:
            rows = [r for r, _ in items]
            sig: pl.DataFrame = self.content.compute(exchange_table(rows))
            self.enforcer.fold_content(rows, [m for _, m in items], sig)
        return len(items)

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.drain() == 0:
                self._stop.wait(self.interval)


def _meta(account: AccountIn | None) -> AccountMeta | None:
    if account is None:
        return None
    from distillguard.enforce.online import _ts_ms

    return AccountMeta(
        account.payment_fingerprint,
        account.email_domain,
        _ts_ms(account.created_at) if account.created_at is not None else None,
        account.verification,
    )


def create_app(
    enforcer: Enforcer, *, api_key: str | None, worker: ContentWorker | None = None
) -> Any:
    """The ASGI app (FastAPI wrapped in the body-size limit). ``api_key`` None disables auth."""
    settings = enforcer.settings
    app = FastAPI(
        title="distillguard decision service",
        version="1",
        description="Online enforcement against distillation campaigns (see docs/enforcement.md).",
    )
    expected = api_key.encode() if api_key else None

    async def authorise(request: Request) -> None:
        if expected is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), expected):
            enforcer.metrics.rejected += 1
            raise HTTPException(
                401, detail="missing or wrong bearer key", headers={"WWW-Authenticate": "Bearer"}
            )

    @app.exception_handler(HTTPException)
    async def _http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(
            {"error": "http_error", "detail": exc.detail},
            status_code=exc.status_code,
            headers=exc.headers,
        )

    from fastapi.exceptions import RequestValidationError

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        enforcer.metrics.rejected += 1
        problems = [
            {
                "field": ".".join(str(p) for p in e.get("loc", ()) if p != "body"),
                "message": e.get("msg"),
            }
            for e in exc.errors()
        ]
        return JSONResponse({"error": "invalid_request", "detail": problems}, status_code=422)

    # Documentation and fallback: FastRoutes answers these two paths before FastAPI sees them.
    @app.post("/v1/check", response_model=CheckOut, dependencies=[Depends(authorise)])
    async def check(body: CheckIn) -> dict[str, Any]:
        if body.prompt is not None and len(body.prompt) > settings.max_prompt_chars:
            enforcer.metrics.rejected += 1
            raise HTTPException(
                413, detail=f"prompt exceeds {settings.max_prompt_chars} characters"
            )
        start = time.perf_counter()
        row = body.model_dump(exclude={"account"})
        meta = _meta(body.account)
        decision = enforcer.process([row], [meta])[0]
        if worker is not None and body.prompt:
            worker.submit(row, meta)
        _observe_latency(enforcer, time.perf_counter() - start)
        return decision.to_json()

    @app.post("/v1/record", dependencies=[Depends(authorise)])
    async def record(body: RecordIn) -> dict[str, Any]:
        enforcer.record(body.account_id, body.ts, body.output_tokens, body.input_tokens)
        return {"ok": True}

    @app.get("/v1/accounts/{account_id}", dependencies=[Depends(authorise)])
    def account(account_id: str) -> dict[str, Any]:
        view = enforcer.account(account_id)
        if view is None:
            raise HTTPException(404, detail=f"no state for account {account_id!r}")
        out = view.to_json()
        out["action"] = ACTIONS[view.action_rank]
        return out

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        ok = enforcer.backend.ping()
        return {"status": "ok" if ok else "degraded", "backend": enforcer.backend.name, "backend_ok": ok,
                "fail_mode": settings.fail_mode}  # fmt: skip

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics() -> str:
        return render_metrics(enforcer, worker)

    return BodyLimit(FastRoutes(app, enforcer, expected, worker), settings.max_body_bytes)


def _observe_latency(enforcer: Enforcer, seconds: float) -> None:
    m = enforcer.metrics
    m.latency_sum += seconds
    for i, bound in enumerate(LATENCY_BUCKETS):
        if seconds <= bound:
            m.latency_buckets[i] += 1
            break


def render_metrics(enforcer: Enforcer, worker: ContentWorker | None = None) -> str:
    """Prometheus text exposition format (version 0.0.4)."""
    m = enforcer.metrics
    lines = [
        "# HELP distillguard_checks_total Exchanges checked.",
        "# TYPE distillguard_checks_total counter",
        f"distillguard_checks_total {m.checks}",
        "# HELP distillguard_records_total Completed exchanges recorded.",
        "# TYPE distillguard_records_total counter",
        f"distillguard_records_total {m.records}",
        "# HELP distillguard_decisions_total Checks by resulting action.",
        "# TYPE distillguard_decisions_total counter",
    ]
    lines += [
        f'distillguard_decisions_total{{action="{a}"}} {m.decisions.get(a, 0)}' for a in ACTIONS
    ]
    lines += ["# HELP distillguard_limited_total Checks refused by a rate limit, by scope.",
              "# TYPE distillguard_limited_total counter"]  # fmt: skip
    lines += [
        f'distillguard_limited_total{{scope="{s}"}} {n}' for s, n in sorted(m.limited.items())
    ]
    lines += [
        "# HELP distillguard_state_errors_total Failures reaching the shared state store.",
        "# TYPE distillguard_state_errors_total counter",
        f"distillguard_state_errors_total {m.state_errors}",
        "# HELP distillguard_degraded_checks_total Checks decided on local state (store down, fail open).",
        "# TYPE distillguard_degraded_checks_total counter",
        f"distillguard_degraded_checks_total {m.degraded_checks}",
        "# HELP distillguard_rejected_requests_total Requests refused as unauthorised, malformed or too large.",
        "# TYPE distillguard_rejected_requests_total counter",
        f"distillguard_rejected_requests_total {m.rejected}",
        "# HELP distillguard_content_queue Prompts waiting for content signals.",
        "# TYPE distillguard_content_queue gauge",
        f"distillguard_content_queue {worker.queue.qsize() if worker else 0}",
        "# HELP distillguard_check_seconds Time spent deciding a check.",
        "# TYPE distillguard_check_seconds histogram",
    ]
    cumulative = 0
    for bound, count in zip(LATENCY_BUCKETS, m.latency_buckets, strict=True):
        cumulative += count
        le = "+Inf" if bound == float("inf") else repr(bound)
        lines.append(f'distillguard_check_seconds_bucket{{le="{le}"}} {cumulative}')
    lines += [
        f"distillguard_check_seconds_sum {m.latency_sum:.6f}",
        f"distillguard_check_seconds_count {cumulative}",
    ]
    size = (enforcer.backend if enforcer.backend.name == "memory" else enforcer.local).size()
    lines += ["# HELP distillguard_local_accounts Accounts held in process memory.",
              "# TYPE distillguard_local_accounts gauge", f"distillguard_local_accounts {size['accounts']}"]  # fmt: skip
    return "\n".join(lines) + "\n"
