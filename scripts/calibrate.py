"""Set the policy thresholds to the false-positive budget on calibration seeds, and record them.

    python scripts/calibrate.py --seeds 50-55 --scenario default --scenario low-and-slow \
        --scale small --workdir /tmp/calib [--write distillguard/core/defaults.yaml]

For every (scenario, seed) the simulator writes a labelled log (kept in ``--workdir`` and reused),
the detection chain scores every account (``pipeline.score_log``: no policy), and the benign
accounts' log-odds are pooled. Then:

* ``throttle`` — the first action a customer feels — sits at the benign ``1 - budget`` quantile
  plus ``margin`` log-odds (the margin covers seed-to-seed variance of an extreme quantile
  estimated from a few thousand benign accounts);
* ``monitor`` (no effect on the customer) at the benign ``1 - monitor_budget`` quantile;
* ``challenge`` and ``suspend`` fixed log-odds steps above ``throttle``; suspend is further gated
  by the policy's cluster-evidence rule, which no threshold can override.

The quantile for ``throttle`` is taken over benign accounts the policy's rules would let act at
all (a non-volume reason, ``min_evidence_kinds`` independent kinds): one capped at monitor by
the rules cannot spend the budget. ``--extra default:medium:56`` adds a run at another scale:
some links (a shared residential IP among a few households) only appear with more accounts.

The seeds and scenarios used are written under ``policy.calibration`` so nobody judges the
detector on them. Use seeds 50-59 (tuning uses 1-99, judging uses 1000+).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from distillguard.core.config import default_config
from distillguard.core.verdict import Action
from distillguard.pipeline import score_log
from distillguard.scoring.policy import Policy
from distillguard.simulate import simulate


def _seeds(spec: str) -> list[int]:
    out: list[int] = []
    for part in spec.split(","):
        if "-" in part:
            lo, hi = part.split("-", 1)
            out.extend(range(int(lo), int(hi) + 1))
        elif part.strip():
            out.append(int(part))
    return out


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def collect(
    runs: list[tuple[str, str, int]], workdir: Path, config: dict[str, Any]
) -> pl.DataFrame:
    """account_id, label, persona, scenario, seed, logit, flaggable for every account of every
    (scenario, scale, seed) run. ``flaggable``: the policy's rules (non-volume reason, enough
    independent kinds of evidence) would let a high enough score act on it at all."""
    policy = Policy.from_config(config)
    frames = []
    for scenario, scale, seed in runs:
        logdir = workdir / f"{scenario}-{scale}-{seed}"
        if not (logdir / "labels.csv").exists():
            simulate(scenario, scale, seed, logdir)
        run = score_log(logdir, config)
        scored = pl.from_arrow(run.scored.accounts)
        assert isinstance(scored, pl.DataFrame)
        # Decide with every threshold at its floor: what the rules alone still allow.
        floor = replace(policy, thresholds=dict.fromkeys(policy.thresholds, 1e-12))
        flaggable = floor.decide(run.scored) >= Action.THROTTLE.rank
        scored = scored.with_columns(flaggable=pl.Series(flaggable))
        labels = pl.read_csv(logdir / "labels.csv", infer_schema_length=0)
        frames.append(
            scored.join(labels, on="account_id", how="inner")
            .select("account_id", "label", "persona", "campaign", "logit", "flaggable")
            .with_columns(scenario=pl.lit(scenario), scale=pl.lit(scale), seed=pl.lit(seed))
        )
        print(f"scored {logdir}", file=sys.stderr)
    return pl.concat(frames)


def thresholds(
    frame: pl.DataFrame,
    budget: float,
    monitor_budget: float,
    margin: float,
    challenge_step: float,
    suspend_step: float,
) -> dict[str, float]:
    """Thresholds on the [0, 1] score from the pooled benign log-odds."""
    ben = frame.filter(pl.col("label") == "benign")
    benign = ben["logit"].to_numpy()
    # The budget counts benign accounts that would be acted on: one the rules cap at monitor
    # (one kind of evidence, volume only) can never spend it, whatever its score.
    actable = np.where(ben["flaggable"].to_numpy(), benign, -np.inf)
    q_flag = float(np.quantile(actable, 1.0 - budget, method="higher"))
    if not np.isfinite(q_flag):
        q_flag = float(np.quantile(benign, 1.0 - budget, method="higher"))
    q_mon = float(np.quantile(benign, 1.0 - monitor_budget, method="higher"))
    throttle = q_flag + margin
    monitor = min(q_mon, throttle)
    return {
        "monitor": round(_sigmoid(monitor), 6),
        "throttle": round(_sigmoid(throttle), 6),
        "challenge": round(_sigmoid(throttle + challenge_step), 6),
        "suspend": round(_sigmoid(throttle + suspend_step), 6),
    }


def summary(frame: pl.DataFrame, th: dict[str, float]) -> dict[str, Any]:
    """What the thresholds do on the calibration runs (benign above monitor, attack flagged)."""
    t = _logit(th["throttle"])
    m = _logit(th["monitor"])
    ben = frame.filter(pl.col("label") == "benign")
    atk = frame.filter(pl.col("label") == "attack")
    benign = np.where(ben["flaggable"].to_numpy(), ben["logit"].to_numpy(), -np.inf)
    attack = np.where(atk["flaggable"].to_numpy(), atk["logit"].to_numpy(), -np.inf)
    return {
        "benign_accounts": int(benign.size),
        "benign_flagged_share": float(np.mean(benign >= t)) if benign.size else None,
        "benign_monitored_share": float(np.mean(ben["logit"].to_numpy() >= m))
        if benign.size
        else None,
        "benign_max_logit": float(benign.max()) if benign.size else None,
        "attack_accounts": int(attack.size),
        "attack_flagged_share": float(np.mean(attack >= t)) if attack.size else None,
        "attack_min_logit": float(attack.min()) if attack.size else None,
    }


def policy_text(th: dict[str, float], record: dict[str, Any]) -> str:
    """The ``policy:`` section of the configuration, comments included."""
    seeds = ", ".join(str(s) for s in record["seeds"])
    scenarios = ", ".join(record["scenarios"])
    extra = ", ".join(record["extra_runs"])
    return f"""policy:
  # Score thresholds for each action, written by scripts/calibrate.py (see calibration below):
  # throttle = benign (1 - budget) quantile + margin log-odds; monitor = benign (1 - monitor_budget)
  # quantile; challenge / suspend = fixed log-odds steps above throttle.
  thresholds:
    monitor: {th["monitor"]}
    throttle: {th["throttle"]}
    challenge: {th["challenge"]}
    suspend: {th["suspend"]}
  suspend_requires_cluster: true
  # Cluster evidence (non-volume, log-odds) needed before suspend is allowed.
  min_cluster_contribution: 3.0
  flag_requires_non_volume_reason: true
  # Throttle and above need this many independent kinds of evidence: each indicator family of
  # the account's cluster (IP + prefix count once), plus each other non-volume reason. Signals
  # computed from the same edges add nothing. Shared IP alone, however strong, is one kind.
  min_evidence_kinds: {record["min_evidence_kinds"]}
  evidence_count_signal: {record["evidence_count_signal"]}
  edge_derived_signals: [{", ".join(record["edge_derived_signals"])}]
  calibration:
    false_positive_budget: {record["false_positive_budget"]}
    monitor_budget: {record["monitor_budget"]}
    margin: {record["margin"]}
    scale: {record["scale"]}
    scenarios: [{scenarios}]
    seeds: [{seeds}]
    # Further runs (scenario-scale-seed), e.g. a medium one: links that only appear at scale.
    extra_runs: [{extra}]
    benign_accounts: {record["benign_accounts"]}
