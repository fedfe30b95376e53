"""Benchmark ``detect`` on the embedded engine against Spark local: time, CPU and peak memory of the process tree, and parity.

    python bench/bench_spark.py --scale small --seed 11    # simulate (default medium, seed 7), both engines
    python bench/bench_spark.py --logdir LOG --engines embedded --outdir RUNS
    python bench/bench_spark.py --logdir LOG --engines spark --outdir RUNS   # compared with the above

Each engine runs ``distillguard detect --engine NAME`` in its own child process. The bench
makes itself the *subreaper* of everything the child starts (Linux ``PR_SET_CHILD_SUBREAPER``),
so a JVM the child leaves behind is reparented here, not to init, and is still measured:

- ``seconds``: wall time of the child, up to its last descendant's exit;
- ``cpu_seconds``: user + system CPU of the child and every descendant (``RUSAGE_CHILDREN``
  once all are reaped: exact, not sampled);
- ``peak_rss_gib``: the largest *sum* of resident set sizes over the child and all its
  descendants, sampled from /proc every 0.2 s — for Spark the Python driver plus the JVM
  (``ru_maxrss`` would give only the largest single process). Pages two processes share are
  counted twice, so it is an upper bound; a peak shorter than 0.2 s can be missed.

One JSON line per engine goes to stdout. With both engines' outputs at hand (this run, or an
earlier run into the same ``--outdir`` on the same log) the two are compared: verdicts.jsonl
and campaigns.json parsed, every float within 1e-9, everything else equal. Any difference is
printed and the exit status is 1.

``--skip-evidence`` times only what differs between the engines — ingest, signals, features,
linking, scoring and evidence sampling (``pipeline.run_detect``) plus writing verdicts and
campaigns — without the case files and analyst report, which run in Python on either engine.
Linux only (/proc, prctl).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import suppress
from pathlib import Path
from typing import Any, Final

PAGE: Final = os.sysconf("SC_PAGE_SIZE")
PR_SET_CHILD_SUBREAPER: Final = 36
SAMPLE_SECONDS: Final = 0.2
#: Floats in verdicts and campaigns may differ by the order Spark sums in, no more.
TOLERANCE: Final = 1e-9
#: How long descendants left behind by the child may take to exit before they are killed.
ORPHAN_GRACE_SECONDS: Final = 60.0


# ---------------------------------------------------------------------- process-tree measurement


def _processes() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, resident bytes) of every process /proc shows."""
    out: dict[int, tuple[int, int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="ascii", errors="replace") as fh:
                # The command name may hold spaces and parentheses: split after the last ")".
                fields = fh.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        out[int(entry.name)] = (int(fields[1]), int(fields[21]) * PAGE)
    return out


def _descendants(root: int, procs: dict[int, tuple[int, int]]) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _become_subreaper() -> bool:
    """Adopt orphaned descendants (so the JVM's CPU and memory stay measurable)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def _reap_orphans(deadline: float) -> int:
    """Wait for the descendants the child left behind (adopted by us); kill them past ``deadline``.

    Returns how many had to be killed. Only processes that are descendants of this bench (hence
    started by the measured run) are ever signalled, each by its pid.
    """
    killed = 0
    while True:
        with suppress(ChildProcessError, ProcessLookupError, PermissionError):
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        left = _descendants(os.getpid(), _processes())
        if not left:
            return killed
        if time.monotonic() > deadline:
            for pid in left:
                with suppress(ChildProcessError, ProcessLookupError, PermissionError):
                    os.kill(pid, 9)
                    killed += 1
            deadline = math.inf
        time.sleep(0.1)


def measure(cmd: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run ``cmd`` to completion: wall seconds, CPU seconds and peak RSS sum of its process tree."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    me = os.getpid()
    peak, peak_procs = 0, 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak, peak_procs
        while not done.is_set():
            procs = _processes()
            tree = _descendants(me, procs)
            total = sum(procs[p][1] for p in tree if p in procs)
            if total > peak:
                peak, peak_procs = total, len(tree)
            done.wait(SAMPLE_SECONDS)

    started = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        returncode = proc.wait()
        killed = _reap_orphans(time.monotonic() + ORPHAN_GRACE_SECONDS)
        elapsed = time.perf_counter() - started
        done.set()
        sampler.join()
        err.seek(0)
        stderr = err.read().decode("utf-8", "replace")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({returncode}):\n{stderr[-4000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "seconds": round(elapsed, 1),
        "cpu_seconds": round(cpu, 1),
        "peak_rss_gib": round(peak / 2**30, 3),
        "processes_at_peak": peak_procs,
        "killed_leftovers": killed,
    }


# ---------------------------------------------------------------------- the runs


def _relational_child(engine: str, logdir: str, outdir: str) -> None:
    """``detect`` without case files and report: what the engine choice changes, then outputs."""
    from distillguard.core.config import load_config
    from distillguard.engines import open_engine, stage_log
    from distillguard.pipeline import run_detect, write_outputs

    config = load_config()
    if engine == "embedded":
        write_outputs(run_detect(logdir, config), outdir)
        return
    with stage_log(logdir) as local, open_engine(engine) as eng:
        write_outputs(run_detect(local, config, eng), outdir)


def _exchanges(logdir: str) -> int | None:
    """Rows of the log's Parquet exchanges, from the footers (None for other forms or a URI)."""
    import pyarrow.dataset as pads

    for name in ("exchanges.parquet", "exchanges"):
        path = Path(logdir) / name
        if path.exists():
            return int(pads.dataset(str(path), format="parquet").count_rows())
    return None


def run_engine(
    engine: str, logdir: str, outdir: Path, skip_evidence: bool, master: str | None
) -> dict[str, Any]:
    """One engine's run in a child process, measured; its outputs land in ``outdir``."""
    env = dict(os.environ)
    if master:
        env["DISTILLGUARD_SPARK_MASTER"] = master
    if skip_evidence:
        cmd = [sys.executable, __file__, "--child", engine, logdir, str(outdir)]
    else:
        cmd = [sys.executable, "-m", "distillguard", "detect", logdir]
        cmd += ["--out", str(outdir), "--engine", engine]
    load = os.getloadavg()[0]
    result = {
        "engine": engine,
        "timed": "relational" if skip_evidence else "detect",
        **measure(cmd, env),
        "load_avg_1m_at_start": round(load, 2),
        "cpus": os.cpu_count(),
    }
    if engine == "spark":
        result["spark_master"] = master or os.environ.get("DISTILLGUARD_SPARK_MASTER", "local[*]")
    (outdir / "bench.json").write_text(json.dumps({**result, "logdir": logdir}) + "\n")
    return result


# ---------------------------------------------------------------------- parity


def _number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def differences(a: Any, b: Any, where: str = "$", tol: float = TOLERANCE) -> list[str]:
    """Where two parsed JSON documents differ: floats beyond ``tol``, anything else not equal."""
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{where}: keys {sorted(set(a) ^ set(b))} in only one"]
        return [d for k in sorted(a) for d in differences(a[k], b[k], f"{where}.{k}", tol)]
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{where}: {len(a)} != {len(b)} items"]
        return [
            d
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            for d in differences(x, y, f"{where}[{i}]", tol)
        ]
    if (isinstance(a, float) or isinstance(b, float)) and _number(a) and _number(b):
        close = math.isclose(a, b, rel_tol=0.0, abs_tol=tol)
        return [] if close else [f"{where}: {a!r} != {b!r}"]
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]


