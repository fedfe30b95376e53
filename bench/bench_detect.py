"""Benchmark ``detect`` end to end against a bare DuckDB group-by floor over the same exchanges.

    python bench/bench_detect.py --logdir /tmp/medium        # an existing log directory
    python bench/bench_detect.py --scale medium --seed 7     # or simulate one first

``detect`` runs in a child process so its peak resident memory (ru_maxrss of the child) is its
own. The floor is ``SELECT account_id, count(*) FROM read_parquet(...) GROUP BY account_id`` on
the same Parquet exchanges: the least any account-level pass must cost. Reports exchanges/s,
the ratio to the floor and the extrapolated time at the seed scale (~57M exchanges).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb

SEED_SCALE_EXCHANGES = 57_000_000


def _exchange_files(logdir: Path) -> list[str]:
    files = sorted(str(p) for p in logdir.glob("exchanges*.parquet"))
    files += sorted(str(p) for p in (logdir / "exchanges").glob("*.parquet"))
    if not files:
        raise SystemExit(f"{logdir}: no exchanges*.parquet (the floor needs Parquet exchanges)")
    return files


def floor(files: list[str]) -> tuple[float, float, int]:
    """Wall and CPU seconds for the bare group-by, and the number of exchanges it read."""
    con = duckdb.connect()
    cpu_started = time.process_time()
    started = time.perf_counter()
    rows = con.execute(
        "SELECT account_id, count(*) AS n FROM read_parquet(?) GROUP BY account_id", [files]
    ).fetchall()
    elapsed = time.perf_counter() - started
    return elapsed, time.process_time() - cpu_started, int(sum(n for _, n in rows))


def run_detect(logdir: Path, outdir: Path) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds and peak RSS (GiB) of ``distillguard detect`` in a child process.

    CPU seconds (user + system of the child) are reported too because wall time on a shared
    machine depends on everything else running; CPU time much less so.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "distillguard", "detect", str(logdir), "--out", str(outdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"detect failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    # Linux reports ru_maxrss in KiB; the largest child so far is detect (the only one).
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu, after.ru_maxrss / 1024 / 1024


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--logdir", type=Path, default=None)
    ap.add_argument("--scale", default="medium")
    ap.add_argument("--scenario", default="default")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", type=Path, default=None, help="detect output dir (default: temp)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-detect-") as tmp:
        logdir = args.logdir
        if logdir is None:
            from distillguard.simulate import simulate

            logdir = Path(tmp) / "log"
            simulate(args.scenario, args.scale, args.seed, logdir)
        files = _exchange_files(logdir)
        floor_s, floor_cpu, n = floor(files)
        outdir = args.out or Path(tmp) / "out"
        detect_s, detect_cpu, peak_gib = run_detect(logdir, outdir)
    rate = n / detect_s if detect_s > 0 else float("inf")
    result = {
        "logdir": str(logdir),
        "exchanges": n,
        "detect_seconds": round(detect_s, 2),
        "detect_cpu_seconds": round(detect_cpu, 1),
        "floor_seconds": round(floor_s, 3),
        "floor_cpu_seconds": round(floor_cpu, 3),
        "ratio_to_floor": round(detect_s / floor_s, 1) if floor_s > 0 else None,
        "cpu_ratio_to_floor": round(detect_cpu / floor_cpu, 1) if floor_cpu > 0 else None,
        "exchanges_per_second": round(rate),
        "peak_rss_gib": round(peak_gib, 2),
        "seed_scale_minutes_extrapolated": round(SEED_SCALE_EXCHANGES / rate / 60, 1),
        "goal_exchanges_per_second": 65_000,
    }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
