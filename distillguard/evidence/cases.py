"""Write one signed case file per detected campaign from `detect`'s outputs and the log they judged."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from distillguard.core.errors import ConfigError
from distillguard.core.schema import EXCHANGE_COLUMNS
from distillguard.evidence.casefile import write_case
from distillguard.evidence.signing import (
    generate_signing_key,
    key_fingerprint,
    load_signing_key,
    write_signing_key,
)

CASES_DIR = "cases"
KEY_DIR_ENV = "DISTILLGUARD_KEY_DIR"
_LIGHT_COLUMNS = ("account_id", "ts", "request_id")


@dataclass(frozen=True)
class CaseSummary:
    """What was written: campaign id → (case directory, Merkle root), and the signer's fingerprint."""

    roots: dict[str, tuple[Path, str]]
    signer: str


def default_key_path() -> Path:
    """Where the operator's signing key lives when the config names none."""
    base = os.environ.get(KEY_DIR_ENV)
    root = Path(base) if base else Path.home() / ".config" / "distillguard"
    return root / "signing-key.pem"


def signing_key_from_config(config: Mapping[str, Any]) -> Ed25519PrivateKey:
    """The configured key (``evidence.signing_key_file``), else the operator's default key, made on first use.

    A persistent key matters: a third party checks case files against a fingerprint the
    provider publishes once, so a fresh key per run would make every case unverifiable.
    """
    configured = (config.get("evidence") or {}).get("signing_key_file")
    if configured:
        return load_signing_key(configured)
    path = default_key_path()
    if path.exists():
        return load_signing_key(path)
    key = generate_signing_key()
    write_signing_key(path, key)
    return key


def derive_ip_key(signing_key: Ed25519PrivateKey, campaign_id: str) -> bytes:
    """A per-case secret for the client-IP hashes, derived so that reruns are byte-identical."""
    raw = signing_key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return hmac.new(
        raw, b"distillguard/ip-key/" + campaign_id.encode("utf-8"), hashlib.sha256
    ).digest()


def _read_verdicts(path: Path) -> dict[str, dict[str, Any]]:
    verdicts: dict[str, dict[str, Any]] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                doc = json.loads(line)
                verdicts[str(doc["account_id"])] = doc
    return verdicts


