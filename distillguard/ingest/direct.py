"""Check Parquet exchanges in place with DuckDB aggregates, so a log already in the contract's types is never copied.

Every check is an aggregate over the files (counts per kind); only when a count is not
zero are the offending rows fetched, the first ``max_problems_per_kind`` of them in row
order, with the same messages the staging path writes. Row numbers are 1-based per file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from distillguard.core.errors import Problem
from distillguard.core.schema import EXCHANGE_SCHEMA
from distillguard.ingest.checker import ROW_NO, SOURCE, _describe, connect
from distillguard.ingest.columns import (
    EXCHANGE_COLUMNS,
    MISSING_COLUMN,
    Column,
    _ident,
    _s,
    accepts,
    typed_checks,
    value_category,
)
from distillguard.ingest.exchanges import NO_ROWS, Source
from distillguard.ingest.ipintel import parse_ips
from distillguard.ingest.problems import ProblemCollector
from distillguard.ingest.tables import EMPTY_FILE


def _plain(t: pa.DataType) -> pa.DataType:
    return t.value_type if pa.types.is_dictionary(t) else t


def _castable(col: Column, t: pa.DataType) -> bool:
    """Whether a dataset scan can present this column in its canonical type (maybe after a check)."""
    t = _plain(t)
    if col.kind in ("string", "enum"):
        return bool(pa.types.is_string(t) or pa.types.is_large_string(t))
    if col.kind in ("int", "count"):
        return bool(pa.types.is_integer(t))
    if col.kind == "bool":
        return bool(pa.types.is_boolean(t))
    return bool(pa.types.is_timestamp(t)) and t.tz in ("UTC", "Etc/UTC", "+00:00")


def configure(con: duckdb.DuckDBPyConnection, cfg: Mapping[str, Any], temp_dir: Path) -> None:
    """Bound DuckDB's memory so big aggregates spill to ``temp_dir`` instead of growing."""
    limit = cfg.get("duckdb_memory_limit")
    if limit:
        con.execute(f"SET memory_limit = {_s(str(limit))}")
    temp = cfg.get("duckdb_temp_dir") or str(temp_dir)
    Path(temp).mkdir(parents=True, exist_ok=True)
    con.execute(f"SET temp_directory = {_s(str(temp))}")
    con.execute("SET preserve_insertion_order = false")


def _may_be_bad(col: Column, meta: pq.FileMetaData, index: int, t: pa.DataType) -> bool:
    """False only when the row-group statistics prove no value of this column can fail its check."""
    if col.kind in ("int", "count") and pa.types.is_uint64(_plain(t)):
        return True
    for rg in range(meta.num_row_groups):
        stats = meta.row_group(rg).column(index).statistics
        if stats is None or not stats.has_null_count:
            return True
        if col.required and stats.null_count > 0:
            return True
        if stats.null_count == meta.row_group(rg).num_rows:
            continue
        if col.kind == "enum":
            return True
        needs_min = (col.kind in ("string",) and not col.allow_empty) or col.kind == "count"
        if needs_min:
            if not stats.has_min_max:
                return True
            low = stats.min
            if col.kind == "count" and low < 0:
                return True
            if col.kind == "string" and low in ("", b""):
                return True
    return False


