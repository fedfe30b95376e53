"""Readers for the small side tables (accounts, ip_intel, labels) in CSV, JSONL or Parquet."""

from __future__ import annotations

import csv as pycsv
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from distillguard.core.errors import Problem
from distillguard.core.schema import ACCOUNT_SCHEMA, IP_INTEL_SCHEMA, LABELS_SCHEMA
from distillguard.ingest.checker import ROW_NO, Checker, connect
from distillguard.ingest.columns import ACCOUNT_COLUMNS, IP_INTEL_COLUMNS, LABEL_COLUMNS, Column
from distillguard.ingest.ipintel import parse_cidrs
from distillguard.ingest.lines import TruncatedInput, iter_lines
from distillguard.ingest.problems import ProblemCollector

EMPTY_FILE = "file is empty"


def _decode_csv_column(
    file: str, name: str, values: pa.ChunkedArray, problems: ProblemCollector
) -> pa.Array:
    """Binary CSV cells -> strings; cells that are not UTF-8 are reported and become null."""
    arr = values.combine_chunks()
    try:
        text = arr.cast(pa.string())
    except pa.ArrowInvalid:
        con = connect()
        con.register("cells", pa.table({"b": arr}))
        text = (
            con.sql("SELECT try(decode(b)) AS s FROM cells")
            .to_arrow_table()
            .column("s")
            .combine_chunks()
        )
        bad = pc.and_(pc.is_valid(arr), pc.is_null(text))
        rows = pc.filter(pa.array(range(1, len(arr) + 1), pa.int64()), bad)
        problems.add_rows(file, name, "utf8", rows, pa.array(["not valid UTF-8"] * len(rows)))
    # An empty CSV cell means "no value".
    return pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text)


def read_csv_checked(path: Path, file: str, checker: Checker) -> pa.Table | None:
    """Read a small CSV (header + rows) through ``checker``; None when it cannot be parsed at all."""
    problems = checker.problems
    with path.open("rb") as fh:
        head = fh.readline()
    if not head.strip():
        problems.add(Problem(file, None, None, EMPTY_FILE))
        return None
    try:
        names = next(pycsv.reader([head.decode("utf-8").rstrip("\r\n")]))
    except UnicodeDecodeError:
        problems.add(Problem(file, None, None, "header is not valid UTF-8"))
        return None

    def on_invalid(row: pacsv.InvalidRow) -> str:
        where = row.number - 1 if row.number is not None else None
        problems.add(
            Problem(
                file,
                where,
                None,
                f"expected {row.expected_columns} fields, found {row.actual_columns}",
            ),
            kind="fields",
        )
        return "skip"

    try:
        raw = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(use_threads=False),
            parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid),
            convert_options=pacsv.ConvertOptions(column_types=dict.fromkeys(names, pa.binary())),
        )
    except (pa.ArrowInvalid, OSError) as exc:
        problems.add(Problem(file, None, None, f"not a readable CSV file: {exc}"))
        return None
    cols = {
        name: _decode_csv_column(file, name, raw.column(name), problems)
        for name in raw.column_names
    }
    table = pa.table(cols) if cols else pa.table({})
    return checker.check_typed(file, table, "text", first_row=1)


def read_checked(path: Path, checker: Checker) -> pa.Table | None:
    """Read a CSV / JSONL / Parquet side table through ``checker`` (typed rows + ``__dg_row``)."""
    file = path.name
    problems = checker.problems
    if path.stat().st_size == 0:
        problems.add(Problem(file, None, None, EMPTY_FILE))
        return None
    if file.endswith(".csv"):
        return read_csv_checked(path, file, checker)
    if file.endswith(".parquet"):
        try:
            table = pq.read_table(path)
        except (pa.ArrowInvalid, OSError) as exc:
            problems.add(Problem(file, None, None, f"not a readable Parquet file: {exc}"))
            return None
        return checker.check_typed(file, table, "typed", first_row=1)
    parts = []
    try:
        for batch in iter_lines(path):
            parts.append(checker.check_json(file, batch.table()))
    except TruncatedInput as exc:
        problems.add(Problem(file, None, None, exc.reason))
    if not parts:
        problems.add(Problem(file, None, None, EMPTY_FILE))
        return None
    return pa.concat_tables(parts, promote_options="permissive")


