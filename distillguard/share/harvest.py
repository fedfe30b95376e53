"""What a campaign exposes that a peer could match: infrastructure, user agents, identifiers, template sketches.

Reads ``campaigns.json`` and the log, and keeps only what is safe and useful to share:

* only campaigns whose confidence reaches ``min_confidence``;
* only values used by at least ``min_member_accounts`` members (a single account's IP says little);
* never a value that accounts outside those campaigns (presumed benign) also used at a meaningful
  rate — more than ``max_benign_accounts`` of them, or more than ``max_benign_share`` of the
  value's exchanges. A VPN exit or campus NAT that real customers share is never exported.

Benign accounts therefore contribute nothing: every value kept was used by campaign members and
(almost) nobody else. Raw values stay in memory; :mod:`distillguard.share.stix` keys the identifiers.
The log is scanned in Arrow batches, members first (so template ids anchor on the campaign's own
scaffolds), then everyone else.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from distillguard.core.errors import ConfigError, InvalidInputError, Problem
from distillguard.ingest import Log
from distillguard.share.sketch import SketchParams, TemplateSketch, sketch_prompts
from distillguard.signals.network import ip_prefixes, network_context
from distillguard.signals.template import TemplateIndex

_COLUMNS = ["ts", "account_id", "client_ip", "user_agent", "prompt"]


@dataclass(frozen=True)
class ShareOptions:
    """Export policy (``share:`` in configuration, else these defaults)."""

    min_confidence: float = 0.8
    min_member_accounts: Mapping[str, int] = field(
        default_factory=lambda: {"ip_prefix": 2, "asn": 2, "user_agent": 2, "template": 2,
                                 "ip": 1, "payment": 1, "email": 1, "email_domain": 1}
    )  # fmt: skip
    max_benign_accounts: int = 2
    max_benign_share: float = 0.01
    max_per_kind: int = 200
    max_template_representatives: int = 3
    ttl_days: Mapping[str, int] = field(
        default_factory=lambda: {"ip": 14, "ip_prefix": 30, "asn": 30, "user_agent": 60, "template": 90,
                                 "payment": 365, "email": 180, "email_domain": 180}
    )  # fmt: skip
    batch_rows: int = 200_000

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ConfigError(f"share.min_confidence must be in [0, 1], got {self.min_confidence}")
        if self.max_benign_accounts < 0 or not 0.0 <= self.max_benign_share <= 1.0:
            raise ConfigError(
                "share.max_benign_accounts must be >= 0 and share.max_benign_share in [0, 1]"
            )

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None) -> ShareOptions:
        section = dict((config or {}).get("share", {}) or {})
        section.pop("indicators", None)  # matching settings: core.indicators.PeerMatchSettings
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(section) - known)
        if unknown:
            raise ConfigError(f"unknown share.* keys {unknown}; known: {sorted(known)}")
        return cls(**section)


@dataclass(frozen=True)
class Campaign:
    """The parts of a ``campaigns.json`` entry sharing needs."""

    id: str
    members: tuple[str, ...]
    confidence: float
    first_ts: datetime | None
    last_ts: datetime | None
    capability_targets: tuple[str, ...]
    n_accounts: int
    n_exchanges: int | None


@dataclass(frozen=True)
class SharedSketch:
    """A template sketch with the campaigns that used it and its usage."""

    template_id: int
    sketch: TemplateSketch
    campaign_ids: tuple[str, ...]
    member_accounts: int
    member_exchanges: int
    first_ts: datetime
    last_ts: datetime


@dataclass(frozen=True)
class Harvest:
    """Shareable values per kind (raw; keyed later) and what the benign veto removed."""

    campaigns: tuple[Campaign, ...]
    values: (
        pl.DataFrame
    )  # kind, value, campaign_ids, member_accounts, member_exchanges, benign_*, first/last_ts
    sketches: tuple[SharedSketch, ...]
    vetoed: dict[str, int]


def _parse_ts(
    value: Any, name: str, row: int, column: str, problems: list[Problem]
) -> datetime | None:
    if value is None:
        return None
    try:
        if isinstance(value, int | float):
            return datetime.fromtimestamp(value / 1000.0, tz=UTC)
        ts = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        return ts if ts.tzinfo else ts.replace(tzinfo=UTC)
    except (ValueError, OverflowError):
        problems.append(Problem(name, row, column, f"not a timestamp: {value!r}"))
        return None


def read_campaigns(path: Path) -> list[Campaign]:
    """``campaigns.json`` (contract §2) → campaigns; every problem is reported with its position."""
    name = str(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InvalidInputError(
            [Problem(name, None, None, f"cannot read: {exc.strerror}")]
        ) from exc
    except json.JSONDecodeError as exc:
        raise InvalidInputError([Problem(name, exc.lineno, None, f"not JSON: {exc.msg}")]) from exc
    items = doc.get("campaigns") if isinstance(doc, dict) else doc
    if not isinstance(items, list):
        raise InvalidInputError([Problem(name, None, "campaigns", 'expected {"campaigns": [...]}')])
    problems: list[Problem] = []
    out: list[Campaign] = []
    for row, c in enumerate(items, start=1):
        if not isinstance(c, dict):
            problems.append(Problem(name, row, None, "each campaign must be a JSON object"))
            continue
        members = c.get("members")
        conf = c.get("confidence")
        if not isinstance(c.get("id"), str | int):
            problems.append(Problem(name, row, "id", "missing or not a string"))
        if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
            problems.append(Problem(name, row, "members", "must be a list of account ids"))
            members = []
        if (
            not isinstance(conf, int | float)
            or isinstance(conf, bool)
            or not 0.0 <= float(conf) <= 1.0
        ):
            problems.append(
                Problem(name, row, "confidence", f"must be a number in [0, 1], got {conf!r}")
            )
            conf = 0.0
        caps_raw = c.get("capability_targets") or []
        caps: list[str] = []
        for cap in caps_raw if isinstance(caps_raw, list) else [caps_raw]:
            if isinstance(cap, str):
                caps.append(cap)
            elif isinstance(cap, dict) and isinstance(cap.get("capability", cap.get("name")), str):
                caps.append(str(cap.get("capability", cap.get("name"))))
        n_ex = c.get("n_exchanges")
        out.append(
            Campaign(
                id=str(c.get("id")),
                members=tuple(sorted(members)),
                confidence=float(conf),
                first_ts=_parse_ts(c.get("first_ts"), name, row, "first_ts", problems),
                last_ts=_parse_ts(c.get("last_ts"), name, row, "last_ts", problems),
                capability_targets=tuple(caps),
                n_accounts=int(c.get("n_accounts") or len(members)),
                n_exchanges=int(n_ex) if isinstance(n_ex, int) else None,
            )
        )
    if problems:
        raise InvalidInputError(problems)
    return out


def _batches(
    log: Log, members: pa.Array, inside: bool, batch_rows: int
) -> Iterator[pa.RecordBatch]:
    flt = pc.field("account_id").isin(members)
    scanner = log.exchanges.scanner(
        columns=[c for c in _COLUMNS if c in log.exchanges.schema.names],
        filter=flt if inside else ~flt,
        batch_size=batch_rows,
    )
    yield from scanner.to_batches()


def _long_rows(batch: pa.RecordBatch, intel: pa.Table) -> pl.DataFrame:
    """(kind, value, account_id, n, first_ts, last_ts) for the network kinds of one batch."""
    net = network_context(batch.column("client_ip"), intel)
    frame = pl.DataFrame(
        {
            "account_id": pl.Series(batch.column("account_id")),
            "ts": pl.Series(batch.column("ts")),
            "ip": pl.Series(batch.column("client_ip")),
            "ip_prefix": pl.Series(net.column("ip_prefix")),
            "asn": pl.Series(net.column("asn")).cast(pl.String),
            "user_agent": pl.Series(batch.column("user_agent"))
            if "user_agent" in batch.schema.names
            else pl.Series([None] * batch.num_rows, dtype=pl.String),
        }
    )
    parts = []
    for kind in ("ip", "ip_prefix", "asn", "user_agent"):
        parts.append(
            frame.filter(pl.col(kind).is_not_null() & (pl.col(kind) != ""))
            .group_by(["account_id", kind])
            .agg(n=pl.len(), first_ts=pl.col("ts").min(), last_ts=pl.col("ts").max())
            .rename({kind: "value"})
            .with_columns(kind=pl.lit(kind))
        )
    return pl.concat(parts, how="vertical_relaxed")


def _template_rows(batch: pa.RecordBatch, index: TemplateIndex, keep_prompt: bool) -> pl.DataFrame:
    prompts = pl.Series(batch.column("prompt"))
    tid, shash, valid = index.assign(prompts)
    frame = pl.DataFrame(
        {
            "account_id": pl.Series(batch.column("account_id")),
            "ts": pl.Series(batch.column("ts")),
            "template_id": pl.Series(tid, dtype=pl.UInt64),
            "scaffold": pl.Series(shash, dtype=pl.UInt64),
            "prompt": prompts,
            "valid": pl.Series(valid),
        }
    ).filter(pl.col("valid"))
    aggs = [
        pl.len().alias("n"),
        pl.col("ts").min().alias("first_ts"),
        pl.col("ts").max().alias("last_ts"),
    ]
    if keep_prompt:
        aggs.append(pl.col("prompt").first().alias("sample"))
    return frame.group_by(["template_id", "scaffold", "account_id"]).agg(aggs)


def harvest(log: Log, campaigns: list[Campaign], options: ShareOptions) -> Harvest:
    """Collect the shareable values of the campaigns at or above ``options.min_confidence``."""
    chosen = tuple(c for c in campaigns if c.confidence >= options.min_confidence and c.members)
    member_map = pl.DataFrame(
        [(m, c.id) for c in chosen for m in c.members], schema={"account_id": pl.String, "campaign_id": pl.String},
        orient="row",
    ).unique(subset="account_id", keep="first")  # fmt: skip
    members = pa.array(member_map["account_id"].to_list(), pa.string())
    params = SketchParams()
    index = TemplateIndex(params=params.template_params())
    long_parts: list[pl.DataFrame] = []
    tpl_member: list[pl.DataFrame] = []
    tpl_benign: list[pl.DataFrame] = []
    has_prompt = "prompt" in log.exchanges.schema.names
    for inside in (True, False):
        if not len(members) and inside:
            continue
        for batch in _batches(log, members, inside, options.batch_rows):
            if batch.num_rows == 0:
                continue
            long_parts.append(_long_rows(batch, log.ip_intel))
            if has_prompt:
                (tpl_member if inside else tpl_benign).append(
                    _template_rows(batch, index, keep_prompt=inside)
                )
    long_parts.append(_account_rows(log.accounts))
    allrows = pl.concat(long_parts, how="vertical_relaxed") if long_parts else pl.DataFrame()
    values, vetoed = _decide(allrows, member_map, options)
    sketches, tvetoed = _decide_templates(tpl_member, tpl_benign, member_map, options, params)
    vetoed["template"] = tvetoed
    return Harvest(chosen, values, sketches, vetoed)


def _account_rows(accounts: pa.Table) -> pl.DataFrame:
    frame = pl.from_arrow(accounts)
    assert isinstance(frame, pl.DataFrame)
    parts = []
    for kind, col in (
        ("payment", "payment_fingerprint"),
        ("email_domain", "email_domain"),
        ("email", "email"),
    ):
        if col not in frame.columns:
            continue
        parts.append(
            frame.filter(pl.col(col).is_not_null() & (pl.col(col) != "")).select(
                "account_id",
                value=pl.col(col).cast(pl.String),
                n=pl.lit(1, dtype=pl.UInt32),
                first_ts=pl.lit(None, dtype=pl.Datetime("ms", "UTC")),
                last_ts=pl.lit(None, dtype=pl.Datetime("ms", "UTC")),
                kind=pl.lit(kind),
            )
        )
    return pl.concat(parts, how="vertical_relaxed") if parts else pl.DataFrame()


def _stats(rows: pl.DataFrame, member_map: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    tagged = rows.join(member_map, on="account_id", how="left")
    is_m = pl.col("campaign_id").is_not_null()
    return tagged.group_by(keys).agg(
        member_accounts=pl.col("account_id").filter(is_m).n_unique(),
        member_exchanges=pl.col("n").filter(is_m).sum().cast(pl.Int64),
        benign_accounts=pl.col("account_id").filter(~is_m).n_unique(),
        benign_exchanges=pl.col("n").filter(~is_m).sum().cast(pl.Int64),
        campaign_ids=pl.col("campaign_id").filter(is_m).unique().sort(),
        first_ts=pl.col("first_ts").filter(is_m).min(),
        last_ts=pl.col("last_ts").filter(is_m).max(),
    )


def _veto(
    stats: pl.DataFrame, options: ShareOptions, min_members: pl.Expr
) -> tuple[pl.DataFrame, pl.DataFrame]:
    used = stats.filter(pl.col("member_accounts") >= 1)
    total = (pl.col("member_exchanges") + pl.col("benign_exchanges")).cast(pl.Float64)
    benign_ok = (pl.col("benign_accounts") <= options.max_benign_accounts) & (
        pl.col("benign_exchanges").cast(pl.Float64) <= total * options.max_benign_share
    )
    keep = used.filter(benign_ok & (pl.col("member_accounts") >= min_members))
    vetoed = used.filter(~benign_ok & (pl.col("member_accounts") >= min_members))
    return keep, vetoed


def _decide(
    rows: pl.DataFrame, member_map: pl.DataFrame, options: ShareOptions
) -> tuple[pl.DataFrame, dict[str, int]]:
    if rows.height == 0 or member_map.height == 0:
        return pl.DataFrame(), {}
    stats = _stats(rows, member_map, ["kind", "value"])
    mins = pl.DataFrame(
        {
            "kind": list(options.min_member_accounts),
            "min_members": list(options.min_member_accounts.values()),
        }
    )
    stats = stats.join(mins, on="kind", how="left").with_columns(pl.col("min_members").fill_null(2))
    keep, vetoed = _veto(stats, options, pl.col("min_members"))
    # An exit address inside a prefix real customers share (a VPN pool) rotates to them next.
    shared_prefixes = vetoed.filter(pl.col("kind") == "ip_prefix")["value"]
    ips = keep.filter(pl.col("kind") == "ip")
    if ips.height and shared_prefixes.len():
        pref = pl.Series(ip_prefixes(pa.array(ips["value"].to_list(), pa.string())))
        inside = ips.filter(pref.is_in(shared_prefixes.to_list()))
        keep = keep.join(inside.select("kind", "value"), on=["kind", "value"], how="anti")
        vetoed = pl.concat([vetoed, inside], how="vertical_relaxed")
    keep = (
        keep.sort(
            ["kind", "member_accounts", "member_exchanges", "value"],
            descending=[False, True, True, False],
        )
        .group_by("kind", maintain_order=True)
        .head(options.max_per_kind)
        .drop("min_members")
    )
    counts = vetoed.group_by("kind").len()
    return keep, {str(k): int(n) for k, n in counts.iter_rows()}


def _decide_templates(
    member_parts: list[pl.DataFrame],
    benign_parts: list[pl.DataFrame],
    member_map: pl.DataFrame,
    options: ShareOptions,
    params: SketchParams,
) -> tuple[tuple[SharedSketch, ...], int]:
    if not member_parts:
        return (), 0
    mem = pl.concat(member_parts, how="vertical_relaxed")
    ben = (
        pl.concat(benign_parts, how="vertical_relaxed")
        if benign_parts
        else mem.clear().drop("sample")
    )
    rows = pl.concat([mem.drop("sample"), ben], how="vertical_relaxed").rename(
        {"template_id": "value"}
    )
    stats = _stats(rows, member_map, ["value"])
    keep, vetoed = _veto(stats, options, pl.lit(options.min_member_accounts.get("template", 2)))
    keep = keep.sort(
        ["member_accounts", "member_exchanges", "value"], descending=[True, True, False]
    ).head(options.max_per_kind)
    reps = (
        mem.join(keep.select(template_id="value"), on="template_id")
        .group_by(["template_id", "scaffold"])
        .agg(n=pl.col("n").sum(), sample=pl.col("sample").first())
        .sort(["template_id", "n", "scaffold"], descending=[False, True, False])
        .group_by("template_id", maintain_order=True)
        .head(options.max_template_representatives)
    )
    sketches = sketch_prompts(reps["sample"], params)
    info = {int(r["value"]): r for r in keep.iter_rows(named=True)}
    out: list[SharedSketch] = []
    for tid, sk in zip(reps["template_id"].to_list(), sketches, strict=True):
        if sk is None:
            continue
        r = info[int(tid)]
        out.append(
            SharedSketch(int(tid), sk, tuple(r["campaign_ids"]), int(r["member_accounts"]),
                         int(r["member_exchanges"]), r["first_ts"], r["last_ts"])
        )  # fmt: skip
    unique: dict[tuple[int, ...], SharedSketch] = {}
    for s in out:
        unique.setdefault(s.sketch.keys, s)
    return tuple(unique.values()), vetoed.height


__all__ = ["Campaign", "Harvest", "ShareOptions", "SharedSketch", "harvest", "read_campaigns"]
