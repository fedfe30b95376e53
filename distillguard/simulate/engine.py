"""Day-by-day vectorised generation of exchanges from the groups, streamed to Parquet, plus accounts, labels and ip_intel."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from distillguard.core.atomic import atomic_path
from distillguard.core.errors import ConfigError
from distillguard.core.schema import ACCOUNT_SCHEMA, EXCHANGE_SCHEMA, LABELS_SCHEMA
from distillguard.simulate.knobs import SCALES, SCENARIOS, resolve
from distillguard.simulate.network import DEFAULT_ADDRESS_SPACE, Network
from distillguard.simulate.population import (
    BASE_MODELS,
    DAY_MS,
    NEW_MODEL,
    PROFILES,
    Builder,
    Group,
    _hex,
)
from distillguard.simulate.prompts import Corpus

#: Simulated windows start on Monday 1 June 2026 (UTC).
WINDOW_START: Final = datetime(2026, 6, 1, tzinfo=UTC)
WINDOW_START_MS: Final = int(WINDOW_START.timestamp() * 1000)
MODELS: Final = (*BASE_MODELS, NEW_MODEL)
SINGLE_FILE_SCALES: Final = ("tiny", "small")
STATUS: Final = np.array([200, 429, 500, 400])
STATUS_P: Final = np.array([0.965, 0.025, 0.005, 0.005])


@dataclass(frozen=True)
class SimulationSummary:
    """What a run wrote: sizes, where, and how long it took."""

    scenario: str
    scale: str
    seed: int
    out: Path
    days: int
    release_ts: str  # when NEW_MODEL was released (mid-window)
    exchanges: int
    accounts: int
    attack_accounts: int
    exchanges_by_persona: dict[str, int] = field(default_factory=dict)
    accounts_by_persona: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    bytes: int = 0

    def to_json(self) -> str:
        d = asdict(self)
        d["out"] = str(self.out)
        return json.dumps(d, indent=2, sort_keys=True)


def _release_ms(days: int) -> int:
    return WINDOW_START_MS + (days // 2) * DAY_MS + 17 * 3_600_000


def _seconds_of_day(
    g: Group, rng: np.random.Generator, acc: np.ndarray, seq: np.ndarray
) -> np.ndarray:
    """Second of the (UTC) day each exchange arrives, by the group's timing model."""
    n = len(acc)
    if g.timing == "sync":
        bursts = 6 if g.persona == "reasoning_harvester" else 24
        at = np.sort(rng.uniform(0, 86_400, size=bursts))
        sec = (
            at[rng.integers(0, bursts, size=n)]
            + rng.uniform(0, 90, size=n)
            + rng.normal(0, g.jitter_s + 1e-9, size=n)
        )
    elif g.timing == "burst":
        start = (rng.uniform(8, 15, size=g.n) - g.tz) * 3600
        gap = rng.exponential(1.2, size=g.n)
        sec = start[acc] + seq * gap[acc] + rng.uniform(0, 0.5, size=n)
    else:
        pmf = PROFILES[g.profile]
        hour = rng.choice(24, size=n, p=pmf / pmf.sum())
        sec = (hour - g.tz[acc]) * 3600 + rng.uniform(0, 3600, size=n)
    return np.mod(sec, 86_400)