class DirectCheck:
    """Checks the Parquet exchange files of one log directory where they lie."""

    def __init__(
        self,
        sources: Sequence[Source],
        problems: ProblemCollector,
        con: duckdb.DuckDBPyConnection | None = None,
    ) -> None:
        self.sources = list(sources)
        self.problems = problems
        self.con = con or connect()
        self.cap = problems.cap
        self.castable = True
        self.extras: dict[str, pa.Field] = {}
        self.schemas: list[pa.Schema] = []

    def _add_rows(self, label: str, column: str | None, kind: str, sql: str, total: int) -> None:
        got = self.con.sql(f"{sql} LIMIT {self.cap}").to_arrow_table()
        self.problems.add_counted(label, column, kind, got.column(0), got.column(1), total)

    def _scan(self, path: Path) -> str:
        return f"read_parquet({_s(str(path))}, file_row_number = true)"

    def check_file(self, index: int, source: Source) -> dict[str, str]:
        """Per-file checks; returns contract column -> category of the columns that hold values."""
        label = source.label
        if source.path.stat().st_size == 0:
            self.problems.add(Problem(label, None, None, EMPTY_FILE))
            return {}
        try:
            pf = pq.ParquetFile(source.path)
        except (pa.ArrowInvalid, OSError) as exc:
            self.problems.add(Problem(label, None, None, f"not a readable Parquet file: {exc}"))
            return {}
        schema = pf.schema_arrow
        self.schemas.append(schema)
        meta = pf.metadata
        if meta.num_rows == 0:
            # An empty part beside others is fine; a log with no exchanges at all is not.
            if all(
                pq.ParquetFile(s.path).metadata.num_rows == 0
                for s in self.sources
                if s.path.stat().st_size
            ):
                self.problems.add(Problem(label, None, None, NO_ROWS))
            return {}
        names = {c.name for c in EXCHANGE_COLUMNS}
        for f in schema:
            if f.name in names or f.name in ("row_no", ROW_NO, SOURCE):
                if f.name in ("row_no", ROW_NO, SOURCE):
                    self.castable = False
                continue
            seen = self.extras.setdefault(f.name, f)
            if seen.type != f.type:
                self.castable = False
        leaves = {meta.schema.column(i).path: i for i in range(meta.num_columns)}
        categories: dict[str, str] = {}
        checks: list[tuple[int, Column, str]] = []
        for i, col in enumerate(EXCHANGE_COLUMNS):
            if col.name not in schema.names:
                if col.required:
                    self.problems.add(Problem(label, None, col.name, MISSING_COLUMN), kind="type")
                continue
            t = schema.field(col.name).type
            cat = value_category(t)
            if not accepts(col, cat, "typed"):
                self.problems.add(
                    Problem(
                        label,
                        None,
                        col.name,
                        f"wrong type: expected {_describe(col)}, found {t}",
                    ),
                    kind="type",
                )
                continue
            if not _castable(col, t):
                self.castable = False
            categories[col.name] = cat
            leaf = leaves.get(col.name)
            if leaf is None or _may_be_bad(col, meta, leaf, t):
                checks.append((i, col, cat))
        sub_ms = None
        ts_type = schema.field("ts").type if "ts" in categories else None
        if ts_type is not None and pa.types.is_timestamp(ts_type) and ts_type.unit in ("us", "ns"):
            per = "epoch_us(ts) % 1000" if ts_type.unit == "us" else "epoch_ns(ts) % 1000000"
            sub_ms = f"count(*) FILTER (WHERE {per} <> 0)"
        if checks or sub_ms:
            self._value_checks(label, source.path, checks, sub_ms, meta.num_rows)
        return categories

    def _value_checks(
        self,
        label: str,
        path: Path,
        checks: list[tuple[int, Column, str]],
        sub_ms: str | None,
        rows: int,
    ) -> None:
        errs = []
        for i, col, cat in checks:
            _, err = typed_checks(col, _ident(col.name), cat, "typed")
            errs.append(f"{err} AS e{i}")
        aggs = [f"count(e{i})" for i, _, _ in checks]
        aggs += [f"count(*) FILTER (WHERE {_ident(c.name)} IS NULL)" for _, c, _ in checks]
        aggs.append(sub_ms or "0")
        cols = [_ident(c.name) for _, c, _ in checks] + (["ts"] if sub_ms else [])
        inner = (
            f"SELECT {', '.join(['file_row_number + 1 AS row_no', *cols, *errs])} "
            f"FROM {self._scan(path)}"
        )
        got = self.con.sql(f"SELECT {', '.join(aggs)} FROM ({inner})").fetchone()
        assert got is not None
        n = len(checks)
        if got[-1]:
            self.castable = False  # sub-millisecond timestamps: staged, truncated as ever
        for k, (i, col, _) in enumerate(checks):
            bad, missing = int(got[k]), int(got[n + k])
            if not bad:
                continue
            if col.required and missing == rows and bad == rows:
                self.problems.add(Problem(label, None, col.name, MISSING_COLUMN))
                continue
            self._add_rows(
                label,
                col.name,
                "value",
                f"SELECT row_no, e{i} FROM ({inner}) WHERE e{i} IS NOT NULL ORDER BY row_no",
                bad,
            )

    def cross_checks(self, categories: list[dict[str, str]], accounts: pa.Table | None) -> None:
        """Client IPs (each distinct address parsed once), duplicate request ids, unknown accounts."""
        with_ip = [
            (s, i)
            for i, (s, c) in enumerate(zip(self.sources, categories, strict=True))
            if c.get("client_ip") == "string"
        ]
        if with_ip:
            self._ips(with_ip)
        with_id = [
            (s, i)
            for i, (s, c) in enumerate(zip(self.sources, categories, strict=True))
            if c.get("request_id") == "string"
        ]
        if with_id:
            self._duplicates(with_id)
        with_acc = [
            (s, i)
            for i, (s, c) in enumerate(zip(self.sources, categories, strict=True))
            if c.get("account_id") == "string"
        ]
        if with_acc and accounts is not None:
            self._accounts(with_acc, accounts)

    def _files(self, picked: list[tuple[Source, int]], columns: str) -> str:
        parts = [
            f"SELECT {i} AS src, file_row_number + 1 AS row_no, {columns} FROM {self._scan(s.path)}"
            for s, i in picked
        ]
        return " UNION ALL ".join(parts)

    def _ips(self, picked: list[tuple[Source, int]]) -> None:
        files = "[" + ", ".join(_s(str(s.path)) for s, _ in picked) + "]"
        uniq = (
            self.con.sql(
                f"SELECT DISTINCT CAST(client_ip AS VARCHAR) AS ip FROM read_parquet({files}, union_by_name = true) "
                "WHERE client_ip IS NOT NULL"
            )
            .to_arrow_table()
            .column("ip")
            .combine_chunks()
        )
        valid = parse_ips(uniq).valid
        if valid.all():
            return
        self.con.register("bad_ips", pa.table({"ip": uniq.filter(pa.array(~valid))}))
        try:
            for source, _ in picked:
                inner = (
                    f"SELECT file_row_number + 1 AS row_no, CAST(client_ip AS VARCHAR) AS ip "
                    f"FROM {self._scan(source.path)} WHERE CAST(client_ip AS VARCHAR) IN (SELECT ip FROM bad_ips)"
                )
                total = self.con.sql(f"SELECT count(*) FROM ({inner})").fetchone()
                if not total or not total[0]:
                    continue
                self._add_rows(
                    source.label,
                    "client_ip",
                    "ip",
                    f"SELECT row_no, 'not an IPv4 or IPv6 address: \"' || left(ip, 80) || '\"' "
                    f"FROM ({inner}) ORDER BY row_no",
                    int(total[0]),
                )
        finally:
            self.con.unregister("bad_ips")

    def _duplicates(self, picked: list[tuple[Source, int]]) -> None:
        files = "[" + ", ".join(_s(str(s.path)) for s, _ in picked) + "]"
        # Group 64-bit hashes, not the strings: a fraction of the memory, and every
        # candidate is then confirmed on the exact value below.
        self.con.execute(
            f"""CREATE OR REPLACE TEMP TABLE dup_h AS
            SELECT hash(CAST(request_id AS VARCHAR)) AS h FROM read_parquet({files}, union_by_name = true)
            WHERE request_id IS NOT NULL GROUP BY 1 HAVING count(*) > 1"""
        )
        counted = self.con.sql("SELECT count(*) FROM dup_h").fetchone()
        if not counted or not counted[0]:
            return
        labels = pa.table(
            {
                "src": pa.array([i for _, i in picked], pa.int32()),
                "file": [s.label for s, _ in picked],
            }
        )
        self.con.register("files", labels)
        rows = self._files(picked, "CAST(request_id AS VARCHAR) AS request_id")
        dups = self.con.sql(
            f"""
            WITH c AS (SELECT * FROM ({rows}) WHERE hash(request_id) IN (SELECT h FROM dup_h)),
            d AS (
              SELECT *, first_value(src) OVER w AS s0, first_value(row_no) OVER w AS r0,
                     row_number() OVER w AS k
              FROM c WINDOW w AS (PARTITION BY request_id ORDER BY src, row_no)
            )
            SELECT f.file, d.row_no AS r,
                   'duplicate request_id ' || CAST(to_json(d.request_id) AS VARCHAR) || ', first seen at '
                   || CASE WHEN d.s0 = d.src THEN '' ELSE f0.file || ' ' END || 'row ' || CAST(d.r0 AS VARCHAR) AS msg
            FROM d JOIN files f ON f.src = d.src JOIN files f0 ON f0.src = d.s0
            WHERE d.k > 1 ORDER BY d.src, d.row_no
            """
        ).to_arrow_table()
        self.con.unregister("files")
        for label in sorted(set(dups.column("file").to_pylist())):
            part = dups.filter(pc.equal(dups.column("file"), label))
            self.problems.add_rows(
                label, "request_id", "duplicate", part.column("r"), part.column("msg")
            )

    def _accounts(self, picked: list[tuple[Source, int]], accounts: pa.Table) -> None:
        files = "[" + ", ".join(_s(str(s.path)) for s, _ in picked) + "]"
        self.con.register("acc", accounts.select(["account_id"]))
        try:
            self.con.execute(
                f"""CREATE OR REPLACE TEMP TABLE ghost AS
                SELECT DISTINCT CAST(account_id AS VARCHAR) AS a FROM read_parquet({files}, union_by_name = true)
                WHERE account_id IS NOT NULL
                  AND CAST(account_id AS VARCHAR) NOT IN (SELECT account_id FROM acc WHERE account_id IS NOT NULL)"""
            )
        finally:
            self.con.unregister("acc")
        for source, _ in picked:
            inner = (
                f"SELECT file_row_number + 1 AS row_no, CAST(account_id AS VARCHAR) AS a "
                f"FROM {self._scan(source.path)} WHERE CAST(account_id AS VARCHAR) IN (SELECT a FROM ghost)"
            )
            total = self.con.sql(f"SELECT count(*) FROM ({inner})").fetchone()
            if not total or not total[0]:
                continue
            self._add_rows(
                source.label,
                "account_id",
                "unknown account",
                f"SELECT row_no, 'account ' || CAST(to_json(a) AS VARCHAR) || ' is not in the accounts file' "
                f"FROM ({inner}) ORDER BY row_no",
                int(total[0]),
            )

    def public_schema(self) -> pa.Schema:
        """Canonical columns in contract order, then the provider's extras in first-seen order."""
        return pa.schema(list(EXCHANGE_SCHEMA) + list(self.extras.values()))


def check_in_place(
    sources: Sequence[Source],
    accounts: pa.Table | None,
    problems: ProblemCollector,
    cfg: Mapping[str, Any],
    temp_dir: Path,
) -> pa.Schema | None:
    """Check Parquet sources where they lie; the dataset schema to read them with, or None to stage.

    None means the files hold values the dataset cannot present canonically on the fly
    (e.g. epoch-millisecond integers or RFC 3339 strings in ``ts``): they must be staged.
    Problems found are recorded either way.
    """
    con = connect()
    configure(con, cfg, temp_dir)
    check = DirectCheck(sources, problems, con)
    categories = [check.check_file(i, s) for i, s in enumerate(sources)]
    check.cross_checks(categories, accounts)
    if problems or not check.castable:
        return None
    return check.public_schema()
