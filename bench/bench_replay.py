"""Replay throughput: a simulated log through ``distillguard replay``'s online path, exchanges per second.

    .venv/bin/python bench/bench_replay.py --scale medium --seed 7
    .venv/bin/python bench/bench_replay.py --logdir /path/to/log

Reports the time spent in content signals (the signal stage's per-exchange code) separately
from the online state/score/policy path, since the goal (>= 20,000 exchanges/s on 2 cores)
depends on both.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from distillguard.core.config import load_config
from distillguard.core.schema import EXCHANGE_COLUMNS
from distillguard.enforce.campaigns import CampaignWatcher
from distillguard.enforce.online import BatchContentSignals, Enforcer
from distillguard.enforce.replay import account_metas, sorted_batches
from distillguard.enforce.settings import EnforceSettings
from distillguard.ingest import load_log


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--logdir", type=Path, default=None)
    parser.add_argument("--scale", default="small")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--capability-model", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    logdir = args.logdir
    if logdir is None:
        logdir = Path(tempfile.mkdtemp()) / "sim"
        subprocess.run([sys.executable, "-m", "distillguard", "simulate", "--scale", args.scale, "--seed",
                        str(args.seed), "--out", str(logdir)], check=True)  # fmt: skip
    config = load_config()
    config["enforce"]["online"]["capability_model"] = args.capability_model
    settings = EnforceSettings.from_config(config)
    log = load_log(logdir, config)
    table = log.exchanges.to_table(columns=[c for c in EXCHANGE_COLUMNS if c in log.exchanges.schema.names])
    metas = account_metas(log.accounts)
    content = BatchContentSignals(config, intel=log.ip_intel, capability_model=settings.capability_model)
    enforcer = Enforcer(config, campaigns=CampaignWatcher(None, 0.3), settings=settings, intel=log.ip_intel)
    t_signals = t_online = 0.0
    start = time.perf_counter()
    for batch in sorted_batches(table, settings.replay_batch_rows):
        t = time.perf_counter()
        signals = content.compute(batch)
        t_signals += time.perf_counter() - t
        t = time.perf_counter()
        rows = batch.to_pylist()
        for r in rows:
            r["ts"] = int(r["ts"].timestamp() * 1000)
        enforcer.process(rows, [metas.get(r["account_id"]) for r in rows], signals, limits=False)
        t_online += time.perf_counter() - t
    total = time.perf_counter() - start
    n = table.num_rows
    print(json.dumps({"exchanges": n, "seconds": round(total, 2), "exchanges_per_s": round(n / total),
                      "signals_s": round(t_signals, 2), "online_s": round(t_online, 2),
                      "online_only_per_s": round(n / t_online) if t_online else None,
                      "capability_model": args.capability_model}))  # fmt: skip


if __name__ == "__main__":
    main()