def _emit(
    g: Group, gi: int, day: int, seed: int, days: int, arrays: dict[str, pa.Array]
) -> pa.Table | None:
    """All exchanges of group ``g`` on ``day``, unsorted, without request_id."""
    rng = np.random.default_rng([seed, day, gi])
    dow = day % 7  # the window starts on a Monday
    lam = g.rate * (g.weekend if dow >= 5 else 1.0)
    if g.timing == "deadline":
        lam = lam * (1.0 + 4.0 * np.exp(-float((6 - dow) % 7)))
    active = (rng.random(g.n) < g.p_active) & (g.start_day <= day)
    counts = rng.poisson(lam * active)
    if g.volume_cap:
        counts = np.minimum(counts, g.volume_cap)
    total = int(counts.sum())
    if total == 0:
        return None
    acc = np.repeat(np.arange(g.n), counts)
    seq = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    ts = (
        WINDOW_START_MS + day * DAY_MS + (_seconds_of_day(g, rng, acc, seq) * 1000).astype(np.int64)
    )

    assert g.bank is not None
    if g.timing == "burst":  # a benchmark run: the same items, in order
        pidx = (seq + rng.integers(0, len(g.bank), size=g.n)[acc]) % len(g.bank)
    elif g.timing == "deadline":  # this week's homework set, the same for the whole class
        week = day // 7
        pidx = np.minimum(week * 12 + rng.integers(0, 12, size=total), len(g.bank) - 1)
    else:
        pidx = rng.integers(0, len(g.bank), size=total)
    prompt = g.bank.text.take(pa.array(pidx))
    tokens = g.bank.tokens[pidx]
    if g.cover is not None and g.cover_share > 0:
        cover = rng.random(total) < g.cover_share
        cidx = rng.integers(0, len(g.cover), size=total)
        prompt = pc.if_else(pa.array(cover), g.cover.text.take(pa.array(cidx)), prompt)
        tokens = np.where(cover, g.cover.tokens[cidx], tokens)

    rotate = rng.random(total) < g.rotation if g.pool is not None else np.zeros(total, bool)
    pool_n = len(g.pool) if g.pool is not None else 1
    ip_idx = np.where(rotate, g.n + rng.integers(0, pool_n, size=total), acc)

    model = rng.choice(3, size=total, p=np.array(g.model_p) / sum(g.model_p))
    if g.timing == "burst":
        model = rng.integers(0, 3, size=g.n)[acc]  # one model per run; re-runs compare models
    since = (ts - _release_ms(days)) / DAY_MS
    if g.adopt == "pivot":
        p_new = np.where(since > 0.2, 0.5, 0.0)  # half the traffic moves within hours
    else:
        p_new = np.where(since > 0, 0.35 * (1 - np.exp(-np.clip(since, 0, None) / 12.0)), 0.0)
    if g.timing == "burst":
        model = np.where((since > 3) & (rng.random(g.n)[acc] < 0.5), 3, model)
    else:
        model = np.where(rng.random(total) < p_new, 3, model)

    messages = rng.integers(g.messages_range[0], g.messages_range[1] + 1, size=total)
    tools = np.where(
        rng.random(total) < g.tools_p,
        rng.integers(g.tools_range[0], g.tools_range[1] + 1, size=total),
        0,
    )
    thinking = rng.random(total) < g.thinking_p
    has_system = g.system_prompt is not None
    input_tokens = tokens + (messages - 1) * 120 + tools * 90 + (400 if has_system else 0)
    status = STATUS[rng.choice(4, size=total, p=STATUS_P)]
    out = rng.lognormal(g.out_mu, g.out_sigma, size=total) * np.where(thinking, 1.8, 1.0)
    output_tokens = np.where(status == 200, out.astype(np.int64) + 1, 0)
    latency = np.where(
        status == 200,
        250 + output_tokens * np.where(thinking, 18, 12) * rng.lognormal(0, 0.3, size=total),
        rng.uniform(20, 400, size=total),
    ).astype(np.int64)

    acc_ids = arrays["account_id"].take(pa.array(acc))
    key_no = (rng.random(total) * g.api_keys).astype(np.int64)
    api_key = pc.binary_join_element_wise(acc_ids, pc.cast(pa.array(key_no), pa.string()), "-k")
    if g.end_users:
        eu = (g.end_users * rng.random(total) ** 3).astype(np.int64)  # a few heavy end users
        end_user = pc.binary_join_element_wise(
            pa.array(np.full(total, "eu"), pa.string()),
            acc_ids,
            pc.cast(pa.array(eu), pa.string()),
            "_",
        )
    else:
        end_user = pa.nulls(total, pa.string())
    system = arrays["system"].take(pa.array(acc)) if has_system else pa.nulls(total, pa.string())
    columns = {
        "ts": pa.array(ts, pa.timestamp("ms", tz="UTC")),
        "request_id": pa.nulls(total, pa.string()),
        "account_id": acc_ids,
        "client_ip": arrays["ips"].take(pa.array(ip_idx)),
        "model": pa.array(MODELS, pa.string()).take(pa.array(model)),
        "prompt": prompt,
        "input_tokens": pa.array(input_tokens, pa.int64()),
        "output_tokens": pa.array(output_tokens, pa.int64()),
        "api_key_id": api_key,
        "end_user_id": end_user,
        "user_agent": arrays["user_agent"].take(pa.array(acc)),
        "system_prompt_sha256": system,
        "messages_count": pa.array(messages, pa.int64()),
        "tools_count": pa.array(tools, pa.int64()),
        "thinking": pa.array(thinking),
        "status": pa.array(status, pa.int64()),
        "latency_ms": pa.array(latency, pa.int64()),
    }
    return pa.Table.from_pydict(columns, schema=EXCHANGE_SCHEMA)


