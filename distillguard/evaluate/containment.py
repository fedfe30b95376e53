"""Exchange-level aggregates in DuckDB: per-account counts, and replay containment by an as-of join.

Served-at-ts rule: an exchange at time ``t`` is judged by its account's latest decision with
``decision.ts <= t`` — a decision stamped exactly at ``t`` already applies to the exchange at
``t`` (the online path decides as a request arrives, before serving it). Among decisions of one
account with equal ``ts`` the last in file order wins. No decision yet means ``allow``. Served
means ``allow``, ``monitor`` or ``throttle`` (contract §3).

Exchanges are scanned straight from Arrow (a ``pyarrow.dataset.Dataset`` over Parquet streams
with projection pushdown), so tens of millions of rows never become Python objects.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import polars as pl

from distillguard.core.duckdb_backend import connect_raw
from distillguard.core.exchange_sql import (
    ExchangeSource,
    parquet_files,
    read_parquet_sql,
    sql_frame,
)
from distillguard.core.verdict import FLAGGED_ACTIONS, SERVED_ACTIONS
from distillguard.evaluate.metrics import ratio

#: Share of a campaign's accounts that must be flagged for ``seconds_to_95pct_flagged``.
FLAGGED_QUANTILE_PERCENT = 95

#: Horizon of ``share_flagged_within_horizon``: an account counts when flagged this soon after its own first exchange.
FLAG_HORIZON_MS = 24 * 3600 * 1000


def _sql_list(values: frozenset[str]) -> str:
    return ", ".join(f"'{v}'" for v in sorted(values))


def connect_exchanges(exchanges: ExchangeSource) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with an ``exchanges(account_id, ts)`` relation.

    Parquet-backed datasets (what ``load_log`` returns) are read by DuckDB's own Parquet
    reader: joining against a registered pyarrow Dataset rescans it through Python and was
    orders of magnitude slower at 10 M rows. Anything else (in-memory tables in tests) is
    registered and copied once into a DuckDB table.
    """
    con = connect_raw()
    files = parquet_files(exchanges)
    if files is not None:
        con.execute(
            f"CREATE VIEW exchanges AS SELECT account_id, ts FROM {read_parquet_sql(files)}"
        )
    else:
        con.register("exchanges_raw", exchanges)
        con.execute("CREATE TEMP TABLE exchanges AS SELECT account_id, ts FROM exchanges_raw")
        con.unregister("exchanges_raw")
    return con


def query_exchanges(exchanges: ExchangeSource, sql: str, **tables: pl.DataFrame) -> pl.DataFrame:
    """Run ``sql`` over view ``exchanges`` (plus ``tables`` registered by name); close the connection."""
    con = connect_exchanges(exchanges)
    try:
        for name, frame in tables.items():
            con.register(name, frame.to_arrow())
        return sql_frame(con, sql)
    finally:
        con.close()


def exchange_counts(exchanges: ExchangeSource) -> pl.DataFrame:
    """Exchanges per account: (account_id, exchanges, first_ms, last_ms)."""
    return query_exchanges(
        exchanges,
        "SELECT account_id, count(*)::BIGINT AS exchanges, epoch_ms(min(ts)) AS first_ms,"
        " epoch_ms(max(ts)) AS last_ms FROM exchanges GROUP BY account_id",
    )


@dataclass(frozen=True)
class ReplayCampaign:
    """Containment of one true campaign during replay. Times are epoch ms; durations seconds."""

    campaign: str
    accounts: int
    exchanges: int
    served: int
    served_share: float | None
    first_exchange_ms: int | None
    first_flag_ms: int | None
    seconds_to_first_flag: float | None
    exchanges_before_first_flag: int | None
    accounts_flagged: int
    seconds_to_95pct_flagged: float | None
    # Accounts flagged within FLAG_HORIZON_MS of their *own* first exchange, over accounts that
    # sent any: campaigns recruit accounts over days, and one that first appears 30 hours in
    # cannot be flagged within 24 hours of the campaign's start.
    share_flagged_within_horizon: float | None = None


