"""Harvested campaign indicators → MISP event JSON (one event per campaign), the second export format.

The same harvest as the STIX export (:mod:`distillguard.share.harvest`), so the same privacy rule
holds: only values the campaign's members used and benign accounts did not; identifiers only as
keyed HMAC digests; template sketches only as band hashes. Per campaign, one ``MISPEvent``:

* ``info`` = the STIX campaign's name and objective; ``uuid`` = the STIX campaign id's UUID, so a
  consumer can tie both formats' views of one campaign together; ``date`` = first activity;
* ``threat_level_id`` and ``analysis`` from the campaign confidence; a ``tlp:*`` tag matching the
  STIX marking; ``distribution`` from the TLP (red: your organisation, amber: this community,
  green: connected communities, clear: all) — every attribute and object inherits it;
* attributes ``ip-dst`` (a CIDR prefix), ``AS``, ``user-agent``, with first/last use and a comment
  that carries the counts, confidence and the STIX export's ``valid_until``;
* objects ``distillguard-keyed-identifier`` (``hex`` digests) and ``distillguard-template-sketch``
  (parameters + ``hex`` band keys). Their templates are not in MISP's registry, so every digest or
  band key also carries, in its comment, the group key id or the sketch parameters it needs.

UUIDs come from an HMAC under the group key (stable for equal content, reveal nothing); the file
is ``{"response": [{"Event": …}, …]}`` — the envelope MISP's own REST search returns.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import polars as pl
from pymisp import MISPEvent, MISPObject, MISPOrganisation

from distillguard.core.atomic import write_text_atomic
from distillguard.core.errors import ConfigError
from distillguard.core.indicators import GroupKey
from distillguard.ingest import load_log
from distillguard.share.harvest import Campaign, Harvest, ShareOptions, harvest, read_campaigns
from distillguard.share.stix import HMAC_ALGORITHM, TLP, _sid, _validity

KEYED_OBJECT: Final = "distillguard-keyed-identifier"
SKETCH_OBJECT: Final = "distillguard-template-sketch"
# Fixed template ids, so MISP groups every export's custom objects under one template each.
KEYED_TEMPLATE_UUID: Final = "3c0f2a55-6c47-4f7e-9d5e-5a1d2f0b7a01"
SKETCH_TEMPLATE_UUID: Final = "3c0f2a55-6c47-4f7e-9d5e-5a1d2f0b7a02"
TEMPLATE_VERSION: Final = 1

# MISP: 0 your organisation only, 1 this community only, 2 connected communities, 3 all communities.
DISTRIBUTION_BY_TLP: Final[dict[str, int]] = {
    "red": 0,
    "amber": 1,
    "green": 2,
    "clear": 3,
    "white": 3,
}
_PLAIN: Final[dict[str, tuple[str, str, bool]]] = {
    # kind → (MISP type, what it is, to_ids): an ASN alone is too broad to alert on.
    "ip_prefix": ("ip-dst", "network prefix", True),
    "asn": ("AS", "autonomous system", False),
    "user_agent": ("user-agent", "user agent", True),
}


def threat_level(confidence: float) -> int:
    """MISP ``threat_level_id`` (1 high, 2 medium, 3 low) for a campaign confidence in [0, 1]."""
    return 1 if confidence >= 0.9 else 2 if confidence >= 0.7 else 3


def analysis_state(confidence: float) -> int:
    """MISP ``analysis`` (1 ongoing, 2 completed): a campaign below 0.9 still wants an analyst's look."""
    return 2 if confidence >= 0.9 else 1


def confidence_tag(confidence: float) -> str:
    """The MISP ``estimative-language`` taxonomy tag for a confidence in [0, 1]."""
    level = "high" if confidence >= 0.9 else "moderate" if confidence >= 0.7 else "low"
    return f'estimative-language:confidence-in-analytic-judgment="{level}"'


def _uuid(key: GroupKey, *parts: str) -> str:
    mac = hmac.new(key.secret, ("misp-uuid\x00" + "\x00".join(parts)).encode(), hashlib.sha256)
    return str(uuid.UUID(bytes=mac.digest()[:16], version=4))


def _day(ts: datetime | None) -> str:
    return ts.astimezone(UTC).date().isoformat() if ts is not None else "unknown"


def _custom_object(
    name: str, template_uuid: str, meta: str, description: str, object_uuid: str
) -> MISPObject:
    obj = MISPObject(name, strict=False, standalone=False)
    obj.uuid = object_uuid
    obj.template_uuid = template_uuid
    obj.template_version = TEMPLATE_VERSION
    obj["meta-category"] = meta
    obj.description = description
    obj.distribution = 5  # inherit the event's
    return obj


