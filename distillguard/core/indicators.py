"""The peer-indicator store: schema, reader/writer, sharing-group keys, and a columnar matcher.

``distillguard share import`` turns peers' STIX bundles into this store (a Parquet file); the
stages that judge traffic (linking, the online service) read it through this module only, so the
data keeps flowing forward: ``share`` writes a plain data artefact, nothing earlier imports
``share``.

One row per matchable indicator value:

================  =====================================================================
column            meaning
================  =====================================================================
indicator_id      STIX id of the object it came from (``indicator--…`` or ``x-distillguard-…``)
kind              one of :data:`KINDS`
value             plain value (``ip_prefix``, ``asn``, ``user_agent``), hex HMAC-SHA256
                  (``ip``, ``payment``, ``email``, ``email_domain``) or ``""`` (``template``)
band_keys         ``template`` only: the sketch's LSH band keys (16 hex digits each)
params            ``template`` only: canonical JSON of the sketch parameters
key_id            keyed kinds only: which sharing-group key made the digest
confidence        the peer's confidence, 0–100
valid_from/until  when the peer says the indicator holds (``valid_until`` may be null)
campaign_ids      the peer's STIX campaign ids it indicates
capability_targets what those campaigns were harvesting
peer              the producing organisation's name; ``peer_identity`` its STIX identity id
tlp               the TLP marking (``clear``, ``green``, ``amber``, ``amber+strict``, ``red``)
produced_at       the object's ``modified`` time
source            the file or TAXII collection it was imported from
imported_at       when we imported it
bundle_sha256     SHA-256 of the bundle (or polled envelope) bytes
================  =====================================================================

Keyed kinds are HMAC-SHA256 under the group key over ``kind || 0x00 || normalised value``: a
member of the group can test whether *its own* customers match; nobody can read the values.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from distillguard.core.atomic import atomic_path
from distillguard.core.errors import ConfigError, InvalidInputError, Problem

PLAIN_KINDS: Final = ("ip_prefix", "asn", "user_agent")
KEYED_KINDS: Final = ("ip", "payment", "email", "email_domain")
KINDS: Final = (*PLAIN_KINDS, *KEYED_KINDS, "template")
GROUP_KEY_BYTES: Final = 32

_TS = pa.timestamp("ms", tz="UTC")
INDICATOR_STORE_SCHEMA: Final = pa.schema(
    [
        pa.field("indicator_id", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("value", pa.string(), nullable=False),
        pa.field("band_keys", pa.list_(pa.string())),
        pa.field("params", pa.string()),
        pa.field("key_id", pa.string()),
        pa.field("confidence", pa.int64(), nullable=False),
        pa.field("valid_from", _TS, nullable=False),
        pa.field("valid_until", _TS),
        pa.field("campaign_ids", pa.list_(pa.string())),
        pa.field("capability_targets", pa.list_(pa.string())),
        pa.field("peer", pa.string(), nullable=False),
        pa.field("peer_identity", pa.string(), nullable=False),
        pa.field("tlp", pa.string()),
        pa.field("produced_at", _TS, nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("imported_at", _TS, nullable=False),
        pa.field("bundle_sha256", pa.string(), nullable=False),
    ]
)

#: Columns a caller hands :func:`match_indicators`: what its own traffic exposes.
OBSERVATION_SCHEMA: Final = pa.schema(
    [
        pa.field("account_id", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("value", pa.string(), nullable=False),
        pa.field("n", pa.int64(), nullable=False),
        pa.field("first_ts", _TS),
    ]
)

MATCH_SCHEMA: Final = pa.schema(
    [
        pa.field("account_id", pa.string()),
        pa.field("kind", pa.string()),
        pa.field("indicator_id", pa.string()),
        pa.field("peer", pa.string()),
        pa.field("confidence", pa.int64()),
        pa.field("produced_at", _TS),
        pa.field("imported_at", _TS),
        pa.field("n", pa.int64()),
        pa.field("first_ts", _TS),
    ]
)


@dataclass(frozen=True)
class GroupKey:
    """A sharing group's secret: HMACs under it can be matched by members and read by nobody."""

    secret: bytes

    def __post_init__(self) -> None:
        if len(self.secret) < 16:
            raise ConfigError(
                f"sharing-group key is {len(self.secret)} bytes; it needs at least 16 random bytes "
                "(make one with `distillguard share keygen FILE`)"
            )

    @property
    def key_id(self) -> str:
        """Public name of the key (16 hex digits), so peers can tell which key a digest used."""
        return hashlib.sha256(b"distillguard-key-id\x00" + self.secret).hexdigest()[:16]

    def digest(self, kind: str, value: str) -> str:
        """Hex HMAC-SHA256 of one normalised value, domain-separated by ``kind``."""
        msg = kind.encode() + b"\x00" + normalise(kind, value).encode("utf-8")
        return hmac.new(self.secret, msg, hashlib.sha256).hexdigest()

    def digests(self, kind: str, values: Iterable[str]) -> list[str]:
        """:meth:`digest` over many values (callers pass distinct values: identifiers are few)."""
        return [self.digest(kind, v) for v in values]

    @classmethod
    def generate(cls) -> GroupKey:
        return cls(secrets.token_bytes(GROUP_KEY_BYTES))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> GroupKey:
        """Read a key file (raw bytes, or the hex text ``keygen`` writes)."""
        try:
            raw = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read sharing-group key {path}: {exc.strerror}") from exc
        text = raw.strip()
        try:
            secret = bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            secret = raw
        return cls(secret)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the key as hex text, readable by its owner only."""
        with atomic_path(path) as staged:
            staged.write_text(self.secret.hex() + "\n", encoding="ascii")
            staged.chmod(0o600)


def normalise(kind: str, value: str) -> str:
    """Canonical text of an identifier so both providers hash the same bytes for the same thing."""
    v = value.strip()
    if kind == "ip":
        try:
            return str(ipaddress.ip_address(v))
        except ValueError:
            return v.lower()
    if kind in ("email", "email_domain"):
        return v.lower()
    return v


def empty_store() -> pa.Table:
    return INDICATOR_STORE_SCHEMA.empty_table()


def read_indicator_store(path: str | os.PathLike[str]) -> pa.Table:
    """Read and check a store file; a missing file is an empty store."""
    p = Path(path)
    if not p.exists():
        return empty_store()
    try:
        table = pq.read_table(p)
    except (OSError, pa.ArrowInvalid) as exc:
        raise InvalidInputError([Problem(str(p), None, None, f"not a Parquet indicator store: {exc}")]) from exc
    missing = [f.name for f in INDICATOR_STORE_SCHEMA if f.name not in table.column_names]
    if missing:
        raise InvalidInputError(
            [Problem(str(p), None, c, "missing column of the indicator store schema") for c in missing]
        )
    table = table.select(INDICATOR_STORE_SCHEMA.names)
    try:
        table = table.cast(INDICATOR_STORE_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError) as exc:
        raise InvalidInputError([Problem(str(p), None, None, f"column types do not fit the schema: {exc}")]) from exc
    bad = table.filter(pc.invert(pc.is_in(table["kind"], pa.array(KINDS))))
    if bad.num_rows:
        raise InvalidInputError(
            [Problem(str(p), None, "kind", f"unknown indicator kind {bad['kind'][0].as_py()!r}; known: {KINDS}")]
        )
    return table


def write_indicator_store(table: pa.Table, path: str | os.PathLike[str]) -> None:
    """Write the store atomically, sorted so equal contents give equal bytes."""
    table = table.select(INDICATOR_STORE_SCHEMA.names).cast(INDICATOR_STORE_SCHEMA)
    table = table.sort_by([("kind", "ascending"), ("value", "ascending"), ("indicator_id", "ascending"),
                           ("peer_identity", "ascending")])
    with atomic_path(path) as staged:
        pq.write_table(table, staged)


def merge_stores(old: pa.Table, new: pa.Table) -> pa.Table:
    """Union of two stores; for the same peer, object and value the latest ``produced_at`` wins."""
    both = pa.concat_tables([old.cast(INDICATOR_STORE_SCHEMA), new.cast(INDICATOR_STORE_SCHEMA)])
    frame = pl.from_arrow(both)
    assert isinstance(frame, pl.DataFrame)
    keys = ["peer_identity", "indicator_id", "kind", "value", "params"]
    frame = (
        frame.with_columns(pl.col("params").fill_null(""))
        .sort(["produced_at", "imported_at"], descending=True)
        .unique(subset=keys, keep="first", maintain_order=True)
        .with_columns(pl.when(pl.col("params") == "").then(None).otherwise(pl.col("params")).alias("params"))
    )
    return frame.to_arrow().select(INDICATOR_STORE_SCHEMA.names).cast(INDICATOR_STORE_SCHEMA)


def template_params_id(params: Mapping[str, object]) -> str:
    """Canonical JSON of sketch parameters: two sketches compare only when these are equal."""
    return json.dumps(dict(params), sort_keys=True, separators=(",", ":"))


def store_rows_for_matching(
    store: pa.Table, key: GroupKey | None, at: datetime | None, template_params: Mapping[str, object] | None
) -> tuple[pl.DataFrame, dict[str, int]]:
    """Explode the store into ``(kind, value)`` join keys; count what cannot be used and why.

    Templates become ``kind = "template_band"`` with value ``"<band>:<key>"``; they are kept only
    when their parameters equal ``template_params`` (sketches never compare across parameters).
    Keyed kinds are kept only when made with ``key``.
    """
    frame = pl.from_arrow(store)
    assert isinstance(frame, pl.DataFrame)
    skipped: dict[str, int] = {}
    if at is not None:
        at_ms = pl.lit(at).cast(pl.Datetime("ms", "UTC"))
        live = (pl.col("valid_from") <= at_ms) & (pl.col("valid_until").is_null() | (pl.col("valid_until") > at_ms))
        skipped["expired_or_not_yet_valid"] = frame.filter(~live).height
        frame = frame.filter(live)
    keyed = pl.col("kind").is_in(list(KEYED_KINDS))
    local_key = key.key_id if key is not None else None
    wrong_key = keyed & (pl.col("key_id").is_null() | (pl.col("key_id") != pl.lit(local_key or "")))
    skipped["other_group_key"] = frame.filter(wrong_key).height
    frame = frame.filter(~wrong_key)
    is_tpl = pl.col("kind") == "template"
    want = template_params_id(template_params) if template_params is not None else None
    other_params = is_tpl & (pl.col("params") != pl.lit(want or ""))
    skipped["other_template_params"] = frame.filter(other_params).height
    frame = frame.filter(~other_params)
    plain = frame.filter(~is_tpl).select(pl.exclude("band_keys"))
    tpl = (
        frame.filter(is_tpl)
        .with_columns(band_keys=pl.col("band_keys").list.eval(pl.int_range(pl.len()).cast(pl.String) + ":" + pl.element()))
        .explode("band_keys")
        .with_columns(kind=pl.lit("template_band"), value=pl.col("band_keys"))
        .drop("band_keys")
    )
    return pl.concat([plain, tpl], how="vertical_relaxed"), skipped


def match_indicators(
    store: pa.Table,
    observations: pa.Table,
    *,
    key: GroupKey | None = None,
    at: datetime | None = None,
    template_params: Mapping[str, object] | None = None,
) -> pa.Table:
    """Which of our accounts show which peer indicators: one row per (account, indicator).

    ``observations`` (:data:`OBSERVATION_SCHEMA`) lists what each account exposed, with plain
    values: ``ip``, ``ip_prefix``, ``asn`` (decimal text), ``user_agent``, ``payment``, ``email``,
    ``email_domain``, and ``template_band`` (``"<band>:<16 hex>"`` from the signals stage's LSH
    band keys). Keyed kinds are hashed here with ``key``; without a key they cannot match.
    The result (:data:`MATCH_SCHEMA`) carries provenance — peer, confidence, when produced and
    imported — for the evidence of any verdict it feeds.
    """
    rows, _ = store_rows_for_matching(store, key, at, template_params)
    obs = pl.from_arrow(observations.select(OBSERVATION_SCHEMA.names).cast(OBSERVATION_SCHEMA))
    assert isinstance(obs, pl.DataFrame)
    if rows.height == 0 or obs.height == 0:
        return MATCH_SCHEMA.empty_table()
    is_keyed = pl.col("kind").is_in(list(KEYED_KINDS))
    distinct = obs.filter(is_keyed).select("kind", "value").unique()
    if key is not None and distinct.height:
        hashed = distinct.with_columns(
            digest=pl.Series(
                [key.digest(k, v) for k, v in distinct.iter_rows()], dtype=pl.String
            )
        )
        keyed_obs = obs.filter(is_keyed).join(hashed, on=["kind", "value"]).with_columns(value=pl.col("digest")).drop("digest")
    else:
        keyed_obs = obs.clear()
    obs = pl.concat([obs.filter(~is_keyed), keyed_obs])
    hits = obs.join(rows.select("kind", "value", "indicator_id", "peer", "confidence", "produced_at", "imported_at"),
                    on=["kind", "value"])
    # A template sketch matches when any band agrees (the signals stage's own joining rule).
    hits = hits.with_columns(kind=pl.when(pl.col("kind") == "template_band").then(pl.lit("template")).otherwise(pl.col("kind")))
    out = (
        hits.group_by(["account_id", "kind", "indicator_id", "peer"])
        .agg(
            confidence=pl.col("confidence").max(),
            produced_at=pl.col("produced_at").max(),
            imported_at=pl.col("imported_at").max(),
            n=pl.col("n").max(),  # bands of one sketch are not separate exchanges
            first_ts=pl.col("first_ts").min(),
        )
        .sort(["account_id", "kind", "indicator_id", "peer"])
    )
    return out.select(MATCH_SCHEMA.names).to_arrow().cast(MATCH_SCHEMA)
