"""The evaluation report: one dataclass, rendered as machine-readable JSON, Markdown and a rich table."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

from distillguard.core.verdict import ACTIONS
from distillguard.evaluate.containment import ReplayMetrics
from distillguard.evaluate.metrics import (
    HARD_NEGATIVE_PERSONAS,
    AccountMetrics,
    CampaignMetrics,
    ClusterSummary,
    PersonaMetrics,
)

REPORT_FORMAT = "distillguard-evaluation/1"


@dataclass(frozen=True)
class Coverage:
    """How the labels, the log and the results line up."""

    labelled_accounts: int
    exchanges: int
    labelled_exchanges: int
    unlabelled_accounts_in_log: int
    unlabelled_exchanges: int
    labelled_accounts_without_exchanges: int


@dataclass(frozen=True)
class DetectEvaluation:
    """Quality of ``detect``'s final verdicts (and reported campaigns, when present)."""

    accounts: AccountMetrics
    personas: dict[str, PersonaMetrics]
    campaigns: dict[str, CampaignMetrics]
    clusters: ClusterSummary | None

    @property
    def hard_negative_suspensions(self) -> int:
        return sum(self.personas[p].suspended for p in HARD_NEGATIVE_PERSONAS if p in self.personas)


@dataclass(frozen=True)
class EvaluationReport:
    """Everything ``distillguard evaluate`` measured; ``to_json`` is the stable machine form."""

    logdir: str
    resultdir: str
    inputs: dict[str, bool]
    coverage: Coverage
    detect: DetectEvaluation | None
    replay: ReplayMetrics | None

    def headline(self) -> dict[str, float | int | None]:
        """The few numbers quality floors are asserted on; ``None`` = undefined or not measured."""
        d, r = self.detect, self.replay
        c = d.clusters if d is not None else None
        return {
            "account_recall": d.accounts.recall if d else None,
            "account_precision": d.accounts.precision if d else None,
            "benign_false_positive_rate": d.accounts.benign_false_positive_rate if d else None,
            "benign_monitor_rate": d.accounts.benign_monitor_rate if d else None,
            "exchange_recall": d.accounts.exchange_recall if d else None,
            "hard_negative_suspensions": d.hard_negative_suspensions if d else None,
            "campaigns_found": c.campaigns_found if c else None,
            "campaigns_total": c.campaigns_total if c else None,
            "cluster_precision": c.weighted_precision if c else None,
            "attack_served_share": r.attack_served_share if r else None,
            "benign_collateral_share": r.benign_collateral_share if r else None,
        }

    def to_json(self) -> dict[str, Any]:
        detect = None
        if self.detect is not None:
            detect = {
                "accounts": asdict(self.detect.accounts),
                "personas": {k: asdict(v) for k, v in self.detect.personas.items()},
                "hard_negative_suspensions": {
                    p: {
                        "accounts": self.detect.personas[p].accounts,
                        "suspended": self.detect.personas[p].suspended,
                    }
                    for p in HARD_NEGATIVE_PERSONAS
                },
                "campaigns": {k: asdict(v) for k, v in self.detect.campaigns.items()},
                "clusters": None if self.detect.clusters is None else asdict(self.detect.clusters),
            }
        return {
            "format": REPORT_FORMAT,
            "logdir": self.logdir,
            "resultdir": self.resultdir,
            "inputs": dict(self.inputs),
            "headline": self.headline(),
            "coverage": asdict(self.coverage),
            "detect": detect,
            "replay": None if self.replay is None else asdict(self.replay),
        }

    def to_json_text(self) -> str:
        return json.dumps(self.to_json(), indent=2, ensure_ascii=False, allow_nan=False) + "\n"

    def to_markdown(self) -> str:
        return _markdown(self)


# ---------------------------------------------------------------- formatting


def pct(value: float | None) -> str:
    """A share as a percentage, ``—`` when undefined."""
    return "—" if value is None else f"{100 * value:.1f} %"


def _num(value: float | int | None) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _secs(value: float | None) -> str:
    if value is None:
        return "—"
    if value < 120:
        return f"{value:.0f} s"
    if value < 7200:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.1f} h"


def _headline_rows(report: EvaluationReport) -> list[tuple[str, str]]:
    h = report.headline()
    rows: list[tuple[str, str]] = []
    if report.detect is not None:
        a = report.detect.accounts
        rows += [
            (
                "attack-account recall",
                f"{pct(h['account_recall'])} ({a.flagged_attack}/{a.attack_accounts})",
            ),
            (
                "account precision",
                f"{pct(h['account_precision'])} ({a.flagged_attack}/{a.flagged})",
            ),
            (
                "benign false-positive rate",
                f"{pct(h['benign_false_positive_rate'])} ({a.flagged_benign}/{a.benign_accounts})",
            ),
            (
                "benign monitored",
                f"{pct(h['benign_monitor_rate'])} ({a.monitored_benign}/{a.benign_accounts})",
            ),
            (
                "exchange-weighted recall",
                f"{pct(h['exchange_recall'])} ({a.attack_exchanges_flagged}/{a.attack_exchanges})",
            ),
            ("hard-negative suspensions", _num(h["hard_negative_suspensions"])),
        ]
        c = report.detect.clusters
        if c is not None:
            rows += [
                ("campaigns found", f"{c.campaigns_found}/{c.campaigns_total}"),
                ("cluster precision (member-weighted)", pct(c.weighted_precision)),
            ]
    if report.replay is not None:
        r = report.replay
        rows += [
            (
                "attack exchanges served (replay)",
                f"{pct(r.attack_served_share)} ({r.attack_served}/{r.attack_exchanges})",
            ),
            (
                "benign exchanges refused (replay)",
                f"{pct(r.benign_collateral_share)} ({r.benign_not_served}/{r.benign_exchanges})",
            ),
        ]
    return rows


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*lines, ""]


