"""The one place the stages are wired in order: load_log → signals → features → linking → scoring → outputs."""

from __future__ import annotations

import html
import json
import math
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from rich.progress import Progress, TimeElapsedColumn

from distillguard.core.atomic import atomic_path, write_text_atomic
from distillguard.core.config import config_hash
from distillguard.core.detector import Detections
from distillguard.core.engine import Engine, release_arrow_memory
from distillguard.core.verdict import Action, Reason, Verdict
from distillguard.engines import is_uri, open_engine, stage_log
from distillguard.engines.embedded import EmbeddedEngine
from distillguard.evidence.report import CAMPAIGN_EDGES, edges_from_link
from distillguard.features import REGISTRY as ACCOUNT_DETECTORS
from distillguard.linking import CLUSTER_DETECTORS, LinkResult, link, peer_detections
from distillguard.linking.edges import EDGE_DETECTOR_VERSION, EDGE_KINDS
from distillguard.linking.peer_indicators import (
    PEER_DETECTOR_ID,
    with_peer_evidence,
    with_peer_signal,
)
from distillguard.scoring.combine import SCORING_VERSION, Scored, score_accounts
from distillguard.scoring.policy import ACTIONS_BY_RANK, Policy

_ACCOUNT_COLS = (
    "account_id",
    "created_at",
    "email_domain",
    "payment_fingerprint",
    "signup_ip",
    "verification",
)
_SIGNAL_COLS = (
    "request_id",
    "account_id",
    "end_user_id",
    "ts",
    "model",
    "client_ip",
    "ip_prefix",
    "asn",
    "network_kind",
    "user_agent",
    "system_prompt_sha256",
    "capability",
    "template_id",
)


@dataclass(frozen=True)
class DetectResult:
    """What ``detect`` writes, kept as data so tests and the evaluation can read it directly."""

    verdicts: tuple[Verdict, ...]
    campaigns: Mapping[str, Any]
    report_html: str
    #: Linking's weighted edges inside each reported campaign (campaign_id, account_a, account_b,
    #: weight, kind): what the report draws, so the drawing is the graph the verdicts rest on.
    campaign_edges: pa.Table | None = None


def _r(x: float, nd: int = 6) -> float | None:
    """Round for stable JSON; NaN/inf become null."""
    if x is None or not math.isfinite(x):
        return None
    return round(float(x), nd)


def _ensure_accounts(accounts: pa.Table | None, signals_ids: pa.Array) -> pa.Table:
    """Accounts with the columns linking needs (nulls where the provider gave none)."""
    types = {
        "account_id": pa.string(),
        "created_at": pa.timestamp("ms", tz="UTC"),
        "email_domain": pa.string(),
        "payment_fingerprint": pa.string(),
        "signup_ip": pa.string(),
        "verification": pa.string(),
    }
    if accounts is None or accounts.num_rows == 0:
        n = len(signals_ids)
        return pa.table(
            {k: (signals_ids if k == "account_id" else pa.nulls(n, t)) for k, t in types.items()}
        )
    cols = {}
    for name, typ in types.items():
        cols[name] = (
            accounts[name].cast(typ)
            if name in accounts.column_names
            else pa.nulls(accounts.num_rows, typ)
        )
    return pa.table(cols)


def _sample_ids(
    engine: Engine, signals: Any, account_ids: Sequence[str], k: int
) -> dict[str, list[str]]:
    """The ``k`` earliest request ids of each given account (evidence an analyst can pull)."""
    if not account_ids:
        return {}
    import ibis

    wanted = engine.table(
        "_wanted", pa.table({"wanted_id": pa.array(sorted(account_ids), pa.string())})
    )
    s = signals.select("account_id", "ts", "request_id")
    s = s.join(wanted, s.account_id == wanted.wanted_id).select("account_id", "ts", "request_id")
    rn = ibis.row_number().over(group_by=s.account_id, order_by=[s.ts, s.request_id])
    picked = s.mutate(rn=rn).filter(lambda t: t.rn < k).order_by(["account_id", "rn"])
    table = engine.to_arrow(picked.select("account_id", "request_id"))
    out: dict[str, list[str]] = {}
    for aid, rid in zip(
        table["account_id"].to_pylist(), table["request_id"].to_pylist(), strict=True
    ):
        out.setdefault(str(aid), []).append(str(rid))
    return out


