"""Network context of each exchange: kind (ip_intel longest-prefix match), ASN, and the /24 (v4) or /48 (v6) prefix."""

from __future__ import annotations

import ipaddress

import numpy as np
import polars as pl
import pyarrow as pa

from distillguard.core.schema import IP_INTEL_SCHEMA
from distillguard.ingest.ipintel import lookup, parse_ips
from distillguard.signals.text import distinct_arrow


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
    # Each distinct address once: a batch has far fewer addresses than exchanges.
    uniq, index = distinct_arrow(ips)
    hit = lookup(uniq, table)
    per_address = pa.table(
        {
            "ip_prefix": ip_prefixes(uniq).cast(pa.string()),
            "asn": hit.column("asn").cast(pa.int64()),
            "network_kind": hit.column("kind").cast(pa.string()),
        }
    )
    return per_address.take(pa.array(index))


class AddressContext:
    """:func:`network_context` remembering each distinct address across batches (clients recur batch after batch).

    First in, first out beyond ``limit`` addresses; a remembered row equals a recomputed one.
    """

    def __init__(self, intel: pa.Table | None, limit: int = 1_000_000) -> None:
        self.intel, self.limit = intel, limit
        self._cache: pl.DataFrame | None = None

    def _compute(self, ips: pl.Series) -> pl.DataFrame:
        found = pl.from_arrow(network_context(ips.to_arrow(), self.intel))
        assert isinstance(found, pl.DataFrame)
        return found.with_columns(ip=ips)

    def __call__(self, ips: pa.Array | pa.ChunkedArray) -> pa.Table:
        """Same table as ``network_context(ips, intel)``."""
        uniq, index = distinct_arrow(ips)
        keyed = pl.DataFrame({"ip": pl.Series(values=uniq).cast(pl.String)})
        if self._cache is None:
            table = self._compute(keyed["ip"])
        else:
            missing = keyed.join(self._cache.select("ip"), on="ip", how="anti", nulls_equal=True)[
                "ip"
            ]
            table = (
                pl.concat([self._cache, self._compute(missing)]) if len(missing) else self._cache
            )
        self._cache = table.tail(self.limit)
        out = keyed.join(table, on="ip", how="left", maintain_order="left", nulls_equal=True)
        assert out.height == len(uniq)
        per_address = (
            out.select("ip_prefix", "asn", "network_kind").to_arrow().take(pa.array(index))
        )
        return pa.table(
            {
                "ip_prefix": per_address.column("ip_prefix").cast(pa.string()),
                "asn": per_address.column("asn").cast(pa.int64()),
                "network_kind": per_address.column("network_kind").cast(pa.string()),
            }
        )
