"""Replay throughput: a simulated log through ``distillguard replay``'s online path, exchanges per second.

    .venv/bin/python bench/bench_replay.py --scale medium --seed 7
    .venv/bin/python bench/bench_replay.py --logdir /path/to/log

Reports the replay's own throughput (``replay_table``: signals for the next micro-batch computed
in a thread while the state loop runs the current one) and, with ``--breakdown``, the signal
stage and the online state/score/policy path timed serially, since the goal (>= 20,000
exchanges/s on 2 cores) depends on both.
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
from distillguard.enforce.replay import account_metas, replay_table, sorted_batches, state_rows
from distillguard.enforce.settings import EnforceSettings
from distillguard.ingest import load_log


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--logdir", type=Path, default=None)
    parser.add_argument("--scale", default="small")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--capability-model", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--breakdown", action="store_true", help="also time signals and the online path serially")
    parser.add_argument("--baseline", action="store_true",
                        help="also time the online path without taint propagation, in the same process")  # fmt: skip
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
    result: dict[str, object] = {"exchanges": table.num_rows, "capability_model": args.capability_model}
    if args.breakdown:
        # Serial: signal stage and online path timed apart (replay itself overlaps them).
        enforcer = Enforcer(config, campaigns=CampaignWatcher(None, 0.3), settings=settings, intel=log.ip_intel)
        t_signals = t_online = 0.0
        for batch in sorted_batches(table, settings.replay_batch_rows):
            t = time.perf_counter()
            signals = content.compute(batch)
            t_signals += time.perf_counter() - t
            t = time.perf_counter()
            rows = state_rows(batch)
            enforcer.process(rows, [metas.get(r["account_id"]) for r in rows], signals, limits=False, changes_only=True)
            t_online += time.perf_counter() - t
        n = table.num_rows
        result.update({"signals_s": round(t_signals, 2), "signals_per_s": round(n / t_signals) if t_signals else None,
                       "online_s": round(t_online, 2), "online_per_s": round(n / t_online) if t_online else None})  # fmt: skip
        content = BatchContentSignals(config, intel=log.ip_intel, capability_model=settings.capability_model)
    if args.baseline:
        # The same rows and signals through the online path with and without propagation: on a
        # shared machine the ratio says more than either absolute figure.
        plain = {**config, "enforce": {**config["enforce"], "online": {**config["enforce"]["online"], "propagation": {
            **config["enforce"]["online"]["propagation"],
            "links": {k: {**v, "weight": 0.0} for k, v in config["enforce"]["online"]["propagation"]["links"].items()},
        }}}}  # fmt: skip
        batches = [(state_rows(b), content.compute(b)) for b in sorted_batches(table, settings.replay_batch_rows)]
        for name, cfg in (("online_per_s_no_propagation", plain), ("online_per_s", config)):
            e = Enforcer(cfg, campaigns=CampaignWatcher(None, 0.3), intel=log.ip_intel)
            t = time.perf_counter()
            for rows, signals in batches:
                e.process(rows, [metas.get(r["account_id"]) for r in rows], signals, limits=False, changes_only=True)
            result[name] = round(table.num_rows / (time.perf_counter() - t))
        content = BatchContentSignals(config, intel=log.ip_intel, capability_model=settings.capability_model)
    enforcer = Enforcer(config, campaigns=CampaignWatcher(None, 0.3), settings=settings, intel=log.ip_intel)
    out = Path(tempfile.mkdtemp())
    summary = replay_table(table, log.accounts, enforcer, out, settings.replay_batch_rows, content, progress=False)
    result.update({"replay_s": round(summary.seconds, 2), "exchanges_per_s": round(summary.rate),
                   "decisions": summary.decisions, "accounts": summary.accounts})  # fmt: skip
    print(json.dumps(result))


if __name__ == "__main__":
    main()
