"""Measure what sharing indicators gains: provider B contains a campaign sooner with provider A's indicators.

Usage: python scripts/measure_sharing_gain.py [--scale small] [--seed-a 1001] [--seed-b 1002]
[--infra-seed 4242] [--scenario june2026] [--jobs 2] [--out FILE.json] [--workdir DIR]

Two providers are simulated with different seeds (different benign customers, attack accounts
and cards) and the same ``infra_seed`` for the campaign, so the operation runs through the same
rented exits with the same prompt scaffolds at both (simulator knob ``<campaign>.infra_seed``).
A runs ``detect``, exports its campaigns as a keyed STIX bundle, B imports it into an indicator
store, then B's log is replayed through the online path (and judged by ``detect``) once without
and once with the store. Reported per campaign: attack exchanges served before containment,
time and exchanges before the first flag; and the batch flag counts. Seeds 1-99 are for
tuning; judged figures use seeds >= 1000.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress, TimeElapsedColumn
from rich.table import Table

from distillguard.core.atomic import write_text_atomic
from distillguard.core.config import load_config
from distillguard.core.indicators import GroupKey, use_indicator_store
from distillguard.enforce.replay import replay
from distillguard.evaluate.metrics import as_json
from distillguard.evaluate.run import evaluate_run
from distillguard.pipeline import _prepare, detect_tables, run_detect, write_outputs
from distillguard.share.api import export_campaigns, import_bundle
from distillguard.simulate import simulate

console = Console(stderr=True)


def _batch_figures(
    logdir: Path, outdir: Path, config: dict[str, Any], result: Any
) -> dict[str, Any]:
    write_outputs(result, outdir)
    report = evaluate_run(logdir, outdir, config)
    assert report.detect is not None
    acc = as_json(report.detect.accounts)
    peer_reasons = sum(
        1 for v in result.verdicts if any(r.signal == "peer_indicator" for r in v.reasons)
    )
    actions = Counter(v.action.value for v in result.verdicts)
    return {
        "accounts": acc,
        "actions": dict(sorted(actions.items())),
        "verdicts_with_peer_reason": peer_reasons,
    }


def _batch_pair(
    logdir: Path, workdir: Path, config: dict[str, Any], with_store: dict[str, Any]
) -> dict[str, Any]:
    """``detect`` on B without and with the store: signals and features once, linking and scoring twice.

    Exactly ``run_detect``'s two halves; only the linking stage reads ``share.indicators``, so
    the per-exchange signals and per-account features are the same for both runs.
    """
    with (
        Progress(*Progress.get_default_columns(), TimeElapsedColumn(), console=console) as progress,
        tempfile.TemporaryDirectory(prefix="distillguard-detect-") as scratch,
    ):
        log, signals, features = _prepare(logdir, config, progress, None, Path(scratch))
        digests = dict(getattr(log, "digests", {}) or {})
        out = {}
        for name, cfg in (("without", config), ("with", with_store)):
            result = detect_tables(signals, log.accounts, features, cfg, digests, progress=progress)
            out[name] = _batch_figures(logdir, workdir / f"detect-b-{name}", cfg, result)
    return out


def _replay(logdir: Path, outdir: Path, config: dict[str, Any]) -> dict[str, Any]:
    replay(logdir, outdir, config, progress=False)
    report = evaluate_run(logdir, outdir, config)
    assert report.replay is not None
    r = report.replay
    return {
        "attack_served": r.attack_served,
        "attack_served_share": r.attack_served_share,
        "benign_not_served": r.benign_not_served,
        "campaigns": {k: as_json(v) for k, v in sorted(r.campaigns.items())},
    }


def _simulate(scenario: str, scale: str, seed: int, out: Path, knobs: dict[str, str]) -> None:
    simulate(scenario, scale, seed, out, knobs, console=console)


def _provider_a(
    workdir: Path,
    scenario: str,
    scale: str,
    seed: int,
    knobs: dict[str, str],
    config: dict[str, Any],
    export_config: dict[str, Any],
) -> dict[str, Any]:
    """Provider A's side: simulate, detect, export a keyed bundle; then B imports it into its store."""
    log_a = workdir / "log-a"
    _simulate(scenario, scale, seed, log_a, knobs)
    write_outputs(run_detect(log_a, config), workdir / "results-a")
    key = GroupKey.generate()
    key.save(workdir / "group.key")
    exported = export_campaigns(workdir / "results-a", log_a, key, producer="Provider A",
                                out=workdir / "bundle-a.json", config=export_config)  # fmt: skip
    imported = import_bundle(
        workdir / "indicators-b.parquet", path=workdir / "bundle-a.json", key=key
    )
    return {"export": {"campaigns": exported.campaigns, "objects": exported.objects_by_type,
                       "withheld": exported.vetoed},
            "store_rows": imported.store_rows}  # fmt: skip