def report_duplicates(table: pa.Table, key: str, file: str, problems: ProblemCollector) -> None:
    """Every row whose ``key`` repeats an earlier row's is a problem naming that earlier row."""
    con = connect()
    con.register("t", table.select([ROW_NO, key]))
    dup = con.sql(
        f"""
        SELECT {ROW_NO} AS r, 'duplicate {key} ' || CAST(to_json("{key}") AS VARCHAR)
               || ', first seen at row ' || CAST(first_row AS VARCHAR) AS msg
        FROM (SELECT *, min({ROW_NO}) OVER (PARTITION BY "{key}") AS first_row FROM t WHERE "{key}" IS NOT NULL)
        WHERE {ROW_NO} <> first_row ORDER BY {ROW_NO}
        """
    ).to_arrow_table()
    problems.add_rows(file, key, "duplicate", dup.column("r"), dup.column("msg"))


def _canonical(table: pa.Table | None, schema: pa.Schema) -> pa.Table:
    if table is None:
        return schema.empty_table()
    return pa.table([table.column(f.name).cast(f.type) for f in schema], schema=schema)


def read_accounts(path: Path, problems: ProblemCollector) -> pa.Table:
    """``accounts.{parquet,jsonl,csv}`` -> ACCOUNT_SCHEMA (extra columns kept after the contract's)."""
    checker = Checker(ACCOUNT_COLUMNS, problems, ip_columns=("signup_ip",))
    table = read_checked(path, checker)
    checker.finish_file(path.name)
    if table is None:
        return ACCOUNT_SCHEMA.empty_table()
    report_duplicates(table, "account_id", path.name, problems)
    return _with_extras(table, ACCOUNT_SCHEMA, ACCOUNT_COLUMNS)


def _with_extras(table: pa.Table, schema: pa.Schema, columns: Sequence[Column]) -> pa.Table:
    base = _canonical(table, schema)
    known = {c.name for c in columns} | {ROW_NO}
    for name in table.column_names:
        if name not in known:
            base = base.append_column(name, table.column(name))
    return base


def read_ip_intel(path: Path, problems: ProblemCollector) -> pa.Table:
    """``ip_intel.csv`` -> IP_INTEL_SCHEMA, with every bad CIDR and repeated network reported."""
    checker = Checker(IP_INTEL_COLUMNS, problems)
    table = read_checked(path, checker)
    checker.finish_file(path.name)
    if table is None:
        return IP_INTEL_SCHEMA.empty_table()
    cidr = table.column("cidr")
    parsed = parse_cidrs(cidr)
    present = pc.is_valid(cidr)
    problems.add_where(
        path.name,
        "cidr",
        "cidr",
        table.column(ROW_NO),
        pc.if_else(present, parsed.error, pa.scalar(None, pa.string())),
    )
    report_duplicates(table, "cidr", path.name, problems)
    return _canonical(table, IP_INTEL_SCHEMA)


def read_labels_into(path: Path, problems: ProblemCollector) -> pa.Table:
    """``labels.csv`` -> LABELS_SCHEMA; problems go to ``problems``."""
    checker = Checker(LABEL_COLUMNS, problems)
    table = read_checked(path, checker)
    checker.finish_file(path.name)
    if table is None:
        return LABELS_SCHEMA.empty_table()
    needs = pc.and_(pc.equal(table.column("label"), "attack"), pc.is_null(table.column("campaign")))
    needs = pc.fill_null(needs, False)
    rows = pc.filter(table.column(ROW_NO), needs)
    problems.add_rows(
        path.name,
        "campaign",
        "campaign",
        rows,
        pa.array(["an attack label needs a campaign"] * len(rows)),
    )
    report_duplicates(table, "account_id", path.name, problems)
    return _canonical(table, LABELS_SCHEMA)


def read_labels(path: str | Path, max_problems_per_kind: int = 20) -> pa.Table:
    """Read and check ``labels.csv``: ``label`` in {benign, attack}; an attack row needs a campaign.

    Raises :class:`~distillguard.core.errors.InvalidInputError` listing every problem.
    """
    problems = ProblemCollector(max_problems_per_kind)
    table = read_labels_into(Path(path), problems)
    problems.raise_if_any()
    return table
