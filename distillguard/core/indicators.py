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
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any, Final

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
#: Name of the template-sketch algorithm (the signals stage's scaffold MinHash + LSH bands).
TEMPLATE_SKETCH_ALGORITHM: Final = "distillguard-scaffold-minhash-lsh/1"

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


#: Per-kind ceiling of the peer score: how much one kind of shared indicator can say on its own.
#: Network infrastructure that benign customers may share (a cloud prefix, an AS, an SDK's user
#: agent) says little; an exact identifier or the campaign's own prompt scaffold says more.
DEFAULT_KIND_WEIGHTS: Final[Mapping[str, float]] = {
    "ip": 0.6, "ip_prefix": 0.35, "asn": 0.1, "user_agent": 0.2, "payment": 0.9, "email": 0.9,
    "email_domain": 0.2, "template": 0.35,
}  # fmt: skip


@dataclass(frozen=True)
class PeerMatchSettings:
    """How peers' indicators become a signal (``share.indicators`` in configuration).

    Per account and kind: ``s_k = kind_weight_k * confidence_k / 100 * min(1, coverage_k /
    full_coverage)``, coverage being the share of the account's exchanges on a matched value
    (1 for account attributes: payment, e-mail), over at least ``min_exchanges`` exchanges so a
    handful of requests cannot make a full share. The peer score is ``1 - prod(1 - s_k)`` and
    contributes ``weight * score`` log-odds — never cluster evidence, so it cannot suspend alone.
    """

    store: str | None = None
    key_file: str | None = None
    weight: float = 3.0
    kind_weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_KIND_WEIGHTS))
    full_coverage: float = 0.3
    min_exchanges: int = 10
    min_confidence: int = 50
    max_online_values: int = 500_000
    max_online_accounts: int = 200_000

    def __post_init__(self) -> None:
        if not 0.0 <= self.weight <= 10.0:
            raise ConfigError(
                f"share.indicators.weight must be in [0, 10] log-odds, got {self.weight}"
            )
        unknown = sorted(set(self.kind_weights) - set(KINDS))
        if unknown:
            raise ConfigError(
                f"share.indicators.kind_weights: unknown kinds {unknown}; known: {list(KINDS)}"
            )
        bad = {k: v for k, v in self.kind_weights.items() if not 0.0 <= float(v) <= 1.0}
        if bad:
            raise ConfigError(f"share.indicators.kind_weights must be in [0, 1]; got {bad}")
        if not 0.0 < self.full_coverage <= 1.0:
            raise ConfigError(
                f"share.indicators.full_coverage must be in (0, 1], got {self.full_coverage}"
            )
        if self.min_exchanges < 1:
            raise ConfigError(
                f"share.indicators.min_exchanges must be >= 1, got {self.min_exchanges}"
            )
        if not 0 <= self.min_confidence <= 100:
            raise ConfigError(
                f"share.indicators.min_confidence must be in [0, 100], got {self.min_confidence}"
            )
        if self.max_online_values < 1 or self.max_online_accounts < 1:
            raise ConfigError(
                "share.indicators.max_online_values and max_online_accounts must be >= 1"
            )

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None) -> PeerMatchSettings:
        section = dict(((config or {}).get("share") or {}).get("indicators") or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(section) - known)
        if unknown:
            raise ConfigError(f"unknown share.indicators keys {unknown}; known: {sorted(known)}")
        if "kind_weights" in section:
            section["kind_weights"] = {
                **DEFAULT_KIND_WEIGHTS,
                **dict(section["kind_weights"] or {}),
            }
        return cls(**section)

    @property
    def enabled(self) -> bool:
        return self.store is not None and self.weight > 0.0

    def group_key(self) -> GroupKey | None:
        """The sharing-group key named by ``key_file`` (None: keyed identifiers cannot match)."""
        return GroupKey.load(self.key_file) if self.key_file else None


