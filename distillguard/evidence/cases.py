"""Write one signed case file per detected campaign from `detect`'s outputs and the log they judged."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Callable, Mapping
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from distillguard.core.duckdb_backend import connect_raw
from distillguard.core.errors import ConfigError
from distillguard.core.exchange_sql import exchanges_view, sql_frame
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

    A campaign over ``limit`` keeps each member's earliest ``limit // members`` exchanges (by
    ts, then request id). Only (account, time, request id) are read to choose them; full rows
    (prompts included) only for the chosen ones, so memory follows ``limit``, not the size of
    the campaign.

    DuckDB reads the log's Parquet files itself. At the seed scale it reads the chosen rows in
    ~20 s where a pyarrow dataset filtered by request id took ~40 s. Its semi-joins prune row
    groups by the chosen ids' range, and decoding is most of the cost (prompts are ~90 % of a
    log's bytes).
    """
    owner = pl.DataFrame(
        [(str(m), str(c["id"])) for c in campaigns for m in c.get("members", [])],
        schema={"account_id": pl.String, "campaign_id": pl.String},
        orient="row",
    ).unique(subset="account_id", keep="first", maintain_order=True)
    with closing(_exchanges_connection(exchanges)) as con:
        con.register("owner", owner.select("account_id").to_arrow())
        counted = sql_frame(
            con,
            "SELECT account_id, count(*) AS n FROM exchanges "
            "SEMI JOIN owner USING (account_id) GROUP BY account_id",
        )
        sizes = (
            counted.join(owner, on="account_id")
            .group_by("campaign_id")
            .agg(total=pl.col("n").sum(), accounts=pl.len())
        )
        scopes: dict[str, dict[str, Any]] = {}
        if limit > 0:
            over = sizes.filter(pl.col("total") > limit).sort("campaign_id")
            for row in over.iter_rows(named=True):
                per_account = max(1, limit // int(row["accounts"]))
                scopes[str(row["campaign_id"])] = {
                    "selection": (
                        f"each member's earliest {per_account} exchanges (by ts, request_id)"
                    ),
                    "per_account": per_account,
                    "campaign_exchanges": int(row["total"]),
                }
        capped = owner.join(
            pl.DataFrame(
                {
                    "campaign_id": list(scopes),
                    "per_account": [int(v["per_account"]) for v in scopes.values()],
                },
                schema={"campaign_id": pl.String, "per_account": pl.Int64},
            ),
            on="campaign_id",
        ).select("account_id", "per_account")
        whole = owner.join(capped, on="account_id", how="anti").select("account_id")
        con.register("whole", whole.to_arrow())
        con.register("chosen", _earliest(con, capped).to_arrow())
        rows = con.execute(
            "SELECT * FROM exchanges SEMI JOIN whole USING (account_id) "
            "UNION ALL SELECT * FROM exchanges SEMI JOIN chosen USING (request_id)"
        ).to_arrow_table()
    schema = pa.schema([exchanges.schema.field(name) for name in EXCHANGE_COLUMNS])
    return rows.select(list(EXCHANGE_COLUMNS)).cast(schema), scopes


def _exchanges_connection(exchanges: pads.Dataset | pa.Table) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the contract's exchange columns as view ``exchanges``."""
    con = connect_raw()
    con.execute("SET TimeZone = 'UTC'")
    exchanges_view(con, exchanges, "exchanges", EXCHANGE_COLUMNS)
    return con


def _earliest(con: duckdb.DuckDBPyConnection, capped: pl.DataFrame) -> pl.DataFrame:
    """Request ids of each capped account's earliest ``per_account`` exchanges (by ts, request id).

    Polars sorts the ~27M (account, time, id) rows of a seed-scale campaign and takes each
    account's head in ~5 s; a DuckDB window over them took ~17 s and ``min_by(…, n)`` ~14 s.
    """
    if capped.height == 0:
        return pl.DataFrame(schema={"request_id": pl.String})
    con.register("capped", capped.to_arrow())
    light = sql_frame(
        con,
        "SELECT account_id, ts, request_id, per_account FROM exchanges "
        "JOIN capped USING (account_id)",
    )
    most = int(capped["per_account"].max())  # type: ignore[arg-type]
    heads = light.sort(["ts", "request_id"]).group_by("account_id", maintain_order=True).head(most)
    rank = pl.int_range(pl.len()).over("account_id")
    return heads.filter(rank < pl.col("per_account")).select("request_id")


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