def _put(obj: MISPObject, relation: str, value: str, mtype: str, **kwargs: Any) -> None:
    """Add an object attribute whose UUID follows from its object's and its content (pymisp would draw one)."""
    mac = hashlib.sha256(
        "\x00".join(("misp-object-attribute", str(obj.uuid), relation, value)).encode()
    )
    obj.add_attribute(relation, value=value, type=mtype, category="Other",
                      uuid=str(uuid.UUID(bytes=mac.digest()[:16], version=4)), **kwargs)  # fmt: skip


def _event(
    c: Campaign,
    h: Harvest,
    key: GroupKey,
    *,
    producer: str,
    tlp: str,
    now: datetime,
    opts: ShareOptions,
) -> MISPEvent:
    stix_id = _sid(key, "campaign", c.id)
    caps = ", ".join(c.capability_targets) or "unknown"
    conf = round(100 * c.confidence)
    ev = MISPEvent()
    ev.uuid = stix_id.split("--", 1)[1]
    ev.info = f"distillation campaign {stix_id[-12:]}: distil model capabilities: {caps}"
    ev.date = (c.first_ts or now).astimezone(UTC).date()
    ev.threat_level_id = threat_level(c.confidence)
    ev.analysis = analysis_state(c.confidence)
    ev.distribution = DISTRIBUTION_BY_TLP[tlp]
    ev.published = False  # the receiving analyst decides
    org = MISPOrganisation()
    org.name = producer
    ev.Orgc = org
    ev.add_tag(f"tlp:{tlp}")
    ev.add_tag(confidence_tag(c.confidence))
    ev.add_attribute(
        "text",
        f"Linked accounts harvesting model capabilities ({caps}): {c.n_accounts} accounts"
        + (f", {c.n_exchanges} exchanges" if c.n_exchanges is not None else "")
        + f"; confidence {conf}/100; STIX campaign {stix_id}.",
        category="Other", comment="campaign summary (distillguard)", to_ids=False, disable_correlation=True,
        uuid=_uuid(key, "summary", c.id), distribution=5,
    )  # fmt: skip

    values = h.values
    mine = values.filter(pl.col("campaign_ids").list.contains(c.id)) if values.height else values
    if mine.height:
        for r in (
            mine.filter(pl.col("kind").is_in(list(_PLAIN)))
            .sort(["kind", "value"])
            .iter_rows(named=True)
        ):
            kind, value = r["kind"], r["value"]
            mtype, what, to_ids = _PLAIN[kind]
            _, until = _validity(r["first_ts"], r["last_ts"], now, opts.ttl_days.get(kind, 30))
            extra: dict[str, Any] = {}
            if r["first_ts"] is not None and r["last_ts"] is not None:
                extra = {"first_seen": r["first_ts"], "last_seen": r["last_ts"]}
            ev.add_attribute(
                mtype, str(int(value)) if kind == "asn" else value, category="Network activity", to_ids=to_ids,
                comment=(f"{what} used by {r['member_accounts']} linked accounts of the campaign and by "
                         f"{r['benign_accounts']} other accounts; confidence {conf}; valid until {_day(until)}"),
                uuid=_uuid(key, "attribute", c.id, kind, value), distribution=5, **extra,
            )  # fmt: skip
        keyed = mine.filter(~pl.col("kind").is_in(list(_PLAIN)))
        for kind in sorted(set(keyed["kind"].to_list())):
            rows = keyed.filter(pl.col("kind") == kind)
            digests = sorted(key.digests(kind, rows["value"]))
            first, last = rows["first_ts"].min(), rows["last_ts"].max()
            _, until = _validity(
                first if isinstance(first, datetime) else None, last if isinstance(last, datetime) else None,
                now, opts.ttl_days.get(kind, 30),
            )  # fmt: skip
            obj = _custom_object(
                KEYED_OBJECT, KEYED_TEMPLATE_UUID, "network" if kind == "ip" else "misc",
                f"Keyed {kind} identifiers of a distillation campaign: {HMAC_ALGORITHM} digests under a "
                "sharing-group key; only members of the group can match them (docs/sharing.md).",
                _uuid(key, "object", KEYED_OBJECT, c.id, kind),
            )  # fmt: skip
            common = {"disable_correlation": True, "to_ids": False}
            _put(obj, "identifier-type", kind, "text", **common)
            _put(obj, "algorithm", HMAC_ALGORITHM, "text", **common)
            _put(obj, "key-id", key.key_id, "text", **common)
            _put(obj, "valid-until", _day(until), "text", **common)
            note = (f"{HMAC_ALGORITHM}(group key {key.key_id}, '{kind}' 0x00 normalised value); "
                    f"confidence {conf}; valid until {_day(until)}")  # fmt: skip
            for d in digests:
                # Equal digests from two providers in one MISP instance correlate: that is the match.
                # Not to_ids: no IDS can look for an HMAC on the wire.
                _put(obj, "digest", d, "hex", to_ids=False, comment=note)
            ev.add_object(obj)
    for s in h.sketches:
        if c.id not in s.campaign_ids:
            continue
        p = s.sketch.params
        hexkeys = s.sketch.hex_keys()
        _, until = _validity(s.first_ts, s.last_ts, now, opts.ttl_days.get("template", 90))
        params = (f"algorithm={p.algorithm} seed={p.seed} num_perm={p.num_perm} bands={p.bands} "
                  f"shingle={p.shingle} head_words={p.head_words} tail_words={p.tail_words}")  # fmt: skip
        obj = _custom_object(
            SKETCH_OBJECT, SKETCH_TEMPLATE_UUID, "misc",
            "Prompt-template sketch of a distillation campaign: LSH band hashes of a slot-masked scaffold's "
            "MinHash; compare only under equal parameters; any equal band = same template (docs/sharing.md).",
            _uuid(key, "object", SKETCH_OBJECT, c.id, *hexkeys),
        )  # fmt: skip
        common = {"disable_correlation": True, "to_ids": False}
        _put(obj, "algorithm", p.algorithm, "text", **common)
        for name, number in (("seed", p.seed), ("num-perm", p.num_perm), ("bands", p.bands), ("shingle", p.shingle),
                             ("head-words", p.head_words), ("tail-words", p.tail_words),
                             ("member-accounts", s.member_accounts)):  # fmt: skip
            _put(obj, name, str(number), "counter", **common)
        _put(obj, "valid-until", _day(until), "text", **common)
        for i, hk in enumerate(hexkeys):
            _put(obj, "band-key", hk, "hex", to_ids=False, comment=f"band {i + 1} of {p.bands}; {params}; confidence {conf}",
                 first_seen=s.first_ts, last_seen=s.last_ts)  # fmt: skip
        ev.add_object(obj)
    return ev


