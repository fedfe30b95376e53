"""TAXII 2.1 transport: publish a bundle's objects to a collection and poll a collection back, with basic auth.

``url`` is always the collection's URL (``https://host/api-root/collections/<id>/``). Every
transport failure becomes a :class:`~distillguard.core.errors.DistillguardError` naming the URL and
what the server said; credentials never appear in messages.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import requests
from taxii2client.exceptions import TAXIIServiceException
from taxii2client.v21 import Collection, as_pages

from distillguard.core.errors import DistillguardError


@dataclass(frozen=True)
class TaxiiTarget:
    """A TAXII 2.1 collection and the credentials to reach it."""

    url: str
    user: str | None = None
    password: str | None = None

    def collection(self) -> Collection:
        try:
            return Collection(self.url, user=self.user, password=self.password)
        except (requests.RequestException, TAXIIServiceException, ValueError) as exc:
            raise _error(self.url, exc) from exc


def _error(url: str, exc: Exception) -> DistillguardError:
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        code = exc.response.status_code
        if code in (401, 403):
            return DistillguardError(f"TAXII server at {url} refused the credentials (HTTP {code})")
        return DistillguardError(
            f"TAXII server at {url} answered HTTP {code}: {exc.response.text[:200]}"
        )
    if isinstance(exc, requests.ConnectionError):
        return DistillguardError(f"cannot reach TAXII server at {url}: connection failed")
    return DistillguardError(f"TAXII request to {url} failed: {exc}")


@dataclass(frozen=True)
class PublishStatus:
    """The server's account of one publication."""

    status: str
    success_count: int
    failure_count: int
    pending_count: int


def publish(doc: dict[str, Any], target: TaxiiTarget, timeout: int = 30) -> PublishStatus:
    """POST the bundle's objects as one TAXII envelope and wait for the status to complete."""
    coll = target.collection()
    try:
        if not coll.can_write:
            raise DistillguardError(f"TAXII collection {target.url} is not writable for this user")
        # The extension definition is fixed and documented, so peers need not fetch it; medallion
        # 3.0 also misreads its ``version`` property as a timestamp and then fails every poll.
        objects = [o for o in doc["objects"] if o.get("type") != "extension-definition"]
        status = coll.add_objects(
            json.dumps({"objects": objects}), timeout=timeout, poll_interval=1
        )
    except (requests.RequestException, TAXIIServiceException) as exc:
        raise _error(target.url, exc) from exc
    return PublishStatus(str(status.status), int(status.success_count), int(status.failure_count),
                         int(status.pending_count))  # fmt: skip


def poll(target: TaxiiTarget, added_after: datetime | None = None, per_request: int = 100) -> bytes:
    """Every object in the collection (optionally only those added after a time) as one bundle's bytes."""
    coll = target.collection()
    kwargs: dict[str, Any] = {}
    if added_after is not None:
        kwargs["added_after"] = added_after.isoformat().replace("+00:00", "Z")
    objects: list[dict[str, Any]] = []
    try:
        if not coll.can_read:
            raise DistillguardError(f"TAXII collection {target.url} is not readable for this user")
        for page in as_pages(coll.get_objects, per_request=per_request, **kwargs):
            objects.extend(page.get("objects", []))
    except (requests.RequestException, TAXIIServiceException) as exc:
        raise _error(target.url, exc) from exc
    objects.sort(key=lambda o: (str(o.get("id")), str(o.get("modified", ""))))
    # A collection is not a bundle; wrap it so polled and file imports share one validation path.
    doc = {
        "type": "bundle",
        "id": "bundle--00000000-0000-4000-8000-000000000000",
        "objects": objects,
    }
    return json.dumps(doc, sort_keys=True).encode("utf-8")