@dataclass(frozen=True)
class ReplayPersona:
    """Collateral damage to one benign persona during replay."""

    persona: str
    accounts: int
    exchanges: int
    not_served: int
    collateral_share: float | None
    accounts_flagged: int
    accounts_suspended: int


@dataclass(frozen=True)
class ReplayMetrics:
    """Everything measured from ``decisions.jsonl``."""

    decisions: int
    attack_exchanges: int
    attack_served: int
    attack_served_share: float | None
    benign_exchanges: int
    benign_not_served: int
    benign_collateral_share: float | None
    campaigns: dict[str, ReplayCampaign]
    personas: dict[str, ReplayPersona]


def _seconds(later: int | None, earlier: int | None) -> float | None:
    """Duration in seconds, 0 when the flag came before the first exchange, None if unknown."""
    if later is None or earlier is None:
        return None
    return max(0, later - earlier) / 1000.0


def replay_metrics(
    exchanges: ExchangeSource, labels: pl.DataFrame, decisions: pl.DataFrame
) -> ReplayMetrics:
    """Containment per campaign and collateral per benign persona (see the module docstring).

    ``labels`` must be normalised (``metrics.normalize_labels``); ``decisions`` is
    (seq, ts, account_id, action) as ``results.read_decisions`` returns it. Exchanges of
    unlabelled accounts are ignored.
    """
    con = connect_exchanges(exchanges)
    try:
        con.register("labels_in", labels.to_arrow())
        con.register(
            "decisions_in", decisions.select("seq", "ts", "account_id", "action").to_arrow()
        )
        served, flagged = _sql_list(SERVED_ACTIONS), _sql_list(FLAGGED_ACTIONS)
        con.execute(
            """
            CREATE TEMP TABLE labels AS
              SELECT account_id, label, coalesce(campaign, persona) AS grp FROM labels_in;
            CREATE TEMP TABLE dec AS
              SELECT account_id, ts::TIMESTAMPTZ AS ts, arg_max(action, seq) AS action
              FROM decisions_in GROUP BY account_id, ts;
            """
        )
        con.execute(
            f"""
            CREATE TEMP TABLE account_flags AS
              SELECT account_id,
                     epoch_ms(min(ts) FILTER (WHERE action IN ({flagged}))) AS first_flag_ms,
                     bool_or(action = 'suspend') AS suspended
              FROM decisions_in GROUP BY account_id;
            CREATE TEMP TABLE group_flags AS
              SELECT l.grp, l.label, min(f.first_flag_ms) AS first_flag_ms
              FROM labels l JOIN account_flags f USING (account_id) GROUP BY l.grp, l.label;
            """
        )
        per_group = sql_frame(
            con,
            f"""
            WITH e AS (
              SELECT x.account_id, x.ts, l.label, l.grp
              FROM exchanges x JOIN labels l USING (account_id)
            ), j AS (
              SELECT e.label, e.grp, epoch_ms(e.ts) AS ms, coalesce(d.action, 'allow') AS action
              FROM e ASOF LEFT JOIN dec d ON e.account_id = d.account_id AND e.ts >= d.ts
            )
            SELECT j.label, j.grp, count(*)::BIGINT AS exchanges,
                   (count(*) FILTER (WHERE j.action IN ({served})))::BIGINT AS served,
                   min(j.ms) AS first_exchange_ms,
                   (count(*) FILTER (WHERE j.ms < g.first_flag_ms))::BIGINT AS before_flag
            FROM j LEFT JOIN group_flags g ON j.grp = g.grp AND j.label = g.label
            GROUP BY j.label, j.grp
            """,
        )
        per_account = sql_frame(
            con,
            """
            WITH firsts AS (
              SELECT account_id, epoch_ms(min(ts)) AS first_ms FROM exchanges GROUP BY account_id
            )
            SELECT l.label, l.grp, l.account_id, f.first_flag_ms, coalesce(f.suspended, false) AS suspended,
                   x.first_ms
            FROM labels l LEFT JOIN account_flags f USING (account_id) LEFT JOIN firsts x USING (account_id)
            """,
        )
    finally:
        con.close()
    return _assemble(per_group, per_account, decisions.height)


