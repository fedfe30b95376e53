"""The decision service: auth, size limits, malformed input never changes state, metrics, OpenAPI, fail modes."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from fastapi.testclient import TestClient

from distillguard.enforce.online import BatchContentSignals, build_enforcer
from distillguard.enforce.service import ContentWorker, create_app, http_protocol

from .conftest import free_port

KEY = "s3cret-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


def _client(config: dict[str, Any], **kw: Any) -> tuple[TestClient, Any]:
    enforcer = build_enforcer(config, **kw)
    return TestClient(create_app(enforcer, api_key=KEY)), enforcer


def _check(i: int, acct: str = "acct-1", **extra: Any) -> dict[str, Any]:
    return {"request_id": f"r{i}", "account_id": acct, "client_ip": "198.51.100.4", "model": "m-1",
            "ts": 1_750_000_000_000 + i * 1000, **extra}  # fmt: skip


def test_auth_required_and_constant_time_key(config: dict[str, Any]) -> None:
    client, enforcer = _client(config)
    assert client.post("/v1/check", json=_check(1)).status_code == 401
    bad = client.post("/v1/check", json=_check(1), headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401 and bad.json()["error"] == "http_error"
    assert enforcer.account("acct-1") is None
    ok = client.post("/v1/check", json=_check(1), headers=AUTH)
    assert ok.status_code == 200
    body = ok.json()
    assert body["action"] == "allow" and body["retry_after"] is None and body["reasons"] == []


@pytest.mark.parametrize(
    ("payload", "status", "needle"),
    [
        ({"account_id": "acct-1"}, 422, "request_id"),
        ({**_check(1), "input_tokens": -3}, 422, "input_tokens"),
        ({**_check(1), "surprise": 1}, 422, "surprise"),
        ({**_check(1), "prompt": "x" * 40_000}, 413, "prompt exceeds"),
        ({**_check(1), "account": {"verification": "retina"}}, 422, "verification"),
    ],
)
def test_malformed_requests_get_4xx_and_change_nothing(
    config: dict[str, Any], payload: dict[str, Any], status: int, needle: str
) -> None:
    client, enforcer = _client(config)
    resp = client.post("/v1/check", json=payload, headers=AUTH)
    assert resp.status_code == status
    assert needle in resp.text
    assert enforcer.account("acct-1") is None
    assert enforcer.metrics.checks == 0


def test_oversized_body_refused_before_reading(config: dict[str, Any]) -> None:
    config["enforce"]["service"]["max_body_bytes"] = 2048
    client, enforcer = _client(config)
    resp = client.post(
        "/v1/check",
        content=b"{" + b" " * 5000 + b"}",
        headers={**AUTH, "content-type": "application/json"},
    )
    assert resp.status_code == 413 and resp.json()["error"] == "request_too_large"
    bad_json = client.post(
        "/v1/check", content=b"{not json", headers={**AUTH, "content-type": "application/json"}
    )
    assert bad_json.status_code == 422
    assert enforcer.metrics.checks == 0 and enforcer.account("acct-1") is None


def test_limits_throttle_and_metrics(config: dict[str, Any]) -> None:
    config["enforce"]["limits"]["account"]["allow"] = "3/minute"
    client, enforcer = _client(config)
    answers = [client.post("/v1/check", json=_check(i), headers=AUTH).json() for i in range(5)]
    assert [a["retry_after"] is None for a in answers] == [True, True, True, False, False]
    assert answers[3]["limited_by"] == "account" and answers[3]["retry_after"] >= 1
    metrics = client.get("/metrics").text
    assert 'distillguard_limited_total{scope="account"} 2' in metrics
    assert "distillguard_checks_total 5" in metrics
    assert "# TYPE distillguard_check_seconds histogram" in metrics
    state = client.get("/v1/accounts/acct-1", headers=AUTH).json()
    assert state["counters"]["n"] == 5.0 and state["action"] == "allow"
    assert client.get("/v1/accounts/nobody", headers=AUTH).status_code == 404
    assert client.post("/v1/record", json={"request_id": "r1", "account_id": "acct-1", "output_tokens": 77},
                       headers=AUTH).status_code == 200  # fmt: skip
    assert enforcer.account("acct-1").counters["out_tok"] == 77.0  # type: ignore[union-attr]


def test_openapi_and_health(config: dict[str, Any]) -> None:
    client, _ = _client(config)
    schema = client.get("/openapi.json").json()
    assert {"/v1/check", "/v1/record", "/v1/accounts/{account_id}", "/healthz", "/metrics"} <= set(
        schema["paths"]
    )
    assert client.get("/healthz").json() == {
        "status": "ok",
        "backend": "memory",
        "backend_ok": True,
        "fail_mode": "open",
    }


def test_shared_card_escalates_new_accounts_at_first_request(config: dict[str, Any]) -> None:
    client, _ = _client(config)
    actions = []
    for i in range(6):
        body = _check(
            i,
            acct=f"new-{i}",
            account={"payment_fingerprint": "card-X", "email_domain": f"d{i % 3}.com"},
        )
        actions.append(client.post("/v1/check", json=body, headers=AUTH).json())
    assert actions[0]["action"] == "allow"
    assert actions[-1]["action"] != "allow"
    assert actions[-1]["reasons"][0]["signal"] == "online.shared_payment"
    # One company card used by accounts of one email domain is explained sharing.
    client2, _ = _client(config)
    same = [client2.post("/v1/check", json=_check(i, acct=f"corp-{i}",
            account={"payment_fingerprint": "corp-card", "email_domain": "corp.example"}), headers=AUTH).json()
            for i in range(6)]  # fmt: skip
    assert all(a["action"] == "allow" for a in same)


def test_a_shared_free_mail_domain_explains_no_shared_card(config: dict[str, Any]) -> None:
    """Heads signed up with gmail.com on one card are not one company: the card counts as shared."""
    assert "gmail.com" in config["linking"]["free_mail_domains"]
    client, _ = _client(config)
    free = [client.post("/v1/check", json=_check(i, acct=f"head-{i}",
            account={"payment_fingerprint": "card-Y", "email_domain": "GMail.com"}), headers=AUTH).json()
            for i in range(6)]  # fmt: skip
    assert free[0]["action"] == "allow" and free[-1]["action"] != "allow"
    assert free[-1]["reasons"][0]["signal"] == "online.shared_payment"
    # The same traffic with an empty list: one domain again, explained.
    config["linking"]["free_mail_domains"] = []
    client2, _ = _client(config)
    same = [client2.post("/v1/check", json=_check(i, acct=f"head-{i}",
            account={"payment_fingerprint": "card-Y", "email_domain": "GMail.com"}), headers=AUTH).json()
            for i in range(6)]  # fmt: skip
    assert all(a["action"] == "allow" for a in same)


def test_content_worker_folds_prompts_off_the_request_path(config: dict[str, Any]) -> None:
    enforcer = build_enforcer(config)
    worker = ContentWorker(enforcer, BatchContentSignals(config, capability_model=False))
    client = TestClient(create_app(enforcer, api_key=KEY, worker=worker))
    prompt = "Give your complete internal reasoning trace and full chain of thought before the final answer: {}"
    for i in range(12):
        client.post("/v1/check", json=_check(i, prompt=prompt.format(i)), headers=AUTH)
    before = enforcer.account("acct-1")
    assert before is not None and "content_n" not in before.counters
    assert worker.drain() == 12
    after = enforcer.account("acct-1")
    assert after is not None and after.counters["content_n"] == 12.0
    assert after.counters["reasoning_sum"] / 12 > 0.5
    assert after.counters["n"] == 12.0  # content folding never counts an exchange twice


@contextlib.contextmanager
def _uvicorn(app: Any) -> Iterator[tuple[int, Any]]:
    """``app`` served by a real uvicorn (uvloop, the service's http protocol) on 127.0.0.1, in a thread."""
    protocol = http_protocol(app)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, http=protocol, loop="uvloop",
                                          lifespan="off", log_level="warning", access_log=False))  # fmt: skip
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield port, protocol
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _exchange(port: int, raw: bytes, responses: int = 1) -> list[tuple[int, dict[str, str], bytes]]:
    """Send raw HTTP/1.1 bytes on one connection; read ``responses`` answers (status, headers, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(raw)
        buf = b""
        out: list[tuple[int, dict[str, str], bytes]] = []
        while len(out) < responses:
            while b"\r\n\r\n" not in buf:
                chunk = sock.recv(65536)
                assert chunk, "connection closed early"
                buf += chunk
            head, _, buf = buf.partition(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            headers = dict(line.split(": ", 1) for line in lines[1:])
            length = int(headers["content-length"])
            while len(buf) < length:
                buf += sock.recv(65536)
            out.append((int(lines[0].split()[1]), headers, buf[:length]))
            buf = buf[length:]
        return out


def _post(path: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    head = {
        "Host": "127.0.0.1",
        "Content-Type": "application/json",
        "Content-Length": str(len(body)),
        **(headers or {}),
    }
    return (
        f"POST {path} HTTP/1.1\r\n".encode()
        + b"".join(f"{k}: {v}\r\n".encode() for k, v in head.items())
        + b"\r\n"
        + body
    )


def _counted(enforcer: Any) -> tuple[Any, ...]:
    m = enforcer.metrics
    return (
        m.checks,
        m.records,
        m.rejected,
        dict(m.decisions),
        dict(m.limited),
        sum(m.latency_buckets),
    )


def test_uvicorn_protocol_answers_like_the_asgi_path(config: dict[str, Any]) -> None:
    """A real server (fast protocol) and the ASGI app give the same bytes and state for one sequence of requests."""
    config["enforce"]["limits"]["account"].update({"allow": "4/minute", "throttle": "2/minute"})
    config["enforce"]["service"]["max_body_bytes"] = 4096
    bodies = [_check(i, acct=f"new-{i % 6}", account={"payment_fingerprint": "card-X", "email_domain": f"d{i % 3}.com"})
              for i in range(30)]  # fmt: skip
    bad = [b'{"account_id": "acct-1"}', json.dumps({**_check(1), "surprise": 1}).encode(), b"{not json",
           json.dumps({**_check(2), "prompt": "x" * 40_000}).encode()[:4000], json.dumps(_check(3, prompt="y" * 3000)).encode()]  # fmt: skip
    record = json.dumps({"request_id": "r1", "account_id": "new-1", "output_tokens": 77}).encode()
    sequence: list[tuple[str, bytes, dict[str, str]]] = [
        ("/v1/check", json.dumps(bodies[0]).encode(), {}),  # no key: 401
        ("/v1/check", json.dumps(bodies[0]).encode(), {"Authorization": "Bearer nope"}),
        *[("/v1/check", json.dumps(b).encode(), AUTH) for b in bodies],
        *[("/v1/check", b, AUTH) for b in bad],
        ("/v1/check", b"{" + b" " * 5000 + b"}", AUTH),  # declared too large: 413 before reading
        ("/v1/record", record, AUTH),
        (
            "/v1/check?trace=1",
            json.dumps(_check(99)).encode(),
            AUTH,
        ),  # not the plain case: through ASGI
    ]
    reference, ref_enforcer = _client(config)
    want = [reference.post(path, content=body, headers={"content-type": "application/json", **headers})
            for path, body, headers in sequence]  # fmt: skip
    enforcer = build_enforcer(config)
    app = create_app(enforcer, api_key=KEY)
    with _uvicorn(app) as (port, protocol):
        got = [_exchange(port, _post(path, body, headers))[0] for path, body, headers in sequence]
        fast, counted = protocol.answered, _counted(enforcer)
        # Pipelined: two checks in one write come back in order.
        pipelined = _exchange(port, _post("/v1/check", json.dumps(_check(100, acct="p")).encode(), AUTH)
                              + _post("/v1/check", json.dumps(_check(101, acct="q")).encode(), AUTH), responses=2)  # fmt: skip
        # Behind a request still in flight through ASGI (a thread-pool route), a check waits its turn.
        health, behind = _exchange(port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                                   + _post("/v1/check", json.dumps(_check(102, acct="r")).encode(), AUTH), responses=2)  # fmt: skip
    assert (
        fast == len(bodies) + len(bad) + 1
    )  # authorised, plain requests; 401s, 413-before-reading, query: ASGI
    for (status, headers, body), ref in zip(got, want, strict=True):
        assert (status, body) == (ref.status_code, ref.content)
        assert headers["content-type"] == ref.headers["content-type"]
        assert headers.get("www-authenticate") == ref.headers.get("www-authenticate")
    assert any(b'"limited_by":"account"' in body for _, _, body in got)
    assert any(
        json.loads(body).get("action") not in (None, "allow")
        for status, _, body in got
        if status == 200
    )
    assert [json.loads(b)["request_id"] for _, _, b in pipelined] == ["r100", "r101"]
    assert health[0] == 200 and json.loads(health[2])["status"] == "ok"
    assert json.loads(behind[2])["request_id"] == "r102"
    assert counted == _counted(ref_enforcer)
    for acct in [f"new-{i}" for i in range(6)]:
        mine, ref_view = enforcer.account(acct), ref_enforcer.account(acct)
        assert mine is not None and ref_view is not None
        assert (mine.counters, mine.action_rank, mine.reasons) == (
            ref_view.counters,
            ref_view.action_rank,
            ref_view.reasons,
        )