def _outputs(out: Path) -> dict[str, Any]:
    verdicts = [
        json.loads(x) for x in (out / "verdicts.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    return {
        "verdicts": {v["account_id"]: v for v in verdicts},
        "campaigns": json.loads((out / "campaigns.json").read_text(encoding="utf-8")),
    }


def compare(a: Path, b: Path) -> dict[str, Any]:
    """Parity of two detect output directories (``a`` the reference)."""
    oa, ob = _outputs(a), _outputs(b)
    diffs = differences(oa, ob)
    va, vb = oa["verdicts"], ob["verdicts"]
    common = sorted(set(va) & set(vb))
    return {
        "verdicts": [len(va), len(vb)],
        "campaigns": [len(oa["campaigns"]["campaigns"]), len(ob["campaigns"]["campaigns"])],
        "max_score_diff": max((abs(va[k]["score"] - vb[k]["score"]) for k in common), default=0.0),
        "identical": not diffs,
        "differences": diffs[:50],
        "n_differences": len(diffs),
    }


# ---------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument(
        "--logdir", default=None, help="an existing log directory (else one is simulated)"
    )
    ap.add_argument("--scale", default="medium", help="simulated scale without --logdir")
    ap.add_argument("--scenario", default="default")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument(
        "--engines", default="embedded,spark", help="comma-separated, run in this order"
    )
    ap.add_argument(
        "--outdir", default=None, help="keep outputs in OUTDIR/ENGINE (compared across runs)"
    )
    ap.add_argument(
        "--skip-evidence",
        action="store_true",
        help="time run_detect + outputs, no case files/report",
    )
    ap.add_argument(
        "--spark-master", default=None, help="DISTILLGUARD_SPARK_MASTER for the child (local[*])"
    )
    ap.add_argument("--child", nargs=3, metavar=("ENGINE", "LOGDIR", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _relational_child(*args.child)
        return 0

    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = sorted(set(engines) - {"embedded", "spark"})
    if unknown or not engines:
        ap.error(f"--engines: expected embedded and/or spark, got {args.engines!r}")
    if not _become_subreaper():
        print(
            "warning: not a subreaper; a JVM outliving its parent would escape the figures",
            file=sys.stderr,
        )

    with tempfile.TemporaryDirectory(prefix="bench-spark-") as tmp:
        root = Path(args.outdir) if args.outdir else Path(tmp)
        logdir = args.logdir
        if logdir is None:
            from distillguard.simulate import simulate

            logdir = str(root / f"log-{args.scenario}-{args.scale}-{args.seed}")
            if not Path(logdir).exists():
                print(
                    f"simulate {args.scenario}/{args.scale} seed {args.seed} ...",
                    file=sys.stderr,
                    flush=True,
                )
                simulate(args.scenario, args.scale, args.seed, Path(logdir))
        exchanges = _exchanges(logdir) if "://" not in logdir else None
        for engine in engines:
            out = root / engine
            out.mkdir(parents=True, exist_ok=True)
            for stale in ("bench.json", "verdicts.jsonl", "campaigns.json"):
                (out / stale).unlink(missing_ok=True)
            print(f"detect --engine {engine} {logdir} ...", file=sys.stderr, flush=True)
            line = run_engine(engine, logdir, out, args.skip_evidence, args.spark_master)
            print(json.dumps({**line, "logdir": logdir, "exchanges": exchanges}), flush=True)
        return _parity(root, logdir)


def _parity(root: Path, logdir: str) -> int:
    """Compare the two engines' outputs under ``root`` if both are there for the same log."""
    runs = {}
    for engine in ("embedded", "spark"):
        meta = root / engine / "bench.json"
        if meta.exists():
            runs[engine] = json.loads(meta.read_text())
    if len(runs) < 2:
        return 0
    if {r["logdir"] for r in runs.values()} != {logdir}:
        print(f"not comparing: the outputs under {root} come from different logs", file=sys.stderr)
        return 0
    parity = compare(root / "embedded", root / "spark")
    emb, spk = runs["embedded"], runs["spark"]
    summary: dict[str, Any] = {"parity": parity}
    if emb["timed"] == spk["timed"]:
        summary["spark_over_embedded"] = {
            k: round(spk[k] / emb[k], 2) if emb[k] else None
            for k in ("seconds", "cpu_seconds", "peak_rss_gib")
        }
    else:  # the outputs compared are the same files either way; the costs are not comparable
        summary["warning"] = (
            f"timed different stages: embedded {emb['timed']}, spark {spk['timed']}"
        )
    print(json.dumps(summary), flush=True)
    if not parity["identical"]:
        print(
            f"PARITY FAILED: {parity['n_differences']} difference(s) between "
            f"{root / 'embedded'} and {root / 'spark'}:\n  " + "\n  ".join(parity["differences"]),
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