def _reasons(
    scored: Scored, row: int, samples: list[str], min_contribution: float, max_reasons: int
) -> tuple[Reason, ...]:
    contrib = scored.contributions[row]
    order = sorted(range(len(scored.specs)), key=lambda j: (-contrib[j], scored.specs[j].name))
    reasons = []
    for j in order[:max_reasons]:
        if contrib[j] < min_contribution:
            break
        spec = scored.specs[j]
        reasons.append(
            Reason(
                signal=spec.name,
                value=_r(float(scored.values[row, j])),
                detail={
                    "detector": spec.detector,
                    "reference": dict(scored.references[j]),
                    "contribution": _r(float(contrib[j]), 4),
                    "volume": spec.volume,
                    "level": "cluster" if spec.cluster else "account",
                    "sample_request_ids": list(samples),
                },
            )
        )
    return tuple(reasons)


def _campaigns(
    link_result: LinkResult,
    scored: Scored,
    ranks: np.ndarray,
    cluster_dets: Sequence[Detections],
) -> list[dict[str, Any]]:
    accounts = scored.accounts
    cluster_ids = accounts["cluster_id"].to_pylist()
    scores = accounts["score"].to_numpy(zero_copy_only=False)
    by_cluster: dict[str, list[int]] = {}
    for i, cid in enumerate(cluster_ids):
        if cid is not None:
            by_cluster.setdefault(cid, []).append(i)
    feats = {r["cluster_id"]: r for r in link_result.features.to_pylist()}
    det_by_cluster: dict[str, dict[str, float | None]] = {}
    for det in cluster_dets:
        for cid, sc in zip(
            det.scores["cluster_id"].to_pylist(), det.scores["score"].to_pylist(), strict=True
        ):
            det_by_cluster.setdefault(cid, {})[det.detector.ref] = (
                _r(sc) if sc is not None else None
            )
    cap_counts: dict[str, dict[str, int]] = {}
    mem = pl.from_arrow(link_result.membership)
    caps = pl.from_arrow(link_result.capabilities)
    assert isinstance(mem, pl.DataFrame) and isinstance(caps, pl.DataFrame)
    if mem.height and caps.height:
        per = (
            mem.join(caps, on="account_id")
            .group_by(["cluster_id", "capability"])
            .agg(n=pl.col("n").sum())
        )
        for row in per.iter_rows(named=True):
            cap_counts.setdefault(row["cluster_id"], {})[row["capability"]] = int(row["n"])
    out = []
    for cid in sorted(by_cluster):
        idx = by_cluster[cid]
        if max(int(ranks[i]) for i in idx) < Action.THROTTLE.rank:
            continue
        f = feats.get(cid, {})
        counts = cap_counts.get(cid, {})
        total = sum(counts.values())
        targets = (
            [
                {"capability": c, "share": _r(n / total, 4)}
                for c, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
            ]
            if total
            else []
        )
        first_ts = f.get("first_ts")
        last_ts = f.get("last_ts")
        out.append(
            {
                "id": cid,
                "members": sorted(accounts["account_id"][i].as_py() for i in idx),
                "n_accounts": len(idx),
                "n_exchanges": int(f.get("n_exchanges") or 0),
                "first_ts": first_ts.isoformat() if first_ts is not None else None,
                "last_ts": last_ts.isoformat() if last_ts is not None else None,
                "capability_targets": targets,
                "shared_indicators": list(link_result.shared.get(cid, [])),
                "indicator_kind_shares": {
                    k: _r(float(f.get(f"share_{k}") or 0.0), 4) for k in EDGE_KINDS
                },
                "cluster_detectors": det_by_cluster.get(cid, {}),
                "confidence": _r(float(np.median(scores[idx])), 4),
                "actions": {
                    a.value: int(sum(1 for i in idx if int(ranks[i]) == a.rank))
                    for a in ACTIONS_BY_RANK
                },
            }
        )
    return out


