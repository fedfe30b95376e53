"""Account-level detectors: one per-account feature each, mapped to a [0, 1] score against a configured reference.

Each detector reads the *signals table* (so its evidence can name request ids), computes
the account features (or takes precomputed ones via :meth:`score_features`), and maps
one feature through a logistic around ``center`` with width ``scale`` (``direction``
-1 for features where *low* is suspicious). The reference points live in
``features.detectors.<id>`` in configuration, not code. An account with fewer than
``min_exchanges`` (content) exchanges, or a null feature, abstains.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final

import ibis
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from distillguard.core.config import default_config
from distillguard.core.detector import Detections, DetectorInfo, Level, Status
from distillguard.features.aggregate import compute_account_features, connect
from distillguard.signals.exchange import SIGNAL_SCHEMA

EVIDENCE_SAMPLE: Final = 5


@dataclass(frozen=True)
class Reference:
    """Where a feature turns suspicious: score = sigmoid(direction * (value - center) / scale)."""

    center: float
    scale: float
    direction: int = 1
    min_exchanges: int = 5


def _conform_signals(table: pa.Table) -> pa.Table:
    """The signals table with every column of SIGNAL_SCHEMA present (nulls where absent)."""
    for f in SIGNAL_SCHEMA:
        if f.name not in table.column_names:
            table = table.append_column(f.name, pa.nulls(table.num_rows, f.type))
        elif table.schema.field(f.name).type != f.type:
            table = table.set_column(
                table.schema.get_field_index(f.name), f.name, table.column(f.name).cast(f.type)
            )
    if "has_content" in table.column_names and table.column("has_content").null_count:
        table = table.set_column(
            table.schema.get_field_index("has_content"),
            "has_content",
            pc.fill_null(table.column("has_content"), False),
        )
    return table.select(SIGNAL_SCHEMA.names)


class AccountFeatureDetector:
    """Base: one feature column of the account features, a reference, and an evidence filter."""

    info: ClassVar[DetectorInfo]
    feature: ClassVar[str]
    count_column: ClassVar[str] = "n_content"
    #: SQL-free evidence filter: name of a signals column and the threshold it must reach (None: any row).
    evidence_column: ClassVar[str | None] = None

    def __init__(
        self, config: Mapping[str, Any] | None = None, accounts: pa.Table | None = None
    ) -> None:
        self.config = config if config is not None else default_config()
        self.accounts = accounts
        section = ((self.config.get("features") or {}).get("detectors") or {}).get(
            self.info.id
        ) or {}
        if not section:
            section = ((default_config().get("features") or {}).get("detectors") or {}).get(
                self.info.id
            ) or {}
        self.reference = Reference(**section)

    def score(self, table: pa.Table) -> Detections:
        """Score every account present in the signals ``table``."""
        signals = _conform_signals(table)
        features = compute_account_features(signals, self.accounts, self.config)
        return self.score_features(features, signals)

    def score_features(self, features: pa.Table, signals: pa.Table | None = None) -> Detections:
        """Score precomputed account features; ``signals`` (optional) supplies evidence request ids."""
        ref = self.reference
        n = features.num_rows
        # A feature table without this detector's columns (a provider sending no tokens, say)
        # makes the detector abstain, never crash.
        if self.feature in features.column_names:
            value = features.column(self.feature).cast(pa.float64()).to_numpy(zero_copy_only=False)
            value = np.asarray(value, dtype=np.float64)
        else:
            value = np.full(n, np.nan)
        if self.count_column in features.column_names:
            count = np.asarray(
                features.column(self.count_column)
                .cast(pa.float64())
                .to_numpy(zero_copy_only=False),
                dtype=np.float64,
            )
        else:
            count = np.full(n, np.inf)
        few = count < ref.min_exchanges
        missing = np.isnan(value)
        with np.errstate(over="ignore", invalid="ignore"):
            score = 1.0 / (1.0 + np.exp(-ref.direction * (value - ref.center) / ref.scale))
        abstain = few | missing
        reasons = np.where(
            few, f"abstain: fewer than {ref.min_exchanges} exchanges", "abstain: no data"
        )
        scores = pa.table(
            {
                "account_id": features.column("account_id"),
                "score": pa.array(np.where(abstain, np.nan, score), mask=abstain),
                "value": pa.array(value, mask=missing),
                "abstain_reason": pa.array(
                    [
                        r if a else None
                        for r, a in zip(reasons.tolist(), abstain.tolist(), strict=True)
                    ],
                    pa.string(),
                ),
            }
        )
        evidence: dict[str, dict[str, Any]] = {}
        if signals is not None and n:
            samples = self._samples(signals)
            for acc, v, s, a in zip(
                features.column("account_id").to_pylist(),
                value.tolist(),
                score.tolist(),
                abstain.tolist(),
                strict=True,
            ):
                if a:
                    continue
                evidence[acc] = {
                    "detector": self.info.ref, "feature": self.feature, "value": v, "score": s,
                    "reference": {"center": ref.center, "scale": ref.scale, "direction": ref.direction},
                    "sample_request_ids": samples.get(acc, []),
                }  # fmt: skip
        return Detections(self.info, scores, evidence)

    def _samples(self, signals: pa.Table) -> dict[str, list[str]]:
        con = connect()
        t = con.create_table("signals", _conform_signals(signals), overwrite=True)  # type: ignore[attr-defined]
        if self.evidence_column is not None:
            threshold = float((self.config.get("features") or {}).get("signal_threshold", 0.5))
            t = t.filter(t[self.evidence_column] >= threshold)
        rank = ibis.row_number().over(ibis.window(group_by="account_id", order_by="request_id"))
        picked = t.mutate(r=rank).filter(lambda x: x.r < EVIDENCE_SAMPLE)
        grouped = picked.group_by("account_id").aggregate(
            ids=picked.request_id.collect(order_by=picked.request_id)
        )
        out = con.to_pyarrow(grouped)  # type: ignore[attr-defined]
        return dict(
            zip(out.column("account_id").to_pylist(), out.column("ids").to_pylist(), strict=True)
        )


def _info(
    id_: str, description: str, falsepositives: tuple[str, ...], runbook: str
) -> DetectorInfo:
    return DetectorInfo(id=id_, version="1", level=Level.ACCOUNT, status=Status.EXPERIMENTAL,
                        description=description, falsepositives=falsepositives, runbook=runbook)  # fmt: skip


class CapabilityConcentration(AccountFeatureDetector):
    """Share of the account's content exchanges in its single most common capability.

    Why: harvesting targets one capability (reasoning, coding, tool use) in bulk; people use
    a spread. Benign look-alikes: coding-agent products (all coding), translation apps, eval
    labs running one benchmark. Verify: the top capability and whether prompts are templated.
    """

    feature = "top_capability_share"
    info = _info(
        "features.capability_concentration",
        "share of exchanges in the top capability",
        ("coding-agent products", "single-purpose SaaS", "eval labs"),
        "Check the top capability and read sampled prompts; compare with the stated use case.",
    )


class ReasoningShare(AccountFeatureDetector):
    """Share of content exchanges that ask for the reasoning trace.

    Why: reasoning traces are the prime distillation target. Benign look-alikes: eval labs
    (chain-of-thought benchmarks), tutoring apps. Verify: read sampled prompts; harvesters ask
    for internal reasoning behind given answers, at volume.
    """

    feature = "reasoning_share"
    evidence_column = "reasoning_elicitation"
    info = _info(
        "features.reasoning_share",
        "share of exchanges eliciting the reasoning trace",
        ("eval labs", "tutoring products"),
        "Read the sampled prompts that elicit reasoning.",
    )


class GraderShare(AccountFeatureDetector):
    """Share of content exchanges that use the model as a grader or reward model.

    Why: bulk preference / reward labelling trains another model. Benign look-alikes: eval labs
    using LLM-as-judge. Verify: are graded responses from another model, in bulk?
    """

    feature = "grader_share"
    evidence_column = "grader_use"
    info = _info(
        "features.grader_share",
        "share of exchanges using the model as grader / reward model",
        ("eval labs (LLM-as-judge)",),
        "Read the sampled grading prompts.",
    )


class RewriteShare(AccountFeatureDetector):
    """Share of content exchanges asking to rewrite model responses to be safe / more helpful.

    Why: "safe rewrite" pairs are alignment training data. Benign look-alikes: trust-and-safety
    tooling. Verify: do the rewritten texts look like model completions?
    """

    feature = "rewrite_share"
    evidence_column = "rewrite_request"
    info = _info(
        "features.rewrite_share",
        "share of exchanges requesting safe rewrites of model responses",
        ("trust-and-safety tooling",),
        "Read the sampled rewrite prompts.",
    )


class TemplateConcentration(AccountFeatureDetector):
    """Share of the account's exchanges in its most common prompt template.

    Why: a harvest fills one scaffold with thousands of items. Benign look-alikes: SaaS
    backends (fixed template, constant system prompt), enterprise batch jobs, eval labs.
    The linking stage tells them apart: a SaaS template is its own, a hydra's is shared
    across unrelated accounts. Verify: the sampled prompts and who else uses the template.
    """

    feature = "top_template_share"
    info = _info(
        "features.template_concentration",
        "share of exchanges in the top prompt template",
        ("SaaS backends", "enterprise batch jobs", "eval labs"),
        "Compare sampled prompts; check whether other, unrelated accounts share the template.",
    )


class TokenRatio(AccountFeatureDetector):
    """Output tokens per input token (log2), over the account.

    Why: harvesting asks short prompts for long answers (traces, full solutions). Benign
    look-alikes: writing assistants, code generation. Verify: the long outputs' prompts.
    """

    feature = "out_in_ratio"
    count_column = "n_exchanges"
    info = _info(
        "features.token_ratio",
        "output tokens per input token",
        ("writing assistants", "code generation"),
        "Look at the longest-output exchanges.",
    )


class TimingRegularity(AccountFeatureDetector):
    """Coefficient of variation of inter-arrival times (low = machine-regular pacing).

    Why: scripted harvesting paces requests evenly to stay under limits. Benign look-alikes:
    cron jobs, enterprise batch, SaaS backends with queue workers. Verify: plot the gaps.
    """

    feature = "interarrival_cv"
    count_column = "n_exchanges"
    info = _info(
        "features.timing_regularity",
        "regular (low-variance) inter-arrival times",
        ("cron / batch jobs", "queue-driven SaaS backends"),
        "Plot the inter-arrival gaps.",
    )


class RoundTheClock(AccountFeatureDetector):
    """Normalised entropy of activity over the 24 UTC hours (1 = evenly round the clock).

    Why: people sleep; harvest scripts do not. Benign look-alikes: SaaS backends serving
    global users, coding agents running overnight. Verify: the hour histogram.
    """

    feature = "hour_entropy_norm"
    count_column = "n_exchanges"
    info = _info(
        "features.round_the_clock",
        "activity spread evenly over 24 hours",
        ("global SaaS backends", "overnight agents"),
        "Look at the hour-of-day histogram.",
    )


class YoungAccount(AccountFeatureDetector):
    """Days from sign-up to first use (young accounts used at once are suspicious).

    Why: hydra accounts are created in waves and used immediately. Benign look-alikes: every
    new customer. Never decisive alone. Verify: sign-up wave around the account's creation.
    """

    feature = "account_age_days"
    count_column = "n_exchanges"
    info = _info(
        "features.young_account",
        "short time from sign-up to first use",
        ("new customers",),
        "Check for a sign-up wave around created_at.",
    )


class WeakVerification(AccountFeatureDetector):
    """Verification level (0 none .. 4 kyc); low is weak.

    Why: throwaway accounts pass only the cheapest check. Benign look-alikes: free-tier
    hobbyists. Never decisive alone. Verify: the account's verification record.
    """

    feature = "verification_level"
    count_column = "n_exchanges"
    info = _info(
        "features.weak_verification",
        "weak identity verification",
        ("free-tier hobbyists",),
        "Check the account's verification record.",
    )


class IPChurn(AccountFeatureDetector):
    """Distinct client IPs per exchange.

    Why: residential-proxy rotation gives nearly every request a new address. Benign
    look-alikes: mobile users, VPN users on rotating exits. Verify: the prefixes and kinds.
    """

    feature = "ip_churn"
    count_column = "n_exchanges"
    info = _info(
        "features.ip_churn",
        "distinct client IPs per exchange",
        ("mobile users", "VPN users"),
        "List the account's IPs, prefixes and network kinds.",
    )


class AnonymisingNetworks(AccountFeatureDetector):
    """Share of exchanges from VPN, proxy or Tor networks.

    Why: campaigns hide behind anonymising networks. Benign look-alikes: privacy-minded
    VPN users, corporate VPNs. Verify: the networks and whether other accounts share them.
    """

    feature = "share_anonymising"
    count_column = "n_exchanges"
    info = _info(
        "features.anonymising_networks",
        "share of exchanges via VPN / proxy / Tor",
        ("VPN users", "corporate VPNs"),
        "List the networks and other accounts using them.",
    )


#: Every account-level detector, by id; the conformance suite iterates this.
REGISTRY: Final[dict[str, type[AccountFeatureDetector]]] = {
    d.info.id: d
    for d in (
        CapabilityConcentration, ReasoningShare, GraderShare, RewriteShare, TemplateConcentration,
        TokenRatio, TimingRegularity, RoundTheClock, YoungAccount, WeakVerification, IPChurn,
        AnonymisingNetworks,
    )
}  # fmt: skip