def build_events(
    h: Harvest,
    key: GroupKey,
    *,
    producer: str,
    options: ShareOptions | None = None,
    tlp: str = "amber",
    created: datetime | None = None,
) -> list[MISPEvent]:
    """One MISP event per harvested campaign (those at or above the confidence floor)."""
    opts = options or ShareOptions()
    if tlp not in DISTRIBUTION_BY_TLP or tlp not in TLP:
        raise ConfigError(f"unknown TLP {tlp!r}; choose one of {sorted(TLP)}")
    ends = [c.last_ts for c in h.campaigns if c.last_ts is not None]
    now = created or (max(ends) if ends else datetime(1970, 1, 1, tzinfo=UTC))
    return [_event(c, h, key, producer=producer, tlp=tlp, now=now, opts=opts) for c in h.campaigns]


def to_document(events: list[MISPEvent]) -> dict[str, Any]:
    """The JSON-ready ``{"response": [{"Event": …}, …]}`` envelope of some events."""
    return {"response": [json.loads(ev.to_json()) for ev in events]}


def dumps(doc: dict[str, Any]) -> str:
    """Stable JSON text of a MISP document."""
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


@dataclass(frozen=True)
class MispExportSummary:
    """What a MISP export produced (counts only: the file is the artefact)."""

    document: dict[str, Any]
    events: int
    attributes_by_type: dict[str, int]
    objects_by_name: dict[str, int]
    vetoed: dict[str, int]


def export_misp(
    results: Path,
    logdir: Path,
    key: GroupKey,
    *,
    producer: str,
    out: Path | None = None,
    tlp: str = "amber",
    config: Mapping[str, Any] | None = None,
    created: datetime | None = None,
) -> MispExportSummary:
    """``campaigns.json`` in ``results`` + the log → MISP event JSON, written atomically to ``out``."""
    options = ShareOptions.from_config(config)
    if tlp not in DISTRIBUTION_BY_TLP:
        raise ConfigError(f"unknown TLP {tlp!r}; choose one of {sorted(TLP)}")
    campaigns = read_campaigns(results / "campaigns.json")
    h = harvest(load_log(logdir, config), campaigns, options)
    events = build_events(h, key, producer=producer, options=options, tlp=tlp, created=created)
    doc = to_document(events)
    if out is not None:
        write_text_atomic(out, dumps(doc))
    attrs: dict[str, int] = {}
    objs: dict[str, int] = {}
    for ev in events:
        for a in ev.attributes:
            attrs[a.type] = attrs.get(a.type, 0) + 1
        for o in ev.objects:
            objs[o.name] = objs.get(o.name, 0) + 1
    return MispExportSummary(doc, len(events), attrs, objs, h.vetoed)


__all__ = [
    "DISTRIBUTION_BY_TLP",
    "KEYED_OBJECT",
    "SKETCH_OBJECT",
    "MispExportSummary",
    "analysis_state",
    "build_events",
    "confidence_tag",
    "dumps",
    "export_misp",
    "threat_level",
    "to_document",
]