def _report(
    verdicts: Sequence[Verdict], campaigns: Sequence[Mapping[str, Any]], run: Mapping[str, Any]
) -> str:
    esc = html.escape
    rows = "".join(
        f"<tr><td>{esc(c['id'])}</td><td>{c['n_accounts']}</td><td>{c['n_exchanges']}</td>"
        f"<td>{esc(str(c['first_ts']))} – {esc(str(c['last_ts']))}</td>"
        f"<td>{esc(', '.join(t['capability'] for t in c['capability_targets']))}</td>"
        f"<td>{esc(', '.join(sorted({i['kind'] for i in c['shared_indicators']})))}</td>"
        f"<td>{c['confidence']}</td></tr>"
        for c in campaigns
    )
    counts: dict[str, int] = {}
    for v in verdicts:
        for r in v.reasons:
            counts[r.signal] = counts.get(r.signal, 0) + 1
    reason_rows = "".join(
        f"<tr><td>{esc(k)}</td><td>{n}</td></tr>"
        for k, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:15]
    )
    actions: dict[str, int] = {}
    for v in verdicts:
        actions[v.action.value] = actions.get(v.action.value, 0) + 1
    action_rows = "".join(
        f"<tr><td>{esc(a)}</td><td>{actions.get(a, 0)}</td></tr>"
        for a in (x.value for x in ACTIONS_BY_RANK[1:])
    )
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>distillguard detect</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:2em}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}</style></head><body>"
        "<h1>distillguard detection report</h1>"
        f"<p>config {esc(str(run['config_hash'])[:16])} · {len(campaigns)} campaign(s) · "
        f"{len(verdicts)} account(s) above allow</p>"
        f"<h2>Actions</h2><table><tr><th>action</th><th>accounts</th></tr>{action_rows}</table>"
        "<h2>Campaigns</h2><table><tr><th>id</th><th>accounts</th><th>exchanges</th><th>span</th>"
        f"<th>capabilities</th><th>shared indicators</th><th>confidence</th></tr>{rows}</table>"
        f"<h2>Top reasons</h2><table><tr><th>signal</th><th>accounts</th></tr>{reason_rows}</table>"
        "</body></html>\n"
    )


@dataclass(frozen=True)
class ScoredRun:
    """Linking and scoring results before the policy: what calibration and the outputs read."""

    engine: Engine
    signals: Any  # ibis table of the signals on ``engine`` (for evidence sampling)
    link: LinkResult
    cluster_detections: tuple[Detections, ...]
    account_detections: tuple[Detections, ...]
    scored: Scored


def embedded_engine(config: Mapping[str, Any], scratch: Path | None = None) -> EmbeddedEngine:
    """The embedded engine under ``engine.memory_limit``; file-backed in ``scratch`` when given,
    so what linking caches can leave memory (the seed scale needs it)."""
    database = scratch / "linking.duckdb" if scratch is not None else None
    return EmbeddedEngine(
        memory_limit=(config.get("engine") or {}).get("memory_limit"), database=database
    )


def link_and_score(
    signals: pa.Table | pads.Dataset,
    accounts: pa.Table | None,
    features: pa.Table,
    config: Mapping[str, Any],
    progress: Progress | None = None,
    engine: Engine | None = None,
) -> ScoredRun:
    """Linking → cluster and account detectors → additive scores (no policy yet)."""
    engine = engine if engine is not None else embedded_engine(config)
    sig_names = signals.schema.names
    sig_in = (
        signals.select([c for c in _SIGNAL_COLS if c in sig_names])
        if isinstance(signals, pa.Table)
        else signals
    )
    sig_t = engine.table("signals", sig_in)
    ids = features["account_id"].cast(pa.string())
    acc_t = engine.table("accounts", _ensure_accounts(accounts, ids))
    task = progress.add_task("linking accounts", total=None) if progress else None
    link_result = link(engine, sig_t, acc_t, config)
    if progress and task is not None:
        progress.update(
            task,
            description=f"linked: {link_result.membership.num_rows} accounts in clusters",
            total=1,
            completed=1,
        )
    cluster_dets = tuple(
        CLUSTER_DETECTORS[k]().score(link_result.features) for k in sorted(CLUSTER_DETECTORS)
    )
    # Account detectors score the features computed once upstream (no second aggregation pass).
    account_dets = tuple(
        ACCOUNT_DETECTORS[k](config).score_features(features) for k in sorted(ACCOUNT_DETECTORS)
    )
    peer = peer_detections(sig_in, accounts, config)  # None unless share.indicators.store is set
    if peer is not None:
        account_dets, config = (*account_dets, peer), with_peer_signal(config)
    scored = score_accounts(
        features, link_result.membership, cluster_dets, config, account_detections=account_dets
    )
    return ScoredRun(engine, sig_t, link_result, cluster_dets, account_dets, scored)


