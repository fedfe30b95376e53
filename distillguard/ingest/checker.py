"""Runs the contract checks over one Arrow batch in DuckDB and records every problem with its row."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from distillguard.core.duckdb_backend import connect_raw
from distillguard.core.errors import Problem
from distillguard.ingest.columns import (
    MISSING,
    MISSING_COLUMN,
    Column,
    Mode,
    accepts,
    json_fast_select,
    json_select,
    typed_select,
    value_category,
)
from distillguard.ingest.ipintel import parse_ips
from distillguard.ingest.problems import ProblemCollector

ROW_NO = "__dg_row"
#: Distinct valid addresses remembered between batches (bounds memory on huge address spaces).
GOOD_IP_CACHE = 2_000_000
SOURCE = "__dg_src"


def connect() -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB whose session time zone is UTC (timestamps are normalised to it)."""
    con = connect_raw()
    con.execute("SET TimeZone = 'UTC'")
    return con


def _describe(column: Column) -> str:
    return {
        "string": "strings",
        "enum": "strings",
        "int": "integers",
        "count": "integers",
        "bool": "booleans",
        "ts": "timestamps, RFC 3339 strings or epoch milliseconds",
    }[column.kind]


@dataclass
class Checker:
    """Checks batches of one table kind (exchanges, accounts, ...) and tracks per-file row counts."""

    columns: Sequence[Column]
    problems: ProblemCollector
    ip_columns: Sequence[str] = ()
    con: duckdb.DuckDBPyConnection = field(default_factory=connect)
    rows: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    missing: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    good_ips: dict[str, pa.Array] = field(default_factory=dict)

    def check_json(self, file: str, src: pa.Table) -> pa.Table:
        """``src(row_no, line)`` of raw JSON lines -> typed table (``__dg_row`` + columns + extras).

        A chunk is first read by the one-parse fast path; only a chunk where that finds
        anything wrong (or unsure) goes through the exact checks that name every problem.
        """
        fast = self._check_json_fast(file, src)
        if fast is not None:
            return fast
        self.con.register("src", src)
        try:
            res = self.con.sql(json_select(self.columns)).to_arrow_table()
            unknown = pc.unique(pc.list_flatten(res.column("unknown_keys"))).drop_null().to_pylist()
            extras = sorted(k for k in unknown if k not in (ROW_NO, SOURCE))
            if extras:
                res = self.con.sql(json_select(self.columns, extras)).to_arrow_table()
        finally:
            self.con.unregister("src")
        row_no = res.column("row_no")
        self.problems.add_where(file, None, "row", row_no, res.column("e_row"))
        return self._finish(file, res, extras)

    def _check_json_fast(self, file: str, src: pa.Table) -> pa.Table | None:
        """The typed table when every row of the chunk is clean; None to take the exact path."""
        lines = src.column("line").combine_chunks()
        if lines.null_count or not (
            pa.types.is_large_binary(lines.type) or pa.types.is_binary(lines.type)
        ):
            return None
        kind = pa.large_string() if pa.types.is_large_binary(lines.type) else pa.string()
        text = lines.view(kind)
        try:
            text.validate(full=True)  # UTF-8, checked by Arrow without copying
        except pa.ArrowInvalid:
            return None
        fast = pa.table({"row_no": src.column("row_no"), "s": text})
        self.con.register("src", fast)
        try:
            res = self.con.sql(json_fast_select(self.columns)).to_arrow_table()
            extras: list[str] = []
            if not pc.all(res.column("known")).as_py():
                keys = self.con.sql(
                    "SELECT DISTINCT unnest(json_keys(s)) AS k FROM src"
                ).to_arrow_table()
                names = {c.name for c in self.columns} | {ROW_NO, SOURCE}
                extras = sorted(k for k in keys.column("k").to_pylist() if k not in names)
                if not extras:  # hidden column names in the input: let the exact path decide
                    return None
                res = self.con.sql(json_fast_select(self.columns, extras)).to_arrow_table()
        except duckdb.Error:
            return None
        finally:
            self.con.unregister("src")
        if res.num_rows == 0 or not pc.all(res.column("clean")).as_py():
            return None
        return self._finish(file, res, extras)

    def check_typed(self, file: str, src: pa.Table, mode: Mode, first_row: int) -> pa.Table:
        """A typed (Parquet) or all-string (CSV) batch -> typed table; rows numbered from ``first_row``."""
        n = src.num_rows
        src = src.append_column(
            "row_no", pa.array(np.arange(first_row, first_row + n, dtype=np.int64))
        )
        names = {c.name for c in self.columns}
        extras = [
            c for c in src.column_names if c not in names and c not in ("row_no", ROW_NO, SOURCE)
        ]
        categories: dict[str, str] = {}
        for col in self.columns:
            if col.name not in src.column_names:
                categories[col.name] = "skip" if col.required else "null"
                if col.required and first_row == 1:
                    self.problems.add(Problem(file, None, col.name, MISSING_COLUMN), kind="type")
                continue
            cat = value_category(src.schema.field(col.name).type)
            if accepts(col, cat, mode):
                categories[col.name] = cat
            else:
                categories[col.name] = "skip"
                found = src.schema.field(col.name).type
                if first_row == 1:  # once per file, not once per batch
                    self.problems.add(
                        Problem(
                            file,
                            None,
                            col.name,
                            f"wrong type: expected {_describe(col)}, found {found}",
                        ),
                        kind="type",
                    )
        self.con.register("src", src)
        try:
            res = self.con.sql(
                typed_select(self.columns, categories, mode, extras)
            ).to_arrow_table()
        finally:
            self.con.unregister("src")
        return self._finish(file, res, extras)

    def _finish(self, file: str, res: pa.Table, extras: Sequence[str]) -> pa.Table:
        row_no = res.column("row_no")
        self.rows[file] += res.num_rows
        out: dict[str, pa.Array | pa.ChunkedArray] = {ROW_NO: row_no}
        checked = "e0" in res.column_names
        for i, col in enumerate(self.columns):
            if checked:
                err = res.column(f"e{i}")
                if col.required:
                    self.missing[(file, col.name)] += pc.sum(pc.equal(err, MISSING)).as_py() or 0
                self.problems.add_where(file, col.name, "value", row_no, err)
            value = res.column(f"v{i}")
            out[col.name] = value.cast(col.arrow_type) if value.type != col.arrow_type else value
        for name in self.ip_columns:
            self._check_ips(file, name, row_no, out[name])
        for k, name in enumerate(extras):
            out[name] = res.column(f"x{k}")
        return pa.table(out)

    def _check_ips(
        self, file: str, name: str, row_no: pa.ChunkedArray, values: pa.Array | pa.ChunkedArray
    ) -> None:
        # Addresses repeat across rows and batches: each distinct one is parsed once per file set.
        uniq = pc.unique(values).drop_null()
        good = self.good_ips.get(name)
        if good is not None and len(uniq):
            uniq = uniq.filter(pc.invert(pc.is_in(uniq, value_set=good)))
        if len(uniq) == 0:
            return
        valid = parse_ips(uniq).valid
        fresh = uniq.filter(pa.array(valid))
        if good is None or len(good) + len(fresh) > GOOD_IP_CACHE:
            good = fresh
        else:
            good = pa.concat_arrays([good, fresh])
        self.good_ips[name] = good
        if valid.all():
            return
        bad = pc.fill_null(pc.is_in(values, value_set=uniq.filter(pa.array(~valid))), False)
        shown = pc.utf8_slice_codeunits(pc.filter(values, bad), 0, 80)
        msgs = pc.binary_join_element_wise('not an IPv4 or IPv6 address: "', shown, '"', "")
        self.problems.add_rows(file, name, "ip", pc.filter(row_no, bad), msgs)

    def finish_file(self, file: str) -> None:
        """After the last batch of a file: fold "missing on every row" into one column problem."""
        total = self.rows.get(file, 0)
        if total == 0:
            return
        for col in self.columns:
            if not col.required:
                continue
            missing = self.missing.get((file, col.name), 0)
            if missing == total and self.problems.count(file, col.name, "value") == total:
                self.problems.replace_kind(
                    file, col.name, "value", Problem(file, None, col.name, MISSING_COLUMN)
                )