def _markdown(report: EvaluationReport) -> str:
    lines = [
        "# distillguard evaluation",
        "",
        f"Log `{report.logdir}`, results `{report.resultdir}` "
        f"(inputs: {', '.join(k for k, v in report.inputs.items() if v) or 'none'}). "
        "Definitions: docs/evaluation.md; — means undefined (zero denominator) or not measured.",
        "",
        "## Headline",
        "",
    ]
    lines += _md_table(["metric", "value"], [list(r) for r in _headline_rows(report)])
    cov = report.coverage
    lines += ["## Coverage", ""]
    lines += _md_table(
        [
            "labelled accounts",
            "exchanges",
            "unlabelled accounts in log",
            "unlabelled exchanges",
            "labelled accounts without exchanges",
        ],
        [
            [
                str(cov.labelled_accounts),
                str(cov.exchanges),
                str(cov.unlabelled_accounts_in_log),
                str(cov.unlabelled_exchanges),
                str(cov.labelled_accounts_without_exchanges),
            ]
        ],
    )
    d = report.detect
    if d is not None:
        lines += ["## Campaigns (final verdicts)", ""]
        lines += _md_table(
            [
                "campaign",
                "accounts",
                "flagged",
                "account recall",
                "exchange recall",
                "found",
                "best cluster",
            ],
            [
                [
                    c.campaign,
                    str(c.accounts),
                    str(c.flagged),
                    pct(c.account_recall),
                    pct(c.exchange_recall),
                    "—"
                    if c.found is None
                    else ("yes: " + ", ".join(c.found_by) if c.found else "no"),
                    "—"
                    if c.best_cluster is None
                    else f"{c.best_cluster} ({c.best_cluster_overlap})",
                ]
                for c in d.campaigns.values()
            ],
        )
        lines += ["## Benign personas (final verdicts)", ""]
        lines += _md_table(
            ["persona", "hard negative", "accounts", "false-positive rate", *ACTIONS],
            [
                [
                    p.persona,
                    "yes" if p.hard_negative else "",
                    str(p.accounts),
                    pct(p.false_positive_rate),
                    *(str(p.actions[a]) for a in ACTIONS),
                ]
                for p in d.personas.values()
            ],
        )
        if d.clusters is not None:
            lines += ["## Reported campaigns", ""]
            lines += _md_table(
                [
                    "id",
                    "size",
                    "confidence",
                    "best true campaign",
                    "overlap",
                    "benign members",
                    "precision",
                    "finds",
                ],
                [
                    [
                        c.cluster_id,
                        str(c.size),
                        _num(c.confidence),
                        c.best_campaign or "—",
                        str(c.best_overlap),
                        str(c.benign_members),
                        pct(c.precision),
                        c.finds or "—",
                    ]
                    for c in d.clusters.clusters
                ],
            )
    r = report.replay
    if r is not None:
        lines += ["## Containment (replay)", ""]
        lines += _md_table(
            [
                "campaign",
                "exchanges",
                "served",
                "time to first flag",
                "exchanges before first flag",
                "accounts flagged",
                "time to 95 % flagged",
            ],
            [
                [
                    c.campaign,
                    str(c.exchanges),
                    pct(c.served_share),
                    _secs(c.seconds_to_first_flag),
                    _num(c.exchanges_before_first_flag),
                    f"{c.accounts_flagged}/{c.accounts}",
                    _secs(c.seconds_to_95pct_flagged),
                ]
                for c in r.campaigns.values()
            ],
        )
        lines += ["## Collateral (replay)", ""]
        lines += _md_table(
            [
                "persona",
                "accounts",
                "exchanges",
                "refused",
                "accounts flagged",
                "accounts suspended",
            ],
            [
                [
                    p.persona,
                    str(p.accounts),
                    str(p.exchanges),
                    pct(p.collateral_share),
                    str(p.accounts_flagged),
                    str(p.accounts_suspended),
                ]
                for p in r.personas.values()
            ],
        )
    return "\n".join(lines).rstrip() + "\n"


def render(report: EvaluationReport, console: Console) -> None:
    """Print the headline and the per-campaign table to ``console``."""
    headline = Table(title="distillguard evaluation", show_header=True)
    headline.add_column("metric")
    headline.add_column("value", justify="right")
    for name, value in _headline_rows(report):
        headline.add_row(name, value)
    console.print(headline)
    d, r = report.detect, report.replay
    names = sorted(set(d.campaigns if d else ()) | set(r.campaigns if r else ()))
    if not names:
        return
    table = Table(title="per campaign", show_header=True)
    for column in (
        "campaign",
        "account recall",
        "exchange recall",
        "found",
        "served (replay)",
        "to first flag",
    ):
        table.add_column(column, justify="left" if column == "campaign" else "right")
    for name in names:
        dc = d.campaigns.get(name) if d else None
        rc = r.campaigns.get(name) if r else None
        found = "—" if dc is None or dc.found is None else ("yes" if dc.found else "no")
        table.add_row(
            name,
            pct(dc.account_recall) if dc else "—",
            pct(dc.exchange_recall) if dc else "—",
            found,
            pct(rc.served_share) if rc else "—",
            _secs(rc.seconds_to_first_flag) if rc else "—",
        )
    console.print(table)
