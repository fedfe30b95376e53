"""Harvested campaign indicators → a validated STIX 2.1 bundle (Campaign, Indicators, keyed custom objects).

What goes out (documented in docs/sharing.md):

* ``identity`` of the producer (``created_by_ref`` of everything) and a fixed ``extension-definition``
  that declares the two distillguard object types;
* ``campaign`` per campaign at or above the confidence floor: time span, targeted capabilities,
  volumes and confidence — never account ids (its name is derived from its keyed STIX id);
* ``indicator`` with a STIX pattern per shared proxy prefix, ASN and user agent;
* ``x-distillguard-keyed-identifier``: HMAC-SHA256 digests (under the sharing-group key) of
  client IPs, payment fingerprints and e-mail (domains), one object per (kind, campaigns);
* ``x-distillguard-template-sketch``: one per representative scaffold, with its parameters;
* ``relationship`` ``indicates`` (indicator → campaign) / ``related-to`` (custom → campaign);
* a TLP marking on every object, ``confidence`` 0–100, ``valid_from``/``valid_until``.

Ids are UUIDs drawn from an HMAC under the group key, so they are stable for equal content (a
re-export updates rather than duplicates) and reveal nothing; ``created``/``modified`` are the
data's latest event time unless given, so equal inputs give byte-identical bundles.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import polars as pl
import stix2
from stix2 import CustomObject, properties
from stix2validator import ValidationOptions, validate_instance

from distillguard.core.errors import ConfigError, DistillguardError
from distillguard.core.indicators import GroupKey
from distillguard.share.harvest import Harvest, ShareOptions

EXTENSION_ID: Final = "extension-definition--d8a44aff-e0c6-434f-bfd0-7a72ceba3000"
DISTILLGUARD_IDENTITY: Final = "identity--2194d254-b90d-4973-abd0-909f6f67e492"
SKETCH_TYPE: Final = "x-distillguard-template-sketch"
KEYED_TYPE: Final = "x-distillguard-keyed-identifier"
HMAC_ALGORITHM: Final = "hmac-sha256"
EXTENSION_SCHEMA: Final = (
    "distillguard sharing extension 1.0 (docs/sharing.md in the distillguard repository). "
    f"{SKETCH_TYPE}: algorithm, seed, num_perm, bands, shingle, head_words, tail_words, band_keys "
    "(bands x 16 hex digits: LSH band hashes of a slot-masked prompt scaffold's MinHash; compare "
    f"only under equal parameters; any equal band = same template). {KEYED_TYPE}: identifier_type "
    "(ip | payment | email | email_domain), algorithm hmac-sha256, key_id (first 16 hex of "
    "SHA-256('distillguard-key-id' 0x00 key)), digests (hex HMAC-SHA256(key, type 0x00 normalised "
    "value)); only holders of the sharing-group key can match them."
)

TLP: Final[dict[str, stix2.MarkingDefinition]] = {
    "clear": stix2.TLP_WHITE,
    "white": stix2.TLP_WHITE,
    "green": stix2.TLP_GREEN,
    "amber": stix2.TLP_AMBER,
    "red": stix2.TLP_RED,
}
TLP_BY_ID: Final[dict[str, str]] = {m.id: name for name, m in TLP.items() if name != "white"}

_COMMON = [
    ("name", properties.StringProperty(required=True)),
    ("description", properties.StringProperty()),
    ("valid_from", properties.TimestampProperty(required=True)),
    ("valid_until", properties.TimestampProperty()),
]


@CustomObject(
    SKETCH_TYPE,
    [
        *_COMMON,
        ("algorithm", properties.StringProperty(required=True)),
        ("seed", properties.IntegerProperty(required=True, min=0)),
        ("num_perm", properties.IntegerProperty(required=True, min=1)),
        ("bands", properties.IntegerProperty(required=True, min=1)),
        ("shingle", properties.IntegerProperty(required=True, min=1)),
        ("head_words", properties.IntegerProperty(required=True, min=1)),
        ("tail_words", properties.IntegerProperty(required=True, min=0)),
        ("band_keys", properties.ListProperty(properties.StringProperty, required=True)),
        ("member_accounts", properties.IntegerProperty(min=0)),
    ],
    extension_name=EXTENSION_ID,
)
class TemplateSketchObject:
    """STIX form of :class:`distillguard.share.sketch.TemplateSketch`."""


@CustomObject(
    KEYED_TYPE,
    [
        *_COMMON,
        (
            "identifier_type",
            properties.EnumProperty(["ip", "payment", "email", "email_domain"], required=True),
        ),
        ("algorithm", properties.StringProperty(required=True)),
        ("key_id", properties.StringProperty(required=True)),
        ("digests", properties.ListProperty(properties.StringProperty, required=True)),
    ],
)
class KeyedIdentifierObject:
    """Keyed HMAC digests of identifiers: matchable by the group, readable by nobody."""


def _make(cls: Any, **kwargs: Any) -> Any:
    """Instantiate a stix2 custom class (the decorator builds ``__init__``, which mypy cannot see)."""
    return cls(**kwargs)


def _sid(key: GroupKey, stix_type: str, *parts: str) -> str:
    mac = hmac.new(
        key.secret,
        ("stix-id\x00" + stix_type + "\x00" + "\x00".join(parts)).encode(),
        hashlib.sha256,
    )
    return f"{stix_type}--{uuid.UUID(bytes=mac.digest()[:16], version=4)}"


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def pattern_for(kind: str, value: str) -> str:
    """The STIX pattern of one plain indicator value."""
    if kind == "ip_prefix":
        net = ipaddress.ip_network(value, strict=False)
        return f"[{'ipv4' if net.version == 4 else 'ipv6'}-addr:value ISSUBSET {_quote(str(net))}]"
    if kind == "asn":
        return f"[autonomous-system:number = {int(value)}]"
    if kind == "user_agent":
        return f"[network-traffic:extensions.'http-request-ext'.request_header.'User-Agent' = {_quote(value)}]"
    raise ConfigError(f"no STIX pattern for indicator kind {kind!r}")


_KIND_TEXT = {"ip_prefix": "network prefix", "asn": "autonomous system", "user_agent": "user agent"}


def _validity(
    first: datetime | None, last: datetime | None, created: datetime, days: int
) -> tuple[datetime, datetime]:
    start = first or created
    end = (last or start) + timedelta(days=days)
    return start, max(end, start + timedelta(seconds=1))


def build_bundle(
    harvest: Harvest,
    key: GroupKey,
    *,
    producer: str,
    options: ShareOptions | None = None,
    tlp: str = "amber",
    created: datetime | None = None,
) -> dict[str, Any]:
    """The STIX 2.1 bundle (as a JSON-ready dict) for a harvest; validated before it is returned."""
    opts = options or ShareOptions()
    if tlp not in TLP:
        raise ConfigError(f"unknown TLP {tlp!r}; choose one of {sorted(TLP)}")
    marking = TLP[tlp]
    ends = [c.last_ts for c in harvest.campaigns if c.last_ts is not None]
    now = created or (max(ends) if ends else datetime(1970, 1, 1, tzinfo=UTC))
    common: dict[str, Any] = {"created": now, "modified": now, "object_marking_refs": [marking.id]}
    ident = stix2.Identity(
        id=_sid(key, "identity", "producer", producer), name=producer, identity_class="organization",
        description="Provider sharing distillation-campaign indicators (distillguard).", **common,
    )  # fmt: skip
    common["created_by_ref"] = ident.id
    ext = stix2.ExtensionDefinition(
        id=EXTENSION_ID, created_by_ref=DISTILLGUARD_IDENTITY, name="distillguard sharing objects",
        description="Custom objects for sharing distillation-campaign indicators without customer data.",
        schema=EXTENSION_SCHEMA, version="1.0.0", extension_types=["new-sdo"],
        created="2026-11-01T00:00:00Z", modified="2026-11-01T00:00:00Z",
    )  # fmt: skip
    objects: list[Any] = [ident, marking, ext]
    camp_ids: dict[str, str] = {}
    conf: dict[str, int] = {}
    for c in harvest.campaigns:
        sid = _sid(key, "campaign", c.id)
        camp_ids[c.id] = sid
        conf[c.id] = round(100 * c.confidence)
        caps = ", ".join(c.capability_targets) or "unknown"
        objects.append(
            stix2.Campaign(
                id=sid, name=f"distillation campaign {sid[-12:]}",
                description=(f"Linked accounts harvesting model capabilities ({caps}): {c.n_accounts} accounts"
                             + (f", {c.n_exchanges} exchanges" if c.n_exchanges is not None else "") + "."),
                first_seen=c.first_ts, last_seen=c.last_ts, objective=f"distil model capabilities: {caps}",
                confidence=conf[c.id], **common,
            )
        )  # fmt: skip

    def confidence_of(cids: Iterable[str]) -> int:
        return max((conf[c] for c in cids if c in conf), default=0)

    def relate(src: str, rel: str, cids: Iterable[str]) -> None:
        for cid in cids:
            if cid in camp_ids:
                objects.append(
                    stix2.Relationship(
                        id=_sid(key, "relationship", src, rel, camp_ids[cid]), source_ref=src,
                        relationship_type=rel, target_ref=camp_ids[cid], allow_custom=True, **common,
                    )
                )  # fmt: skip

    values = harvest.values
    if values.height:
        plain = values.filter(pl.col("kind").is_in(list(_KIND_TEXT)))
        for r in plain.sort(["kind", "value"]).iter_rows(named=True):
            kind, value, cids = r["kind"], r["value"], list(r["campaign_ids"])
            start, end = _validity(r["first_ts"], r["last_ts"], now, opts.ttl_days.get(kind, 30))
            sid = _sid(key, "indicator", kind, value)
            objects.append(
                stix2.Indicator(
                    id=sid, name=f"{_KIND_TEXT[kind]} used by a distillation campaign",
                    description=(f"Used by {r['member_accounts']} linked accounts of the campaign and by "
                                 f"{r['benign_accounts']} other accounts."),
                    indicator_types=["malicious-activity"], pattern=pattern_for(kind, value), pattern_type="stix",
                    valid_from=start, valid_until=end, confidence=confidence_of(cids), **common,
                )
            )  # fmt: skip
            relate(sid, "indicates", cids)
        keyed = values.filter(~pl.col("kind").is_in(list(_KIND_TEXT)))
        groups = keyed.with_columns(cids=pl.col("campaign_ids").list.join(",")).group_by(["kind", "cids"]).agg(
            value=pl.col("value"), first_ts=pl.col("first_ts").min(), last_ts=pl.col("last_ts").max()
        ).sort(["kind", "cids"])  # fmt: skip
        for r in groups.iter_rows(named=True):
            kind, cids = r["kind"], r["cids"].split(",")
            digests = sorted(key.digests(kind, r["value"]))
            start, end = _validity(r["first_ts"], r["last_ts"], now, opts.ttl_days.get(kind, 30))
            sid = _sid(key, KEYED_TYPE, kind, r["cids"])
            objects.append(
                _make(
                    KeyedIdentifierObject,
                    id=sid, name=f"keyed {kind} identifiers of a distillation campaign",
                    description="HMAC-SHA256 digests under the sharing-group key; see the extension definition.",
                    identifier_type=kind, algorithm=HMAC_ALGORITHM, key_id=key.key_id, digests=digests,
                    valid_from=start, valid_until=end, confidence=confidence_of(cids),
                    # One extension definition declares both types; stix2 registers it only once.
                    extensions={EXTENSION_ID: {"extension_type": "new-sdo"}}, **common,
                )
            )  # fmt: skip
            relate(sid, "related-to", cids)
    for s in harvest.sketches:
        p = s.sketch.params
        hexkeys = s.sketch.hex_keys()
        sid = _sid(key, SKETCH_TYPE, *hexkeys)
        start, end = _validity(s.first_ts, s.last_ts, now, opts.ttl_days.get("template", 90))
        objects.append(
            _make(
                TemplateSketchObject,
                id=sid, name="prompt-template sketch of a distillation campaign",
                description=f"Scaffold used by {s.member_accounts} linked accounts ({s.member_exchanges} exchanges).",
                algorithm=p.algorithm, seed=p.seed, num_perm=p.num_perm, bands=p.bands, shingle=p.shingle,
                head_words=p.head_words, tail_words=p.tail_words, band_keys=hexkeys,
                member_accounts=s.member_accounts, valid_from=start, valid_until=end,
                confidence=confidence_of(s.campaign_ids), **common,
            )
        )  # fmt: skip
        relate(sid, "related-to", s.campaign_ids)
    ids = sorted(str(o.id) for o in objects)
    bundle = stix2.Bundle(objects=objects, id=_sid(key, "bundle", *ids), allow_custom=True)
    doc: dict[str, Any] = json.loads(bundle.serialize())
    check_valid(doc, "exported bundle")
    return doc


def validation_messages(doc: dict[str, Any]) -> tuple[list[str], list[str]]:
    """stix2-validator's errors and warnings for one bundle (non-strict: custom x- content allowed)."""
    result = validate_instance(doc, ValidationOptions(version="2.1", strict=False))
    return [str(e) for e in result.errors or []], [str(w) for w in result.warnings or []]


def check_valid(doc: dict[str, Any], what: str) -> None:
    errors, _ = validation_messages(doc)
    if errors:
        raise DistillguardError(f"{what} failed STIX 2.1 validation: " + "; ".join(errors[:10]))


def dumps(doc: dict[str, Any]) -> str:
    """Stable JSON text of a bundle."""
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
