"""A checked log directory: load_log reads and validates everything, then hands back typed tables."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from distillguard.core.config import default_config
from distillguard.core.errors import ConfigError, InvalidInputError, Problem
from distillguard.core.schema import ACCOUNT_SCHEMA, EXCHANGE_SCHEMA, IP_INTEL_SCHEMA
from distillguard.ingest.checker import ROW_NO, SOURCE, connect
from distillguard.ingest.direct import check_in_place
from distillguard.ingest.exchanges import Source, find_sources, stage_exchanges
from distillguard.ingest.problems import ProblemCollector
from distillguard.ingest.tables import read_accounts, read_ip_intel, read_labels_into

#: Bump when staged output changes shape, so stale cache entries are never reused.
STAGING_VERSION: Final = "1"
ACCOUNT_FILES: Final = ("accounts.parquet", "accounts.jsonl", "accounts.csv")
DIGEST_CHUNK: Final = 8 * 1024 * 1024
#: Marks a cache entry whose Parquet inputs passed the checks where they lie (nothing staged).
DIRECT_MARK: Final = "checked-in-place"


@dataclass(frozen=True)
class Log:
    """A validated log directory. ``exchanges`` is a lazy dataset over canonical Parquet."""

    path: Path
    exchanges: ds.Dataset
    accounts: pa.Table
    ip_intel: pa.Table
    labels: pa.Table | None
    digests: dict[str, str]

    def exchange_table(self, columns: Sequence[str] | None = None) -> pa.Table:
        """Materialise (some columns of) the exchanges; prefer scanning ``exchanges`` for big logs."""
        return self.exchanges.to_table(columns=list(columns) if columns is not None else None)


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(DIGEST_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _ingest_config(config: Mapping[str, Any] | None) -> dict[str, Any]:
    merged = dict(default_config()["ingest"])
    if config is not None:
        merged.update(config.get("ingest", {}) or {})
    for key in ("batch_rows", "max_problems_per_kind"):
        if not isinstance(merged.get(key), int) or merged[key] < 1:
            raise ConfigError(f"ingest.{key} must be a positive integer, got {merged.get(key)!r}")
    return merged


def work_dir(config: Mapping[str, Any] | None = None) -> Path:
    """Where staged Parquet lives: ``ingest.work_dir``, else a per-user folder in the system temp dir."""
    cfg = _ingest_config(config)
    if cfg.get("work_dir"):
        return Path(str(cfg["work_dir"])).expanduser()
    return (
        Path(tempfile.gettempdir())
        / f"distillguard-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
    )


def _public_schema(staging: Path) -> pa.Schema:
    """Canonical columns in contract order, then the provider's extras in first-seen order."""
    extras: dict[str, pa.Field] = {}
    for part in sorted(staging.glob("part-*.parquet")):
        for f in pq.read_schema(part):
            if (
                f.name not in EXCHANGE_SCHEMA.names
                and f.name not in (ROW_NO, SOURCE)
                and f.name not in extras
            ):
                extras[f.name] = f
    fields = list(EXCHANGE_SCHEMA) + list(extras.values())
    return pa.schema(fields)


def _cross_checks(
    staging: Path, sources: list[Source], accounts: pa.Table | None, problems: ProblemCollector
) -> None:
    """Checks that span all rows: duplicate ``request_id``; accounts missing from the accounts file."""
    con = connect()
    parts = str(staging / "part-*.parquet")
    labels = pa.table(
        {SOURCE: pa.array(range(len(sources)), pa.int32()), "file": [s.label for s in sources]}
    )
    con.register("files", labels)
    con.execute(
        f"CREATE VIEW ex AS SELECT {SOURCE}, {ROW_NO}, request_id, account_id "
        f"FROM read_parquet('{parts}', union_by_name = true)"
    )
    dups = con.sql(
        f"""
        WITH d AS (
          SELECT *, first_value({SOURCE}) OVER w AS s0, first_value({ROW_NO}) OVER w AS r0,
                 row_number() OVER w AS k
          FROM ex WHERE request_id IS NOT NULL
          WINDOW w AS (PARTITION BY request_id ORDER BY {SOURCE}, {ROW_NO})
        )
        SELECT f.file, d.{ROW_NO} AS r,
               'duplicate request_id ' || CAST(to_json(d.request_id) AS VARCHAR) || ', first seen at '
               || CASE WHEN d.s0 = d.{SOURCE} THEN '' ELSE f0.file || ' ' END || 'row ' || CAST(d.r0 AS VARCHAR) AS msg
        FROM d JOIN files f ON f.{SOURCE} = d.{SOURCE} JOIN files f0 ON f0.{SOURCE} = d.s0
        WHERE d.k > 1 ORDER BY d.{SOURCE}, d.{ROW_NO}
        """
    ).to_arrow_table()
    for label in sorted(set(dups.column("file").to_pylist())):
        part = dups.filter(pc.equal(dups.column("file"), label))
        problems.add_rows(label, "request_id", "duplicate", part.column("r"), part.column("msg"))
    if accounts is None:
        return
    con.register("acc", accounts.select(["account_id"]))
    missing = con.sql(
        f"""
        SELECT f.file, ex.{ROW_NO} AS r,
               'account ' || CAST(to_json(ex.account_id) AS VARCHAR) || ' is not in the accounts file' AS msg
        FROM ex JOIN files f ON f.{SOURCE} = ex.{SOURCE}
        WHERE ex.account_id IS NOT NULL AND ex.account_id NOT IN (SELECT account_id FROM acc WHERE account_id IS NOT NULL)
        ORDER BY ex.{SOURCE}, ex.{ROW_NO}
        """
    ).to_arrow_table()
    for label in sorted(set(missing.column("file").to_pylist())):
        part = missing.filter(pc.equal(missing.column("file"), label))
        problems.add_rows(
            label, "account_id", "unknown account", part.column("r"), part.column("msg")
        )


