"""Country of an IP address, from the GeoLite2 country snapshot that the geoip2fast wheel ships (no download)."""

from __future__ import annotations

import gzip
import ipaddress
import pickle
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from distillguard.core.errors import DistillguardError
from distillguard.ingest.ipintel import parse_ips

#: The snapshot with IPv4 and IPv6 country ranges (the simulator reads its ASN ranges).
_DATA_FILE: Final = "geoip2fast-asn-ipv6.dat.gz"
_V4_SPACE: Final = 1 << 32


@dataclass(frozen=True)
class CountryRanges:
    """Sorted address ranges and their ISO country code (index into ``codes``; -1: no country).

    IPv6 ranges are held by their top 64 bits: country allocations are /64 or shorter, so an
    address's top half decides its range.
    """

    starts4: npt.NDArray[np.uint64]
    ends4: npt.NDArray[np.uint64]
    code4: npt.NDArray[np.int16]
    starts6: npt.NDArray[np.uint64]
    ends6: npt.NDArray[np.uint64]
    code6: npt.NDArray[np.int16]
    codes: tuple[str, ...]

    def lookup(self, version: np.ndarray, hi: np.ndarray, lo: np.ndarray) -> npt.NDArray[np.int16]:
        """Code index per parsed address (``ParsedIPs`` words), -1 outside every range."""
        out = np.full(len(version), -1, dtype=np.int16)
        for is_v, key, starts, ends, code in (
            (version == 4, lo, self.starts4, self.ends4, self.code4),
            (version == 6, hi, self.starts6, self.ends6, self.code6),
        ):
            if not is_v.any() or not len(starts):
                continue
            k = key[is_v].astype(np.uint64)
            pos = np.searchsorted(starts, k, side="right") - 1
            inside = (pos >= 0) & (k <= ends[np.maximum(pos, 0)])
            out[is_v] = np.where(inside, code[np.maximum(pos, 0)], -1)
        return out


def geoip_snapshot() -> tuple[list[Any], ...]:
    """The geoip2fast wheel's IPv4+IPv6 country and ASN tables, as its reader unpickles them.

    Not cached: callers keep what they derive (a few MB), not these lists of Python integers.

    ``(idx, idx_asn, country_names, asn_names, firsts, firsts_asn, country_ids, asn_ids,
    lengths, lengths_asn)``: per table, chunks of range starts (integers, IPv4 below 2**32),
    name ids and prefix lengths. The simulator draws its ASN prefixes from the same tables.
    """
    try:
        import geoip2fast
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise DistillguardError("geoip2fast is required for address data") from exc
    path = Path(geoip2fast.__file__).parent / _DATA_FILE
    with gzip.open(path, "rb") as handle:
        _version, _info, _total, db = pickle.load(handle)
    return tuple(db)


@lru_cache(maxsize=1)
def country_ranges() -> CountryRanges:
    """The bundled snapshot's country ranges (loaded once, ~2 s and ~15 MB)."""
    db = geoip_snapshot()
    names, firsts, ids, lengths = db[2], db[4], db[6], db[8]
    # Entries are "CC:Country name"; reserved and private blocks carry a number instead of a code.
    codes = tuple(n.split(":", 1)[0] for n in names)
    is_country = np.array([len(c) == 2 and c.isalpha() for c in codes])
    first = [int(f) for chunk in firsts for f in chunk]
    length = np.fromiter((n for chunk in lengths for n in chunk), dtype=np.int64)
    code = np.fromiter((i for chunk in ids for i in chunk), dtype=np.int64)
    code = np.where(is_country[code], code, -1).astype(np.int16)
    v4 = np.fromiter((f < _V4_SPACE for f in first), dtype=bool, count=len(first))
    start4 = np.array([f for f in first if f < _V4_SPACE], dtype=np.uint64)
    size4 = np.left_shift(np.uint64(1), (32 - length[v4]).astype(np.uint64))
    top6 = [f >> 64 for f in first if f >= _V4_SPACE]
    last6 = [
        (f + (1 << (128 - int(n))) - 1) >> 64
        for f, n in zip(first, length.tolist(), strict=True)
        if f >= _V4_SPACE
    ]
    order4, order6 = np.argsort(start4, kind="stable"), np.argsort(np.array(top6, np.uint64))
    start6 = np.array(top6, dtype=np.uint64)[order6]
    return CountryRanges(
        starts4=start4[order4],
        ends4=(start4 + size4 - np.uint64(1))[order4],
        code4=code[v4][order4],
        starts6=start6,
        ends6=np.array(last6, dtype=np.uint64)[order6],
        code6=code[~v4][order6],
        codes=codes,
    )


def countries(ips: pa.Array | pa.ChunkedArray) -> pa.Array:
    """ISO country code per address string; null for invalid, reserved and unlisted addresses."""
    table = country_ranges()
    parsed = parse_ips(ips)
    idx = table.lookup(np.where(parsed.valid, parsed.version, 0), parsed.hi, parsed.lo).astype(
        np.int64
    )
    names = pa.array(table.codes, pa.string())
    return names.take(pa.array(np.maximum(idx, 0), mask=idx < 0))


@lru_cache(maxsize=65536)
def country_of(ip: str) -> str | None:
    """:func:`countries` for one address (the online check path)."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return None
    value = int(addr)
    table = country_ranges()
    version = np.array([addr.version], dtype=np.uint8)
    hi = np.array([value >> 64 if addr.version == 6 else 0], dtype=np.uint64)
    lo = np.array([value & ((1 << 64) - 1)], dtype=np.uint64)
    idx = int(table.lookup(version, hi, lo)[0])
    return table.codes[idx] if idx >= 0 else None