def use_indicator_store(
    config: Mapping[str, Any],
    store: str | os.PathLike[str] | None,
    key_file: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """``config`` with ``share.indicators.store`` (and ``key_file``) set, as ``--indicators`` asks.

    A store that does not exist is a configuration error here (a typo must not silently disable
    the peer signal); ``read_indicator_store`` itself treats a missing file as empty.
    """
    out = dict(config)
    if store is None and key_file is None:
        return out
    share = dict(out.get("share") or {})
    section = dict(share.get("indicators") or {})
    if store is not None:
        if not Path(store).is_file():
            raise ConfigError(
                f"indicator store {store} does not exist (write one with `distillguard share import`)"
            )
        section["store"] = str(store)
    if key_file is not None:
        GroupKey.load(key_file)  # fail fast on an unreadable or short key
        section["key_file"] = str(key_file)
    share["indicators"] = section
    out["share"] = share
    PeerMatchSettings.from_config(out)
    return out


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
        raise InvalidInputError(
            [Problem(str(p), None, None, f"not a Parquet indicator store: {exc}")]
        ) from exc
    missing = [f.name for f in INDICATOR_STORE_SCHEMA if f.name not in table.column_names]
    if missing:
        raise InvalidInputError(
            [
                Problem(str(p), None, c, "missing column of the indicator store schema")
                for c in missing
            ]
        )
    table = table.select(INDICATOR_STORE_SCHEMA.names)
    try:
        table = table.cast(INDICATOR_STORE_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError) as exc:
        raise InvalidInputError(
            [Problem(str(p), None, None, f"column types do not fit the schema: {exc}")]
        ) from exc
    bad = table.filter(pc.invert(pc.is_in(table["kind"], pa.array(KINDS))))
    if bad.num_rows:
        raise InvalidInputError(
            [
                Problem(
                    str(p),
                    None,
                    "kind",
                    f"unknown indicator kind {bad['kind'][0].as_py()!r}; known: {KINDS}",
                )
            ]
        )
    return table


def write_indicator_store(table: pa.Table, path: str | os.PathLike[str]) -> None:
    """Write the store atomically, sorted so equal contents give equal bytes."""
    table = table.select(INDICATOR_STORE_SCHEMA.names).cast(INDICATOR_STORE_SCHEMA)
    table = table.sort_by(
        [
            ("kind", "ascending"),
            ("value", "ascending"),
            ("indicator_id", "ascending"),
            ("peer_identity", "ascending"),
        ]
    )
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
        .with_columns(
            pl.when(pl.col("params") == "").then(None).otherwise(pl.col("params")).alias("params")
        )
    )
    return frame.to_arrow().select(INDICATOR_STORE_SCHEMA.names).cast(INDICATOR_STORE_SCHEMA)


def local_template_params(
    *, seed: int, num_perm: int, bands: int, shingle: int, head_words: int, tail_words: int
) -> dict[str, object]:
    """Sketch parameters (the store's ``params``) of our own signals stage, to match peers' sketches."""
    return {"algorithm": TEMPLATE_SKETCH_ALGORITHM, "seed": seed, "num_perm": num_perm, "bands": bands,
            "shingle": shingle, "head_words": head_words, "tail_words": tail_words}  # fmt: skip


def template_params_id(params: Mapping[str, object]) -> str:
    """Canonical JSON of sketch parameters: two sketches compare only when these are equal."""
    return json.dumps(dict(params), sort_keys=True, separators=(",", ":"))


def store_rows_for_matching(
    store: pa.Table,
    key: GroupKey | None,
    at: datetime | None,
    template_params: Mapping[str, object] | None,
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
        live = (pl.col("valid_from") <= at_ms) & (
            pl.col("valid_until").is_null() | (pl.col("valid_until") > at_ms)
        )
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
        .with_columns(
            band_keys=pl.col("band_keys").list.eval(
                pl.int_range(pl.len()).cast(pl.String) + ":" + pl.element()
            )
        )
        .explode("band_keys")
        .with_columns(kind=pl.lit("template_band"), value=pl.col("band_keys"))
        .drop("band_keys")
    )
    # The signals stage's template id is itself one band key (the smallest of its one-hop
    # family), so a position-free key matches a peer's sketch without recomputing any MinHash.
    tpl_key = tpl.with_columns(
        kind=pl.lit("template_key"), value=pl.col("value").str.split(":").list.last()
    ).unique(subset=["indicator_id", "peer_identity", "value"], keep="first", maintain_order=True)
    return pl.concat([plain, tpl, tpl_key], how="vertical_relaxed"), skipped