def _assemble(
    per_group: pl.DataFrame, per_account: pl.DataFrame, n_decisions: int
) -> ReplayMetrics:
    accounts = per_account.group_by("label", "grp").agg(
        pl.len().alias("accounts"),
        pl.col("first_flag_ms").is_not_null().sum().alias("flagged"),
        pl.col("suspended").sum().alias("suspended"),
        pl.col("first_flag_ms").min().alias("first_flag_ms"),
        pl.col("first_flag_ms").drop_nulls().sort().alias("flag_times"),
        pl.col("first_ms").is_not_null().sum().alias("active"),
        (pl.col("first_flag_ms") <= pl.col("first_ms") + FLAG_HORIZON_MS).sum().alias("in_horizon"),
    )
    table = accounts.join(per_group, on=["label", "grp"], how="left").with_columns(
        pl.col("exchanges").fill_null(0),
        pl.col("served").fill_null(0),
        pl.col("before_flag").fill_null(0),
    )
    campaigns: dict[str, ReplayCampaign] = {}
    personas: dict[str, ReplayPersona] = {}
    for r in table.sort("grp").iter_rows(named=True):
        n_accounts, n_exchanges, n_served = (
            int(r["accounts"]),
            int(r["exchanges"]),
            int(r["served"]),
        )
        if r["label"] == "attack":
            first_flag: int | None = r["first_flag_ms"]
            needed = -(-FLAGGED_QUANTILE_PERCENT * n_accounts // 100)  # ceil without float error
            times: list[int] = r["flag_times"]
            campaigns[r["grp"]] = ReplayCampaign(
                campaign=r["grp"],
                accounts=n_accounts,
                exchanges=n_exchanges,
                served=n_served,
                served_share=ratio(n_served, n_exchanges),
                first_exchange_ms=r["first_exchange_ms"],
                first_flag_ms=first_flag,
                seconds_to_first_flag=_seconds(first_flag, r["first_exchange_ms"]),
                exchanges_before_first_flag=None if first_flag is None else int(r["before_flag"]),
                accounts_flagged=int(r["flagged"]),
                seconds_to_95pct_flagged=(
                    _seconds(times[needed - 1], r["first_exchange_ms"])
                    if 0 < needed <= len(times)
                    else None
                ),
                share_flagged_within_horizon=ratio(int(r["in_horizon"]), int(r["active"])),
            )
        else:
            not_served = n_exchanges - n_served
            personas[r["grp"]] = ReplayPersona(
                persona=r["grp"],
                accounts=n_accounts,
                exchanges=n_exchanges,
                not_served=not_served,
                collateral_share=ratio(not_served, n_exchanges),
                accounts_flagged=int(r["flagged"]),
                accounts_suspended=int(r["suspended"]),
            )
    attack_exchanges = sum(c.exchanges for c in campaigns.values())
    attack_served = sum(c.served for c in campaigns.values())
    benign_exchanges = sum(p.exchanges for p in personas.values())
    benign_not_served = sum(p.not_served for p in personas.values())
    return ReplayMetrics(
        decisions=n_decisions,
        attack_exchanges=attack_exchanges,
        attack_served=attack_served,
        attack_served_share=ratio(attack_served, attack_exchanges),
        benign_exchanges=benign_exchanges,
        benign_not_served=benign_not_served,
        benign_collateral_share=ratio(benign_not_served, benign_exchanges),
        campaigns=campaigns,
        personas=personas,
    )
