"""Wire the evaluation together: read a log and a result directory, measure, write the report."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import polars as pl

from distillguard.core.atomic import write_text_atomic
from distillguard.core.errors import InvalidInputError, Problem
from distillguard.evaluate.containment import exchange_counts, replay_metrics
from distillguard.evaluate.logsource import open_log, require_labels
from distillguard.evaluate.metrics import (
    account_metrics,
    account_outcomes,
    campaign_metrics,
    cluster_metrics,
    persona_metrics,
)
from distillguard.evaluate.report import Coverage, DetectEvaluation, EvaluationReport
from distillguard.evaluate.results import (
    CAMPAIGNS_FILE,
    DECISIONS_FILE,
    MAX_PROBLEMS,
    VERDICTS_FILE,
    Results,
    line_numbers,
    problem_order,
    read_results,
)

EVALUATION_JSON = "evaluation.json"
EVALUATION_MD = "evaluation.md"


def _unlabelled(labels: pl.DataFrame, frame: pl.DataFrame, row_column: str) -> pl.DataFrame:
    """Rows of ``frame`` whose account has no label: (row key, account_id), first per account."""
    return (
        frame.join(labels.select("account_id"), on="account_id", how="anti")
        .sort(row_column)
        .unique("account_id", keep="first", maintain_order=True)
        .select(row_column, "account_id")
    )


def check_labelled(labels: pl.DataFrame, resultdir: Path, results: Results) -> None:
    """Every account a result names must be labelled: an unlabelled one means the results
    belong to another log or the labels are incomplete, and silently dropping or counting
    it would bias precision."""
    problems: list[Problem] = []
    message = "account {!r} is not in labels.csv (results of another log, or incomplete labels?)"
    for name, frame in ((VERDICTS_FILE, results.verdicts), (DECISIONS_FILE, results.decisions)):
        if frame is None:
            continue
        bad = _unlabelled(labels, frame, "seq")
        if bad.height:
            shown = bad.head(MAX_PROBLEMS)
            rows = line_numbers(resultdir / name, shown["seq"].to_list())
            problems += [
                Problem(name, rows.get(seq, seq + 1), "account_id", message.format(account))
                for seq, account in shown.iter_rows()
            ]
    if results.campaigns is not None:
        bad = _unlabelled(labels, results.campaigns.clusters, "position").head(MAX_PROBLEMS)
        problems += [
            Problem(CAMPAIGNS_FILE, position, "members", message.format(account))
            for position, account in bad.iter_rows()
        ]
    if problems:
        raise InvalidInputError(sorted(problems, key=problem_order))


def evaluate_run(
    logdir: Path, resultdir: Path, config: Mapping[str, Any] | None = None
) -> EvaluationReport:
    """Measure ``detect`` and/or ``replay`` results in ``resultdir`` against ``logdir``'s labels.

    ``config`` is passed to ``load_log`` (ingest settings); the metrics themselves take none.
    """
    view = open_log(logdir, config)
    labels = require_labels(view, logdir)
    results = read_results(resultdir)
    check_labelled(labels, resultdir, results)

    counts = exchange_counts(view.exchanges)
    labelled_counts = counts.join(labels.select("account_id"), on="account_id", how="semi")
    coverage = Coverage(
        labelled_accounts=labels.height,
        exchanges=int(counts["exchanges"].sum() or 0),
        labelled_exchanges=int(labelled_counts["exchanges"].sum() or 0),
        unlabelled_accounts_in_log=counts.height - labelled_counts.height,
        unlabelled_exchanges=int(counts["exchanges"].sum() or 0)
        - int(labelled_counts["exchanges"].sum() or 0),
        labelled_accounts_without_exchanges=labels.height - labelled_counts.height,
    )

    detect = None
    if results.verdicts is not None or results.campaigns is not None:
        # campaigns.json alone still gives cluster metrics; every account then counts as allow.
        verdicts = (
            results.verdicts
            if results.verdicts is not None
            else pl.DataFrame(schema={"account_id": pl.String(), "action": pl.String()})
        )
        outcomes = account_outcomes(labels, verdicts, counts)
        clusters = None
        memberships = None
        if results.campaigns is not None:
            memberships = results.campaigns.clusters
            clusters = cluster_metrics(labels, memberships, results.campaigns.info)
        detect = DetectEvaluation(
            accounts=account_metrics(outcomes),
            personas=persona_metrics(outcomes),
            campaigns=campaign_metrics(outcomes, clusters, memberships),
            clusters=clusters,
        )

    replay = None
    if results.decisions is not None:
        replay = replay_metrics(view.exchanges, labels, results.decisions)

    return EvaluationReport(
        logdir=str(logdir),
        resultdir=str(resultdir),
        inputs={
            "verdicts": results.verdicts is not None,
            "campaigns": results.campaigns is not None,
            "decisions": results.decisions is not None,
        },
        coverage=coverage,
        detect=detect,
        replay=replay,
    )


def write_evaluation(report: EvaluationReport, outdir: Path) -> tuple[Path, Path]:
    """Write ``evaluation.json`` and ``evaluation.md`` into ``outdir`` atomically."""
    outdir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = outdir / EVALUATION_JSON, outdir / EVALUATION_MD
    write_text_atomic(json_path, report.to_json_text())
    write_text_atomic(md_path, report.to_markdown())
    return json_path, md_path