class _Runner:
    """Runs the experiment's steps in order (``jobs`` 1) or on a spawned process pool.

    The steps are mostly single-threaded Python (online replay, STIX validation, query
    compilation), so two processes nearly halve the wall time on two free cores. Spawn, not
    fork: forking after polars/DuckDB started their thread pools can deadlock.
    """

    def __init__(self, jobs: int) -> None:
        self.pool: ProcessPoolExecutor | None = None
        if jobs > 1 and sys.modules.get(__name__) is None:
            console.log(
                "loaded without registering in sys.modules: workers could not find it; running in order"
            )
            jobs = 1
        if jobs > 1:
            # A spawned worker unpickles this module's functions by name: when this file was
            # loaded by path (tests), its folder must be importable there too.
            here = str(Path(__file__).resolve().parent)
            if __name__ != "__main__" and here not in sys.path:
                sys.path.insert(0, here)
            self.pool = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"))

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        if self.pool is not None:
            return self.pool.submit(fn, *args)
        done: Future[Any] = Future()
        done.set_result(fn(*args))
        return done

    def __enter__(self) -> _Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)


def measure(
    workdir: Path,
    *,
    scale: str = "small",
    seed_a: int = 11,
    seed_b: int = 12,
    infra_seed: int = 4242,
    scenario: str = "june2026",
    campaign: str = "june2026",
    batch: bool = True,
    min_confidence: float | None = None,
    jobs: int = 2,
) -> dict[str, Any]:
    """Run the whole experiment under ``workdir``; return the figures (JSON-ready).

    ``min_confidence`` overrides ``share.min_confidence`` for A's export (tiny runs give less
    confident campaigns than the default threshold expects). ``jobs`` processes run independent
    steps side by side (A's detect/export beside B's runs without indicators); the figures do
    not depend on it.
    """
    knobs = {f"{campaign}.infra_seed": str(infra_seed)}
    log_b = workdir / "log-b"
    config = load_config()
    export_config = (
        config
        if min_confidence is None
        else {**config, "share": {**config["share"], "min_confidence": min_confidence}}
    )
    store = workdir / "indicators-b.parquet"
    with _Runner(jobs) as run:
        console.log(f"simulating provider A (seed {seed_a}) and B (seed {seed_b}), {scenario}/{scale}; "
                    f"A: detect, export; B: import, replay and detect without and with A's indicators"
                    f" ({jobs} process{'es' if jobs > 1 else ''})")  # fmt: skip
        side_a = run.submit(
            _provider_a, workdir, scenario, scale, seed_a, knobs, config, export_config
        )
        run.submit(_simulate, scenario, scale, seed_b, log_b, knobs).result()
        without = run.submit(_replay, log_b, workdir / "replay-b-without", config)
        a = side_a.result()
        console.log(
            f"provider A exported {a['export']['campaigns']} campaign(s); B's store: {a['store_rows']} rows"
        )
        with_store = use_indicator_store(config, store, workdir / "group.key")
        pair = run.submit(_batch_pair, log_b, workdir, config, with_store) if batch else None
        with_ = run.submit(_replay, log_b, workdir / "replay-b-with", with_store)
        out: dict[str, Any] = {
            "scenario": scenario, "scale": scale, "seed_a": seed_a, "seed_b": seed_b, "infra_seed": infra_seed,
            "campaign": campaign, "min_confidence": export_config["share"]["min_confidence"], **a,
            "replay": {"without": without.result(), "with": with_.result()},
        }  # fmt: skip
        if pair is not None:
            out["batch"] = pair.result()
    return out


