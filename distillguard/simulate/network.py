"""Real network prefixes (geoip2fast's MaxMind ASN snapshot) grouped by kind, IP pools drawn from them, and ip_intel rows.

The simulator never invents address space: every address lies in a real prefix of a
real AS (e.g. COMCAST-7922 for residential, AMAZON-02 for datacenter, M247 for VPN).
The ip_intel.csv written beside the traffic is deliberately incomplete, like a real
provider's: some residential ISPs are missing (their addresses are ``unknown``), one
VPN host is listed as ``datacenter``, and only some residential-proxy exits sit in small
nested ``proxy`` prefixes.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

import numpy as np

from distillguard.core.errors import DistillguardError
from distillguard.signals.geo import geoip_snapshot


@dataclass(frozen=True)
class Org:
    """One autonomous system the simulator draws addresses from."""

    key: str  # short handle used by personas
    as_name: str  # exact name in the geoip2fast ASN table
    asn: int
    kind: str  # what the network really is
    intel_kind: str | None  # what ip_intel.csv says (None: not listed -> unknown)
    country: str


#: The organisations used, with their public AS numbers.
ORGS: Final[tuple[Org, ...]] = (
    # residential ISPs
    Org("comcast", "COMCAST-7922", 7922, "residential", "residential", "US"),
    Org("charter", "CHARTER-20115", 20115, "residential", "residential", "US"),
    Org("att", "ATT-INTERNET4", 7018, "residential", "residential", "US"),
    Org("frontier", "FRONTIER-FRTR", 5650, "residential", None, "US"),
    Org("dtag", "Deutsche Telekom AG", 3320, "residential", "residential", "DE"),
    Org("orange", "Orange", 3215, "residential", "residential", "FR"),
    Org("bt", "British Telecommunications PLC", 2856, "residential", "residential", "GB"),
    Org("telefonica", "Telefonica De Espana S.a.u.", 3352, "residential", "residential", "ES"),
    Org("airtel", "BHARTI Airtel Ltd.", 24560, "residential", "residential", "IN"),
    Org("kt", "Korea Telecom", 4766, "residential", "residential", "KR"),
    Org("kddi", "KDDI CORPORATION", 2516, "residential", "residential", "JP"),
    Org("rogers", "ROGERS-COMMUNICATIONS", 812, "residential", None, "CA"),
    Org("chinanet", "Chinanet", 4134, "residential", "residential", "CN"),
    Org("viettel", "Viettel Group", 7552, "residential", "residential", "VN"),
    # mobile carriers
    Org("tmobile", "T-MOBILE-AS21928", 21928, "mobile", "mobile", "US"),
    Org("verizon_wireless", "CELLCO-PART", 6167, "mobile", "mobile", "US"),
    Org("jio", "Reliance Jio Infocomm Limited", 55836, "mobile", "mobile", "IN"),
    # clouds / hosting
    Org("aws", "AMAZON-02", 16509, "datacenter", "datacenter", "US"),
    Org("gcp", "GOOGLE-CLOUD-PLATFORM", 396982, "datacenter", "datacenter", "US"),
    Org("azure", "MICROSOFT-CORP-MSN-AS-BLOCK", 8075, "datacenter", "datacenter", "US"),
    Org("ovh", "OVH SAS", 16276, "datacenter", "datacenter", "FR"),
    Org("hetzner", "Hetzner Online GmbH", 24940, "datacenter", "datacenter", "DE"),
    Org("digitalocean", "DIGITALOCEAN-ASN", 14061, "datacenter", "datacenter", "US"),
    Org("alibaba", "Alibaba US Technology Co., Ltd.", 45102, "datacenter", "datacenter", "US"),
    # commercial VPN hosting: rented by VPN brands and attackers alike
    Org("m247", "M247 Europe SRL", 9009, "vpn", "datacenter", "RO"),
    Org("datacamp", "Datacamp Limited", 60068, "vpn", "vpn", "GB"),
    Org("packethub", "PacketHub S.A.", 207137, "vpn", "vpn", "PA"),
    # corporate egress and education
    Org("zscaler", "ZSCALER-SJC1", 22616, "business", "business", "US"),
    Org("colt", "COLT Technology Services Group Limited", 8220, "business", "business", "GB"),
    Org("mit", "MIT-GATEWAYS", 3, "education", "education", "US"),
    Org("umich", "UMICH-AS-5", 36375, "education", "education", "US"),
    Org("jisc", "Jisc Services Limited", 786, "education", "education", "GB"),
)
ORG_BY_KEY: Final = {o.key: o for o in ORGS}

#: Org keys by real kind, for personas that want "any residential ISP" etc.
RESIDENTIAL: Final = tuple(o.key for o in ORGS if o.kind == "residential")
MOBILE: Final = tuple(o.key for o in ORGS if o.kind == "mobile")
DATACENTER: Final = tuple(o.key for o in ORGS if o.kind == "datacenter")
VPN: Final = tuple(o.key for o in ORGS if o.kind == "vpn")
EDUCATION: Final = tuple(o.key for o in ORGS if o.kind == "education")
BUSINESS: Final = tuple(o.key for o in ORGS if o.kind == "business")


@dataclass(frozen=True)
class Prefix:
    """A real prefix announced by an org."""

    org: str
    network: int  # first address as an integer
    length: int  # prefix length
    version: int  # 4 or 6

    @property
    def cidr(self) -> str:
        addr = (
            ipaddress.ip_address(self.network)
            if self.version == 4
            else ipaddress.IPv6Address(self.network)
        )
        return f"{addr}/{self.length}"


@lru_cache(maxsize=1)
def _org_prefixes() -> dict[str, tuple[Prefix, ...]]:
    """All prefixes of the orgs in :data:`ORGS`, sorted, from the bundled snapshot."""
    db = geoip_snapshot()
    _idx, _idx_asn, _names_c, names_asn, _first, first_asn, _id_c, id_asn, _nl, nl_asn = db
    wanted = {o.as_name: o.key for o in ORGS}
    name_ids = {i: wanted[n] for i, n in enumerate(names_asn) if n in wanted}
    found: dict[str, list[Prefix]] = {o.key: [] for o in ORGS}
    for firsts, ids, lens in zip(first_asn, id_asn, nl_asn, strict=True):
        for first, asn_id, length in zip(firsts, ids, lens, strict=True):
            key = name_ids.get(asn_id)
            if key is None:
                continue
            version = 4 if first < 2**32 else 6
            # skip tiny and implausibly large announcements: nothing to sample / aggregates
            if (version == 4 and 12 <= length <= 24) or (version == 6 and 19 <= length <= 48):
                found[key].append(Prefix(key, int(first), int(length), version))
    missing = [k for k, v in found.items() if not any(p.version == 4 for p in v)]
    if missing:
        raise DistillguardError(f"geoip2fast snapshot has no IPv4 prefixes for {missing}")
    return {k: tuple(sorted(v, key=lambda p: (p.version, p.network))) for k, v in found.items()}


#: Public IPv4 addresses a mobile carrier NATs its subscribers behind (``full`` address space).
#: An assumption, not a measurement: carriers put many subscribers behind each address, and what
#: matters here is how many of *this provider's* customers meet on one, which grows with the
#: provider's size (at the seed scale a few hundred thousand casual users, a quarter on phones).
CGNAT_PUBLIC_ADDRESSES: Final = 65_536

#: How much of each org's address space addresses are drawn from (``simulate --address-space``).
ADDRESS_SPACES: Final = ("sampled", "full")
#: ``full`` since session 20: ``sampled`` made unrelated customers meet on one address far more
#: often than at a provider, so most of the benign cost it measured was the simulator's.
DEFAULT_ADDRESS_SPACE: Final = "full"


def _v4_weights(prefixes: list[Prefix]) -> np.ndarray:
    """Each IPv4 prefix's share of the addresses (its size over the group's total)."""
    sizes = np.array([2.0 ** (32 - p.length) for p in prefixes])
    weights: np.ndarray = sizes / sizes.sum()
    return weights


class Network:
    """Draws addresses from real prefixes and records which prefixes were used for ip_intel.csv.

    ``address_space``: ``sampled`` (the default until session 20; kept to reproduce older
    figures) draws from ``prefixes_per_org`` of each
    org's IPv4 announcements, each prefix equally likely whatever its size, so a /24 gets as
    many addresses as a /12 and unrelated customers meet on one address far more often than at
    a provider (a quarter of the seed scale's casual users on their first day). ``full`` draws
    from every announcement of the org (403M residential IPv4 addresses over the 14 ISPs),
    each address equally likely, except a mobile carrier's IPv4: its subscribers share the
    carrier's :data:`CGNAT_PUBLIC_ADDRESSES` (carrier-grade NAT), as do proxy exits on phones.
    """

    def __init__(
        self,
        rng: np.random.Generator,
        prefixes_per_org: int = 12,
        address_space: str = DEFAULT_ADDRESS_SPACE,
    ) -> None:
        if address_space not in ADDRESS_SPACES:
            raise DistillguardError(
                f"address space {address_space!r}: choose one of {', '.join(ADDRESS_SPACES)}"
            )
        self._rng = rng
        self.address_space = address_space
        all_prefixes = _org_prefixes()
        self.prefixes: dict[str, list[Prefix]] = {}
        for org in ORGS:
            options = all_prefixes[org.key]
            v4 = [p for p in options if p.version == 4]
            v6 = [p for p in options if p.version == 6]
            if address_space == "full":
                chosen = list(v4)
            else:
                pick4 = rng.choice(len(v4), size=min(prefixes_per_org, len(v4)), replace=False)
                chosen = [v4[i] for i in sorted(pick4)]
            if v6:
                pick6 = rng.choice(len(v6), size=min(3, len(v6)), replace=False)
                chosen += [v6[i] for i in sorted(pick6)]
            self.prefixes[org.key] = chosen
        self.proxy_cidrs: list[tuple[str, int, str]] = []
        self._cgnat_pools: dict[str, np.ndarray] = {}

    def addresses(
        self, orgs: tuple[str, ...] | list[str], n: int, ipv6_share: float = 0.0
    ) -> np.ndarray:
        """``n`` random addresses (numpy array of str) spread over ``orgs``' chosen prefixes."""
        org_idx = self._rng.integers(0, len(orgs), size=n)
        v6_mask = self._rng.random(n) < ipv6_share
        out = np.empty(n, dtype=object)
        for i, key in enumerate(orgs):
            sel = np.flatnonzero(org_idx == i)
            if sel.size == 0:
                continue
            pref = self.prefixes[key]
            v4 = [p for p in pref if p.version == 4]
            v6 = [p for p in pref if p.version == 6] or v4
            for group, mask in ((v4, ~v6_mask[sel]), (v6, v6_mask[sel])):
                rows = sel[mask]
                if rows.size == 0:
                    continue
                if self.address_space == "full" and group[0].version == 4 and self._carrier(key):
                    pool = self._cgnat(key, group)
                    out[rows] = pool[self._rng.integers(0, pool.size, size=rows.size)]
                    continue
                out[rows] = self._draw(group, rows.size)
        return out.astype(str)

    def _carrier(self, key: str) -> bool:
        return ORG_BY_KEY[key].kind == "mobile"

    def _cgnat(self, key: str, group: list[Prefix]) -> np.ndarray:
        """A mobile carrier's public IPv4 addresses, drawn once: its subscribers share them (CGNAT)."""
        pool = self._cgnat_pools.get(key)
        if pool is None:
            pool = self._draw(group, CGNAT_PUBLIC_ADDRESSES)
            self._cgnat_pools[key] = pool
        return pool

    def _draw(self, group: list[Prefix], n: int) -> np.ndarray:
        """``n`` addresses in ``group``'s prefixes (all IPv4 or all IPv6)."""
        if self.address_space == "full" and group[0].version == 4:
            which = self._rng.choice(len(group), size=n, p=_v4_weights(group))
        else:
            which = self._rng.integers(0, len(group), size=n)
        # IPv6 interface ids: 64 random bits in two halves (numpy has no 128-bit ints)
        hi = self._rng.integers(1, 2**31, size=n)
        lo = self._rng.integers(1, 2**31, size=n)
        out = np.empty(n, dtype=object)
        for r, (w, h, lw) in enumerate(zip(which, hi, lo, strict=True)):
            p = group[int(w)]
            if p.version == 4:
                span = 2 ** (32 - p.length)
                out[r] = str(ipaddress.IPv4Address(p.network + 1 + (int(h) % (span - 2))))
            else:
                out[r] = str(ipaddress.IPv6Address(p.network + ((int(h) << 31) | int(lw))))
        return out

    def mark_proxies(self, ips: np.ndarray, share: float) -> None:
        """List a /29 around a ``share`` of these (residential-proxy) IPv4 exits as ``proxy``."""
        pick = self._rng.random(len(ips)) < share
        # Every IPv4 prefix in org order; an exit is listed under the first that holds it.
        owners = [
            (p, ORG_BY_KEY[key])
            for key, prefixes in self.prefixes.items()
            for p in prefixes
            if p.version == 4
        ]
        starts = np.array([p.network for p, _ in owners], dtype=np.int64)
        ends = starts + np.array([2 ** (32 - p.length) for p, _ in owners], dtype=np.int64)
        for ip in ips[pick]:
            if ":" in ip:
                continue
            addr = int(ipaddress.IPv4Address(ip))
            inside = np.flatnonzero((starts <= addr) & (addr < ends))
            if inside.size:
                owner = owners[int(inside[0])][1]
                net = ipaddress.ip_network(f"{ip}/29", strict=False)
                self.proxy_cidrs.append((str(net), owner.asn, owner.as_name))

    def adopt(self, other: Network) -> None:
        """List ``other``'s prefixes and proxy ranges here too (an operation's exits seen by this provider)."""
        for key, prefixes in other.prefixes.items():
            mine = self.prefixes[key]
            held = set(mine)
            mine.extend(p for p in prefixes if p not in held)
        self.proxy_cidrs.extend(other.proxy_cidrs)

    def intel_rows(self) -> list[tuple[str, int, str, str]]:
        """Rows ``(cidr, asn, asn_org, kind)`` for ip_intel.csv: listed orgs, then nested proxies."""
        rows: list[tuple[str, int, str, str]] = []
        for org in ORGS:
            if org.intel_kind is None:
                continue
            rows += [(p.cidr, org.asn, org.as_name, org.intel_kind) for p in self.prefixes[org.key]]
        rows += [(c, asn, name, "proxy") for c, asn, name in sorted(set(self.proxy_cidrs))]
        return rows

    def org_of(self, key: str) -> Org:
        return ORG_BY_KEY[key]