def template_key_hex(template_id: int) -> str:
    """The observation value of a signals-stage template id (kind ``template_key``): 16 hex digits."""
    return f"{int(template_id):016x}"


def match_observations(
    store: pa.Table,
    observations: pa.Table | pl.DataFrame,
    *,
    key: GroupKey | None = None,
    at: datetime | None = None,
    template_params: Mapping[str, object] | None = None,
) -> pl.DataFrame:
    """Value-level matches: one row per (account, observed kind and value, indicator).

    Columns: ``account_id, kind`` (the observation's kind: ``template_band`` and ``template_key``
    stay distinct), ``value`` (the observation's *plain* value, for joining back to our own log;
    never exported), ``indicator_id, peer, confidence, produced_at, imported_at, valid_until,
    n, first_ts``.
    """
    rows, _ = store_rows_for_matching(store, key, at, template_params)
    if isinstance(observations, pl.DataFrame):
        obs = observations.select(OBSERVATION_SCHEMA.names).cast(
            {"n": pl.Int64, "first_ts": pl.Datetime("ms", "UTC")}
        )
    else:
        frame = pl.from_arrow(
            observations.select(OBSERVATION_SCHEMA.names).cast(OBSERVATION_SCHEMA)
        )
        assert isinstance(frame, pl.DataFrame)
        obs = frame
    cols = ["account_id", "kind", "value", "indicator_id", "peer", "confidence", "produced_at", "imported_at",
            "valid_until", "n", "first_ts"]  # fmt: skip
    if rows.height == 0 or obs.height == 0:
        return obs.clear().with_columns(
            indicator_id=pl.lit(None, pl.String), peer=pl.lit(None, pl.String), confidence=pl.lit(None, pl.Int64),
            produced_at=pl.lit(None, pl.Datetime("ms", "UTC")), imported_at=pl.lit(None, pl.Datetime("ms", "UTC")),
            valid_until=pl.lit(None, pl.Datetime("ms", "UTC")),
        ).select(cols)  # fmt: skip
    is_keyed = pl.col("kind").is_in(list(KEYED_KINDS))
    distinct = obs.filter(is_keyed).select("kind", "value").unique()
    if key is not None and distinct.height:
        hashed = distinct.with_columns(
            digest=pl.Series([key.digest(k, v) for k, v in distinct.iter_rows()], dtype=pl.String)
        )
    else:
        hashed = distinct.with_columns(digest=pl.lit(None, pl.String)).clear()
    ref = rows.select(
        "kind",
        "value",
        "indicator_id",
        "peer",
        "confidence",
        "produced_at",
        "imported_at",
        "valid_until",
    )
    plain_hits = obs.filter(~is_keyed).join(ref, on=["kind", "value"])
    keyed_hits = (
        obs.filter(is_keyed)
        .join(hashed, on=["kind", "value"])
        .join(ref.rename({"value": "digest"}), on=["kind", "digest"])
        .drop("digest")
    )
    return pl.concat([plain_hits.select(cols), keyed_hits.select(cols)], how="vertical_relaxed")


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
    ``email_domain``, ``template_band`` (``"<band>:<16 hex>"`` from the signals stage's LSH
    band keys) and ``template_key`` (a signals-stage ``template_id`` as 16 hex digits, any band).
    Keyed kinds are hashed here with ``key``; without a key they cannot match.
    The result (:data:`MATCH_SCHEMA`) carries provenance — peer, confidence, when produced and
    imported — for the evidence of any verdict it feeds.
    """
    hits = match_observations(store, observations, key=key, at=at, template_params=template_params)
    if hits.height == 0:
        return MATCH_SCHEMA.empty_table()
    # A template sketch matches when any band agrees (the signals stage's own joining rule).
    hits = hits.with_columns(
        kind=pl.when(pl.col("kind").is_in(["template_band", "template_key"]))
        .then(pl.lit("template"))
        .otherwise(pl.col("kind"))
    )
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
