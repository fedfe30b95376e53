"""Replay throughput: a simulated log through ``distillguard replay``'s online path, exchanges per second.

    .venv/bin/python bench/bench_replay.py --scale medium --seed 7
    .venv/bin/python bench/bench_replay.py --logdir /path/to/log --breakdown --compare-rows

Reports the replay's own throughput (``replay_table``: signals for the next micro-batch computed
in a thread while the decision loop runs the current one) with its wall and CPU seconds (the
machine may be shared: CPU seconds per exchange is the figure load does not distort). With
``--breakdown``, the signal stage and the online path (``Enforcer.replay_batch``) timed serially,
since the goal (>= 20,000 exchanges/s on 2 cores) depends on both; with ``--compare-rows``, the
same rows and signals through the row-by-row path (``Enforcer.process``, one exchange after the
other), and whether both wrote the same decisions.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from distillguard.core.config import load_config
from distillguard.core.schema import EXCHANGE_COLUMNS
from distillguard.enforce.campaigns import CampaignWatcher
from distillguard.enforce.online import BatchContentSignals, Enforcer, exchange_rows
from distillguard.enforce.replay import account_metas, replay_table, sorted_batches
from distillguard.enforce.settings import EnforceSettings
from distillguard.ingest import load_log


def _rate(n: int, seconds: float) -> int | None:
    return round(n / seconds) if seconds else None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--logdir", type=Path, default=None)
    parser.add_argument("--scale", default="small")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--capability-model", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--breakdown", action="store_true", help="also time signals and the online path serially"
    )
    parser.add_argument("--compare-rows", action="store_true",
                        help="also time the row-by-row online path on the same batches and compare decisions")  # fmt: skip
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
    table = log.exchanges.to_table(
        columns=[c for c in EXCHANGE_COLUMNS if c in log.exchanges.schema.names]
    )
    metas = account_metas(log.accounts)
    n = table.num_rows

    def content() -> BatchContentSignals:
        # As replay builds it: per-prompt and per-address results carried over batches.
        return BatchContentSignals(
            config, intel=log.ip_intel, capability_model=settings.capability_model, carry_over=True
        )

    def enforcer(cfg: dict[str, Any] = config) -> Enforcer:
        return Enforcer(cfg, campaigns=CampaignWatcher(None, 0.3), intel=log.ip_intel)

    result: dict[str, object] = {"exchanges": n, "capability_model": args.capability_model}
    batches: list[tuple[Any, Any]] = []
    if args.breakdown or args.compare_rows or args.baseline:
        # Serial: the signal stage and the online path timed apart (replay itself overlaps them).
        signals = content()
        t, c = time.perf_counter(), time.process_time()
        batches = [
            (b, signals.compute(b)) for b in sorted_batches(table, settings.replay_batch_rows)
        ]
        t_sig, c_sig = time.perf_counter() - t, time.process_time() - c
        online = enforcer()
        t, c = time.perf_counter(), time.process_time()
        fast = [d.to_json() for b, s in batches for d in online.replay_batch(b, s, metas)]
        t_on, c_on = time.perf_counter() - t, time.process_time() - c
        result.update({"signals_s": round(t_sig, 2), "signals_cpu_s": round(c_sig, 2), "signals_per_s": _rate(n, t_sig),
                       "online_s": round(t_on, 2), "online_cpu_s": round(c_on, 2), "online_per_s": _rate(n, t_on),
                       "online_us_cpu_per_exchange": round(c_on / n * 1e6, 1)})  # fmt: skip
        if args.compare_rows:
            rows_path = enforcer()
            t, c = time.perf_counter(), time.process_time()
            slow = []
            for b, s in batches:
                rows = exchange_rows(b)
                metas_b = [metas.get(r["account_id"]) for r in rows]
                slow += [
                    d.to_json()
                    for d in rows_path.process(rows, metas_b, s, limits=False, changes_only=True)
                ]
            t_rows, c_rows = time.perf_counter() - t, time.process_time() - c
            result.update({"online_rows_s": round(t_rows, 2), "online_rows_cpu_s": round(c_rows, 2),
                           "online_rows_per_s": _rate(n, t_rows), "same_decisions": fast == slow})  # fmt: skip
    if args.baseline:
        # The same rows and signals through the online path with and without propagation: on a
        # shared machine the ratio says more than either absolute figure.
        plain = {**config, "enforce": {**config["enforce"], "online": {**config["enforce"]["online"], "propagation": {
            **config["enforce"]["online"]["propagation"],
            "links": {k: {**v, "weight": 0.0} for k, v in config["enforce"]["online"]["propagation"]["links"].items()},
        }}}}  # fmt: skip
        for name, cfg in (
            ("online_per_s_no_propagation", plain),
            ("online_per_s_with_propagation", config),
        ):
            e = enforcer(cfg)
            t = time.perf_counter()
            for b, s in batches:
                e.replay_batch(b, s, metas)
            result[name] = _rate(n, time.perf_counter() - t)
    out = Path(tempfile.mkdtemp())
    t, c = time.perf_counter(), time.process_time()
    summary = replay_table(
        table,
        log.accounts,
        enforcer(),
        out,
        settings.replay_batch_rows,
        content(),
        progress=False,
        signal_rows=settings.replay_signal_rows,
    )
    c_replay = time.process_time() - c
    result.update({"replay_s": round(summary.seconds, 2), "replay_cpu_s": round(c_replay, 2),
                   "exchanges_per_s": round(summary.rate), "replay_us_cpu_per_exchange": round(c_replay / n * 1e6, 1),
                   "decisions": summary.decisions, "accounts": summary.accounts})  # fmt: skip
    print(json.dumps(result))


if __name__ == "__main__":
    main()