def detect_tables(
    signals: pa.Table | pads.Dataset,
    accounts: pa.Table | None,
    features: pa.Table,
    config: Mapping[str, Any],
    digests: Mapping[str, str] | None = None,
    detectors_ran: Mapping[str, str] | None = None,
    progress: Progress | None = None,
    engine: Engine | None = None,
) -> DetectResult:
    """Linking → scoring → policy → outputs over already computed signals and account features."""
    run_ = link_and_score(signals, accounts, features, config, progress, engine)
    engine, sig_t, link_result = run_.engine, run_.signals, run_.link
    cluster_dets, account_dets, scored = (
        run_.cluster_detections,
        run_.account_detections,
        run_.scored,
    )
    task = progress.add_task("scoring", total=None) if progress else None
    policy = Policy.from_config(config)
    ranks = policy.decide(scored)
    scfg = config["scoring"]
    acted = [i for i in range(len(ranks)) if ranks[i] > 0]
    acc_ids = scored.accounts["account_id"].to_pylist()
    peer_ev = next((d.evidence for d in account_dets if d.detector.id == PEER_DETECTOR_ID), {})
    samples = _sample_ids(
        engine, sig_t, [acc_ids[i] for i in acted], int(scfg["sample_request_ids"])
    )
    verdicts = []
    scores = scored.accounts["score"].to_pylist()
    clusters = scored.accounts["cluster_id"].to_pylist()
    for i in acted:
        reasons = _reasons(
            scored,
            i,
            samples.get(acc_ids[i], []),
            float(scfg["min_reason_contribution"]),
            int(scfg["max_reasons"]),
        )
        reasons = with_peer_evidence(reasons, peer_ev.get(acc_ids[i]))
        action = ACTIONS_BY_RANK[int(ranks[i])]
        if not reasons:  # nothing checkable: the contract forbids an unexplained action
            continue
        verdicts.append(
            Verdict(acc_ids[i], action, float(_r(scores[i]) or 0.0), clusters[i], reasons)
        )
    campaigns = _campaigns(link_result, scored, ranks, cluster_dets)
    ran = dict(detectors_ran or {})
    ran.update({f"edge.{k}": EDGE_DETECTOR_VERSION for k in EDGE_KINDS})
    ran.update({d.detector.id: d.detector.version for d in cluster_dets})
    ran.update({d.detector.id: d.detector.version for d in account_dets})
    ran["scoring"] = SCORING_VERSION
    run = {
        "detectors": dict(sorted(ran.items())),
        "config_hash": config_hash(config),
        "input_digests": dict(sorted((digests or {}).items())),
        "n_accounts": len(acc_ids),
        "n_clusters": len({c for c in clusters if c is not None}),
        "baseline_cohort": scored.baseline.n_fit_,
    }
    if progress and task is not None:
        progress.update(task, total=1, completed=1)
    doc = {"campaigns": campaigns, "run": run}
    return DetectResult(
        tuple(verdicts),
        doc,
        _report(verdicts, campaigns, run),
        edges_from_link(link_result.edges, campaigns),
    )


def write_outputs(result: DetectResult, outdir: str | Path) -> None:
    """verdicts.jsonl, campaigns.json, report.html — each atomically, byte-identical per input."""
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    lines = "".join(
        json.dumps(v.to_json(), sort_keys=True, separators=(",", ":")) + "\n"
        for v in sorted(result.verdicts, key=lambda v: v.account_id)
    )
    write_text_atomic(out / "verdicts.jsonl", lines)
    write_text_atomic(
        out / "campaigns.json", json.dumps(result.campaigns, sort_keys=True, indent=1) + "\n"
    )
    write_text_atomic(out / "report.html", result.report_html)
    if result.campaign_edges is not None:
        with atomic_path(out / CAMPAIGN_EDGES) as staged:
            pq.write_table(result.campaign_edges, staged)


def _spill_dir(log: Any, config: Mapping[str, Any], scratch: Path | None) -> Path | None:
    """Where the embedded path writes the signals when they would not fit comfortably in memory."""
    limit = int((config.get("signals") or {}).get("spill_rows", 0) or 0)
    if scratch is None or limit <= 0 or log.exchanges.count_rows() <= limit:
        return None
    return scratch


