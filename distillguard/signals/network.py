"""Network context of each exchange: kind (ip_intel longest-prefix match), ASN, and the /24 (v4) or /48 (v6) prefix."""

from __future__ import annotations

import ipaddress

import numpy as np
import polars as pl
import pyarrow as pa

from distillguard.core.schema import IP_INTEL_SCHEMA
from distillguard.ingest.ipintel import lookup, parse_ips


def ip_prefixes(ips: pa.Array | pa.ChunkedArray) -> pa.Array:
    """``a.b.c.0/24`` for IPv4, ``xxxx:xxxx:xxxx::/48`` for IPv6, null for invalid addresses."""
    parsed = parse_ips(ips)
    n = len(parsed.valid)
    v4 = parsed.valid & (parsed.version == 4)
    v6 = parsed.valid & (parsed.version == 6)
    net4 = np.where(v4, parsed.lo >> np.uint64(8), 0).astype(np.uint64)
    frame = pl.DataFrame(
        {
            "a": (net4 >> np.uint64(16)).astype(np.int64),
            "b": ((net4 >> np.uint64(8)) & np.uint64(255)).astype(np.int64),
            "c": (net4 & np.uint64(255)).astype(np.int64),
            "v6": np.where(v6, parsed.hi >> np.uint64(16), 0).astype(np.uint64),
        }
    )
    text4 = pl.concat_str(
        [pl.col("a").cast(pl.String), pl.lit("."), pl.col("b").cast(pl.String), pl.lit("."),
         pl.col("c").cast(pl.String), pl.lit(".0/24")]
    )  # fmt: skip
    out4 = frame.select(text4.alias("p"))["p"]
    # IPv6 prefixes are few next to exchanges; ipaddress formats each distinct one canonically.
    uniq6 = np.unique(frame["v6"].to_numpy()[v6])
    names6 = {int(u): str(ipaddress.IPv6Network((int(u) << 80, 48))) for u in uniq6}
    out6 = pl.Series([names6.get(int(u)) for u in uniq6], dtype=pl.String)
    map6 = pl.DataFrame({"v6": pl.Series(uniq6, dtype=pl.UInt64), "p6": out6})
    p6 = frame.join(map6, on="v6", how="left", maintain_order="left")["p6"]
    result = pl.select(
        pl.when(pl.Series(v4)).then(out4).when(pl.Series(v6)).then(p6).otherwise(None).alias("p")
    )["p"]
    assert len(result) == n
    return result.to_arrow()


def network_context(ips: pa.Array | pa.ChunkedArray, intel: pa.Table | None) -> pa.Table:
    """``ip_prefix, asn, network_kind`` per address (kind ``unknown`` outside every intel row)."""
    table = intel if intel is not None else IP_INTEL_SCHEMA.empty_table()
    hit = lookup(ips, table)
    return pa.table(
        {
            "ip_prefix": ip_prefixes(ips).cast(pa.string()),
            "asn": hit.column("asn").cast(pa.int64()),
            "network_kind": hit.column("kind").cast(pa.string()),
        }
    )
