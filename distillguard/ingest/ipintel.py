"""IP addresses and ``ip_intel.csv`` networks: vectorised parsing and longest-prefix match (IPv4 and IPv6)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from distillguard.core.schema import NetworkKind

_V4: Final = r"^(?P<a>0|[1-9][0-9]{0,2})\.(?P<b>0|[1-9][0-9]{0,2})\.(?P<c>0|[1-9][0-9]{0,2})\.(?P<d>0|[1-9][0-9]{0,2})$"
_MASK64: Final = np.uint64(0xFFFFFFFFFFFFFFFF)

U64 = npt.NDArray[np.uint64]
Bools = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class ParsedIPs:
    """Addresses as 128-bit integers split in two words; IPv4 lives in ``lo`` with ``version`` 4."""

    valid: Bools
    version: npt.NDArray[np.uint8]  # 4, 6, or 0 where invalid
    hi: U64
    lo: U64


def _as_string_array(ips: pa.Array | pa.ChunkedArray) -> pa.Array:
    arr = ips.combine_chunks() if isinstance(ips, pa.ChunkedArray) else ips
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        arr = arr.cast(pa.string())
    return arr


def _parse_unique(values: pa.Array) -> ParsedIPs:
    """Parse distinct address strings; IPv4 fully vectorised, IPv6 per *distinct* value."""
    n = len(values)
    version = np.zeros(n, dtype=np.uint8)
    hi = np.zeros(n, dtype=np.uint64)
    lo = np.zeros(n, dtype=np.uint64)
    groups = pc.extract_regex(values, _V4)
    is_v4 = np.asarray(groups.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    if is_v4.any():
        # Children of null struct slots hold junk: substitute before casting.
        octets = [
            pc.cast(pc.if_else(groups.is_valid(), groups.field(k), "0"), pa.uint32())
            .to_numpy(zero_copy_only=False)
            .astype(np.uint64)
            for k in ("a", "b", "c", "d")
        ]
        in_range = np.all(np.stack(octets) <= 255, axis=0)
        is_v4 &= in_range
        value = (
            (octets[0] << np.uint64(24))
            | (octets[1] << np.uint64(16))
            | (octets[2] << np.uint64(8))
            | octets[3]
        )
        lo = np.where(is_v4, value, lo).astype(np.uint64)
        version[is_v4] = 4
    maybe_v6 = np.asarray(
        pc.fill_null(pc.match_substring(values, ":"), False).to_numpy(zero_copy_only=False),
        dtype=bool,
    )
    # IPv6 text has too many spellings (::, embedded IPv4, zero elision) to parse with a regex;
    # ipaddress runs once per *distinct* string, which is bounded by the distinct addresses seen.
    where = np.flatnonzero(maybe_v6)
    texts = values.filter(pa.array(maybe_v6)).to_pylist()
    for i, text in zip(where, texts, strict=True):
        try:
            addr = int(ipaddress.IPv6Address(text))
        except ValueError:
            continue
        hi[i] = addr >> 64
        lo[i] = addr & 0xFFFFFFFFFFFFFFFF
        version[i] = 6
    return ParsedIPs(version > 0, version, hi, lo)


def parse_ips(ips: pa.Array | pa.ChunkedArray) -> ParsedIPs:
    """Parse address strings (nulls and garbage come out with ``valid`` False), same length as ``ips``."""
    arr = _as_string_array(ips)
    encoded = pc.dictionary_encode(arr)
    uniq = _parse_unique(encoded.dictionary)
    idx = encoded.indices.to_numpy(zero_copy_only=False)
    null = np.asarray(encoded.indices.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    idx = np.where(null, 0, idx).astype(np.int64)
    if len(encoded.dictionary) == 0:
        zeros = np.zeros(len(arr), dtype=np.uint64)
        return ParsedIPs(
            np.zeros(len(arr), dtype=bool), np.zeros(len(arr), np.uint8), zeros, zeros.copy()
        )
    valid = uniq.valid[idx] & ~null
    return ParsedIPs(
        valid, np.where(valid, uniq.version[idx], 0).astype(np.uint8), uniq.hi[idx], uniq.lo[idx]
    )


@dataclass(frozen=True)
class ParsedCidrs:
    """Networks from CIDR strings; ``error`` holds a message per bad row (null where fine)."""

    version: npt.NDArray[np.uint8]
    hi: U64
    lo: U64
    prefix: npt.NDArray[np.int64]
    error: pa.Array


def _mask(version: npt.NDArray[np.uint8], prefix: npt.NDArray[np.int64]) -> tuple[U64, U64]:
    """Network masks as (hi, lo) words for each (version, prefix length)."""
    bits = np.where(version == 4, 96 + prefix, prefix).astype(
        np.int64
    )  # IPv4 sits in the low 32 bits
    bits = np.clip(bits, 0, 128)
    hi_bits = np.clip(bits, 0, 64).astype(np.uint64)
    lo_bits = np.clip(bits - 64, 0, 64).astype(np.uint64)

    def ones_from_top(b: U64) -> U64:
        full = b >= np.uint64(64)
        shift = np.where(full, np.uint64(0), np.uint64(64) - b)
        partial = np.where(b == 0, np.uint64(0), (_MASK64 >> shift) << shift)
        return np.where(full, _MASK64, partial).astype(np.uint64)

    mhi, mlo = ones_from_top(hi_bits), ones_from_top(lo_bits)
    mhi = np.where(version == 4, _MASK64, mhi).astype(np.uint64)
    return mhi, mlo


def parse_cidrs(cidrs: pa.Array | pa.ChunkedArray) -> ParsedCidrs:
    """Parse ``a.b.c.d/len`` and ``v6::/len`` networks, vectorised; host bits set is an error."""
    arr = _as_string_array(cidrs)
    parts = pc.extract_regex(arr, r"^(?P<addr>[^/]+)/(?P<len>[0-9]{1,3})$")
    ok_syntax = np.asarray(parts.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    addr = pc.if_else(parts.is_valid(), parts.field("addr"), pa.scalar(None, pa.string()))
    ips = parse_ips(addr)
    prefix = pc.cast(pc.if_else(parts.is_valid(), parts.field("len"), "999"), pa.int64()).to_numpy(
        zero_copy_only=False
    )
    prefix = np.where(ok_syntax, prefix, 999).astype(np.int64)
    max_len = np.where(ips.version == 4, 32, 128)
    ok = ok_syntax & ips.valid & (prefix <= max_len)
    mhi, mlo = _mask(ips.version, np.where(ok, prefix, 0))
    host_bits = ok & (((ips.hi & ~mhi) != 0) | ((ips.lo & ~mlo) != 0))
    shown = pc.utf8_slice_codeunits(pc.cast(arr, pa.string()), 0, 80)
    quoted = pc.binary_join_element_wise('"', pc.fill_null(shown, ""), '"', "")
    msg_bad = pc.binary_join_element_wise("not a CIDR network: ", quoted, "")
    msg_host = pc.binary_join_element_wise("host bits set in CIDR network: ", quoted, "")
    error = pc.if_else(
        pa.array(~ok),
        msg_bad,
        pc.if_else(pa.array(host_bits), msg_host, pa.scalar(None, pa.string())),
    )
    good = ok & ~host_bits
    version = np.where(good, ips.version, 0).astype(np.uint8)
    return ParsedCidrs(version, ips.hi, ips.lo, np.where(good, prefix, -1), error)


def lookup(ips: pa.Array | pa.ChunkedArray, intel: pa.Table) -> pa.Table:
    """Longest-prefix match of each address against ``intel`` (IP_INTEL_SCHEMA rows).

    Returns a table the length of ``ips`` with ``cidr, asn, asn_org, kind``; ``kind`` is
    ``unknown`` (other columns null) where no network contains the address or it is invalid.
    One vectorised join per distinct (IP version, prefix length) present in ``intel``,
    longest first, so a /24 ``proxy`` row nested in a /8 residential row wins.
    """
    arr = _as_string_array(ips)
    encoded = pc.dictionary_encode(arr)
    uniq_values = encoded.dictionary
    n_uniq = len(uniq_values)
    match = np.full(n_uniq, -1, dtype=np.int64)
    if n_uniq and intel.num_rows:
        addrs = _parse_unique(uniq_values)
        nets = parse_cidrs(intel.column("cidr"))
        net_rows = np.flatnonzero(nets.version > 0)
        net_df = pl.DataFrame(
            {
                "row": net_rows,
                "version": nets.version[net_rows],
                "prefix": nets.prefix[net_rows],
                "hi": nets.hi[net_rows],
                "lo": nets.lo[net_rows],
            }
        )
        levels = net_df.select("version", "prefix").unique().sort("prefix", descending=True).rows()
        for version, prefix in levels:
            todo = np.flatnonzero((match < 0) & (addrs.version == version))
            if len(todo) == 0:
                continue
            v = np.full(len(todo), version, dtype=np.uint8)
            mhi, mlo = _mask(v, np.full(len(todo), prefix, dtype=np.int64))
            probe = pl.DataFrame(
                {"i": todo, "hi": addrs.hi[todo] & mhi, "lo": addrs.lo[todo] & mlo}
            )
            level = (
                net_df.filter((pl.col("version") == version) & (pl.col("prefix") == prefix))
                .unique(subset=["hi", "lo"], keep="first", maintain_order=True)
                .select("hi", "lo", "row")
            )
            hit = probe.join(level, on=["hi", "lo"], how="inner")
            if hit.height:
                match[hit["i"].to_numpy()] = hit["row"].to_numpy()
    idx = encoded.indices.to_numpy(zero_copy_only=False)
    null = np.asarray(encoded.indices.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    per_row = (
        match[np.where(null, 0, idx).astype(np.int64)]
        if n_uniq
        else np.full(len(arr), -1, dtype=np.int64)
    )
    per_row = np.where(null, -1, per_row)
    take = pa.array(per_row, mask=per_row < 0)
    base = intel.select(["cidr", "asn", "asn_org", "kind"])
    out = (
        base.take(take)
        if intel.num_rows
        else pa.table(
            {name: pa.nulls(len(arr), base.schema.field(name).type) for name in base.column_names}
        )
    )
    kind = pc.fill_null(out.column("kind"), NetworkKind.UNKNOWN.value)
    return out.set_column(out.schema.get_field_index("kind"), "kind", kind)
