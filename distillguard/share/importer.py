"""Peers' STIX 2.1 bundles → checked rows of the indicator store, with provenance; bad bundles are rejected whole.

Checks, in order, each failing with a :class:`~distillguard.core.errors.InvalidInputError` that
names the file (or TAXII collection), the object's position and the property:

1. size: more than ``max_bytes`` bytes or ``max_objects`` objects is refused before parsing further;
2. JSON, and a ``bundle`` with an ``objects`` list;
3. stix2-validator (STIX 2.1, custom ``x-`` content allowed);
4. distillguard's own rules: every object names its producer (``created_by_ref`` to an identity in
   the bundle) — provenance is not optional; sketches carry valid parameters and ``bands`` band
   keys; keyed identifiers are HMAC-SHA256 hex digests with a ``key_id``.

Indicators whose pattern is not one distillguard can match (anything but a prefix ``ISSUBSET``,
an AS number or a User-Agent equality) are counted and skipped, not errors: peers may share more.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from distillguard.core.errors import ConfigError, InvalidInputError, Problem
from distillguard.core.indicators import INDICATOR_STORE_SCHEMA, GroupKey
from distillguard.share.sketch import SketchParams, TemplateSketch
from distillguard.share.stix import (
    HMAC_ALGORITHM,
    KEYED_TYPE,
    SKETCH_TYPE,
    TLP_BY_ID,
    validation_messages,
)

_PREFIX = re.compile(r"^\[ipv[46]-addr:value ISSUBSET '([0-9a-fA-F:.]+/\d+)'\]$")
_ASN = re.compile(r"^\[autonomous-system:number = (\d+)\]$")
_UA = re.compile(
    r"^\[network-traffic:extensions\.'http-request-ext'\.request_header\.'User-Agent' = '((?:[^'\\]|\\.)*)'\]$"
)
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_OBJECTIVE = "distil model capabilities: "
DEFAULT_CONFIDENCE = 50  # a peer that states no confidence is taken as "unknown"


@dataclass(frozen=True)
class ImportLimits:
    """Refuse bundles larger than this before doing any expensive work."""

    max_bytes: int = 16 * 1024 * 1024
    max_objects: int = 50_000


@dataclass(frozen=True)
class ImportResult:
    """Store rows from one bundle and what was skipped (by reason)."""

    rows: pa.Table
    skipped: dict[str, int]
    peers: tuple[str, ...]
    bundle_sha256: str


def read_bundle_bytes(path: Path, limits: ImportLimits) -> bytes:
    """The file's bytes, refusing oversized files before reading them."""
    try:
        size = path.stat().st_size
        if size > limits.max_bytes:
            raise InvalidInputError(
                [Problem(str(path), None, None,
                         f"bundle is {size} bytes, above the import limit of {limits.max_bytes} bytes")]
            )  # fmt: skip
        return path.read_bytes()
    except OSError as exc:
        raise InvalidInputError(
            [Problem(str(path), None, None, f"cannot read: {exc.strerror}")]
        ) from exc


def _ts(value: Any) -> datetime | None:
    if value is None:
        return None
    ts = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def parse_bundle(data: bytes, source: str, limits: ImportLimits | None = None) -> dict[str, Any]:
    """Bytes → a STIX 2.1 bundle dict that passed size, JSON, shape and stix2-validator checks."""
    lim = limits or ImportLimits()
    if len(data) > lim.max_bytes:
        raise InvalidInputError(
            [
                Problem(
                    source,
                    None,
                    None,
                    f"bundle is {len(data)} bytes, above the import limit of {lim.max_bytes} bytes",
                )
            ]
        )
    try:
        doc = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise InvalidInputError(
            [Problem(source, None, None, f"not UTF-8 text: {exc.reason} at byte {exc.start}")]
        ) from exc
    except json.JSONDecodeError as exc:
        raise InvalidInputError(
            [
                Problem(
                    source,
                    exc.lineno,
                    None,
                    f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})",
                )
            ]
        ) from exc
    if (
        not isinstance(doc, dict)
        or doc.get("type") != "bundle"
        or not isinstance(doc.get("objects"), list)
    ):
        raise InvalidInputError(
            [
                Problem(
                    source,
                    None,
                    "type",
                    'expected a STIX bundle: {"type": "bundle", "objects": [...]}',
                )
            ]
        )
    objs = doc["objects"]
    if len(objs) > lim.max_objects:
        raise InvalidInputError(
            [
                Problem(
                    source,
                    None,
                    "objects",
                    f"bundle has {len(objs)} objects, above the import limit of {lim.max_objects}",
                )
            ]
        )
    bad_shape = [
        i
        for i, o in enumerate(objs, start=1)
        if not isinstance(o, dict) or not isinstance(o.get("id"), str)
    ]
    if bad_shape:
        raise InvalidInputError(
            [
                Problem(source, i, "id", "object is not a JSON object with a string id")
                for i in bad_shape[:20]
            ]
        )
    errors, _ = validation_messages(doc)
    if errors:
        position = {o["id"]: i for i, o in enumerate(objs, start=1)}
        problems = []
        for e in errors:
            oid, _, msg = e.partition(": ")
            prop = re.match(r"^'?([a-z_][a-z0-9_]*)'?[: ]", msg)
            problems.append(
                Problem(
                    source,
                    position.get(oid),
                    prop.group(1) if prop else None,
                    f"STIX 2.1: {msg or e}",
                )
            )
        raise InvalidInputError(problems)
    return doc


