"""``distillguard validate``: load a log directory and summarise it (rows, accounts, span, models, coverage)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
from rich.console import Console
from rich.table import Table

from distillguard.core.atomic import write_text_atomic
from distillguard.ingest.checker import connect
from distillguard.ingest.ipintel import lookup
from distillguard.ingest.log import Log, load_log


@dataclass(frozen=True)
class Summary:
    """What a valid log directory holds."""

    logdir: str
    rows: int
    accounts_in_exchanges: int
    accounts_in_file: int
    first_ts: str | None
    last_ts: str | None
    models: dict[str, int]
    content_share: float
    distinct_ips: int
    unknown_ip_share: float
    unknown_ip_row_share: float
    digests: dict[str, str]


def summarise(log: Log) -> Summary:
    """Columnar aggregates over the staged exchanges (never materialised whole)."""
    con = connect()
    con.register("ex", log.exchanges)
    rows, accounts, first, last, content = con.sql(
        """SELECT count(*), count(DISTINCT account_id), strftime(min(ts), '%Y-%m-%dT%H:%M:%S.%gZ'),
                  strftime(max(ts), '%Y-%m-%dT%H:%M:%S.%gZ'), count(*) FILTER (WHERE prompt <> '')
           FROM ex"""
    ).fetchone() or (0, 0, None, None, 0)
    models = dict(
        con.sql("SELECT model, count(*) FROM ex GROUP BY 1 ORDER BY 2 DESC, 1").fetchall()
    )
    ips = con.sql("SELECT client_ip, count(*) AS n FROM ex GROUP BY 1").to_arrow_table()
    kinds = lookup(ips.column("client_ip"), log.ip_intel).column("kind")
    unknown = pa.compute.equal(kinds, "unknown")
    n_ips = ips.num_rows
    unknown_rows = pa.compute.sum(pa.compute.if_else(unknown, ips.column("n"), 0)).as_py() or 0
    return Summary(
        logdir=str(log.path),
        rows=int(rows),
        accounts_in_exchanges=int(accounts),
        accounts_in_file=log.accounts.num_rows,
        first_ts=first,
        last_ts=last,
        models={str(k): int(v) for k, v in models.items()},
        content_share=(content / rows) if rows else 0.0,
        distinct_ips=n_ips,
        unknown_ip_share=(pa.compute.sum(unknown).as_py() or 0) / n_ips if n_ips else 0.0,
        unknown_ip_row_share=unknown_rows / rows if rows else 0.0,
        digests=dict(log.digests),
    )


def validate_logdir(logdir: str | Path, config: Mapping[str, Any] | None = None) -> Summary:
    """Validate ``logdir`` (raising InvalidInputError with every problem) and summarise it."""
    return summarise(load_log(logdir, config))


def render_summary(summary: Summary, console: Console) -> None:
    """Print the summary as a small rich table."""
    table = Table(title=f"valid log: {summary.logdir}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("exchanges", f"{summary.rows:,}")
    table.add_row(
        "accounts",
        f"{summary.accounts_in_exchanges:,} in exchanges, {summary.accounts_in_file:,} in accounts file",
    )
    table.add_row("time span", f"{summary.first_ts} → {summary.last_ts}")
    shown = list(summary.models.items())[:8]
    more = len(summary.models) - len(shown)
    table.add_row(
        "models", ", ".join(f"{m} ({n:,})" for m, n in shown) + (f", +{more} more" if more else "")
    )
    table.add_row(
        "with content", f"{summary.content_share:.1%} of exchanges have a non-empty prompt"
    )
    table.add_row(
        "unknown IPs",
        f"{summary.unknown_ip_share:.1%} of {summary.distinct_ips:,} client IPs "
        f"({summary.unknown_ip_row_share:.1%} of exchanges) are in no ip_intel network",
    )
    console.print(table)


def write_summary_json(summary: Summary, path: str | Path) -> None:
    """Write the summary as JSON, atomically."""
    write_text_atomic(path, json.dumps(asdict(summary), indent=2, sort_keys=True) + "\n")
