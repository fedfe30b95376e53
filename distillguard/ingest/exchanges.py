"""Stream every exchange source of a log directory through the checks into canonical Parquet parts."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from distillguard.core.errors import Problem
from distillguard.ingest.checker import SOURCE, Checker
from distillguard.ingest.columns import EXCHANGE_COLUMNS
from distillguard.ingest.lines import LineBatch, TruncatedInput, iter_lines
from distillguard.ingest.otel import spans_to_lines
from distillguard.ingest.problems import ProblemCollector
from distillguard.ingest.tables import EMPTY_FILE

Form = Literal["parquet", "jsonl", "otel"]

#: Accepted exchange files, in the order they are looked for.
EXCHANGE_FILES: Final = ("exchanges.parquet", "exchanges", "exchanges.jsonl", "exchanges.jsonl.gz")
OTEL_FILES: Final = ("otel_spans.json", "otel_spans.jsonl", "otel_spans.jsonl.gz")
NO_ROWS: Final = "file holds no exchanges"


@dataclass(frozen=True)
class Source:
    """One input file of exchanges; ``label`` is how problems name it (relative to the log dir)."""

    label: str
    path: Path
    form: Form


def find_sources(logdir: Path, problems: ProblemCollector) -> list[Source]:
    """The exchange inputs present in ``logdir``; ambiguity or absence is a problem."""
    here = [name for name in EXCHANGE_FILES if (logdir / name).exists()]
    otel = [name for name in OTEL_FILES if (logdir / name).is_file()]
    if len(here) > 1:
        problems.add(
            Problem(
                ", ".join(here), None, None, "more than one exchanges file; keep exactly one form"
            )
        )
        return []
    if not here and not otel:
        problems.add(
            Problem(
                str(logdir),
                None,
                None,
                "no exchanges: expected one of "
                + ", ".join([*EXCHANGE_FILES[:1], "exchanges/", *EXCHANGE_FILES[2:], *OTEL_FILES]),
            )
        )
        return []
    sources: list[Source] = []
    for name in here:
        path = logdir / name
        if path.is_dir():
            parts = sorted(p for p in path.rglob("*.parquet") if p.is_file())
            if not parts:
                problems.add(Problem(f"{name}/", None, None, "folder holds no .parquet parts"))
            sources += [Source(str(p.relative_to(logdir)), p, "parquet") for p in parts]
        else:
            sources.append(Source(name, path, "parquet" if name.endswith(".parquet") else "jsonl"))
    sources += [Source(name, logdir / name, "otel") for name in otel]
    return sources


def _otel_batches(checker: Checker, source: Source, chunk_bytes: int) -> Iterator[LineBatch]:
    if source.path.name.endswith(".json"):
        # One OTLP export document: the whole file is a single "line".
        data = source.path.read_bytes()
        batches: Iterator[LineBatch] = iter(
            [LineBatch(pa.array([1], pa.int64()), pa.array([data], pa.large_binary()))]
        )
    else:
        batches = iter_lines(source.path, chunk_bytes)
    offset = 0
    for batch in batches:
        mapped = spans_to_lines(checker.con, batch.table())
        errs = mapped.filter(pc.is_valid(mapped.column("e_doc")))
        checker.problems.add_rows(
            source.label, None, "row", errs.column("row_no"), errs.column("e_doc")
        )
        spans = mapped.filter(pc.is_null(mapped.column("e_doc")))
        rows = pc.add(spans.column("row_no").cast(pa.int64()), offset)
        offset += spans.num_rows
        yield LineBatch(
            rows.combine_chunks(), spans.column("line").combine_chunks().cast(pa.large_binary())
        )


def _batches(
    checker: Checker, source: Source, batch_rows: int, chunk_bytes: int
) -> Iterator[pa.Table]:
    """Checked, typed batches of one source (``__dg_row`` + contract columns + extras)."""
    if source.form == "parquet":
        try:
            pf = pq.ParquetFile(source.path)
            first = 1
            for rb in pf.iter_batches(batch_size=batch_rows):
                table = pa.Table.from_batches([rb])
                yield checker.check_typed(source.label, table, "typed", first_row=first)
                first += table.num_rows
        except (pa.ArrowInvalid, OSError) as exc:
            checker.problems.add(
                Problem(source.label, None, None, f"not a readable Parquet file: {exc}")
            )
        return
    lines = (
        _otel_batches(checker, source, chunk_bytes)
        if source.form == "otel"
        else iter_lines(source.path, chunk_bytes)
    )
    for batch in lines:
        yield checker.check_json(source.label, batch.table())


def stage_exchanges(
    sources: list[Source],
    staging: Path,
    batch_rows: int,
    problems: ProblemCollector,
    chunk_bytes: int = 64 * 1024 * 1024,
) -> dict[str, int]:
    """Check every source batch by batch, writing canonical Parquet parts into ``staging``.

    Parts carry two hidden columns, ``__dg_src`` (index into ``sources``) and ``__dg_row``
    (row in that source), so later checks can name rows. Returns rows read per source.
    """
    checker = Checker(EXCHANGE_COLUMNS, problems, ip_columns=("client_ip",))
    staging.mkdir(parents=True, exist_ok=True)
    part = 0
    for index, source in enumerate(sources):
        if source.path.stat().st_size == 0:
            problems.add(Problem(source.label, None, None, EMPTY_FILE))
            continue
        try:
            for table in _batches(checker, source, batch_rows, chunk_bytes):
                if table.num_rows == 0:
                    continue
                table = table.append_column(
                    SOURCE, pa.array(np.full(table.num_rows, index, dtype=np.int32))
                )
                pq.write_table(
                    table,
                    staging / f"part-{part:06d}.parquet",
                    compression="zstd",
                    compression_level=1,
                )
                part += 1
        except TruncatedInput as exc:
            problems.add(Problem(source.label, None, None, exc.reason))
        checker.finish_file(source.label)
    # An empty part beside others is fine; a log with no exchanges at all is not.
    if sum(checker.rows.values()) == 0 or any(s.form != "parquet" for s in sources):
        for source in sources:
            if (
                checker.rows.get(source.label, 0) == 0
                and not problems.count(source.label, None, "row")
                and source.path.stat().st_size
            ):
                problems.add(Problem(source.label, None, None, NO_ROWS))
    return {s.label: checker.rows.get(s.label, 0) for s in sources}
