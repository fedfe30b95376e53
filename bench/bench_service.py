"""Decision-service latency and throughput on loopback under a bounded load, memory and Redis backends.

Starts ``distillguard serve`` (one uvicorn process, uvloop + httptools) and drives ``POST /v1/check``
on 127.0.0.1 only, bounded in time and rate, from a separate client process: ``wrk`` (Debian package)
with a Lua script that varies the body per request and sends on a fixed schedule (open loop:
``rate`` requests a second whatever the answer time, over spare keep-alive connections; ``late``
counts requests sent over 1 ms behind it), so the client is not the bottleneck; without ``wrk``,
a thread pool in this process (``--client python``, GIL-bound: trust it only well below 1,000
requests/s). Reports p50/p99 latency, achieved throughput, service and client CPU per request and
the load average around the run (a shared machine's other jobs show there); ``--pin`` keeps the
service on CPU 0 and the client on CPU 1, ``--priority N`` lowers their nice value (root) so other
jobs on a shared machine do not hold the CPU they wait for. Also floods the in-process enforcer with new account
ids and reports the peak resident memory (bounded-memory check).

    .venv/bin/python bench/bench_service.py --rate 2000 --seconds 10 [--redis] [--pin] [--priority 10]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(url: str) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=0.5).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit("service did not start")


def _worker(args: tuple[str, float, float, int, int, int]) -> tuple[list[float], int]:
    """One client thread: a keep-alive connection sending on a fixed schedule (rate per thread)."""
    host_port, rate, seconds, accounts, offset, stride = args
    host, port = host_port.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    latencies: list[float] = []
    errors = 0
    total = int(rate * seconds)
    start = time.perf_counter()
    for k in range(total):
        i = offset + k * stride
        delay = start + k / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        body = json.dumps({"request_id": f"b{i}", "account_id": f"acct-{i % accounts}",
                           "client_ip": f"198.51.{i % 200}.{i % 250}", "model": "m-1", "input_tokens": 30,
                           "user_agent": "bench/1",
                           "account": {"payment_fingerprint": f"card-{i % accounts}", "email_domain": "example.com"}})  # fmt: skip
        t = time.perf_counter()
        conn.request("POST", "/v1/check", body, {"content-type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        latencies.append(time.perf_counter() - t)
        if resp.status != 200:
            errors += 1
    return latencies, errors


def _load(
    url: str, rate: float, seconds: float, accounts: int, clients: int = 8
) -> tuple[np.ndarray, float, int]:
    """Bounded load from ``clients`` threads in a separate process pool, each paced at rate/clients."""
    host_port = url.removeprefix("http://")
    jobs = [(host_port, rate / clients, seconds, accounts, c, clients) for c in range(clients)]
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(_worker, jobs))
    elapsed = time.perf_counter() - start
    lat = np.array([x for r in results for x in r[0]])
    return lat, lat.size / elapsed, sum(r[1] for r in results)


_WRK_LUA = """
-- Open-loop pacing: the thread's requests are due on a fixed schedule (one every %(interval)s ms);
-- a connection that comes free waits for the next due time (LuaJIT's FFI reads the monotonic
-- clock). A closed loop with a fixed pause would send fewer requests the slower the server is.
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } dg_timespec;
int clock_gettime(int clk_id, dg_timespec *tp);
]]
local ts = ffi.new("dg_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts)  -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end
local interval = %(interval)s
local due = nil
local counter = 0
local accounts = %(accounts)d
late = 0
function delay()
  local now = now_ms()
  if due == nil then due = now end
  local wait = due - now
  due = due + interval
  if wait < -1 then late = late + 1 end  -- sent over 1 ms behind schedule: the server is not keeping up
  if wait <= 0 then return 0 end
  return math.floor(wait + 0.5)  -- wrk's timers count whole milliseconds
end
function request()
  counter = counter + 1
  local i = counter * 7
  local a = i %% accounts
  local body = string.format('{"request_id":"w%%d","account_id":"acct-%%d","client_ip":"198.51.%%d.%%d",'
    .. '"model":"m-1","input_tokens":30,"user_agent":"bench/1",'
    .. '"account":{"payment_fingerprint":"card-%%d","email_domain":"example.com"}}',
    i, a, i %% 200, i %% 250, a)
  return wrk.format("POST", "/v1/check", {["Content-Type"] = "application/json"}, body)
end
local threads = {}
function setup(thread) table.insert(threads, thread) end
function done(summary, latency, requests)
  local behind = 0
  for _, t in ipairs(threads) do behind = behind + t:get("late") end
  io.write(string.format('WRK {"requests":%%d,"duration_us":%%d,"errors":%%d,"late":%%d,"p50_us":%%d,"p90_us":%%d,'
    .. '"p99_us":%%d,"p999_us":%%d,"max_us":%%d}\\n',
    summary.requests, summary.duration, summary.errors.status + summary.errors.connect + summary.errors.read
    + summary.errors.write + summary.errors.timeout, behind, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max))
end
"""


def _wrk(
    url: str,
    rate: float,
    seconds: float,
    accounts: int,
    client_cpu: int | None = None,
    priority: int = 0,
) -> dict[str, object]:
    """``wrk`` on loopback, one thread sending ``rate`` requests a second on schedule over a few keep-alive connections.

    ``late``: requests sent over 1 ms behind schedule (wrk times a request from when it is sent,
    so latency percentiles only count the server's answer time while ``late`` stays near 0).
    """
    assert url.startswith("http://127.0.0.1:"), "the benchmark only targets loopback"
    connections = max(
        16, round(rate * 0.005)
    )  # enough idle connections to send on time after a slow answer
    script = Path(tempfile.mkdtemp()) / "check.lua"
    script.write_text(_WRK_LUA % {"accounts": accounts, "interval": repr(1000.0 / rate)})
    cmd = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "2s",
        "-s",
        str(script),
        url,
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30, check=True,
                          preexec_fn=_placed(client_cpu, priority))  # fmt: skip
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next(x for x in proc.stdout.splitlines() if x.startswith("WRK "))
    stats = json.loads(line[4:])
    duration = stats["duration_us"] / 1e6
    client_cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"client": "wrk", "connections": connections, "requests": stats["requests"], "errors": stats["errors"],
            "late": stats["late"], "achieved_rps": round(stats["requests"] / duration, 1),
            "p50_ms": stats["p50_us"] / 1000, "p90_ms": stats["p90_us"] / 1000, "p99_ms": stats["p99_us"] / 1000,
            "p999_ms": stats["p999_us"] / 1000, "max_ms": stats["max_us"] / 1000,
            "client_cpu_us_per_request": round(client_cpu_s / max(1, stats["requests"]) * 1e6, 1)}  # fmt: skip


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc): load on other cores does not inflate it."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _server_side(url: str) -> dict[str, float | None]:
    """p50/p99 of the in-service decision time from the /metrics histogram (bucket upper bounds)."""
    text = httpx.get(url + "/metrics").text
    buckets = [(float(line.split('le="')[1].split('"')[0].replace("+Inf", "inf")), int(line.rsplit(" ", 1)[1]))
               for line in text.splitlines() if line.startswith("distillguard_check_seconds_bucket")]  # fmt: skip
    total = buckets[-1][1] if buckets else 0
    out: dict[str, float | None] = {"server_checks": total}
    for q in (0.5, 0.99):
        out[f"server_p{int(q * 100)}_le_ms"] = (
            next((b * 1000 for b, c in buckets if c >= q * total), None) if total else None
        )
    return out


def _placed(cpu: int | None, priority: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` keeping a child (and the threads it starts) on one CPU and/or raising its priority.

    ``priority`` > 0 lowers the nice value by that much (root only), so the benchmark's processes
    get a shared machine's CPU when they are runnable, as on dedicated cores.
    """
    if cpu is None and not priority:
        return None

    def place() -> None:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        if priority:
            os.nice(-priority)

    return place


def run(
    backend: str,
    rate: float,
    seconds: float,
    accounts: int,
    client: str = "wrk",
    pin: bool = False,
    priority: int = 0,
) -> dict[str, object]:
    """One service process under ``rate`` checks a second.

    ``pin``: service on CPU 0, client and Redis on CPU 1. ``priority``: nice value lowered by that
    much for the service, the client and Redis.
    """
    server_cpu, client_cpu = (0, 1) if pin else (None, None)
    port = _port()
    tmp = Path(tempfile.mkdtemp())
    cfg = tmp / "cfg.yaml"
    cfg.write_text(
        "enforce:\n  online:\n    capability_model: false\n  limits:\n    account:\n      allow: 100000/minute\n      monitor: 100000/minute\n"
    )
    cmd = [
        sys.executable,
        "-m",
        "distillguard",
        "serve",
        "-c",
        str(cfg),
        "--port",
        str(port),
        "--insecure-no-auth",
        "--backend",
        backend,
    ]
    redis_proc = None
    if backend == "redis":
        if shutil.which("redis-server") is None:
            raise SystemExit("redis-server not installed: run scripts/install_system_deps.sh")
        rport = _port()
        redis_proc = subprocess.Popen(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", ""],
                                      stdout=subprocess.DEVNULL, preexec_fn=_placed(client_cpu, priority))  # fmt: skip
        time.sleep(0.5)
        cmd += ["--redis-url", f"redis://127.0.0.1:{rport}/0"]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=_placed(server_cpu, priority),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(url)
        result: dict[str, object] = {
            "backend": backend,
            "target_rps": rate,
            "pinned": pin,
            "priority": priority,
        }
        if client == "wrk":
            # Warm-up at the target rate until every account has been seen once: the measured run is
            # the steady state, not the growth of the state (new accounts, collector generations).
            _wrk(url, rate, max(2.0, 1.2 * accounts / rate), accounts, client_cpu, priority)
            cpu = _cpu_seconds(proc.pid)
            result["load_before"] = round(os.getloadavg()[0], 2)
            result.update(_wrk(url, rate, seconds, accounts, client_cpu, priority))
            result["load_after"] = round(os.getloadavg()[0], 2)
            # Service CPU per check: the capacity figure that a busy shared machine does not distort.
            result["server_cpu_us_per_request"] = round(  # type: ignore[call-overload]
                (_cpu_seconds(proc.pid) - cpu) / max(1, int(result["requests"])) * 1e6,
                1,
            )
        else:
            _load(url, 200, 2, accounts)  # warm-up
            lat, achieved, errors = _load(url, rate, seconds, accounts)
            result.update({
                "client": "python", "achieved_rps": round(achieved, 1), "requests": int(lat.size), "errors": errors,
                "p50_ms": round(float(np.percentile(lat, 50)) * 1000, 3),
                "p99_ms": round(float(np.percentile(lat, 99)) * 1000, 3),
            })  # fmt: skip
        result.update(_server_side(url))
        return result
    finally:
        proc.terminate()
        proc.wait()
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait()


def flood(n: int) -> dict[str, object]:
    """Feed ``n`` new account ids through the in-process enforcer; report peak RSS and what is held."""
    from distillguard.core.config import load_config
    from distillguard.enforce.online import build_enforcer

    cfg = load_config()
    enforcer = build_enforcer(cfg, with_limits=False)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    batch = 10_000
    for s in range(0, n, batch):
        rows = [{"request_id": f"f{i}", "account_id": f"flood-{i}", "client_ip": f"10.{i % 250}.{(i // 250) % 250}.{i % 199}",
                 "model": "m", "ts": 1_750_000_000_000 + i} for i in range(s, min(n, s + batch))]  # fmt: skip
        enforcer.process(rows, limits=False)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"flood_accounts": n, "seconds": round(time.perf_counter() - start, 1), "rss_before_mb": round(before / 1024),
            "peak_rss_mb": round(peak / 1024), "held": enforcer.backend.size(),
            "max_accounts": enforcer.settings.max_accounts}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=2000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--accounts", type=int, default=5000)
    parser.add_argument("--redis", action="store_true", help="also run the Redis backend")
    parser.add_argument(
        "--client", choices=["wrk", "python"], default="wrk" if shutil.which("wrk") else "python"
    )
    parser.add_argument(
        "--flood", type=int, default=0, help="new account ids for the memory flood (e.g. 1000000)"
    )
    parser.add_argument(
        "--pin", action="store_true", help="service on CPU 0, wrk and redis-server on CPU 1"
    )
    parser.add_argument("--priority", type=int, default=0, choices=range(0, 21), metavar="0-20",
                        help="lower the nice value of the service, wrk and redis-server by this much (root; "
                             "emulates dedicated cores on a machine shared with batch jobs)")  # fmt: skip
    args = parser.parse_args()
    if args.seconds > 120 or args.rate > 20_000:
        raise SystemExit("bounded benchmark: at most 120 s and 20,000 requests/s")
    results = [
        run("memory", args.rate, args.seconds, args.accounts, args.client, args.pin, args.priority)
    ]
    if args.redis:
        results.append(
            run(
                "redis",
                args.rate,
                args.seconds,
                args.accounts,
                args.client,
                args.pin,
                args.priority,
            )
        )
    if args.flood:
        results.append(flood(args.flood))
    for r in results:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
