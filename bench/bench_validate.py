"""Benchmark ``distillguard validate`` on a synthetic log (Parquet and JSONL) against bare scans of the same files.

Usage: python bench/bench_validate.py [--rows N]. Each measured command runs in its own
process so peak memory is that process's ru_maxrss, not this script's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
from rich.console import Console
from rich.table import Table

ACCOUNTS = 5_000


def generate(root: Path, rows: int) -> tuple[Path, Path]:
    """Write the same exchanges as exchanges.parquet and exchanges.jsonl (DuckDB, columnar)."""
    select = f"""
        SELECT
          make_timestamptz(1767225600000000 + i * 50000) AS ts,
          'req-' || i AS request_id,
          'acct-' || (hash(i) % {ACCOUNTS}) AS account_id,
          CASE WHEN i % 10 = 0 THEN '2a02:8108::' || printf('%x', i % 65535)
               ELSE ((i // 7) % 223 + 1) || '.' || (i % 251) || '.' || (i % 241) || '.' || (i % 239) END AS client_ip,
          'model-' || (i % 3) AS model,
          CASE WHEN i % 5 = 0 THEN '' ELSE 'Explain step by step how to solve task number ' || i || ' in detail.' END AS prompt,
          (i % 2000)::BIGINT AS input_tokens,
          (i % 3000)::BIGINT AS output_tokens,
          'key-' || (i % 777) AS api_key_id,
          'sdk/' || (i % 4) AS user_agent,
          (i % 2 = 0) AS thinking,
          200::BIGINT AS status,
          (i % 9000)::BIGINT AS latency_ms
        FROM range({rows}) t(i)
    """
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    pq_dir, js_dir = root / "parquet", root / "jsonl"
    for d in (pq_dir, js_dir):
        d.mkdir()
        (d / "ip_intel.csv").write_text(
            "cidr,asn,asn_org,kind\n1.0.0.0/8,1,A,residential\n100.0.0.0/8,2,B,datacenter\n"
            "100.5.0.0/16,2,B,proxy\n2a02:8108::/32,3209,Vodafone GmbH,residential\n"
        )
    con.execute(
        f"COPY ({select}) TO '{pq_dir / 'exchanges.parquet'}' (FORMAT parquet, ROW_GROUP_SIZE 1000000)"
    )
    # JSONL carries RFC 3339 strings (DuckDB's own JSON timestamps are not RFC 3339).
    as_text = f"SELECT * REPLACE (strftime(ts, '%Y-%m-%dT%H:%M:%S.%gZ') AS ts) FROM ({select})"
    con.execute(f"COPY ({as_text}) TO '{js_dir / 'exchanges.jsonl'}' (FORMAT json)")
    return pq_dir, js_dir


def measure(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(
            f"{' '.join(cmd)} failed: {proc.stderr.read().decode() if proc.stderr else ''}"
        )
    return elapsed, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=10_000_000)
    args = parser.parse_args()
    console = Console()
    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="dg-bench-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        pq_dir, js_dir = generate(root, args.rows)
        console.print(
            f"generated {args.rows:,} rows in {time.perf_counter() - t0:.1f}s "
            f"(parquet {(pq_dir / 'exchanges.parquet').stat().st_size / 2**20:.0f} MiB, "
            f"jsonl {(js_dir / 'exchanges.jsonl').stat().st_size / 2**20:.0f} MiB)"
        )
        cfg = root / "config.yaml"
        cfg.write_text(json.dumps({"ingest": {"work_dir": str(root / "work"), "cache_entries": 1}}))
        runs = [
            (
                "parquet",
                "baseline: pyarrow scan",
                [
                    py,
                    "-c",
                    f"import pyarrow.dataset as d; d.dataset('{pq_dir}/exchanges.parquet').to_table()",
                ],
            ),
            (
                "parquet",
                "baseline: duckdb count(*)",
                [
                    py,
                    "-c",
                    f"import duckdb; duckdb.sql(\"SELECT count(*) FROM '{pq_dir}/exchanges.parquet'\").fetchall()",
                ],
            ),
            (
                "parquet",
                "distillguard validate",
                [py, "-m", "distillguard", "validate", str(pq_dir), "--config", str(cfg)],
            ),
            (
                "jsonl",
                "baseline: duckdb read_json count(*)",
                [
                    py,
                    "-c",
                    f"import duckdb; duckdb.sql(\"SELECT count(*) FROM read_json('{js_dir}/exchanges.jsonl', format='newline_delimited')\").fetchall()",
                ],
            ),
            (
                "jsonl",
                "distillguard validate",
                [py, "-m", "distillguard", "validate", str(js_dir), "--config", str(cfg)],
            ),
        ]
        table = Table(title=f"validate on {args.rows:,} exchanges ({os.cpu_count()} cores)")
        for col in ("input", "command", "seconds", "rows/s", "peak RSS MiB", "× baseline"):
            table.add_column(col, justify="right" if col not in ("input", "command") else "left")
        baseline: dict[str, float] = {}
        for form, name, cmd in runs:
            secs, rss = measure(cmd)
            baseline.setdefault(form, secs)
            table.add_row(
                form,
                name,
                f"{secs:.1f}",
                f"{args.rows / secs:,.0f}",
                f"{rss:,.0f}",
                f"{secs / baseline[form]:.1f}",
            )
            console.print(f"  {form:8} {name}: {secs:.1f}s, {rss:,.0f} MiB")
        console.print(table)


if __name__ == "__main__":
    main()