def _group_arrays(g: Group) -> dict[str, pa.Array]:
    pool = g.pool if g.pool is not None else np.array(["0.0.0.0"])
    sys_hashes = None
    if g.system_prompt is not None:
        import hashlib

        sys_hashes = [
            hashlib.sha256(f"system prompt {h}".encode()).hexdigest() for h in g.system_prompt
        ]
    return {
        "account_id": pa.array(g.account_ids.tolist(), pa.string()),
        "ips": pa.array(
            np.concatenate([g.home_ip.astype(str), pool.astype(str)]).tolist(), pa.string()
        ),
        "user_agent": pa.array(g.user_agent.tolist(), pa.string()),
        "system": pa.array(sys_hashes or [], pa.string()),
    }


def _accounts_table(groups: list[Group]) -> pa.Table:
    def cat(attr: str) -> list[object]:
        return [v for g in groups for v in getattr(g, attr).tolist()]

    created = np.concatenate([g.created_day for g in groups])
    return pa.Table.from_pydict(
        {
            "account_id": cat("account_ids"),
            "created_at": pa.array(
                (WINDOW_START_MS + created * DAY_MS).astype(np.int64), pa.timestamp("ms", tz="UTC")
            ),
            "email_domain": cat("email_domain"),
            "payment_fingerprint": cat("payment"),
            "signup_ip": cat("signup_ip"),
            "country": cat("country"),
            "verification": cat("verification"),
            "tier": cat("tier"),
        },
        schema=ACCOUNT_SCHEMA,
    ).sort_by("account_id")


def _labels_table(groups: list[Group]) -> pa.Table:
    rows: dict[str, list[str]] = {"account_id": [], "label": [], "campaign": [], "persona": []}
    for g in groups:
        rows["account_id"] += g.account_ids.tolist()
        rows["label"] += [g.label] * g.n
        rows["campaign"] += [g.campaign] * g.n
        rows["persona"] += [g.persona] * g.n
    return pa.Table.from_pydict(rows, schema=LABELS_SCHEMA).sort_by("account_id")


def _write_csv(table: pa.Table, path: Path) -> None:
    pacsv.write_csv(table, path, pacsv.WriteOptions(quoting_style="needed"))


