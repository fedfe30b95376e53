"""Detection-quality metrics as pure functions over small per-account tables (no I/O).

Definitions (see docs/evaluation.md for the full text):

* *flagged* — final action ``throttle``, ``challenge`` or ``suspend`` (contract §2); an account
  without a verdict line is ``allow``.
* A ratio whose denominator is zero is ``None`` (undefined), never 0.
* A reported campaign *finds* a true campaign when strictly more than half of the reported
  campaign's members are attack accounts of that true campaign. A reported campaign can
  therefore find at most one true campaign; several reported campaigns can find the same one.
* *Cluster precision* of a reported campaign is ``max over true campaigns of |R ∩ C| / |R|``;
  benign members count in ``|R|`` and in no overlap. The summary is member-weighted:
  ``sum of best overlaps / sum of sizes``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import polars as pl

from distillguard.core.errors import InvalidInputError, Problem
from distillguard.core.verdict import ACTIONS, FLAGGED_ACTIONS

#: Benign personas that look like extraction in some respect; their suspensions are reported one by one.
HARD_NEGATIVE_PERSONAS: tuple[str, ...] = (
    "saas_backend",
    "coding_agent",
    "eval_lab",
    "university_class",
    "corporate",
    "vpn_user",
    "enterprise_batch",
    "reseller",
)
NO_PERSONA = "(none)"
UNATTRIBUTED_CAMPAIGN = "(unattributed)"

LABELS_FRAME_SCHEMA: dict[str, pl.DataType] = {
    "account_id": pl.String(),
    "label": pl.String(),
    "campaign": pl.String(),
    "persona": pl.String(),
}


def ratio(numerator: int | float, denominator: int | float) -> float | None:
    """``numerator / denominator``, or ``None`` when the denominator is zero (undefined, not 0)."""
    return None if denominator == 0 else numerator / denominator


def normalize_labels(labels: pl.DataFrame, file: str = "labels.csv") -> pl.DataFrame:
    """Ground truth in one canonical form: campaign null for benign and named for attack,
    persona never null. Raises ``InvalidInputError`` on unknown labels or repeated accounts."""
    frame = labels.select(
        pl.col("account_id").cast(pl.String),
        pl.col("label").cast(pl.String).str.strip_chars().str.to_lowercase(),
        pl.col("campaign").cast(pl.String).str.strip_chars()
        if "campaign" in labels.columns
        else pl.lit(None, pl.String).alias("campaign"),
        pl.col("persona").cast(pl.String).str.strip_chars()
        if "persona" in labels.columns
        else pl.lit(None, pl.String).alias("persona"),
    ).with_row_index("_idx")
    problems: list[Problem] = []
    bad = frame.filter(pl.col("account_id").is_null() | (pl.col("account_id") == "")).head(20)
    problems += [Problem(file, i + 1, "account_id", "missing") for i in bad["_idx"].to_list()]
    bad = frame.filter(
        ~pl.col("label").is_in(["benign", "attack"]) | pl.col("label").is_null()
    ).head(20)
    problems += [
        Problem(file, i + 1, "label", f"{v!r} is not 'benign' or 'attack'")
        for i, v in zip(bad["_idx"].to_list(), bad["label"].to_list(), strict=True)
    ]
    bad = frame.filter(
        pl.col("account_id").is_duplicated()
        & (pl.col("_idx") != pl.col("_idx").min().over("account_id"))
    ).head(20)
    problems += [
        Problem(file, i + 1, "account_id", f"account {v!r} is labelled more than once")
        for i, v in zip(bad["_idx"].to_list(), bad["account_id"].to_list(), strict=True)
    ]
    if problems:
        raise InvalidInputError(
            sorted(problems, key=lambda p: (p.row or 0, p.column or "", p.message))
        )
    empty_to_null = {"campaign", "persona"}
    frame = frame.with_columns(
        pl.when(pl.col(c) == "").then(None).otherwise(pl.col(c)).alias(c) for c in empty_to_null
    )
    return frame.select(
        "account_id",
        "label",
        pl.when(pl.col("label") == "attack")
        .then(pl.col("campaign").fill_null(UNATTRIBUTED_CAMPAIGN))
        .otherwise(None)
        .alias("campaign"),
        pl.col("persona").fill_null(NO_PERSONA),
    )


def unknown_accounts(labels: pl.DataFrame, accounts: pl.Series) -> list[str]:
    """Accounts in ``accounts`` that ``labels`` does not cover, sorted, without repeats."""
    known = labels.select("account_id").unique()
    missing = (
        pl.DataFrame({"account_id": accounts}).unique().join(known, on="account_id", how="anti")
    )
    return sorted(missing["account_id"].to_list())


def account_outcomes(
    labels: pl.DataFrame, verdicts: pl.DataFrame, exchange_counts: pl.DataFrame
) -> pl.DataFrame:
    """One row per labelled account: its truth, final ``action`` (default allow), ``flagged``
    and ``exchanges`` (0 if it sent none). ``labels`` must be normalised."""
    counts = exchange_counts.select("account_id", pl.col("exchanges").cast(pl.Int64))
    return (
        labels.join(verdicts.select("account_id", "action"), on="account_id", how="left")
        .join(counts, on="account_id", how="left")
        .with_columns(
            pl.col("action").fill_null("allow"),
            pl.col("exchanges").fill_null(0),
        )
        .with_columns(pl.col("action").is_in(FLAGGED_ACTIONS).alias("flagged"))
    )


@dataclass(frozen=True)
class AccountMetrics:
    """Account-level quality of the final verdicts, all classes together."""

    accounts: int
    attack_accounts: int
    benign_accounts: int
    flagged: int
    flagged_attack: int
    flagged_benign: int
    monitored_benign: int
    recall: float | None
    precision: float | None
    benign_false_positive_rate: float | None
    benign_monitor_rate: float | None
    benign_any_action_rate: float | None
    attack_exchanges: int
    attack_exchanges_flagged: int
    exchange_recall: float | None


def account_metrics(outcomes: pl.DataFrame) -> AccountMetrics:
    """Recall, precision, benign rates and exchange-weighted recall from ``account_outcomes``."""
    attack = pl.col("label") == "attack"
    benign = pl.col("label") == "benign"
    flagged = pl.col("flagged")
    row = outcomes.select(
        pl.len().alias("accounts"),
        attack.sum().alias("attack"),
        benign.sum().alias("benign"),
        flagged.sum().alias("flagged"),
        (attack & flagged).sum().alias("flagged_attack"),
        (benign & flagged).sum().alias("flagged_benign"),
        (benign & (pl.col("action") == "monitor")).sum().alias("monitored_benign"),
        pl.col("exchanges").filter(attack).sum().alias("attack_exchanges"),
        pl.col("exchanges").filter(attack & flagged).sum().alias("attack_exchanges_flagged"),
    ).row(0, named=True)
    values = {k: int(v or 0) for k, v in row.items()}
    return AccountMetrics(
        accounts=values["accounts"],
        attack_accounts=values["attack"],
        benign_accounts=values["benign"],
        flagged=values["flagged"],
        flagged_attack=values["flagged_attack"],
        flagged_benign=values["flagged_benign"],
        monitored_benign=values["monitored_benign"],
        recall=ratio(values["flagged_attack"], values["attack"]),
        precision=ratio(values["flagged_attack"], values["flagged"]),
        benign_false_positive_rate=ratio(values["flagged_benign"], values["benign"]),
        benign_monitor_rate=ratio(values["monitored_benign"], values["benign"]),
        benign_any_action_rate=ratio(
            values["flagged_benign"] + values["monitored_benign"], values["benign"]
        ),
        attack_exchanges=values["attack_exchanges"],
        attack_exchanges_flagged=values["attack_exchanges_flagged"],
        exchange_recall=ratio(values["attack_exchanges_flagged"], values["attack_exchanges"]),
    )


@dataclass(frozen=True)
class PersonaMetrics:
    """False positives among the benign accounts of one persona."""

    persona: str
    hard_negative: bool
    accounts: int
    exchanges: int
    flagged: int
    false_positive_rate: float | None
    suspended: int
    actions: dict[str, int] = field(default_factory=dict)


def _action_counts(outcomes: pl.DataFrame, key: str) -> dict[str, dict[str, int]]:
    counts = outcomes.group_by(key, "action").len()
    result: dict[str, dict[str, int]] = {}
    for group, action, n in counts.iter_rows():
        result.setdefault(group, dict.fromkeys(ACTIONS, 0))[action] = int(n)
    return result


def persona_metrics(outcomes: pl.DataFrame) -> dict[str, PersonaMetrics]:
    """Per benign persona: accounts, flagged, false-positive rate, counts per action.

    Every hard-negative persona is present, with zero accounts if the labels have none.
    """
    benign = outcomes.filter(pl.col("label") == "benign")
    grouped = benign.group_by("persona").agg(
        pl.len().alias("accounts"),
        pl.col("exchanges").sum().alias("exchanges"),
        pl.col("flagged").sum().alias("flagged"),
        (pl.col("action") == "suspend").sum().alias("suspended"),
    )
    actions = _action_counts(benign, "persona")
    by_name = {r["persona"]: r for r in grouped.iter_rows(named=True)}
    result: dict[str, PersonaMetrics] = {}
    for persona in sorted(set(by_name) | set(HARD_NEGATIVE_PERSONAS)):
        r = by_name.get(persona, {"accounts": 0, "exchanges": 0, "flagged": 0, "suspended": 0})
        result[persona] = PersonaMetrics(
            persona=persona,
            hard_negative=persona in HARD_NEGATIVE_PERSONAS,
            accounts=int(r["accounts"]),
            exchanges=int(r["exchanges"]),
            flagged=int(r["flagged"]),
            false_positive_rate=ratio(int(r["flagged"]), int(r["accounts"])),
            suspended=int(r["suspended"]),
            actions=actions.get(persona, dict.fromkeys(ACTIONS, 0)),
        )
    return result


@dataclass(frozen=True)
class ClusterMetrics:
    """One reported campaign compared with the truth."""

    cluster_id: str
    size: int
    confidence: float | None
    best_campaign: str | None
    best_overlap: int
    benign_members: int
    precision: float | None
    finds: str | None


@dataclass(frozen=True)
class ClusterSummary:
    """All reported campaigns: their precision and which true campaigns they find."""

    reported: int
    weighted_precision: float | None
    campaigns_found: int
    campaigns_total: int
    found_share: float | None
    clusters: list[ClusterMetrics]


def cluster_metrics(
    labels: pl.DataFrame, memberships: pl.DataFrame, info: pl.DataFrame
) -> ClusterSummary:
    """Compare reported campaigns (``memberships``: cluster_id, account_id; ``info``: cluster_id,
    size, confidence) with the true campaigns in normalised ``labels``."""
    joined = memberships.join(labels.select("account_id", "campaign"), on="account_id", how="left")
    overlaps = (
        joined.filter(pl.col("campaign").is_not_null())
        .group_by("cluster_id", "campaign")
        .len("overlap")
        # ties broken by campaign name so the result does not depend on row order
        .sort(["cluster_id", "overlap", "campaign"], descending=[False, True, False])
        .group_by("cluster_id", maintain_order=True)
        .first()
    )
    benign = joined.filter(pl.col("campaign").is_null()).group_by("cluster_id").len("benign")
    table = (
        info.join(overlaps, on="cluster_id", how="left")
        .join(benign, on="cluster_id", how="left")
        .with_columns(pl.col("overlap").fill_null(0), pl.col("benign").fill_null(0))
    )
    clusters: list[ClusterMetrics] = []
    for r in table.iter_rows(named=True):
        size, overlap = int(r["size"]), int(r["overlap"])
        clusters.append(
            ClusterMetrics(
                cluster_id=r["cluster_id"],
                size=size,
                confidence=r["confidence"],
                best_campaign=r["campaign"],
                best_overlap=overlap,
                benign_members=int(r["benign"]),
                precision=ratio(overlap, size),
                finds=r["campaign"] if 2 * overlap > size else None,
            )
        )
    true_campaigns = labels.filter(pl.col("campaign").is_not_null())["campaign"].unique().to_list()
    found = {c.finds for c in clusters if c.finds is not None}
    total_size = sum(c.size for c in clusters)
    return ClusterSummary(
        reported=len(clusters),
        weighted_precision=ratio(sum(c.best_overlap for c in clusters), total_size),
        campaigns_found=len(found),
        campaigns_total=len(true_campaigns),
        found_share=ratio(len(found), len(true_campaigns)),
        clusters=clusters,
    )


@dataclass(frozen=True)
class CampaignMetrics:
    """How well one true campaign was caught by the final verdicts and reported campaigns."""

    campaign: str
    accounts: int
    flagged: int
    account_recall: float | None
    exchanges: int
    exchanges_flagged: int
    exchange_recall: float | None
    found: bool | None
    found_by: list[str]
    best_cluster: str | None
    best_cluster_overlap: int


def campaign_metrics(
    outcomes: pl.DataFrame,
    clusters: ClusterSummary | None = None,
    memberships: pl.DataFrame | None = None,
) -> dict[str, CampaignMetrics]:
    """Per true campaign: account and exchange-weighted recall, and (given the reported
    campaigns' summary and ``memberships``) whether it was found and its best-overlapping
    reported campaign. ``found`` is ``None`` when no campaigns.json was given."""
    attack = outcomes.filter(pl.col("label") == "attack")
    grouped = attack.group_by("campaign").agg(
        pl.len().alias("accounts"),
        pl.col("flagged").sum().alias("flagged"),
        pl.col("exchanges").sum().alias("exchanges"),
        pl.col("exchanges").filter(pl.col("flagged")).sum().alias("exchanges_flagged"),
    )
    best_by_campaign: dict[str, tuple[str, int]] = {}
    if memberships is not None:
        best = (
            memberships.join(attack.select("account_id", "campaign"), on="account_id", how="inner")
            .group_by("campaign", "cluster_id")
            .len("overlap")
            .sort(["campaign", "overlap", "cluster_id"], descending=[False, True, False])
            .group_by("campaign", maintain_order=True)
            .first()
        )
        best_by_campaign = {
            c: (k, int(n))
            for c, k, n in best.select("campaign", "cluster_id", "overlap").iter_rows()
        }
    result: dict[str, CampaignMetrics] = {}
    for r in grouped.sort("campaign").iter_rows(named=True):
        name = r["campaign"]
        found_by = (
            []
            if clusters is None
            else sorted(c.cluster_id for c in clusters.clusters if c.finds == name)
        )
        best_cluster, best_overlap = best_by_campaign.get(name, (None, 0))
        flagged, accounts = int(r["flagged"]), int(r["accounts"])
        exchanges, exchanges_flagged = int(r["exchanges"] or 0), int(r["exchanges_flagged"] or 0)
        result[name] = CampaignMetrics(
            campaign=name,
            accounts=accounts,
            flagged=flagged,
            account_recall=ratio(flagged, accounts),
            exchanges=exchanges,
            exchanges_flagged=exchanges_flagged,
            exchange_recall=ratio(exchanges_flagged, exchanges),
            found=None if clusters is None else bool(found_by),
            found_by=found_by,
            best_cluster=best_cluster,
            best_cluster_overlap=best_overlap,
        )
    return result


def as_json(record: Any) -> dict[str, Any]:
    """A metrics dataclass as plain JSON types (all fields already are)."""
    return asdict(record)
