"""Tiny hand-made signals/accounts tables with named benign look-alikes and one planted hydra cluster."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

T0 = 1_780_000_000_000  # ms, a fixed event-time origin
HOUR = 3_600_000
DAY = 24 * HOUR

SIGNAL_TYPES: dict[str, pa.DataType] = {
    "request_id": pa.string(),
    "account_id": pa.string(),
    "end_user_id": pa.string(),
    "ts": pa.timestamp("ms", tz="UTC"),
    "model": pa.string(),
    "client_ip": pa.string(),
    "ip_prefix": pa.string(),
    "asn": pa.int64(),
    "network_kind": pa.string(),
    "user_agent": pa.string(),
    "input_tokens": pa.int64(),
    "output_tokens": pa.int64(),
    "thinking": pa.bool_(),
    "tools_count": pa.int64(),
    "system_prompt_sha256": pa.string(),
    "capability": pa.string(),
    "capability_conf": pa.float64(),
    "reasoning_elicitation": pa.float64(),
    "grader_use": pa.float64(),
    "rewrite_request": pa.float64(),
    "template_id": pa.uint64(),
    "scaffold_hash": pa.string(),
    "has_content": pa.bool_(),
}


@dataclass
class Synth:
    """Accumulates exchanges and accounts, then builds Arrow tables."""

    seed: int = 0
    rows: dict[str, list[object]] = field(default_factory=lambda: {k: [] for k in SIGNAL_TYPES})
    accounts: dict[str, list[object]] = field(
        default_factory=lambda: {
            k: []
            for k in (
                "account_id",
                "created_at",
                "email_domain",
                "payment_fingerprint",
                "signup_ip",
                "verification",
            )
        }
    )

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)
        self._n = 0

    def account(
        self,
        aid: str,
        created: int,
        domain: str,
        card: str,
        signup_ip: str,
        verification: str = "card",
    ) -> None:
        for k, v in zip(
            self.accounts,
            (aid, created, domain, card, signup_ip, verification),
            strict=True,
        ):
            self.accounts[k].append(v)

    def exchange(
        self,
        aid: str,
        ts: int,
        ip: str,
        kind: str,
        *,
        asn: int = 64500,
        ua: str = "python-sdk/1.0",
        template: int | None = None,
        capability: str = "chat",
        system_prompt: str | None = None,
        model: str = "m-1",
        end_user: str | None = None,
    ) -> None:
        self._n += 1
        row = {
            "request_id": f"r{self._n:07d}",
            "account_id": aid,
            "end_user_id": end_user,
            "ts": ts,
            "model": model,
            "client_ip": ip,
            "ip_prefix": ".".join(ip.split(".")[:3]) + ".0/24",
            "asn": asn,
            "network_kind": kind,
            "user_agent": ua,
            "input_tokens": 100,
            "output_tokens": 300,
            "thinking": False,
            "tools_count": 0,
            "system_prompt_sha256": system_prompt,
            "capability": capability,
            "capability_conf": 0.9,
            "reasoning_elicitation": 0.1,
            "grader_use": 0.0,
            "rewrite_request": 0.0,
            "template_id": template,
            "scaffold_hash": None,
            "has_content": True,
        }
        for k, v in row.items():
            self.rows[k].append(v)

    def tables(self) -> tuple[pa.Table, pa.Table]:
        sig = pa.table({k: pa.array(v, type=SIGNAL_TYPES[k]) for k, v in self.rows.items()})
        acc = pa.table(
            {
                "account_id": pa.array(self.accounts["account_id"], pa.string()),
                "created_at": pa.array(self.accounts["created_at"], pa.timestamp("ms", tz="UTC")),
                "email_domain": pa.array(self.accounts["email_domain"], pa.string()),
                "payment_fingerprint": pa.array(self.accounts["payment_fingerprint"], pa.string()),
                "signup_ip": pa.array(self.accounts["signup_ip"], pa.string()),
                "verification": pa.array(self.accounts["verification"], pa.string()),
            }
        )
        return sig, acc


def add_background(s: Synth, n: int = 60, days: int = 3) -> list[str]:
    """Ordinary unrelated customers: own home IP, own card, common SDK, varied templates."""
    ids = []
    for i in range(n):
        aid = f"benign-{i:03d}"
        ids.append(aid)
        s.account(aid, T0 - 400 * DAY + i * 7 * HOUR, "gmail.com", f"card-b{i}", f"10.{i}.1.1")
        ip = f"81.{i}.{i % 7}.{10 + i % 50}"
        for _ in range(int(s.rng.integers(5, 25))):
            ts = T0 + int(s.rng.integers(0, days * DAY))
            s.exchange(
                aid,
                ts,
                ip,
                "residential",
                asn=1000 + i,
                template=int(s.rng.integers(1, 10**12)),
                capability=str(s.rng.choice(["chat", "coding", "writing"])),
            )
    return ids


def add_campus(s: Synth, n: int = 25) -> list[str]:
    """A university class behind one NAT address, one email domain, same homework template."""
    ids = []
    for i in range(n):
        aid = f"campus-{i:03d}"
        ids.append(aid)
        s.account(
            aid, T0 - 30 * DAY + i * 60_000, "uni.example.edu", f"card-c{i}", "130.1.2.3", "email"
        )
        for j in range(12):
            ts = T0 + 2 * HOUR + j * 10 * 60_000 + int(s.rng.integers(0, 120_000))
            s.exchange(
                aid, ts, "130.1.2.3", "education", asn=2000, template=777, capability="coding"
            )
    return ids


def add_corporate(s: Synth, n: int = 15) -> list[str]:
    """Employees of one company through a corporate egress, sharing the corporate user agent."""
    ids = []
    for i in range(n):
        aid = f"corp-{i:03d}"
        ids.append(aid)
        s.account(aid, T0 - 200 * DAY + i * DAY, "acme.example", f"card-k{i}", f"20.0.0.{i}")
        for _ in range(20):
            ts = T0 + int(s.rng.integers(0, 3 * DAY))
            s.exchange(
                aid,
                ts,
                "198.51.100.7",
                "business",
                asn=3000,
                ua="acme-internal/2.1",
                template=int(s.rng.integers(1, 10**12)),
            )
    return ids


def add_vpn(s: Synth, n: int = 12) -> list[str]:
    """Unrelated VPN users sharing a commercial exit address."""
    ids = []
    for i in range(n):
        aid = f"vpn-{i:03d}"
        ids.append(aid)
        s.account(aid, T0 - (100 + 9 * i) * DAY, f"mail{i}.example", f"card-v{i}", f"30.{i}.0.1")
        for _ in range(10):
            ts = T0 + int(s.rng.integers(0, 3 * DAY))
            s.exchange(
                aid, ts, "185.10.10.10", "vpn", asn=4000, template=int(s.rng.integers(1, 10**12))
            )
    return ids


def add_saas(s: Synth, n: int = 3) -> list[str]:
    """SaaS backends on cloud IPs with one constant system prompt each, sharing a public scaffold."""
    ids = []
    for i in range(n):
        aid = f"saas-{i:03d}"
        ids.append(aid)
        s.account(aid, T0 - 500 * DAY, f"saas{i}.example", f"card-s{i}", f"40.{i}.0.1", "kyc")
        for _ in range(200):
            ts = T0 + int(s.rng.integers(0, 3 * DAY))
            s.exchange(
                aid,
                ts,
                f"34.{i}.0.{int(s.rng.integers(1, 4))}",
                "datacenter",
                asn=5000 + i,
                template=4242,
                system_prompt=f"sp-{i}",
            )
    return ids


def add_hydra(s: Synth, n: int = 30, pool: int = 40, prefix: str = "hydra") -> list[str]:
    """A hydra cluster: distinct cards and domains, residential proxy pool cycling through accounts,
    one harvesting scaffold, signed up in a wave, active in lock-step."""
    ids = []
    salt = sum(map(ord, prefix)) % 40
    pool_ips = [f"73.{50 + salt + k % 9}.{k}.{(k * 7) % 250 + 1}" for k in range(pool)]
    for i in range(n):
        aid = f"{prefix}-{i:03d}"
        ids.append(aid)
        s.account(
            aid,
            T0 - 40 * DAY + i * 90_000,
            f"inbox{i}.example",
            f"card-h{prefix}{i}",
            f"73.9.9.{i + 1}",
        )
        for j in range(26):
            ts = T0 + (j % 3) * DAY + (j // 3) * 40 * 60_000 + int(s.rng.integers(0, 60_000))
            ip = pool_ips[int(s.rng.integers(0, pool))]
            s.exchange(
                aid,
                ts,
                ip,
                "residential",
                asn=7922 + salt,
                template=9001 + 10 * salt + j % 3,
                capability="math",
                ua="python-sdk/1.0",
            )
    return ids