def simulate(
    scenario: str,
    scale: str,
    seed: int,
    out: Path,
    overrides: Mapping[str, str] | None = None,
    *,
    console: Console | None = None,
    address_space: str = DEFAULT_ADDRESS_SPACE,
) -> SimulationSummary:
    """Generate a log directory for ``scenario`` at ``scale`` into ``out`` (atomically replaced).

    The same arguments always give byte-identical files.
    """
    started = time.perf_counter()
    if scale not in SCALES:
        raise ConfigError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
    if seed < 0:
        raise ConfigError(f"seed {seed}: must be >= 0")
    knobs = resolve(scenario, overrides)
    days = SCALES[scale].days
    rng = np.random.default_rng(seed)
    network = Network(rng, address_space=address_space)
    builder = Builder(rng, network, Corpus(), scale, days, seed)
    groups = builder.benign() + [builder.campaign(name, k) for name, k in knobs.items()]
    total_accounts = sum(g.n for g in groups)
    ids = _hex(f"acct{seed}", range(total_accounts))
    offset = 0
    for g in groups:
        g.account_ids = np.array(
            [f"acct_{h[:12]}" for h in ids[offset : offset + g.n]], dtype=object
        )
        offset += g.n
    arrays = [_group_arrays(g) for g in groups]
    by_persona: dict[str, int] = {}
    n_rows = 0
    console = console or Console(stderr=True)
    with atomic_path(out) as staged:
        staged.mkdir(parents=True)
        single = scale in SINGLE_FILE_SCALES
        if not single:
            (staged / "exchanges").mkdir()
        writer = (
            pq.ParquetWriter(staged / "exchanges.parquet", EXCHANGE_SCHEMA, compression="zstd")
            if single
            else None
        )
        progress = Progress(
            TextColumn(f"simulate {scenario}/{scale}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("days  {task.fields[rows]:,} exchanges"), TimeElapsedColumn(),
            console=console, transient=True,
        )  # fmt: skip
        try:
            with progress:
                task = progress.add_task("days", total=days, rows=0)
                for day in range(days):
                    parts = []
                    for gi, (g, arr) in enumerate(zip(groups, arrays, strict=True)):
                        t = _emit(g, gi, day, seed, days, arr)
                        if t is not None:
                            parts.append(t)
                            by_persona[g.persona] = by_persona.get(g.persona, 0) + t.num_rows
                    table = pa.concat_tables(parts).sort_by(
                        [("ts", "ascending"), ("account_id", "ascending")]
                    )
                    rid = pc.add(pa.array(np.arange(table.num_rows, dtype=np.int64)), n_rows)
                    rid_s = pc.binary_join_element_wise(
                        pa.scalar(f"req_{seed}"),
                        pc.utf8_lpad(pc.cast(rid, pa.string()), 10, "0"),
                        "_",
                    )
                    table = table.set_column(1, EXCHANGE_SCHEMA.field(1), rid_s)
                    n_rows += table.num_rows
                    if writer is not None:
                        writer.write_table(table, row_group_size=1 << 20)
                    else:
                        pq.write_table(
                            table,
                            staged / "exchanges" / f"part-{day:03d}.parquet",
                            compression="zstd",
                        )
                    progress.update(task, advance=1, rows=n_rows)
        finally:
            if writer is not None:
                writer.close()
        pq.write_table(_accounts_table(groups), staged / "accounts.parquet", compression="zstd")
        _write_csv(_labels_table(groups), staged / "labels.csv")
        intel = network.intel_rows()
        _write_csv(
            pa.table({
                "cidr": [r[0] for r in intel], "asn": pa.array([r[1] for r in intel], pa.int64()),
                "asn_org": [r[2] for r in intel], "kind": [r[3] for r in intel],
            }),
            staged / "ip_intel.csv",
        )  # fmt: skip
        size = sum(p.stat().st_size for p in staged.rglob("*") if p.is_file())
    persona_accounts: dict[str, int] = {}
    for g in groups:
        persona_accounts[g.persona] = persona_accounts.get(g.persona, 0) + g.n
    return SimulationSummary(
        scenario=scenario, scale=scale, seed=seed, out=out, days=days,
        release_ts=datetime.fromtimestamp(_release_ms(days) / 1000, UTC).isoformat(),
        exchanges=n_rows, accounts=total_accounts,
        attack_accounts=sum(g.n for g in groups if g.label == "attack"),
        exchanges_by_persona=dict(sorted(by_persona.items())),
        accounts_by_persona=dict(sorted(persona_accounts.items())),
        seconds=round(time.perf_counter() - started, 2), bytes=size,
    )  # fmt: skip


__all__ = ["SCALES", "SCENARIOS", "SimulationSummary", "simulate"]
