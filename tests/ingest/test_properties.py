"""Property tests: any generated exchange table survives every supported form; LPM agrees with ipaddress."""

from __future__ import annotations

import gzip
import ipaddress
import json
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distillguard.core.schema import EXCHANGE_SCHEMA, IP_INTEL_SCHEMA
from distillguard.ingest import load_log, lookup

text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=20)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
opt_int = st.none() | st.integers(0, 2**40)

row = st.fixed_dictionaries(
    {
        "ts": st.integers(0, 4_102_444_800_000),
        "account_id": text.filter(bool),
        "client_ip": ipv4 | ipv6,
        "model": text.filter(bool),
        "prompt": text,
        "input_tokens": st.integers(0, 2**40),
        "output_tokens": st.integers(0, 2**40),
        "api_key_id": st.none() | text,
        "thinking": st.none() | st.booleans(),
        "status": st.none() | st.integers(-(2**40), 2**40),
        "latency_ms": opt_int,
    }
)


def _table(rows: list[dict[str, object]]) -> pa.Table:
    cols: dict[str, list[object]] = {f.name: [] for f in EXCHANGE_SCHEMA}
    for i, r in enumerate(rows):
        full = {**{f.name: None for f in EXCHANGE_SCHEMA}, **r, "request_id": f"req-{i}"}
        full["ts"] = datetime.fromtimestamp(int(r["ts"]) / 1000, tz=UTC)  # type: ignore[call-overload]
        for k in cols:
            cols[k].append(full[k])
    return pa.table(cols, schema=pa.schema([f.with_nullable(True) for f in EXCHANGE_SCHEMA]))


def _write(table: pa.Table, form: str, logdir: Path) -> None:
    if form == "parquet":
        pq.write_table(table, logdir / "exchanges.parquet")
        return
    if form == "parts":
        (logdir / "exchanges").mkdir()
        half = table.num_rows // 2
        pq.write_table(table.slice(0, half), logdir / "exchanges" / "a.parquet")
        pq.write_table(table.slice(half), logdir / "exchanges" / "b.parquet")
        return
    lines = []
    for i, r in enumerate(table.to_pylist()):
        ts = r["ts"]
        # Mix both timestamp spellings in one file, as the contract allows.
        # Integer arithmetic: float seconds * 1000 can land a millisecond low (4.06 s -> 4059).
        millis = (ts - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)
        r["ts"] = millis if i % 2 else ts.isoformat(timespec="milliseconds")
        lines.append(json.dumps({k: v for k, v in r.items() if v is not None}))
    data = ("\n".join(lines) + "\n").encode()
    if form == "jsonl":
        (logdir / "exchanges.jsonl").write_bytes(data)
    else:
        (logdir / "exchanges.jsonl.gz").write_bytes(gzip.compress(data))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(row, min_size=1, max_size=12),
    form=st.sampled_from(["parquet", "parts", "jsonl", "jsonl.gz"]),
)
def test_round_trip(rows: list[dict[str, object]], form: str) -> None:
    table = _table(rows)
    with tempfile.TemporaryDirectory() as tmp:
        logdir = Path(tmp) / "log"
        logdir.mkdir()
        _write(table, form, logdir)
        config = {"ingest": {"work_dir": str(Path(tmp) / "work"), "batch_rows": 5}}
        got = load_log(logdir, config).exchange_table().sort_by("request_id")
    want = table.sort_by("request_id").cast(got.schema)
    assert got.equals(want)


networks = st.one_of(
    st.tuples(st.ip_addresses(v=4), st.integers(0, 32)).map(
        lambda t: ipaddress.ip_network(f"{t[0]}/{t[1]}", strict=False)
    ),
    st.tuples(st.ip_addresses(v=6), st.integers(0, 128)).map(
        lambda t: ipaddress.ip_network(f"{t[0]}/{t[1]}", strict=False)
    ),
)


@settings(max_examples=60, deadline=None)
@given(
    nets=st.lists(networks, max_size=15, unique=True),
    addrs=st.lists(st.ip_addresses(), min_size=1, max_size=30),
)
def test_lookup_is_longest_prefix_match(
    nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network], addrs: list[object]
) -> None:
    intel = pa.table(
        {
            "cidr": [str(n) for n in nets],
            "asn": list(range(len(nets))),
            "asn_org": ["x"] * len(nets),
            "kind": ["vpn"] * len(nets),
        },
        schema=IP_INTEL_SCHEMA,
    )
    got = lookup(pa.array([str(a) for a in addrs]), intel).column("cidr").to_pylist()
    for addr, cidr in zip(addrs, got, strict=True):
        containing = [n for n in nets if n.version == addr.version and addr in n]  # type: ignore[attr-defined,operator]
        best = max(containing, key=lambda n: n.prefixlen, default=None)
        assert cidr == (str(best) if best is not None else None)
