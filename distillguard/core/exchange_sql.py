"""DuckDB over a log's exchanges: its own Parquet reader where the files allow, else the Arrow data."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeAlias

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs

ExchangeSource: TypeAlias = pa.Table | pads.Dataset


def parquet_files(exchanges: ExchangeSource) -> list[str] | None:
    """The local Parquet files behind a dataset, when DuckDB can read them itself."""
    if (
        isinstance(exchanges, pads.FileSystemDataset)
        and isinstance(exchanges.format, pads.ParquetFileFormat)
        and isinstance(exchanges.filesystem, pafs.LocalFileSystem)
        and exchanges.files
    ):
        return list(exchanges.files)
    return None


def read_parquet_sql(files: Sequence[str]) -> str:
    """A ``read_parquet`` call over ``files``, quoted for SQL."""
    listing = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
    return f"read_parquet([{listing}])"


def sql_frame(con: duckdb.DuckDBPyConnection, sql: str) -> pl.DataFrame:
    """The result of ``sql`` as a polars frame."""
    frame = pl.from_arrow(con.execute(sql).to_arrow_table())
    assert isinstance(frame, pl.DataFrame)
    return frame
