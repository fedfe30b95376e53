"""A tiny provider log with one planted campaign, benign look-alikes (VPN users sharing an exit) and a weak campaign."""

from __future__ import annotations

import csv
import json
import random
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

T0 = datetime(2026, 6, 1, tzinfo=UTC)

CAMPAIGN_TEMPLATE = (
    "You are an expert tutor. Solve the following problem and explain every single step of your "
    "reasoning in detail before giving the final answer: {item}"
)
CAMPAIGN_UA = "harvest-client/2.1 (linux)"
PROXY_PREFIX = "198.51.100"  # exclusive to the campaign; kind proxy, ASN 64512
VPN_PREFIX = "192.0.2"  # shared with benign VPN users: must never be exported
WEAK_PREFIX = "203.0.113"  # used only by the low-confidence campaign
BENIGN_PROMPTS = (
    "What should I cook tonight with chicken, rice and some leftover spinach?",
    "Why does my pytest fixture run twice when I use autouse=True in conftest.py?",
    "Write a poem about the first snow of winter.",
    "Summarise this article in three bullet points.",
    "Translate this paragraph from German to English, keeping the technical terms.",
    "how do I get my toddler to sleep through the night",
    "Suggest a birthday gift for my dad who likes fishing and jazz.",
    "Can you help me plan a 3 day trip to Lisbon on a budget?",
)
IP_INTEL = [
    ("198.51.100.0/24", 64512, "EXAMPLE-PROXY", "proxy"),
    ("192.0.2.0/24", 64513, "EXAMPLE-VPN", "vpn"),
    ("203.0.113.0/24", 64514, "EXAMPLE-HOST", "datacenter"),
    ("81.2.69.0/24", 20712, "Andrews & Arnold Ltd", "residential"),
]


@dataclass
class ProviderLog:
    """Paths and ground truth of one synthetic provider."""

    logdir: Path
    campaign_members: list[str]
    weak_members: list[str]
    benign: list[str]
    account_ips: dict[str, set[str]] = field(default_factory=dict)
    payments: dict[str, str] = field(default_factory=dict)
    prompts: list[str] = field(default_factory=list)


def write_provider(
    root: Path,
    *,
    name: str = "a",
    seed: int = 0,
    n_attack: int = 6,
    per_account: int = 30,
    n_benign: int = 12,
    n_vpn: int = 3,
    attack_start: timedelta = timedelta(0),
) -> ProviderLog:
    """Write a log dir: a campaign (proxy prefix + VPN exit + one UA + one scaffold), benign users, a weak campaign."""
    rng = random.Random(seed)
    logdir = root / f"log-{name}"
    logdir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, object]] = []
    accounts: list[dict[str, str]] = []
    out = ProviderLog(logdir, [], [], [])

    def add(account: str, ts: datetime, ip: str, prompt: str, ua: str) -> None:
        rows.append(
            {"ts": ts.isoformat().replace("+00:00", "Z"), "request_id": f"{name}-r{len(rows):06d}",
             "account_id": account, "client_ip": ip, "model": "model-large", "prompt": prompt,
             "input_tokens": 100 + len(prompt), "output_tokens": 400, "user_agent": ua}
        )  # fmt: skip
        out.account_ips.setdefault(account, set()).add(ip)
        out.prompts.append(prompt)

    def account(acc: str, domain: str, pf: str) -> None:
        accounts.append({"account_id": acc, "created_at": "2026-05-01T00:00:00Z", "email_domain": domain,
                         "payment_fingerprint": pf, "signup_ip": "", "country": "US", "verification": "card",
                         "tier": "t1"})  # fmt: skip
        out.payments[acc] = pf

    for i in range(n_attack):
        acc = f"{name}-atk-{i}"
        out.campaign_members.append(acc)
        account(acc, f"burner{seed}.example", f"pf-{name}-atk-{i}-{rng.getrandbits(32):08x}")
        for j in range(per_account):
            ts = T0 + attack_start + timedelta(minutes=37 * j + 3 * i)
            ip = (
                f"{VPN_PREFIX}.{rng.randint(10, 40)}"
                if j % 10 == 0
                else f"{PROXY_PREFIX}.{rng.randint(1, 254)}"
            )
            item = f"problem {rng.randint(0, 10**6)}: what is {rng.randint(2, 99)} times {rng.randint(2, 99)}?"
            add(acc, ts, ip, CAMPAIGN_TEMPLATE.format(item=item), CAMPAIGN_UA)
    for i in range(2):
        acc = f"{name}-weak-{i}"
        out.weak_members.append(acc)
        account(acc, "weak.example", f"pf-{name}-weak-{i}")
        for j in range(10):
            add(
                acc,
                T0 + timedelta(hours=j),
                f"{WEAK_PREFIX}.{i + 1}",
                "summarise the attached report",
                "weak/1.0",
            )
    for i in range(n_benign + n_vpn):
        acc = f"{name}-user-{i}"
        out.benign.append(acc)
        account(acc, "gmail.com", f"pf-{name}-user-{i}")
        vpn = i >= n_benign
        for j in range(20):
            ip = f"{VPN_PREFIX}.{rng.randint(10, 40)}" if vpn else f"81.2.69.{10 + i}"
            add(
                acc,
                T0 + timedelta(minutes=53 * j + i),
                ip,
                rng.choice(BENIGN_PROMPTS),
                "python-sdk/0.52.0",
            )
    rows.sort(key=lambda r: (str(r["ts"]), str(r["request_id"])))
    with (logdir / "exchanges.jsonl").open("w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
    with (logdir / "accounts.csv").open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(accounts[0]))
        w.writeheader()
        w.writerows(accounts)
    with (logdir / "ip_intel.csv").open("w", newline="", encoding="utf-8") as fh:
        cw = csv.writer(fh)
        cw.writerow(["cidr", "asn", "asn_org", "kind"])
        cw.writerows(IP_INTEL)
    return out