def _campaign_rows(
    exchanges: pads.Dataset | pa.Table, campaigns: list[dict[str, Any]], limit: int
) -> tuple[pa.Table, dict[str, dict[str, Any]]]:
    """The exchanges the case files commit, and the scope of each campaign that was cut.

    Only (account, time, request id) are read for every member row; full rows (prompts
    included) only for the chosen ones, so memory follows ``limit``, not the campaign's size.
    A campaign over ``limit`` keeps each member's earliest ``limit // members`` exchanges.
    """
    owner = pl.DataFrame(
        [(str(m), str(c["id"])) for c in campaigns for m in c.get("members", [])],
        schema={"account_id": pl.String, "campaign_id": pl.String},
        orient="row",
    ).unique(subset="account_id", keep="first", maintain_order=True)
    wanted = pc.field("account_id").isin(pa.array(owner["account_id"].to_list(), pa.string()))
    source = pads.dataset(exchanges) if isinstance(exchanges, pa.Table) else exchanges
    parts = _row_groups(source)
    light = _light_rows(parts, wanted).join(owner, on="account_id")
    sizes = light.group_by("campaign_id").agg(
        total=pl.len(), accounts=pl.col("account_id").n_unique()
    )
    scopes: dict[str, dict[str, Any]] = {}
    if limit > 0:
        over = sizes.filter(pl.col("total") > limit)
        for row in over.iter_rows(named=True):
            per_account = max(1, limit // int(row["accounts"]))
            scopes[str(row["campaign_id"])] = {
                "selection": f"each member's earliest {per_account} exchanges (by ts, request_id)",
                "per_account": per_account,
                "campaign_exchanges": int(row["total"]),
            }
    if scopes:
        cap = pl.DataFrame(
            {
                "campaign_id": list(scopes),
                "per_account": [int(v["per_account"]) for v in scopes.values()],
            }
        )
        light = light.join(cap, on="campaign_id", how="left").sort(["ts", "request_id"])
        rank = pl.int_range(pl.len()).over("account_id")
        light = light.filter(pl.col("per_account").is_null() | (rank < pl.col("per_account")))
        chosen = pc.field("request_id").isin(light["request_id"].to_arrow())
        rows = _holding(parts, light).to_table(
            columns=list(EXCHANGE_COLUMNS), filter=wanted & chosen
        )
    else:
        rows = _holding(parts, light).to_table(columns=list(EXCHANGE_COLUMNS), filter=wanted)
    return rows, scopes


def _row_groups(source: pads.Dataset) -> pads.Dataset:
    """``source`` split into one fragment per Parquet row group, where it is Parquet files.

    The full rows (prompts are most of a log's bytes) are then read only from the row groups
    that hold a chosen exchange. A log is written in time order and a large campaign commits
    its members' earliest exchanges, so at the seed scale that is a small part of the log.
    """
    if not isinstance(source, pads.FileSystemDataset) or not isinstance(
        source.format, pads.ParquetFileFormat
    ):
        return source
    fragments = [
        part for fragment in source.get_fragments() for part in fragment.split_by_row_group()
    ]
    return pads.FileSystemDataset(fragments, source.schema, source.format, source.filesystem)


def _light_rows(parts: pads.Dataset, wanted: pc.Expression) -> pl.DataFrame:
    """(account, time, request id) of every wanted row, and the position of the part holding it."""
    batches = []
    for position, tagged in _tagged_batches(parts, wanted):
        part = pa.array(np.full(tagged.num_rows, position, dtype=np.int32))
        batches.append(tagged.append_column("part", part))
    schema = pa.schema(
        [parts.schema.field(name) for name in _LIGHT_COLUMNS] + [pa.field("part", pa.int32())]
    )
    light = pl.from_arrow(pa.Table.from_batches(batches, schema=schema))
    assert isinstance(light, pl.DataFrame)
    return light


def _tagged_batches(
    parts: pads.Dataset, wanted: pc.Expression
) -> Iterator[tuple[int, pa.RecordBatch]]:
    scanner = parts.scanner(columns=list(_LIGHT_COLUMNS), filter=wanted)
    if not isinstance(parts, pads.FileSystemDataset):
        for batch in scanner.to_batches():
            yield 0, batch
        return
    position = {_part_key(fragment): i for i, fragment in enumerate(parts.get_fragments())}
    for tagged in scanner.scan_batches():
        yield position[_part_key(tagged.fragment)], tagged.record_batch


def _part_key(fragment: pads.Fragment) -> tuple[str, tuple[int, ...]]:
    groups = getattr(fragment, "row_groups", None) or []
    return fragment.path, tuple(group.id for group in groups)


def _holding(parts: pads.Dataset, light: pl.DataFrame) -> pads.Dataset:
    """The parts of ``parts`` that hold at least one of ``light``'s rows."""
    if not isinstance(parts, pads.FileSystemDataset):
        return parts
    fragments = list(parts.get_fragments())
    kept = [fragments[i] for i in sorted(light["part"].unique().to_list())]
    return pads.FileSystemDataset(kept, parts.schema, parts.format, parts.filesystem)


def _rows_by_campaign(
    rows: pa.Table, campaigns: list[dict[str, Any]]
) -> Callable[[int, pa.Array], pa.Table]:
    """A lookup of each campaign's rows (by its position), in the order of ``rows``.

    Clusters are disjoint, so the rows are split once by owner; filtering every row per campaign
    was quadratic (thousands of small clusters at the seed scale). Should an account belong to
    two campaigns, the lookup falls back to filtering by the members.
    """
    owner = pl.DataFrame(
        [(str(m), position) for position, c in enumerate(campaigns) for m in c.get("members", [])],
        schema={"account_id": pl.String, "position": pl.Int64},
        orient="row",
    )
    if owner["account_id"].is_duplicated().any():
        return lambda _, ids: rows.filter(pc.is_in(rows["account_id"], value_set=ids))
    account = pl.from_arrow(rows.select(["account_id"]))
    assert isinstance(account, pl.DataFrame)
    located = account.with_row_index("row").join(owner, on="account_id").sort("row")
    parts = {
        int(key[0]): part["row"].to_numpy()
        for key, part in located.partition_by("position", as_dict=True, maintain_order=True).items()
    }
    empty = rows.schema.empty_table()
    return lambda position, _: rows.take(parts[position]) if position in parts else empty


def write_campaign_cases(
    exchanges: pads.Dataset | pa.Table,
    outdir: str | Path,
    config: Mapping[str, Any],
    *,
    signing_key: Ed25519PrivateKey | None = None,
) -> CaseSummary:
    """For each campaign in ``outdir/campaigns.json`` write ``outdir/cases/<campaign id>/``.

    ``exchanges`` is the judged log's exchanges (``Log.exchanges``); only the members'
    rows are read. Verdicts come from ``outdir/verdicts.jsonl``; detector versions, the
    config hash and input digests from the ``run`` block of ``campaigns.json``.
    """
    out = Path(outdir)
    try:
        document = json.loads((out / "campaigns.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{out}: cannot read campaigns.json to build case files ({exc})") from exc
    campaigns: list[dict[str, Any]] = list(document.get("campaigns", []))
    run: dict[str, Any] = dict(document.get("run", {}))
    key = signing_key if signing_key is not None else signing_key_from_config(config)
    signer = key_fingerprint(key.public_key())
    if not campaigns:
        return CaseSummary({}, signer)

    verdicts = _read_verdicts(out / "verdicts.jsonl")
    limit = int((config.get("evidence") or {}).get("case_max_exchanges", 0) or 0)
    rows, scopes = _campaign_rows(exchanges, campaigns, limit)

    run_info = {
        "config_hash": run.get("config_hash", ""),
        "detector_versions": run.get("detectors", {}),
        "input_digests": run.get("input_digests", {}),
        "signer": signer,
    }
    roots: dict[str, tuple[Path, str]] = {}
    by_campaign = _rows_by_campaign(rows, campaigns)
    for position, campaign in enumerate(campaigns):
        campaign_id = str(campaign["id"])
        ids = pa.array(sorted(str(m) for m in campaign.get("members", [])), pa.string())
        own = by_campaign(position, ids)
        if own.num_rows == 0:
            continue
        case_dir = out / CASES_DIR / campaign_id
        manifest = write_case(
            case_dir,
            campaign=campaign,
            exchanges=own,
            verdicts=[verdicts[a] for a in ids.to_pylist() if a in verdicts],
            run_info=run_info,
            signing_key=key,
            ip_key=derive_ip_key(key, campaign_id),
            scope=scopes.get(campaign_id),
        )
        roots[campaign_id] = (case_dir, manifest.root)
    return CaseSummary(roots, signer)
