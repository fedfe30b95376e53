"""The report in a real headless Chromium (DevTools protocol on loopback): no console errors, key elements, a screenshot."""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from distillguard.evidence.report import build_report

from .test_report import sample_data

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
websockets_sync = pytest.importorskip(
    "websockets.sync.client", reason="websockets (dev extra) not installed"
)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium not installed (run scripts/install_system_deps.sh)"
)
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--hide-scrollbars", "--remote-debugging-address=127.0.0.1",
         "--remote-debugging-port=0")  # fmt: skip


class Page:
    """One tab driven over the DevTools protocol; collects console errors and requested URLs."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.errors: list[str] = []
        self.urls: list[str] = []
        self.events: list[str] = []

    def _event(self, msg: dict[str, Any]) -> None:
        method, params = msg.get("method", ""), msg.get("params", {})
        self.events.append(method)
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            self.errors.append(json.dumps(params.get("args"))[:300])
        elif method == "Runtime.exceptionThrown":
            self.errors.append(json.dumps(params.get("exceptionDetails"))[:300])
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            self.errors.append(params["entry"].get("text", ""))
        elif method == "Network.requestWillBeSent":
            self.urls.append(params["request"]["url"])

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        ident = next(self.ids)
        self.ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=30))
            if msg.get("id") == ident:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                result: dict[str, Any] = msg.get("result", {})
                return result
            self._event(msg)

    def wait_for(self, event: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while event not in self.events:
            msg = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            self._event(msg)

    def drain(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                self._event(json.loads(self.ws.recv(timeout=left)))
            except TimeoutError:
                return

    def js(self, expression: str) -> Any:
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)[
            "result"
        ].get("value")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Page]:
    profile = tmp_path / "profile"
    proc = subprocess.Popen([str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if time.monotonic() > deadline or proc.poll() is not None:
                pytest.fail("chromium did not open its DevTools port")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
        url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
        with websockets_sync.connect(url, max_size=64 * 1024 * 1024) as ws:
            page = Page(ws)
            for domain in ("Page", "Runtime", "Log", "Network"):
                page.call(f"{domain}.enable")
            page.call(
                "Emulation.setDeviceMetricsOverride",
                width=1400,
                height=3000,
                deviceScaleFactor=1,
                mobile=False,
            )
            yield page
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _open(page: Page, path: Path) -> None:
    page.call("Page.navigate", url=path.as_uri())
    page.wait_for("Page.loadEventFired")
    page.drain(0.5)  # late console messages (CSP reports arrive after load)


def test_report_opens_without_console_errors(browser: Page, tmp_path: Path) -> None:
    report = tmp_path / "report.html"
    build_report(sample_data(), report)
    _open(browser, report)
    assert browser.errors == []
    assert all(u.startswith(("file:", "data:", "about:")) for u in browser.urls), browser.urls
    counts = browser.js(
        "JSON.stringify(['#campaigns-table tbody tr', 'section.campaign', '.volume-plot svg', '.graph-plot svg',"
        "'.kinds-plot svg', '.caps-plot svg', '.case-root code.root', '#persona-table tr'].map("
        "s => document.querySelectorAll(s).length))"
    )
    assert json.loads(counts) == [1, 1, 1, 1, 1, 1, 1, 3]
    # Plots are drawn, not empty boxes: the graph has rendered size.
    width = browser.js("document.querySelector('.graph-plot svg').getBoundingClientRect().width")
    assert width > 200
    shot = browser.call("Page.captureScreenshot", format="png", captureBeyondViewport=False)
    png = base64.b64decode(shot["data"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    (tmp_path / "report.png").write_bytes(png)


def test_console_error_detection_works(browser: Page, tmp_path: Path) -> None:
    # A page that breaks the report's own rules: a remote image (blocked by its CSP) and a script error.
    report = tmp_path / "report.html"
    build_report(sample_data(), report)
    html = report.read_text().replace("<main>", "<main><img src='http://127.0.0.1:9/x.png'>", 1)
    bad = tmp_path / "bad.html"
    bad.write_text(html)
    _open(browser, bad)
    assert any("Content Security Policy" in e or "Refused" in e for e in browser.errors), (
        browser.errors
    )