def _prepare(
    logdir: str | Path,
    config: Mapping[str, Any],
    progress: Progress,
    engine: Engine | None = None,
    scratch: Path | None = None,
    log: Any = None,
) -> tuple[Any, pa.Table | pads.Dataset, pa.Table]:
    """load_log (unless ``log`` is the loaded log already) → per-exchange signals →
    per-account features (computed once).

    With an ``engine`` (Spark) the signals go to Parquet parts the engine reads, and the
    features run on it; without, both stay in process as before.
    """
    from distillguard.features import compute_account_features
    from distillguard.ingest import load_log
    from distillguard.signals import compute_exchange_signals

    if log is None:
        t = progress.add_task("loading log", total=None)
        log = load_log(Path(logdir), config)
        progress.update(t, total=1, completed=1)
    t = progress.add_task("per-exchange signals", total=None)
    if engine is None:
        signals = compute_exchange_signals(log, config, work_dir=_spill_dir(log, config, scratch))
    else:
        from distillguard.engines import scratch_dir

        signals = compute_exchange_signals(log, config, work_dir=scratch_dir(engine))
    release_arrow_memory()
    progress.update(t, total=1, completed=1)
    t = progress.add_task("per-account features", total=None)
    if engine is None:
        features = compute_account_features(signals, log.accounts, config)
    else:
        from distillguard.engines import account_features

        features = account_features(engine, signals, log.accounts, config)
    release_arrow_memory()
    progress.update(t, total=1, completed=1)
    return log, signals, features


def score_log(
    logdir: str | Path, config: Mapping[str, Any], engine: Engine | None = None
) -> ScoredRun:
    """Scores of every account of a log directory before the policy (used by calibration)."""
    with Progress(transient=True) as progress:
        log, signals, features = _prepare(logdir, config, progress, engine)
        return link_and_score(signals, log.accounts, features, config, progress, engine)


def run_detect(
    logdir: str | Path, config: Mapping[str, Any], engine: Engine | None = None, log: Any = None
) -> DetectResult:
    """The whole chain on a log directory (``log``: it loaded already), with rich progress on stderr."""
    with (
        Progress(*Progress.get_default_columns(), TimeElapsedColumn()) as progress,
        tempfile.TemporaryDirectory(prefix="distillguard-detect-") as scratch,
    ):
        log, signals, features = _prepare(logdir, config, progress, engine, Path(scratch), log)
        digests = dict(getattr(log, "digests", {}) or {})
        if engine is None:
            engine = embedded_engine(config, Path(scratch))
        return detect_tables(
            signals, log.accounts, features, config, digests, progress=progress, engine=engine
        )


def load_log_with_progress(logdir: str | Path, config: Mapping[str, Any]) -> Any:
    """``load_log`` with a progress line (validating a seed-scale log takes about half a minute)."""
    from distillguard.ingest import load_log

    with Progress(*Progress.get_default_columns(), TimeElapsedColumn()) as progress:
        task = progress.add_task("loading log", total=None)
        log = load_log(Path(logdir), config)
        progress.update(task, total=1, completed=1)
    return log


def write_evidence(
    logdir: str | Path, outdir: str | Path, config: Mapping[str, Any], log: Any = None
) -> None:
    """Signed case files per campaign (``OUTDIR/cases/``), then the analyst's report over them
    (``log``: the log directory loaded already)."""
    from distillguard.evidence.cases import write_campaign_cases
    from distillguard.evidence.report import build_report, report_data_from_outputs

    if log is None:
        log = load_log_with_progress(logdir, config)
    with Progress(*Progress.get_default_columns(), TimeElapsedColumn()) as progress:
        if (config.get("evidence") or {}).get("case_files", True):
            task = progress.add_task("case files", total=None)
            write_campaign_cases(log.exchanges, outdir, config)
            progress.update(task, total=1, completed=1)
        task = progress.add_task("analyst report", total=None)
        # The report reads the outputs just written, so `distillguard report` rebuilds the same page.
        build_report(
            report_data_from_outputs(log, Path(outdir), config),
            Path(outdir) / "report.html",
        )
        progress.update(task, total=1, completed=1)


def detect(
    logdir: str | Path, outdir: str | Path, config: Mapping[str, Any], engine: str = "embedded"
) -> DetectResult:
    """``distillguard detect``: run the chain and write its outputs, case files and report.

    ``engine``: ``embedded`` (in process) or ``spark`` (the relational stages on Spark; the
    log may then also be a URI, copied to local disk for ingest — docs/spark.md).
    """
    # Loaded once for the chain and the evidence: at the seed scale reading and checking the
    # log again cost the evidence stage ~36 s.
    if engine == "embedded" and not is_uri(logdir):
        log = load_log_with_progress(logdir, config)
        result = run_detect(logdir, config, log=log)
        write_outputs(result, outdir)
        write_evidence(logdir, outdir, config, log)
        return result
    with stage_log(logdir) as local, open_engine(engine) as eng:
        log = load_log_with_progress(local, config)
        result = run_detect(local, config, None if engine == "embedded" else eng, log)
        write_outputs(result, outdir)
        write_evidence(local, outdir, config, log)
    return result
