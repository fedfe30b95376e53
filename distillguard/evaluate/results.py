"""Read the outputs of ``detect`` and ``replay`` (contract §2–3) into typed tables, or say exactly what is wrong.

Shapes read (everything else on a line or object is ignored):

* ``verdicts.jsonl`` — one JSON object per line with ``account_id`` (string) and ``action``
  (``allow|monitor|throttle|challenge|suspend``). Blank lines are skipped. An account may
  appear at most once; accounts without a line are ``allow``.
* ``campaigns.json`` — ``{"campaigns": [{"id": str, "members": [account_id, ...],
  "confidence": float, ...}, ...]}``, or a top-level list of such objects. ``confidence``
  is optional (null when absent). Ids must be unique.
* ``decisions.jsonl`` — one JSON object per line with ``ts`` (RFC 3339 string or integer
  epoch milliseconds, as for exchanges), ``account_id`` and ``action``. File order is the
  replay order; it breaks ties between decisions of one account at the same ``ts``.

Rows in problems are 1-based line numbers of the file (blank lines included), or for
``campaigns.json`` the 1-based position of the campaign in the list.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from distillguard.core.errors import DistillguardError, InvalidInputError, Problem
from distillguard.core.verdict import ACTIONS

VERDICTS_FILE = "verdicts.jsonl"
CAMPAIGNS_FILE = "campaigns.json"
DECISIONS_FILE = "decisions.jsonl"

#: Problems listed per file before the rest are only counted.
MAX_PROBLEMS = 20

VERDICTS_SCHEMA: dict[str, pl.DataType] = {"account_id": pl.String(), "action": pl.String()}
CLUSTERS_SCHEMA: dict[str, pl.DataType] = {
    "cluster_id": pl.String(),
    "account_id": pl.String(),
    "position": pl.Int64(),
}
DECISIONS_SCHEMA: dict[str, pl.DataType] = {
    "seq": pl.Int64(),
    "ts": pl.Datetime("ms", "UTC"),
    "account_id": pl.String(),
    "action": pl.String(),
}


@dataclass(frozen=True)
class ReportedCampaigns:
    """Reported campaigns: ``clusters`` is one row per (cluster_id, account_id, position)
    membership, ``position`` being the campaign's 1-based place in the file;
    ``info`` one row per campaign (cluster_id, size, confidence), in file order."""

    clusters: pl.DataFrame
    info: pl.DataFrame


@dataclass(frozen=True)
class Results:
    """What a result directory holds; a part is ``None`` when its file is absent."""

    verdicts: pl.DataFrame | None
    campaigns: ReportedCampaigns | None
    decisions: pl.DataFrame | None


def read_results(resultdir: Path) -> Results:
    """Read whichever of verdicts.jsonl, campaigns.json and decisions.jsonl ``resultdir`` holds.

    Raises ``DistillguardError`` when it holds none of them, ``InvalidInputError`` listing
    every problem found when one breaks its shape.
    """
    if not resultdir.is_dir():
        raise DistillguardError(
            f"result directory {resultdir} does not exist or is not a directory"
        )
    paths = {name: resultdir / name for name in (VERDICTS_FILE, CAMPAIGNS_FILE, DECISIONS_FILE)}
    if not any(p.is_file() for p in paths.values()):
        raise DistillguardError(
            f"{resultdir} holds none of {VERDICTS_FILE}, {CAMPAIGNS_FILE}, {DECISIONS_FILE}; "
            "run `distillguard detect` and/or `distillguard replay` with --out pointing there"
        )
    verdicts_path, campaigns_path, decisions_path = paths.values()
    return Results(
        verdicts=read_verdicts(verdicts_path) if verdicts_path.is_file() else None,
        campaigns=read_campaigns(campaigns_path) if campaigns_path.is_file() else None,
        decisions=read_decisions(decisions_path) if decisions_path.is_file() else None,
    )


def line_numbers(path: Path, indices: list[int]) -> dict[int, int]:
    """Map 0-based indices of non-blank lines to 1-based file line numbers (error path only)."""
    wanted = set(indices)
    found: dict[int, int] = {}
    index = 0
    with path.open("rb") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            if index in wanted:
                found[index] = number
                if len(found) == len(wanted):
                    break
            index += 1
    return found


def _json_problems(path: Path) -> list[Problem]:
    """Locate lines that are not JSON objects (slow path, only once a columnar read failed)."""
    problems: list[Problem] = []
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                value = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                problems.append(Problem(path.name, number, None, f"not valid JSON: {exc}"))
                continue
            if not isinstance(value, dict):
                problems.append(Problem(path.name, number, None, "each line must be a JSON object"))
    return problems


def _is_blank(path: Path) -> bool:
    with path.open("rb") as fh:
        return all(not line.strip() for line in fh)


def _read_jsonl(path: Path, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """Columnar read of the named fields of a JSONL file; ``_idx`` numbers its non-blank lines from 0."""
    empty = pl.DataFrame(schema={**schema, "_idx": pl.Int64()})
    if path.stat().st_size == 0:
        return empty
    try:
        frame = pl.read_ndjson(path, schema=schema, ignore_errors=False)
    except Exception as exc:  # polars raises several types for malformed JSON; locate it by line
        problems = _json_problems(path)
        if not problems and _is_blank(path):
            return empty
        if not problems:
            problems = [Problem(path.name, None, None, f"cannot be read as JSON lines: {exc}")]
        _raise(problems)
    return frame.with_row_index("_idx").with_columns(pl.col("_idx").cast(pl.Int64))


def problem_order(problem: Problem) -> tuple[str, int, str, str]:
    """Sort key for problems: file, row, column (a whole-row problem first), message."""
    return (problem.file, problem.row or 0, problem.column or "", problem.message)


def _raise(problems: list[Problem]) -> None:
    problems = sorted(problems, key=problem_order)
    raise InvalidInputError(problems[:MAX_PROBLEMS], truncated=max(0, len(problems) - MAX_PROBLEMS))


#: A problem found columnar: (0-based non-blank line index, column, message).
_Found = tuple[int, str, str]


def _raise_found(path: Path, found: list[_Found]) -> None:
    lines = line_numbers(path, [idx for idx, _, _ in found])
    _raise(
        [
            Problem(path.name, lines.get(idx, idx + 1), column, message)
            for idx, column, message in found
        ]
    )


def _rows(frame: pl.DataFrame, mask: pl.Expr, column: str) -> list[tuple[int, Any]]:
    bad = frame.filter(mask).head(MAX_PROBLEMS + 1)
    return list(zip(bad["_idx"].to_list(), bad[column].to_list(), strict=True))


def _action_problems(frame: pl.DataFrame) -> list[_Found]:
    found: list[_Found] = []
    for idx, account in _rows(
        frame, pl.col("account_id").is_null() | (pl.col("account_id") == ""), "account_id"
    ):
        found.append(
            (
                idx,
                "account_id",
                "missing or null" if account is None else "must be a non-empty string",
            )
        )
    for idx, action in _rows(
        frame, pl.col("action").is_null() | ~pl.col("action").is_in(ACTIONS), "action"
    ):
        found.append((idx, "action", f"{action!r} is not one of {', '.join(ACTIONS)}"))
    return found


def read_verdicts(path: Path) -> pl.DataFrame:
    """``verdicts.jsonl`` → (seq, account_id, action), one row per account that has a line;
    ``seq`` numbers the non-blank lines from 0 (``line_numbers`` turns it into file rows)."""
    frame = _read_jsonl(path, VERDICTS_SCHEMA)
    found = _action_problems(frame)
    repeated = pl.col("account_id").is_not_null() & (
        pl.col("_idx") != pl.col("_idx").min().over("account_id")
    )
    for idx, account in _rows(frame, repeated, "account_id"):
        found.append((idx, "account_id", f"account {account!r} has more than one verdict"))
    if found:
        _raise_found(path, found)
    return frame.select(pl.col("_idx").alias("seq"), "account_id", "action")


def read_decisions(path: Path) -> pl.DataFrame:
    """``decisions.jsonl`` → (seq, ts, account_id, action) with ``seq`` the file order."""
    frame = _read_jsonl(path, {"ts": pl.String(), "account_id": pl.String(), "action": pl.String()})
    frame = frame.with_columns(
        pl.when(pl.col("ts").str.contains(r"^\s*-?\d+\s*$"))
        .then(
            pl.col("ts")
            .str.strip_chars()
            .cast(pl.Int64, strict=False)
            .cast(pl.Datetime("ms", "UTC"))
        )
        .otherwise(pl.col("ts").str.to_datetime(time_unit="ms", time_zone="UTC", strict=False))
        .alias("ts_parsed")
    )
    found = _action_problems(frame)
    for idx, ts in _rows(frame, pl.col("ts_parsed").is_null(), "ts"):
        message = (
            "missing or null"
            if ts is None
            else f"{ts!r} is neither RFC 3339 nor epoch milliseconds"
        )
        found.append((idx, "ts", message))
    if found:
        _raise_found(path, found)
    return frame.select(
        pl.col("_idx").alias("seq"), pl.col("ts_parsed").alias("ts"), "account_id", "action"
    )


def read_campaigns(path: Path) -> ReportedCampaigns:
    """``campaigns.json`` → memberships and per-campaign info (see the module docstring)."""
    name = path.name
    try:
        document: Any = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInputError([Problem(name, None, None, f"not valid JSON: {exc}")]) from exc
    if isinstance(document, dict):
        if "campaigns" not in document:
            raise InvalidInputError(
                [Problem(name, None, "campaigns", 'missing: expected {"campaigns": [...]}')]
            )
        document = document["campaigns"]
    if not isinstance(document, list):
        raise InvalidInputError(
            [
                Problem(
                    name, None, "campaigns", "must be a list of {id, members, confidence} objects"
                )
            ]
        )
    problems: list[Problem] = []
    ids: list[str] = []
    sizes: list[int] = []
    confidences: list[float | None] = []
    member_cluster: list[str] = []
    member_account: list[str] = []
    member_position: list[int] = []
    seen: set[str] = set()
    for position, campaign in enumerate(document, start=1):
        if not isinstance(campaign, dict):
            problems.append(Problem(name, position, None, "each campaign must be a JSON object"))
            continue
        cid = campaign.get("id")
        members = campaign.get("members")
        confidence = campaign.get("confidence")
        ok = True
        if not isinstance(cid, str) or not cid:
            problems.append(Problem(name, position, "id", "missing or not a non-empty string"))
            ok = False
        elif cid in seen:
            problems.append(Problem(name, position, "id", f"duplicate campaign id {cid!r}"))
            ok = False
        if not isinstance(members, list) or not all(isinstance(m, str) and m for m in members):
            problems.append(
                Problem(name, position, "members", "must be a list of account_id strings")
            )
            ok = False
        if confidence is not None and (
            isinstance(confidence, bool) or not isinstance(confidence, int | float)
        ):
            problems.append(Problem(name, position, "confidence", "must be a number or absent"))
            ok = False
        if not ok:
            continue
        assert isinstance(cid, str) and isinstance(members, list)
        seen.add(cid)
        unique = list(dict.fromkeys(members))  # a member listed twice is still one member
        ids.append(cid)
        sizes.append(len(unique))
        confidences.append(None if confidence is None else float(confidence))
        member_cluster.extend([cid] * len(unique))
        member_account.extend(unique)
        member_position.extend([position] * len(unique))
    if problems:
        _raise(problems)
    clusters = pl.DataFrame(
        {"cluster_id": member_cluster, "account_id": member_account, "position": member_position},
        schema=CLUSTERS_SCHEMA,
    )
    info = pl.DataFrame(
        {"cluster_id": ids, "size": sizes, "confidence": confidences},
        schema={"cluster_id": pl.String(), "size": pl.Int64(), "confidence": pl.Float64()},
    )
    return ReportedCampaigns(clusters=clusters, info=info)