"""


def write_policy(path: Path, text: str) -> None:
    """Replace the ``policy:`` section of a YAML file (up to the next top-level key)."""
    src = path.read_text(encoding="utf-8")
    pattern = re.compile(r"^policy:\n(?:(?:[ #].*)?\n)*", re.MULTILINE)
    if not pattern.search(src):
        raise SystemExit(f"{path}: no top-level 'policy:' section to replace")
    path.write_text(pattern.sub(text, src, count=1), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="50-55")
    ap.add_argument("--scenario", action="append", default=None)
    ap.add_argument("--scale", default="small")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/distillguard-calibration"))
    ap.add_argument("--budget", type=float, default=0.001)
    ap.add_argument("--monitor-budget", type=float, default=0.01)
    ap.add_argument("--margin", type=float, default=1.0)
    ap.add_argument("--challenge-step", type=float, default=2.0)
    ap.add_argument("--suspend-step", type=float, default=4.0)
    ap.add_argument(
        "--extra",
        action="append",
        default=[],
        help="a further run as scenario:scale:seed (e.g. default:medium:56)",
    )
    ap.add_argument("--write", type=Path, default=None, help="YAML file whose policy: to replace")
    args = ap.parse_args(argv)
    seeds = _seeds(args.seeds)
    scenarios = args.scenario or ["default", "low-and-slow"]
    runs = [(sc, args.scale, seed) for sc in scenarios for seed in seeds]
    for spec in args.extra:
        parts = spec.split(":")
        if len(parts) != 3 or not parts[2].isdigit():
            raise SystemExit(f"--extra {spec!r}: expected scenario:scale:seed")
        runs.append((parts[0], parts[1], int(parts[2])))
    if any(seed >= 1000 for _, _, seed in runs):
        raise SystemExit("seeds >= 1000 are reserved for judging; calibrate on 50-59")
    config = default_config()
    args.workdir.mkdir(parents=True, exist_ok=True)
    frame = collect(runs, args.workdir, config)
    th = thresholds(
        frame, args.budget, args.monitor_budget, args.margin, args.challenge_step, args.suspend_step
    )
    record = {
        "false_positive_budget": args.budget,
        "monitor_budget": args.monitor_budget,
        "margin": args.margin,
        "scale": args.scale,
        "scenarios": scenarios,
        "seeds": seeds,
        "extra_runs": [
            f"{sc}-{scale}-{seed}" for sc, scale, seed in runs[len(scenarios) * len(seeds) :]
        ],
        "min_evidence_kinds": int(config["policy"].get("min_evidence_kinds", 0)),
        "evidence_count_signal": config["policy"].get(
            "evidence_count_signal", "cluster.indicator_diversity"
        ),
        "edge_derived_signals": list(config["policy"].get("edge_derived_signals", [])),
        "benign_accounts": int(frame.filter(pl.col("label") == "benign").height),
    }
    print(json.dumps({"thresholds": th, "on_calibration": summary(frame, th)}, indent=1))
    if args.write is not None:
        write_policy(args.write, policy_text(th, record))
        print(f"wrote policy to {args.write}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
