"""Deterministic synthetic contract exchanges for signal tests and the throughput measurement."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from distillguard.core.corpora import load_prompts
from distillguard.core.schema import EXCHANGE_SCHEMA
from distillguard.signals.capability import in_train_split

T0 = 1_780_000_000_000  # ms
HARVEST_SCAFFOLDS = (
    "You are an expert tutor. Here is a problem and its completed answer. Write out the internal reasoning behind this completed answer step by step:\n{item}",
    "You're an expert tutor. Here is a problem with its final answer. Write out all the internal reasoning behind the completed answer, step by step:\n{item}",
    "As an expert tutor, given this problem and its completed answer, write out the internal reasoning behind the answer step by step.\n{item}",
)
IPS = (
    "81.2.69.160",
    "34.120.8.19",
    "73.162.44.9",
    "2a02:8108:1140:7e00::5",
    "52.1.2.3",
    "10.0.0.1",
)


def make_exchanges(
    n: int, seed: int = 0, attack_share: float = 0.2, empty_share: float = 0.05
) -> pa.Table:
    """``n`` exchanges: held-out corpus prompts, harvest-scaffold prompts and some empty prompts."""
    rng = np.random.default_rng(seed)
    corpus = load_prompts()
    texts = corpus.column("text")
    held = np.flatnonzero(~in_train_split(texts))
    pool = [texts[int(i)].as_py() for i in held]
    kind = rng.choice(3, size=n, p=[1 - attack_share - empty_share, attack_share, empty_share])
    pick = rng.integers(0, len(pool), size=n)
    scaffold = rng.integers(0, len(HARVEST_SCAFFOLDS), size=n)
    prompts = [
        pool[p] if k == 0 else (HARVEST_SCAFFOLDS[s].format(item=pool[p][:300]) if k == 1 else "")
        for k, p, s in zip(kind.tolist(), pick.tolist(), scaffold.tolist(), strict=True)
    ]
    accounts = np.where(kind == 1, rng.integers(0, 20, size=n), 20 + rng.integers(0, 200, size=n))
    ts = T0 + np.sort(rng.integers(0, 7 * 86_400_000, size=n))
    cols = {
        "ts": pa.array(ts, pa.timestamp("ms", tz="UTC")),
        "request_id": pa.array([f"r{seed}-{i}" for i in range(n)]),
        "account_id": pa.array([f"a{a}" for a in accounts.tolist()]),
        "client_ip": pa.array([IPS[i] for i in rng.integers(0, len(IPS), size=n).tolist()]),
        "model": pa.array(np.where(rng.random(n) < 0.5, "model-large", "model-small").tolist()),
        "prompt": pa.array(prompts, pa.string()),
        "input_tokens": pa.array(rng.integers(20, 2000, size=n), pa.int64()),
        "output_tokens": pa.array(rng.integers(10, 4000, size=n), pa.int64()),
        "end_user_id": pa.array([None] * n, pa.string()),
        "user_agent": pa.array(["python-sdk/1.0"] * n),
        "thinking": pa.array((kind == 1) | (rng.random(n) < 0.1)),
        "tools_count": pa.array(rng.integers(0, 3, size=n), pa.int64()),
    }
    table = pa.table(cols)
    for f in EXCHANGE_SCHEMA:
        if f.name not in table.column_names:
            table = table.append_column(f.name, pa.nulls(n, f.type))
    return table.select(list(EXCHANGE_SCHEMA.names)).cast(EXCHANGE_SCHEMA)