def bundle_rows(
    doc: dict[str, Any],
    *,
    source: str,
    bundle_sha256: str,
    imported_at: datetime,
    key: GroupKey | None = None,
) -> ImportResult:
    """A validated bundle → indicator-store rows (see :mod:`distillguard.core.indicators`)."""
    objs: list[dict[str, Any]] = doc["objects"]
    identities = {o["id"]: str(o.get("name", "")) for o in objs if o.get("type") == "identity"}
    campaigns = {o["id"]: o for o in objs if o.get("type") == "campaign"}
    targets: dict[str, list[str]] = {}
    for o in objs:
        if o.get("type") == "relationship" and o.get("target_ref") in campaigns:
            targets.setdefault(str(o.get("source_ref")), []).append(str(o["target_ref"]))
    rows: dict[str, list[Any]] = {f.name: [] for f in INDICATOR_STORE_SCHEMA}
    problems: list[Problem] = []
    skipped: Counter[str] = Counter()
    peers: set[str] = set()

    def add(o: dict[str, Any], kind: str, value: str, band_keys: list[str] | None = None,
            params: str | None = None, key_id: str | None = None) -> None:  # fmt: skip
        cids = sorted(set(targets.get(o["id"], [])))
        caps = sorted({c for cid in cids for c in _capabilities(campaigns[cid])})
        tlp = next((TLP_BY_ID[m] for m in o.get("object_marking_refs", []) if m in TLP_BY_ID), None)
        values = {
            "indicator_id": o["id"], "kind": kind, "value": value, "band_keys": band_keys, "params": params,
            "key_id": key_id, "confidence": int(o.get("confidence", DEFAULT_CONFIDENCE)),
            "valid_from": _ts(o.get("valid_from") or o.get("created")), "valid_until": _ts(o.get("valid_until")),
            "campaign_ids": cids, "capability_targets": caps, "peer": identities[o["created_by_ref"]],
            "peer_identity": o["created_by_ref"], "tlp": tlp, "produced_at": _ts(o.get("modified") or o.get("created")),
            "source": source, "imported_at": imported_at, "bundle_sha256": bundle_sha256,
        }  # fmt: skip
        for name, v in values.items():
            rows[name].append(v)
        peers.add(identities[o["created_by_ref"]])

    for pos, o in enumerate(objs, start=1):
        t = o.get("type")
        if t not in ("indicator", SKETCH_TYPE, KEYED_TYPE):
            continue
        if o.get("created_by_ref") not in identities:
            problems.append(Problem(source, pos, "created_by_ref",
                                    "must name an identity object in the bundle: provenance (which peer) is required"))  # fmt: skip
            continue
        if t == "indicator":
            pattern = str(o.get("pattern", ""))
            if o.get("pattern_type") != "stix":
                skipped["unsupported_pattern"] += 1
            elif m := _PREFIX.match(pattern):
                add(o, "ip_prefix", m.group(1))
            elif m := _ASN.match(pattern):
                add(o, "asn", m.group(1))
            elif m := _UA.match(pattern):
                add(o, "user_agent", re.sub(r"\\(.)", r"\1", m.group(1)))
            else:
                skipped["unsupported_pattern"] += 1
        elif t == KEYED_TYPE:
            if o.get("algorithm") != HMAC_ALGORITHM:
                problems.append(
                    Problem(
                        source,
                        pos,
                        "algorithm",
                        f"must be {HMAC_ALGORITHM!r}, got {o.get('algorithm')!r}",
                    )
                )
                continue
            digests = o.get("digests")
            if not isinstance(digests, list) or not all(
                isinstance(d, str) and _HEX64.match(d) for d in digests
            ):
                problems.append(
                    Problem(
                        source,
                        pos,
                        "digests",
                        "must be a list of 64 lowercase hex digits (HMAC-SHA256)",
                    )
                )
                continue
            key_id = str(o.get("key_id", ""))
            if key is not None and key_id != key.key_id:
                skipped["other_group_key"] += len(digests)
            for d in digests:
                add(o, str(o["identifier_type"]), d, key_id=key_id)
        else:
            try:
                params = SketchParams.from_mapping(o)
                sketch = TemplateSketch.from_hex(params, o.get("band_keys"))  # type: ignore[arg-type]
            except (ConfigError, TypeError) as exc:
                problems.append(
                    Problem(source, pos, "band_keys" if "band" in str(exc) else "params", str(exc))
                )
                continue
            add(o, "template", "", band_keys=sketch.hex_keys(), params=params.id)
    if problems:
        raise InvalidInputError(problems)
    table = pa.table(rows, schema=INDICATOR_STORE_SCHEMA)
    return ImportResult(table, dict(skipped), tuple(sorted(peers)), bundle_sha256)


def _capabilities(campaign: dict[str, Any]) -> list[str]:
    objective = str(campaign.get("objective", ""))
    if objective.startswith(_OBJECTIVE):
        return [
            c.strip()
            for c in objective[len(_OBJECTIVE) :].split(",")
            if c.strip() and c.strip() != "unknown"
        ]
    return []


def import_bytes(
    data: bytes,
    source: str,
    *,
    limits: ImportLimits | None = None,
    key: GroupKey | None = None,
    imported_at: datetime | None = None,
) -> ImportResult:
    """Validate one bundle's bytes and turn it into store rows."""
    doc = parse_bundle(data, source, limits)
    return bundle_rows(
        doc, source=source, bundle_sha256=hashlib.sha256(data).hexdigest(),
        imported_at=imported_at or datetime.now(UTC), key=key,
    )  # fmt: skip