def _prune(cache: Path, keep: int) -> None:
    entries = sorted(
        (p for p in cache.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: p.stat().st_mtime,
    )
    for old in entries[: max(0, len(entries) - keep)]:
        shutil.rmtree(old, ignore_errors=True)


def load_log(logdir: str | Path, config: Mapping[str, Any] | None = None) -> Log:
    """Read and validate a log directory (data contract v1).

    Every problem is collected (the first ``ingest.max_problems_per_kind`` of each kind
    kept, the rest counted) and raised together as :class:`InvalidInputError`. Exchanges
    that are not already staged are streamed into canonical Parquet under
    :func:`work_dir`, keyed by the input digests, so a second load of the same input is cheap
    and nothing is ever written into ``logdir``.
    """
    path = Path(logdir)
    cfg = _ingest_config(config)
    problems = ProblemCollector(cfg["max_problems_per_kind"])
    if not path.is_dir():
        raise InvalidInputError([Problem(str(path), None, None, "not a directory")])
    sources = find_sources(path, problems)
    problems.raise_if_any()

    account_files = [path / n for n in ACCOUNT_FILES if (path / n).is_file()]
    if len(account_files) > 1:
        problems.add(
            Problem(
                ", ".join(p.name for p in account_files),
                None,
                None,
                "more than one accounts file; keep exactly one",
            )
        )
    inputs: list[tuple[str, Path]] = [(s.label, s.path) for s in sources]
    inputs += [(p.name, p) for p in account_files]
    for name in ("ip_intel.csv", "labels.csv"):
        if (path / name).is_file():
            inputs.append((name, path / name))
    digests = {label: _digest(p) for label, p in inputs}

    accounts = read_accounts(account_files[0], problems) if len(account_files) == 1 else None
    ip_intel = (
        read_ip_intel(path / "ip_intel.csv", problems)
        if (path / "ip_intel.csv").is_file()
        else None
    )
    labels = (
        read_labels_into(path / "labels.csv", problems) if (path / "labels.csv").is_file() else None
    )

    key_src = "\n".join([STAGING_VERSION, *(f"{k}={v}" for k, v in sorted(digests.items()))])
    key = hashlib.sha256(key_src.encode()).hexdigest()[:32]
    cache = work_dir(config)
    final = cache / key
    direct_files = (
        [s.path for s in sources] if sources and all(s.form == "parquet" for s in sources) else []
    )
    if (final / DIRECT_MARK).is_file():
        problems.raise_if_any()
        os.utime(final)
        schema = _direct_schema(direct_files)
        return _log(
            path,
            ds.dataset([str(p) for p in direct_files], schema=schema, format="parquet"),
            accounts,
            ip_intel,
            labels,
            digests,
        )
    if direct_files and not final.is_dir():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".staging-", dir=cache))
        try:
            in_place = check_in_place(sources, accounts, problems, cfg, tmp / "duckdb")
            problems.raise_if_any()
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        shutil.rmtree(tmp / "duckdb", ignore_errors=True)
        if in_place is None:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            (tmp / DIRECT_MARK).write_text("".join(f"{s.label}\n" for s in sources))
            try:
                os.replace(tmp, final)
            except OSError:  # another process checked the same input first
                shutil.rmtree(tmp, ignore_errors=True)
            _prune(cache, int(cfg.get("cache_entries", 4)))
            dataset = ds.dataset([str(p) for p in direct_files], schema=in_place, format="parquet")
            return _log(path, dataset, accounts, ip_intel, labels, digests)
    if not final.is_dir():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".staging-", dir=cache))
        try:
            stage_exchanges(
                sources,
                tmp,
                cfg["batch_rows"],
                problems,
                int(cfg.get("jsonl_chunk_bytes", 64 << 20)),
            )
            if any(tmp.glob("part-*.parquet")):
                _cross_checks(tmp, sources, accounts, problems)
            problems.raise_if_any()
            try:
                os.replace(tmp, final)
            except OSError:  # another process staged the same input first
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _prune(cache, int(cfg.get("cache_entries", 4)))
    else:
        problems.raise_if_any()
        os.utime(final)
    schema = _public_schema(final)
    dataset = ds.dataset(
        sorted(str(p) for p in final.glob("part-*.parquet")), schema=schema, format="parquet"
    )
    return _log(path, dataset, accounts, ip_intel, labels, digests)


def _direct_schema(files: Sequence[Path]) -> pa.Schema:
    """The dataset schema of Parquet files already checked in place (contract, then extras)."""
    extras: dict[str, pa.Field] = {}
    for f in (field for p in files for field in pq.read_schema(p)):
        if f.name not in EXCHANGE_SCHEMA.names and f.name not in extras:
            extras[f.name] = f
    return pa.schema(list(EXCHANGE_SCHEMA) + list(extras.values()))


def _log(
    path: Path,
    dataset: ds.Dataset,
    accounts: pa.Table | None,
    ip_intel: pa.Table | None,
    labels: pa.Table | None,
    digests: dict[str, str],
) -> Log:
    return Log(
        path=path,
        exchanges=dataset,
        accounts=accounts if accounts is not None else ACCOUNT_SCHEMA.empty_table(),
        ip_intel=ip_intel if ip_intel is not None else IP_INTEL_SCHEMA.empty_table(),
        labels=labels,
        digests=digests,
    )
