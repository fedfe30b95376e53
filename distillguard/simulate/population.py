"""Benign personas and attack campaigns as groups of accounts with per-account behaviour arrays."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

import numpy as np

from distillguard.simulate import network as net
from distillguard.simulate.knobs import CAMPAIGNS as CAMPAIGN_NAMES
from distillguard.simulate.knobs import Knobs
from distillguard.simulate.prompts import (
    BATCH_EXTRACTION,
    CASUAL_MIX,
    CASUAL_WRAPPERS,
    DEV_WRAPPERS,
    DEVELOPER_MIX,
    Bank,
    Corpus,
    attack_bank,
    make_bank,
    wrap,
)

DAY_MS: Final = 86_400_000

#: Local-hour activity profiles (24 weights, local time).
PROFILES: Final[dict[str, np.ndarray]] = {
    "work": np.array(
        [1, 1, 1, 1, 1, 2, 4, 8, 14, 18, 19, 18, 15, 17, 18, 17, 15, 11, 7, 5, 4, 3, 2, 1], float
    ),
    "evening": np.array(
        [4, 2, 1, 1, 1, 1, 2, 4, 6, 7, 8, 9, 10, 9, 9, 9, 10, 12, 14, 16, 17, 15, 11, 7], float
    ),
    "global": np.array(
        [6, 5, 5, 5, 5, 6, 8, 10, 12, 13, 13, 13, 12, 12, 12, 12, 12, 11, 10, 9, 9, 8, 7, 7], float
    ),
    "night_batch": np.array(
        [14, 16, 16, 15, 13, 10, 6, 3, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 3, 4, 6, 8, 10, 12], float
    ),
    "flat": np.ones(24),
}

#: Countries benign users come from: (code, utc offset hours, weight, residential orgs, mobile orgs).
COUNTRIES: Final = (
    ("US", -6.0, 35, ("comcast", "charter", "att", "frontier"), ("tmobile", "verizon_wireless")),
    ("IN", 5.5, 12, ("airtel",), ("jio",)),
    ("DE", 1.0, 8, ("dtag",), ()),
    ("GB", 0.0, 8, ("bt",), ()),
    ("FR", 1.0, 6, ("orange",), ()),
    ("ES", 1.0, 4, ("telefonica",), ()),
    ("KR", 9.0, 6, ("kt",), ()),
    ("JP", 9.0, 6, ("kddi",), ()),
    ("CA", -5.0, 5, ("rogers",), ()),
    ("VN", 7.0, 4, ("viettel",), ()),
    ("CN", 8.0, 2, ("chinanet",), ()),
)

SDK_AGENTS: Final = ("anthropic-python/0.52.0", "openai-python/1.82.0", "anthropic-typescript/0.40.1",
                     "langchain-core/0.3.59", "curl/8.5.0", "node-fetch/1.0", "Go-http-client/2.0")  # fmt: skip
BROWSER_AGENTS: Final = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/138.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 Version/18.1 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
)
SCRIPT_AGENTS: Final = ("python-httpx/0.28.1", "python-requests/2.32.3", "aiohttp/3.11.18")
FREE_MAIL: Final = (
    "gmail.com",
    "outlook.com",
    "yahoo.com",
    "icloud.com",
    "proton.me",
    "qq.com",
    "naver.com",
)

BASE_MODELS: Final = ("nova-3-pro", "nova-3-mini", "nova-3-flash")
NEW_MODEL: Final = "nova-4-pro"


@dataclass
class Group:
    """Accounts of one persona or campaign and how each of them behaves."""

    persona: str
    label: str  # benign | attack
    campaign: str  # "" for benign
    n: int
    # accounts.parquet
    country: np.ndarray
    created_day: np.ndarray  # float days relative to window start (negative: before it)
    email_domain: np.ndarray
    payment: np.ndarray  # object array, None for no card on file
    signup_ip: np.ndarray
    verification: np.ndarray
    tier: np.ndarray
    # behaviour
    rate: np.ndarray  # mean exchanges per active day
    p_active: float
    start_day: np.ndarray
    tz: np.ndarray  # utc offset hours
    profile: str
    weekend: float  # activity multiplier on Saturday/Sunday (local)
    home_ip: np.ndarray  # sticky address per account
    pool: np.ndarray | None = None  # shared addresses requests rotate through
    rotation: float = 0.0  # share of requests drawn from ``pool``
    user_agent: np.ndarray = field(default_factory=lambda: np.array([], dtype=str))
    bank: Bank | None = None
    cover: Bank | None = None
    cover_share: float = 0.0
    timing: str = "diurnal"  # diurnal | sync | burst | deadline
    jitter_s: float = 0.0
    end_users: int = 0  # end users per account (0: field unset)
    system_prompt: np.ndarray | None = None  # per-account hash, None: unset
    tools_p: float = 0.0
    tools_range: tuple[int, int] = (1, 6)
    thinking_p: float = 0.1
    messages_range: tuple[int, int] = (1, 4)
    out_mu: float = 5.5  # lognormal output tokens
    out_sigma: float = 0.8
    model_p: tuple[float, float, float] = (0.3, 0.5, 0.2)
    adopt: str = "slow"  # slow | pivot
    volume_cap: int = 0
    api_keys: int = 1
    account_ids: np.ndarray = field(default_factory=lambda: np.array([], dtype=str))


def _hex(tag: str, values: np.ndarray | range | list[int]) -> np.ndarray:
    return np.array(
        [hashlib.sha256(f"{tag}:{v}".encode()).hexdigest()[:16] for v in values], dtype=object
    )


class Builder:
    """Creates the groups of a scenario at a scale from one seeded generator."""

    def __init__(self, rng: np.random.Generator, network: net.Network, corpus: Corpus, scale: str,
                 days: int, seed: int) -> None:  # fmt: skip
        self.rng = rng
        self.net = network
        self.corpus = corpus
        self.scale = scale
        self.days = days
        self.seed = seed
        self._card_count = 0
        self._benign_general = self._bank(CASUAL_MIX, 3000, CASUAL_WRAPPERS)

    # ---------------------------------------------------------------- helpers
    def _bank(self, mix: Mapping[str, float], size: int, wrappers: tuple[str, ...]) -> Bank:
        return make_bank(wrap(self.rng, self.corpus.pick(self.rng, mix, size), wrappers))

    def _countries(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        weights = np.array([c[2] for c in COUNTRIES], float)
        idx = self.rng.choice(len(COUNTRIES), size=n, p=weights / weights.sum())
        tz = np.array([COUNTRIES[i][1] for i in idx]) + self.rng.choice(
            [-2, -1, 0, 0, 0, 1], size=n
        ) * (np.array([COUNTRIES[i][0] == "US" for i in idx]))
        return np.array([COUNTRIES[i][0] for i in idx]), tz.astype(float), idx

    def _home_ips(self, country_idx: np.ndarray, mobile_share: float, ipv6: float) -> np.ndarray:
        out = np.empty(len(country_idx), dtype=object)
        mobile = self.rng.random(len(country_idx)) < mobile_share
        for ci, c in enumerate(COUNTRIES):
            for is_mobile in (False, True):
                sel = np.flatnonzero((country_idx == ci) & (mobile == is_mobile))
                orgs = c[4] if is_mobile and c[4] else c[3]
                if sel.size:
                    out[sel] = self.net.addresses(orgs, sel.size, ipv6)
        return out.astype(str)

    def _cards(self, n: int, has_card: np.ndarray) -> np.ndarray:
        ids = _hex(f"card{self.seed}", range(self._card_count, self._card_count + n))
        self._card_count += n
        out: np.ndarray = np.where(has_card, ids, np.full(n, None, dtype=object))
        return out

    def _choice(
        self, options: tuple[str, ...], n: int, p: tuple[float, ...] | None = None
    ) -> np.ndarray:
        probs = None if p is None else np.array(p, float) / sum(p)
        return np.array(options, dtype=object)[self.rng.choice(len(options), size=n, p=probs)]

    def _created(self, n: int, oldest: float, newest: float) -> np.ndarray:
        return self.rng.uniform(oldest, newest, size=n)

    def _base(self, persona: str, n: int, rate: np.ndarray | float, *, p_active: float, profile: str,
              weekend: float, mobile_share: float = 0.2, ipv6: float = 0.15, paid: float = 0.3,
              label: str = "benign", campaign: str = "") -> Group:  # fmt: skip
        country, tz, cidx = self._countries(n)
        home = self._home_ips(cidx, mobile_share, ipv6)
        created = self._created(n, -900.0, self.days - 1.0)
        # a few accounts sign up during the window; they start when they sign up
        created = np.where(self.rng.random(n) < 0.95, np.minimum(created, -1.0), created)
        paid_mask = self.rng.random(n) < paid
        verification = np.where(
            paid_mask, "card", self._choice(("email", "phone", "none"), n, (0.7, 0.25, 0.05))
        )
        tier = np.where(
            paid_mask, self._choice(("tier1", "tier2", "tier3"), n, (0.6, 0.3, 0.1)), "free"
        )
        rates = np.broadcast_to(np.asarray(rate, float), (n,)).copy()
        return Group(
            persona=persona, label=label, campaign=campaign, n=n, country=country,
            created_day=created, email_domain=self._choice(FREE_MAIL, n, (40, 20, 8, 8, 5, 3, 3)),
            payment=self._cards(n, paid_mask), signup_ip=home.copy(), verification=verification,
            tier=tier.astype(object), rate=rates, p_active=p_active,
            start_day=np.maximum(np.ceil(created), 0.0), tz=tz, profile=profile, weekend=weekend,
            home_ip=home, user_agent=self._choice(SDK_AGENTS, n),
        )  # fmt: skip

    def _heavy(self, n: int, median: float, sigma: float) -> np.ndarray:
        """Heavy-tailed per-account rates: most accounts small, a few large."""
        return np.asarray(self.rng.lognormal(np.log(median), sigma, size=n), float)

    def _org_accounts(self, persona: str, n: int, rate: float, orgs: tuple[str, ...], n_ips: int,
                      domain: str, **kw: object) -> Group:  # fmt: skip
        """Many accounts behind one shared egress (campus NAT, corporate proxy)."""
        g = self._base(persona, n, self._heavy(n, rate, 0.8), mobile_share=0.0, ipv6=0.0, **kw)  # type: ignore[arg-type]
        egress = self.net.addresses(orgs, n_ips)
        g.home_ip = egress[self.rng.integers(0, n_ips, size=n)]
        g.signup_ip = g.home_ip.copy()
        g.email_domain = np.full(n, domain, dtype=object)
        g.country = np.full(n, self.net.org_of(orgs[0]).country, dtype=object)
        return g

    def _product(
        self, persona: str, n: int, rate: float, orgs: tuple[str, ...], **kw: object
    ) -> Group:
        """A company's backend calling the API for its own users: few accounts, datacenter egress."""
        g = self._base(persona, n, self._heavy(n, rate, 0.5), p_active=1.0, profile="global",
                       weekend=0.8, paid=1.0)  # fmt: skip
        g.tier = np.full(n, "enterprise", dtype=object)
        g.verification = np.full(n, "kyc", dtype=object)
        g.email_domain = _hex(f"dom{persona}{self.seed}", range(n))
        g.email_domain = np.array([f"{d[:8]}.io" for d in g.email_domain], dtype=object)
        g.pool = self.net.addresses(orgs, 8 * n)
        g.home_ip = g.pool[self.rng.integers(0, len(g.pool), size=n)]
        g.signup_ip = self._home_ips(np.zeros(n, int), 0.0, 0.0)
        g.rotation = 0.9
        g.api_keys = 4
        g.country = np.full(n, "US", dtype=object)
        g.tz = np.full(n, -6.0)
        for key, value in kw.items():
            setattr(g, key, value)
        return g

    # ---------------------------------------------------------------- benign personas
    def benign(self) -> list[Group]:
        s = self.scale
        count = {  # accounts per scale: tiny, small, medium, seed
            "casual": (600, 2500, 40000, 600000), "developer": (80, 300, 3000, 30000),
            "vpn_user": (40, 150, 2000, 20000), "saas_backend": (1, 1, 4, 30),
            "coding_agent": (1, 1, 2, 4), "eval_lab": (1, 2, 4, 10), "enterprise_batch": (1, 1, 3, 10),
            "reseller": (1, 1, 4, 15), "university_class": (1, 1, 2, 3), "corporate": (1, 1, 2, 3),
        }  # fmt: skip
        col = ("tiny", "small", "medium", "seed").index(s)
        # the very-high-volume products are slowed at the small scales so they do not swamp the run
        volume = (0.25, 0.5, 0.8, 1.0)[col]
        c = {k: v[col] for k, v in count.items()}
        groups: list[Group] = []

        g = self._base("casual", c["casual"], self._heavy(c["casual"], 2.5, 0.9), p_active=0.12,
                       profile="evening", weekend=1.1, mobile_share=0.3, paid=0.1)  # fmt: skip
        g.user_agent = self._choice(BROWSER_AGENTS + SDK_AGENTS[:2], g.n, (3, 3, 3, 1, 1))
        g.bank, g.out_mu = self._bank(CASUAL_MIX, 4000, CASUAL_WRAPPERS), 5.3
        groups.append(g)

        g = self._base("developer", c["developer"], self._heavy(c["developer"], 6.0, 1.0), p_active=0.4,
                       profile="work", weekend=0.3, mobile_share=0.05, paid=0.6)  # fmt: skip
        g.bank, g.tools_p, g.thinking_p, g.api_keys = (
            self._bank(DEVELOPER_MIX, 4000, DEV_WRAPPERS),
            0.2,
            0.3,
            2,
        )
        g.messages_range = (1, 12)
        groups.append(g)

        g = self._base("vpn_user", c["vpn_user"], self._heavy(c["vpn_user"], 3.0, 0.9), p_active=0.15,
                       profile="evening", weekend=1.0, paid=0.2)  # fmt: skip
        g.pool = self.net.addresses(net.VPN, max(50, c["vpn_user"] // 2), 0.1)
        g.home_ip = g.pool[self.rng.integers(0, len(g.pool), size=g.n)]
        g.rotation = 0.5  # the VPN app picks another exit now and then
        g.bank = self._benign_general
        groups.append(g)

        for i in range(c["university_class"]):
            n = int(self.rng.integers(80, 121))
            g = self._org_accounts("university_class", n, 3.0, (net.EDUCATION[i % len(net.EDUCATION)],), 2,
                                   ("stateu.edu", "northfield.ac.uk", "lakeside.edu")[i % 3],
                                   p_active=0.5, profile="evening", weekend=1.0, paid=0.0)  # fmt: skip
            week = self.rng.uniform(-200, -30)
            g.created_day = week + self.rng.uniform(0, 6, size=n)  # the same sign-up week
            g.start_day = np.zeros(n)
            g.tz = np.full(n, -5.0 if i % 3 != 1 else 0.0)
            homework = self.corpus.pick(
                self.rng, {"coding": 2, "reasoning": 1}, 12 * (self.days // 7 + 1)
            )
            g.bank = make_bank(homework)  # every student gets the same weekly set
            g.timing, g.user_agent = "deadline", self._choice(BROWSER_AGENTS + SDK_AGENTS[:1], n)
            groups.append(g)

        for i in range(c["corporate"]):
            n = int(self.rng.integers(60, 300)) if s in ("medium", "seed") else 60
            g = self._org_accounts("corporate", n, 5.0, (net.BUSINESS[i % len(net.BUSINESS)],), 3,
                                   ("acme-corp.com", "globex.co.uk", "initech.com")[i % 3],
                                   p_active=0.6, profile="work", weekend=0.1, paid=1.0)  # fmt: skip
            g.payment = np.full(
                n, _hex(f"corpcard{self.seed}", [i])[0], dtype=object
            )  # one company card
            g.tier = np.full(n, "enterprise", dtype=object)
            g.bank = self._bank({**DEVELOPER_MIX, "summarization": 3, "extraction": 3, "writing": 2}, 2000,
                                DEV_WRAPPERS)  # fmt: skip
            groups.append(g)

        g = self._product("saas_backend", c["saas_backend"], 2500 * volume, net.DATACENTER,
                          end_users=5000, thinking_p=0.0, messages_range=(2, 8))  # fmt: skip
        g.system_prompt = _hex(f"sys{self.seed}", range(g.n))
        g.bank, g.user_agent = self._bank({"extraction": 2, "summarization": 2, "writing": 2, "general": 2},
                                          3000, CASUAL_WRAPPERS), self._choice(SDK_AGENTS[:2], g.n)  # fmt: skip
        groups.append(g)

        g = self._product("coding_agent", c["coding_agent"], 15000 * volume * (0.3 if s == "small" else 1.0),
                          net.DATACENTER, end_users=20000, tools_p=1.0, tools_range=(8, 40),
                          thinking_p=0.9, messages_range=(6, 80), out_mu=6.5, timing="diurnal")  # fmt: skip
        g.system_prompt = _hex(f"agentsys{self.seed}", range(g.n))
        g.bank = self._bank({"coding": 3, "tool_use": 2}, 4000, DEV_WRAPPERS)
        g.user_agent = np.full(g.n, "codepilot-agent/3.4.2 (node)", dtype=object)
        g.model_p = (0.8, 0.15, 0.05)
        groups.append(g)

        g = self._product("enterprise_batch", c["enterprise_batch"], 4000 * volume * (0.4 if s == "small" else 1.0),
                          net.DATACENTER, profile="night_batch", weekend=1.0, out_mu=4.5, out_sigma=0.3,
                          model_p=(0.0, 0.2, 0.8))  # fmt: skip
        docs = self.corpus.pick(self.rng, {"extraction": 1, "summarization": 1, "general": 1}, 1500)
        g.bank = make_bank([BATCH_EXTRACTION.format(doc=d) for d in docs])
        g.user_agent = self._choice(SCRIPT_AGENTS[:2], g.n)
        groups.append(g)

        g = self._product("reseller", c["reseller"], 3000 * volume * (0.5 if s == "small" else 1.0),
                          net.DATACENTER + net.VPN[:1], end_users=3000, thinking_p=0.3, messages_range=(1, 20))  # fmt: skip
        g.bank = self._bank(
            {**CASUAL_MIX, "coding": 3, "reasoning": 2, "tool_use": 1}, 4000, CASUAL_WRAPPERS
        )
        g.tier = np.full(g.n, "tier3", dtype=object)
        g.verification = np.full(g.n, "card", dtype=object)
        g.user_agent = self._choice(SCRIPT_AGENTS + SDK_AGENTS[:1], g.n)
        groups.append(g)

        eval_n = c["eval_lab"]
        g = self._product("eval_lab", eval_n, 3000 * volume, net.DATACENTER[:3], profile="work", weekend=0.2,
                          timing="burst", thinking_p=0.5, out_mu=6.0, model_p=(0.34, 0.33, 0.33))  # fmt: skip
        g.p_active = 0.25
        g.email_domain = np.array([f"evals-lab{i}.org" for i in range(eval_n)], dtype=object)
        g.bank = make_bank(self.corpus.by_cap["reasoning"])  # the benchmark, always in order
        g.user_agent = self._choice(
            ("lm-eval-harness/0.4.13 python-httpx/0.28.1", "inspect-ai/0.3.90"), eval_n
        )
        groups.append(g)
        return groups

    # ---------------------------------------------------------------- attacks
    def campaign(self, name: str, k: Knobs) -> Group:
        default_n = {
            "june2026": (40, 150, 1500, 25000), "reasoning_harvester": (10, 30, 60, 120),
            "pivot": (3, 6, 20, 40), "varied": (20, 50, 200, 300),
        }[name][("tiny", "small", "medium", "seed").index(self.scale)]  # fmt: skip
        n = k.accounts or default_n
        rate = np.clip(self.rng.normal(k.rate, 0.15 * k.rate, size=n), 0.2 * k.rate, None)
        g = self._base("hydra_operator", n, rate, p_active=0.97, profile="flat", weekend=1.0,
                       label="attack", campaign=name, paid=0.6)  # fmt: skip
        g.volume_cap = k.volume_cap
        # exits: residential proxies rented in bulk, shared by many accounts
        infra = (
            net.Network(
                np.random.default_rng([k.infra_seed, CAMPAIGN_NAMES.index(name)]),
                address_space=self.net.address_space,
            )
            if k.infra_seed
            else self.net
        )
        if name == "june2026":
            pool = infra.addresses(net.RESIDENTIAL + net.MOBILE, max(200, n // 3), k.ipv6_share)
            infra.mark_proxies(pool, 0.15)
            g.persona = "hydra_operator"
        elif name == "reasoning_harvester":
            pool = infra.addresses(net.VPN + net.DATACENTER[:2], max(20, n // 4), k.ipv6_share)
            g.persona, g.timing, g.out_mu = "reasoning_harvester", "sync", 7.2
        elif name == "pivot":
            pool = infra.addresses(
                net.DATACENTER + net.RESIDENTIAL[:3], max(30, n * 4), k.ipv6_share
            )
            g.persona, g.adopt = "pivot_operator", "pivot"
        else:
            kinds = net.RESIDENTIAL + net.MOBILE + net.VPN + net.DATACENTER
            pool = infra.addresses(kinds, max(100, n), k.ipv6_share)
            g.persona = "varied_operator"
            g.tier = self._choice(("free", "tier1", "tier2", "tier3"), n, (3, 4, 2, 1))
            g.verification = self._choice(
                ("none", "email", "phone", "card", "kyc"), n, (1, 4, 3, 3, 1)
            )
        if infra is not self.net:
            self.net.adopt(infra)
        g.pool, g.rotation = pool, k.proxy_rotation
        g.home_ip = pool[self.rng.integers(0, len(pool), size=n)]
        g.signup_ip = pool[self.rng.integers(0, len(pool), size=n)]
        g.country = np.where(self.rng.random(n) < 0.7, "US", g.country)
        g.tz = np.zeros(n)
        g.jitter_s = k.timing_jitter
        g.start_day = np.floor(self.rng.uniform(0, min(2.0, self.days / 3), size=n))
        if k.start_day > 0:
            g.start_day = np.minimum(g.start_day + np.floor(k.start_day), self.days - 1)
        if k.account_age_days > 0:
            g.created_day = g.start_day - self.rng.uniform(0.7, 1.3, size=n) * k.account_age_days
        else:
            g.created_day = g.start_day - self.rng.uniform(0.05, 3.0, size=n)
        if k.distinct_cards:
            g.payment = self._cards(n, np.ones(n, bool))
        else:
            shared = self._cards(max(1, n // 25), np.ones(max(1, n // 25), bool))
            g.payment = shared[self.rng.integers(0, len(shared), size=n)]
            g.verification = np.full(n, "card", dtype=object)
        g.email_domain = self._choice(
            (*FREE_MAIL[:3], "mailbox.org", "tmpbox.net"), n, (5, 2, 1, 1, 1)
        )
        g.user_agent = self._choice(SCRIPT_AGENTS + SDK_AGENTS[:2], n, (5, 3, 1, 1, 1))
        g.bank = attack_bank(name, self.corpus, self.rng, k.paraphrase)
        g.cover, g.cover_share = self._benign_general, k.cover_traffic
        g.tools_p = {"june2026": 0.5, "pivot": 0.8, "varied": 0.4}.get(name, 0.0)
        g.tools_range = (3, 25)
        g.thinking_p = {"reasoning_harvester": 0.8, "varied": 0.5}.get(name, 0.7)
        g.messages_range = (1, 30) if name in ("june2026", "pivot") else (1, 3)
        if name != "reasoning_harvester":
            g.out_mu = 6.8
        g.model_p = (0.85, 0.1, 0.05)
        return g