def write_campaigns(resultdir: Path, log: ProviderLog, *, confidence: float = 0.95) -> Path:
    """A hand-made ``campaigns.json`` (contract §2) for the planted campaign and the weak one."""
    resultdir.mkdir(parents=True, exist_ok=True)
    doc = {
        "campaigns": [
            {"id": "cluster-7", "members": log.campaign_members, "n_accounts": len(log.campaign_members),
             "n_exchanges": 180, "first_ts": "2026-06-01T00:00:00Z", "last_ts": "2026-06-02T00:00:00Z",
             "capability_targets": ["math"], "shared_indicators": {}, "confidence": confidence},
            {"id": "cluster-9", "members": log.weak_members, "n_accounts": 2, "n_exchanges": 20,
             "first_ts": "2026-06-01T00:00:00Z", "last_ts": "2026-06-01T10:00:00Z",
             "capability_targets": ["summarization"], "shared_indicators": {}, "confidence": 0.4},
        ],
        "run": {},
    }  # fmt: skip
    path = resultdir / "campaigns.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    (resultdir / "verdicts.jsonl").write_text("", encoding="utf-8")
    return path


def assert_no_customer_data(text: str, log: ProviderLog) -> None:
    """No raw address, payment fingerprint, account id, email or prompt of ``log`` in ``text``."""
    # Every IP-looking token is a network prefix, never an address an account used.
    tokens = set(re.findall(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}(?:/[0-9]+)?", text))
    used = {ip for ips in log.account_ips.values() for ip in ips}
    assert tokens and all(t.endswith("/24") for t in tokens)
    assert not ({t.split("/")[0] for t in tokens} & used)
    for pf in log.payments.values():
        assert pf not in text
    for account in [*log.campaign_members, *log.benign, *log.weak_members]:
        assert account not in text
    assert "burner1.example" not in text and "gmail.com" not in text
    assert "cluster-7" not in text  # local ids could embed customer ids: never exported
    for prompt in set(log.prompts):
        assert prompt not in text
        words = re.findall(r"[a-z]{6,}", prompt.lower())
        # Not even the scaffold's distinctive words leak: sketches are hashes.
        assert not any(
            f" {w} " in text.lower() for w in words if w in ("reasoning", "problem", "detail")
        )
