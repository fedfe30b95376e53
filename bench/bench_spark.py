"""Benchmark ``detect`` on the embedded engine against Spark local: time, peak memory and parity.

    python bench/bench_spark.py --scale medium --seed 7      # simulate, then both engines
    python bench/bench_spark.py --logdir /data/seed1         # an existing log directory

Each engine runs ``distillguard detect --engine NAME`` in its own child process, one after the
other in the same run, so their ratio is meaningful even on a loaded machine. Peak memory is
the largest sum of resident set sizes over the child's whole process tree, sampled every
0.2 s from /proc — for Spark that includes the JVM the driver starts, which ``ru_maxrss`` of
the Python child alone would miss. The two outputs are then compared: same accounts, actions
and clusters, and the largest score difference.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _tree_rss(root: int) -> int:
    """Resident bytes of ``root`` and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="ascii", errors="replace") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry.name)
        children.setdefault(int(fields[1]), []).append(pid)  # fields[1] is ppid
        rss[pid] = int(fields[21]) * PAGE  # fields[21] is rss in pages
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo.extend(children.get(pid, []))
    return total


def run_detect(logdir: str, outdir: Path, engine: str) -> dict[str, Any]:
    """Seconds and peak process-tree RSS (GiB) of ``detect --engine ENGINE`` in a child."""
    cmd = [sys.executable, "-m", "distillguard", "detect", logdir, "--out", str(outdir)]
    started = time.perf_counter()
    proc = subprocess.Popen(
        [*cmd, "--engine", engine], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _tree_rss(proc.pid))
            done.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, stderr = proc.communicate()
    done.set()
    sampler.join()
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"detect --engine {engine} failed ({proc.returncode}):\n{stderr[-3000:]}")
    return {"seconds": round(elapsed, 1), "peak_rss_gib": round(peak / 2**30, 2)}


def compare(a: Path, b: Path) -> dict[str, Any]:
    """Parity of two detect output directories: accounts, actions, clusters, score gap."""

    def verdicts(out: Path) -> dict[str, dict[str, Any]]:
        lines = (out / "verdicts.jsonl").read_text(encoding="utf-8").splitlines()
        return {v["account_id"]: v for v in map(json.loads, lines)}

    def campaigns(out: Path) -> list[tuple[str, list[str]]]:
        doc = json.loads((out / "campaigns.json").read_text(encoding="utf-8"))
        return [(c["id"], c["members"]) for c in doc["campaigns"]]

    va, vb = verdicts(a), verdicts(b)
    common = sorted(set(va) & set(vb))

    def key(v: dict[str, Any]) -> tuple[Any, ...]:
        return (v.get("action"), v.get("cluster_id"))

    return {
        "verdicts": [len(va), len(vb)],
        "same_accounts": set(va) == set(vb),
        "same_actions_and_clusters": all(key(va[k]) == key(vb[k]) for k in common),
        "max_score_diff": max((abs(va[k]["score"] - vb[k]["score"]) for k in common), default=0.0),
        "same_campaigns": campaigns(a) == campaigns(b),
        "campaigns": len(campaigns(a)),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--logdir", default=None, help="existing log directory (or URI for spark)")
    ap.add_argument("--scale", default="medium")
    ap.add_argument("--scenario", default="default")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--engines", default="embedded,spark")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-spark-") as tmp:
        logdir = args.logdir
        if logdir is None:
            from distillguard.simulate import simulate

            logdir = str(Path(tmp) / "log")
            simulate(args.scenario, args.scale, args.seed, Path(logdir))
        engines = [e.strip() for e in args.engines.split(",") if e.strip()]
        result: dict[str, Any] = {"logdir": logdir, "engines": {}}
        for engine in engines:
            print(f"detect --engine {engine} ...", file=sys.stderr, flush=True)
            result["engines"][engine] = run_detect(logdir, Path(tmp) / engine, engine)
            print(json.dumps(result["engines"][engine]), file=sys.stderr, flush=True)
        if {"embedded", "spark"} <= set(engines):
            result["parity"] = compare(Path(tmp) / "embedded", Path(tmp) / "spark")
            emb, spk = result["engines"]["embedded"], result["engines"]["spark"]
            result["spark_over_embedded_time"] = round(spk["seconds"] / emb["seconds"], 2)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
