"""Fixtures for share tests: two synthetic providers, a group key, and a real medallion TAXII server on loopback."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from distillguard.core.indicators import GroupKey

from .synth import ProviderLog, write_campaigns, write_provider

COLLECTION_ID = str(uuid.UUID("4c5d5f2e-7a1b-4c3d-9e8f-0a1b2c3d4e5f"))
USERS = {"lab-a": "secret-a", "lab-b": "secret-b"}


@pytest.fixture(scope="session")
def provider_a(tmp_path_factory: pytest.TempPathFactory) -> tuple[ProviderLog, Path]:
    root = tmp_path_factory.mktemp("provider-a")
    log = write_provider(root, name="a", seed=1)
    return log, write_campaigns(root / "results", log).parent


@pytest.fixture(scope="session")
def group_key() -> GroupKey:
    return GroupKey(bytes(range(32)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Taxii:
    """A running medallion server."""

    base: str
    collection_url: str


@pytest.fixture(scope="session")
def taxii_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Taxii]:
    root = tmp_path_factory.mktemp("medallion")
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    data = {
        "/discovery": {"title": "test", "default": f"{base}/share/", "api_roots": [f"{base}/share/"]},
        "share": {
            "information": {"title": "share", "versions": ["application/taxii+json;version=2.1"],
                            "max_content_length": 50_000_000},
            "status": [],
            "collections": [
                {"id": COLLECTION_ID, "title": "distillation indicators", "can_read": True, "can_write": True,
                 "media_types": ["application/stix+json;version=2.1"], "objects": [], "manifest": []}
            ],
        },
    }  # fmt: skip
    (root / "data.json").write_text(json.dumps(data), encoding="utf-8")
    config = {
        "backend": {"module": "medallion.backends.memory_backend", "module_class": "MemoryBackend",
                    "filename": str(root / "data.json")},
        "users": USERS,
        "taxii": {"max_page_size": 100},
    }  # fmt: skip
    (root / "config.json").write_text(json.dumps(config), encoding="utf-8")
    proc = subprocess.Popen(
        [sys.executable, "-m", "medallion.scripts.run", "--host", "127.0.0.1", "--port", str(port),
         str(root / "config.json")],
        stdout=subprocess.DEVNULL, stderr=(root / "medallion.log").open("w"),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                r = requests.get(
                    f"{base}/taxii2/",
                    auth=("lab-a", "secret-a"),
                    headers={"Accept": "application/taxii+json;version=2.1"},
                    timeout=1,
                )
                if r.status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    "medallion did not start: " + (root / "medallion.log").read_text()
                )
            time.sleep(0.1)
        yield Taxii(base, f"{base}/share/collections/{COLLECTION_ID}/")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