def gain(figures: dict[str, Any]) -> dict[str, float | int | None]:
    """Served-before-containment and time to first flag, without minus with (positive: sharing helped)."""
    c = figures["campaign"]
    wo = figures["replay"]["without"]["campaigns"][c]
    wi = figures["replay"]["with"]["campaigns"][c]

    def diff(name: str) -> float | int | None:
        a, b = wo.get(name), wi.get(name)
        return a - b if a is not None and b is not None else None

    return {"served": diff("served"), "seconds_to_first_flag": diff("seconds_to_first_flag"),
            "exchanges_before_first_flag": diff("exchanges_before_first_flag")}  # fmt: skip


def render(figures: dict[str, Any]) -> None:
    c = figures["campaign"]
    t = Table(title=f"provider B, {figures['scenario']}/{figures['scale']}, seeds A={figures['seed_a']} "
                    f"B={figures['seed_b']}, campaign {c}")  # fmt: skip
    t.add_column("")
    t.add_column("without A's indicators", justify="right")
    t.add_column("with A's indicators", justify="right")
    wo, wi = (figures["replay"][k]["campaigns"][c] for k in ("without", "with"))

    def fmt(x: Any, pct: bool = False) -> str:
        if x is None:
            return "—"
        return f"{100 * x:.2f} %" if pct else (f"{x:,.1f}" if isinstance(x, float) else f"{x:,}")

    t.add_row("attack exchanges served before containment", f"{fmt(wo['served'])} ({fmt(wo['served_share'], True)})",
              f"{fmt(wi['served'])} ({fmt(wi['served_share'], True)})")  # fmt: skip
    t.add_row("minutes to first flag", fmt((wo["seconds_to_first_flag"] or 0) / 60),
              fmt((wi["seconds_to_first_flag"] or 0) / 60))  # fmt: skip
    t.add_row(
        "exchanges before first flag",
        fmt(wo["exchanges_before_first_flag"]),
        fmt(wi["exchanges_before_first_flag"]),
    )
    t.add_row("benign exchanges refused", fmt(figures["replay"]["without"]["benign_not_served"]),
              fmt(figures["replay"]["with"]["benign_not_served"]))  # fmt: skip
    if "batch" in figures:
        for label, key in (("attack accounts flagged (detect)", "flagged_attack"),
                           ("benign accounts flagged (detect)", "flagged_benign")):  # fmt: skip
            t.add_row(
                label, *(fmt(figures["batch"][k]["accounts"].get(key)) for k in ("without", "with"))
            )
        t.add_row(
            "benign accounts at monitor (detect)",
            *(
                fmt(figures["batch"][k]["accounts"].get("monitored_benign"))
                for k in ("without", "with")
            ),
        )
    Console().print(t)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--scale", default="small")
    ap.add_argument("--scenario", default="june2026")
    ap.add_argument("--campaign", default="june2026")
    ap.add_argument("--seed-a", type=int, default=11)
    ap.add_argument("--seed-b", type=int, default=12)
    ap.add_argument("--infra-seed", type=int, default=4242)
    ap.add_argument("--no-batch", action="store_true", help="skip detect on B (replay only)")
    ap.add_argument(
        "--min-confidence", type=float, help="override share.min_confidence for A's export"
    )
    ap.add_argument(
        "--jobs", type=int, default=2, help="processes for independent steps (1: in order)"
    )
    ap.add_argument("--workdir", type=Path, help="keep intermediate logs and results here")
    ap.add_argument("--out", type=Path, help="write the figures as JSON")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        figures = measure(work, scale=args.scale, seed_a=args.seed_a, seed_b=args.seed_b, infra_seed=args.infra_seed,
                          scenario=args.scenario, campaign=args.campaign, batch=not args.no_batch,
                          min_confidence=args.min_confidence, jobs=args.jobs)  # fmt: skip
    figures["gain"] = gain(figures)
    render(figures)
    if args.out:
        write_text_atomic(
            args.out, json.dumps(figures, indent=1, sort_keys=True, default=str) + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
