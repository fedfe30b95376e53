"""Per-account and per-end-user aggregates of the signals table, written once as Ibis expressions (DuckDB here, Spark later).

Columns of :func:`compute_account_features` (keyed by ``account_id``) and of
:func:`compute_end_user_features` (keyed by ``account_id, end_user_id``; rows without
an end user are grouped under a null ``end_user_id``):

- volume: ``n_exchanges``, ``n_content`` (exchanges with a prompt), ``active_days``,
  ``exchanges_per_active_day``, ``first_ts``, ``last_ts``
- what is asked: ``top_capability``, ``top_capability_share``, ``capability_entropy``
  (bits), ``capability_entropy_norm`` (/ log2 of the number of classes), ``n_capabilities``,
  ``reasoning_share``, ``grader_share``, ``rewrite_share`` (share of content exchanges whose
  score >= ``features.signal_threshold``), ``mean_reasoning``
- templates: ``top_template_id``, ``top_template_share``, ``n_templates``
- tokens: ``out_in_ratio`` (sum out / sum in), ``thinking_share``
- timing: ``interarrival_cv`` (std / mean of gaps, null under 3 exchanges), ``hour_entropy_norm``
  (entropy over 24 UTC hours / log2 24), ``active_hours``, ``night_share`` (UTC hours in
  ``features.night_hours``)
- account: ``account_age_days`` (first exchange - created_at), ``verification_level``
  (0 none .. 4 kyc, null unknown)
- network: ``n_ips``, ``ip_churn`` (distinct IPs / exchanges), ``n_prefixes``, ``n_asns``,
  ``share_<kind>`` for each network kind (plus ``share_anonymising`` = vpn + proxy + tor)
- aliases for scoring: ``capability_top_share``, ``template_top_share``, ``hour_entropy``
  (= the normalised one), ``timing_regularity`` = 1 / (1 + interarrival_cv)
- other: ``n_end_users``, ``n_models``, ``n_user_agents``, ``newest_model_share`` (share on the
  model first seen last in the input)

Shares over content are null for an account without content (abstain, not zero).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Final

import ibis
import ibis.expr.types as ir
import pyarrow as pa
import pyarrow.dataset as ds

from distillguard.core.duckdb_backend import connect_ibis
from distillguard.core.schema import ACCOUNT_SCHEMA, VERIFICATION_LEVELS, NetworkKind

KINDS: Final = tuple(k.value for k in NetworkKind)
ANONYMISING: Final = ("vpn", "proxy", "tor")


def _settings(config: Mapping[str, Any]) -> tuple[float, tuple[int, int]]:
    section = config.get("features") or {}
    threshold = float(section.get("signal_threshold", 0.5))
    night = section.get("night_hours", [0, 6])
    return threshold, (int(night[0]), int(night[1]))


#: Per-key distinct counts (feature name, signals column) computed as (key, value) group-bys by
#: :func:`feature_expr`; ``active_hours``, ``n_ips``, ``n_prefixes`` and ``n_asns`` come from
#: group-bys it makes anyway (hours of day; addresses, whose prefix and ASN depend on the address).
_DISTINCT_COUNTS: Final = (
    ("active_days", "day"),
    ("n_end_users", "end_user_id"),
    ("n_models", "model"),
    ("n_user_agents", "user_agent"),
)
_DERIVED_COUNTS: Final = ("active_hours", "n_ips", "n_prefixes", "n_asns")
#: The signals columns :func:`feature_expr` reads (besides its keys).
_FEATURE_INPUTS: Final = frozenset(
    {
        "account_id", "end_user_id", "ts", "model", "client_ip", "ip_prefix", "asn",
        "network_kind", "user_agent", "input_tokens", "output_tokens", "thinking", "capability",
        "reasoning_elicitation", "grader_use", "rewrite_request", "template_id", "has_content",
    }
)  # fmt: skip


def connect(memory_limit: str | None = None) -> ibis.BaseBackend:
    """An embedded DuckDB backend for the feature queries, capped at ``memory_limit``."""
    con = connect_ibis()
    if memory_limit:
        con.raw_sql(f"SET memory_limit = '{memory_limit}'")  # type: ignore[attr-defined]
    return con


def _table(con: ibis.BaseBackend, data: pa.Table | ds.Dataset, name: str) -> ir.Table:
    if isinstance(data, ds.FileSystemDataset) and data.files:
        return con.read_parquet(list(data.files), table_name=name)  # type: ignore[attr-defined]
    table = data.to_table() if isinstance(data, ds.Dataset) else data
    return con.create_table(name, table, overwrite=True)  # type: ignore[attr-defined]


def _entropy(counts: ir.Table, keys: Sequence[str], by: str, total: str) -> ir.Table:
    """Shannon entropy (bits) and top value per key from per-(key, by) counts ``n`` and key totals."""
    p = counts.n.cast("float64") / counts[total].cast("float64")
    rank = ibis.row_number().over(ibis.window(group_by=list(keys), order_by=[ibis.desc("n"), by]))
    with_p = counts.mutate(term=-(p * p.log2()), p=p, rank=rank)
    agg = with_p.group_by(list(keys)).aggregate(
        entropy=with_p.term.sum(),
        n_values=with_p.count(),
        top_value=with_p[by].arbitrary(where=with_p["rank"] == 0),
        top_share=with_p.p.max(),
    )
    return agg


def feature_expr(
    signals: ir.Table, accounts: ir.Table | None, keys: Sequence[str], config: Mapping[str, Any]
) -> ir.Table:
    """The feature table for ``keys`` as one Ibis expression (no execution)."""
    threshold, (night_lo, night_hi) = _settings(config)
    keys = list(keys)
    # Only the columns read below: DuckDB materialises a subquery several consumers share, and
    # request ids and hashes it never reads were most of that table's width (seed scale: it spilled).
    used = [c for c in signals.columns if c in {*keys, *_FEATURE_INPUTS}]
    narrow = signals.select(*used)
    epoch = narrow.ts.epoch_seconds()
    # Hour and day as integer arithmetic on the epoch (UTC, as the contract's times are): DuckDB
    # reads hour() and date() of a zoned timestamp through ICU's calendar, a few per cent of the
    # seed-scale run under perf; the same values.
    s = narrow.mutate(
        sec=epoch.cast("float64"),
        hour=((epoch // 3600) % 24).cast("int32"),
        day=epoch // 86400,
    )
    # Only the keys and the time go through the sort: a window carries every column it is given.
    # Ties in ts need no tie-break: equal times give a zero gap whichever comes first.
    times = s.select(*keys, "sec")
    gaps = times.mutate(
        gap=times.sec - times.sec.lag().over(ibis.window(group_by=keys, order_by=times.sec))
    )
    content = s.has_content
    newest = (
        s.group_by("model")
        .aggregate(first=s.ts.min())
        .order_by([ibis.desc("first"), "model"])
        .limit(1)
    )
    newest_model = newest.model.as_scalar()

    def share(cond: ir.BooleanValue) -> ir.FloatingValue:
        hits = cond.ifelse(1, 0).sum().cast("float64")
        return hits / s.count().cast("float64")

    def content_share(column: str) -> ir.FloatingValue:
        # Denominator counts scored rows only: a missing signal abstains (null), never reads as 0.
        scored = content & s[column].notnull()
        hits = (s[column] >= threshold).ifelse(1, 0).sum(where=scored).cast("float64")
        n = scored.ifelse(1, 0).sum().cast("float64")
        return ibis.ifelse(n > 0, hits / n, ibis.null("float64"))

    distinct = dict.fromkeys([*(name for name, _ in _DISTINCT_COUNTS), *_DERIVED_COUNTS])
    aggregates: dict[str, ir.Value | None] = dict(
        n_exchanges=s.count(),
        n_content=content.ifelse(1, 0).sum(),
        active_days=None,
        active_hours=None,
        first_ts=s.ts.min(),
        last_ts=s.ts.max(),
        reasoning_share=content_share("reasoning_elicitation"),
        grader_share=content_share("grader_use"),
        rewrite_share=content_share("rewrite_request"),
        mean_reasoning=s.reasoning_elicitation.mean(),
        out_in_ratio=s.output_tokens.sum().cast("float64")
        / ibis.greatest(s.input_tokens.sum(), 1).cast("float64"),
        thinking_share=share(s.thinking.fill_null(False)),
        night_share=share((s.hour >= night_lo) & (s.hour < night_hi)),
        n_ips=None,
        n_prefixes=None,
        n_asns=None,
        n_end_users=None,
        n_models=None,
        n_user_agents=None,
        newest_model_share=share(s.model == newest_model),
        share_anonymising=share(s.network_kind.isin(ANONYMISING)),
        **{f"share_{k}": share(s.network_kind == k) for k in KINDS},
    )
    base = s.group_by(keys).aggregate(**{k: v for k, v in aggregates.items() if v is not None})
    # Distinct counts as (key, value) group-bys then a count per key: DuckDB's COUNT(DISTINCT)
    # keeps a hash set per group and was the costliest operator of this stage (seed scale:
    # minutes); a plain group-by spills and parallelises. Same numbers (nulls not counted).
    counted: list[ir.Table] = []
    for name, column in _DISTINCT_COUNTS:
        pairs = s.filter(s[column].notnull()).select(*keys, value=s[column]).distinct()
        counted.append(pairs.group_by(keys).aggregate(**{name: pairs.count()}))
    # ip_prefix and asn are functions of client_ip, so one (key, address) group-by counts all three.
    addressed = s.filter(s.client_ip.notnull())
    per_ip = addressed.group_by([*keys, "client_ip"]).aggregate(
        ip_prefix=addressed.ip_prefix.max(), asn=addressed.asn.max()
    )
    counted.append(
        per_ip.group_by(keys).aggregate(
            n_ips=per_ip.count(), n_prefixes=per_ip.ip_prefix.nunique(), n_asns=per_ip.asn.nunique()
        )
    )
    totals = s.group_by(keys).aggregate(total=s.count())
    hours = s.group_by([*keys, "hour"]).aggregate(n=s.count()).join(totals, keys)
    counted.append(hours.group_by(keys).aggregate(active_hours=hours.count()))
    for part in counted:
        base = base.left_join(part, keys).drop(*[f"{k}_right" for k in keys])
    base = base.mutate(**{name: base[name].fill_null(0) for name in distinct})
    base = base.select(*keys, *aggregates)
    base = base.mutate(
        exchanges_per_active_day=base.n_exchanges.cast("float64")
        / base.active_days.cast("float64"),
        ip_churn=base.n_ips.cast("float64") / base.n_exchanges.cast("float64"),
    )
    timing = gaps.group_by(keys).aggregate(
        gap_mean=gaps.gap.mean(), gap_std=gaps.gap.std(how="pop"), n_gaps=gaps.gap.count()
    )
    timing = timing.mutate(
        interarrival_cv=ibis.ifelse(
            (timing.n_gaps >= 2) & (timing.gap_mean > 0),
            timing.gap_std / timing.gap_mean,
            ibis.null("float64"),
        )
    ).select(*keys, "interarrival_cv")

    hour_h = (
        _entropy(hours, keys, "hour", "total")
        .mutate(hour_entropy_norm=lambda t: t.entropy / math.log2(24))
        .select(*keys, "hour_entropy_norm")
    )

    cs = s.filter(content & s.capability.notnull())
    ctot = cs.group_by(keys).aggregate(total=cs.count())
    caps = cs.group_by([*keys, "capability"]).aggregate(n=cs.count()).join(ctot, keys)
    cap_h = _entropy(caps, keys, "capability", "total")
    cap_h = cap_h.select(
        *keys,
        top_capability=cap_h.top_value,
        top_capability_share=cap_h.top_share,
        capability_entropy=cap_h.entropy,
        capability_entropy_norm=cap_h.entropy / math.log2(12),
        n_capabilities=cap_h.n_values,
    )

    ts_ = s.filter(s.template_id.notnull())
    ttot = ts_.group_by(keys).aggregate(total=ts_.count())
    tpl = ts_.group_by([*keys, "template_id"]).aggregate(n=ts_.count()).join(ttot, keys)
    tpl_h = _entropy(tpl, keys, "template_id", "total")
    tpl_h = tpl_h.select(
        *keys,
        top_template_id=tpl_h.top_value,
        top_template_share=tpl_h.top_share,
        n_templates=tpl_h.n_values,
    )

    out = base
    for part in (timing, hour_h, cap_h, tpl_h):
        out = out.left_join(part, keys).drop(*[f"{k}_right" for k in keys])
    if accounts is not None:
        level = ibis.cases(
            *((accounts.verification == v, i) for i, v in enumerate(VERIFICATION_LEVELS)),
            else_=ibis.null("int64"),
        )
        acc = accounts.select(
            account_id=accounts.account_id,
            created_at=accounts.created_at,
            verification_level=level.cast("int64"),
        )
        out = out.left_join(acc, "account_id").drop("account_id_right")
        age = (
            out.first_ts.epoch_seconds().cast("float64")
            - out.created_at.epoch_seconds().cast("float64")
        ) / 86400.0
        out = out.mutate(account_age_days=age).drop("created_at")
    else:
        out = out.mutate(
            account_age_days=ibis.null("float64"), verification_level=ibis.null("int64")
        )
    # Aliases under the names the scoring configuration uses (scoring.account_signals).
    out = out.mutate(
        capability_top_share=out.top_capability_share,
        template_top_share=out.top_template_share,
        hour_entropy=out.hour_entropy_norm,
        timing_regularity=1.0 / (1.0 + out.interarrival_cv),
    )
    return out.order_by(keys)


def _run(
    signals: pa.Table | ds.Dataset,
    accounts: pa.Table | None,
    keys: Sequence[str],
    config: Mapping[str, Any],
) -> pa.Table:
    con = connect((config.get("engine") or {}).get("memory_limit"))
    sig = _table(con, signals, "signals")
    acc = None
    if accounts is not None:
        present = [
            c for c in ("account_id", "created_at", "verification") if c in accounts.column_names
        ]
        table = accounts.select(present)
        for name in ("created_at", "verification"):
            if name not in table.column_names:
                table = table.append_column(
                    name, pa.nulls(table.num_rows, ACCOUNT_SCHEMA.field(name).type)
                )
        acc = _table(con, table, "accounts")
    result: pa.Table = con.to_pyarrow(feature_expr(sig, acc, keys, config))  # type: ignore[attr-defined]
    return result


def compute_account_features(
    signals: pa.Table | ds.Dataset, accounts: pa.Table | None, config: Mapping[str, Any]
) -> pa.Table:
    """One row per account (see module docstring for the columns), sorted by ``account_id``."""
    return _run(signals, accounts, ["account_id"], config)


def compute_end_user_features(
    signals: pa.Table | ds.Dataset, accounts: pa.Table | None, config: Mapping[str, Any]
) -> pa.Table:
    """One row per (account_id, end_user_id) — for resellers and SaaS accounts with many end users."""
    return _run(signals, accounts, ["account_id", "end_user_id"], config)
