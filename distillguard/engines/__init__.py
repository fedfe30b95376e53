"""Engine runners: execute the relational stages (Ibis expressions) on an embedded or distributed backend.

``open_engine("embedded" | "spark")`` gives the engine ``pipeline.detect`` threads through the
stages; :func:`account_features` runs the feature stage's own expression on any engine;
:func:`stage_log` brings a log directory named by a URI to local disk for ingest.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Final, Literal

import pyarrow as pa
import pyarrow.dataset as pads

from distillguard.core.engine import Engine
from distillguard.core.errors import ConfigError, InvalidInputError, Problem
from distillguard.core.schema import ACCOUNT_SCHEMA

EngineName = Literal["embedded", "spark"]
ENGINES: Final[tuple[str, ...]] = ("embedded", "spark")


@contextlib.contextmanager
def open_engine(name: str) -> Iterator[Engine]:
    """The named engine, closed on exit (for Spark: a session it started is stopped)."""
    if name == "embedded":
        from distillguard.engines.embedded import EmbeddedEngine

        yield EmbeddedEngine()
    elif name == "spark":
        try:
            from distillguard.engines.spark import spark_engine
        except ImportError as exc:  # pragma: no cover - pyspark is a declared dependency
            raise ConfigError(f"--engine spark needs pyspark: {exc}") from exc
        with spark_engine() as engine:
            yield engine
    else:
        raise ConfigError(f"unknown engine {name!r}: choose one of {', '.join(ENGINES)}")


def scratch_dir(engine: Engine) -> Path | None:
    """Where the signal parts go for ``engine`` (None: keep them in memory, as embedded does)."""
    scratch = getattr(engine, "scratch", None)
    return scratch if isinstance(scratch, Path) else None


def account_features(
    engine: Engine,
    signals: pa.Table | pads.Dataset,
    accounts: pa.Table | None,
    config: Mapping[str, Any],
) -> pa.Table:
    """The per-account feature table: the features stage's Ibis expression, run on ``engine``.

    Same expression and same account columns as ``features.compute_account_features`` (which
    runs it on its own embedded connection), so the two agree row for row.
    """
    from distillguard.features.aggregate import feature_expr

    sig = engine.table("signals", signals)
    acc = None
    if accounts is not None:
        present = [
            c for c in ("account_id", "created_at", "verification") if c in accounts.column_names
        ]
        table = accounts.select(present)
        for name in ("created_at", "verification"):
            if name not in table.column_names:
                field = ACCOUNT_SCHEMA.field(name)
                table = table.append_column(name, pa.nulls(table.num_rows, field.type))
        acc = engine.table("feature_accounts", table)
    return engine.to_arrow(feature_expr(sig, acc, ["account_id"], config))


def is_uri(location: str | Path) -> bool:
    """A ``scheme://`` location other than a plain local path."""
    text = str(location)
    return "://" in text and not text.startswith("file://")


@contextlib.contextmanager
def stage_log(location: str | Path) -> Iterator[Path]:
    """A local log directory for ``location``: itself, or a temporary copy of a URI's directory.

    Ingest validates on the driver's disk, so a remote log (``hdfs://``, ``s3://``, ``gs://``,
    whatever pyarrow's filesystems reach) is copied down first and removed afterwards.
    """
    text = str(location)
    if text.startswith("file://"):
        yield Path(text.removeprefix("file://"))
        return
    if not is_uri(text):
        yield Path(text)
        return
    import pyarrow.fs as pafs

    try:
        fs, root = pafs.FileSystem.from_uri(text)
        info = fs.get_file_info(root)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise InvalidInputError([Problem(text, None, None, f"cannot open: {exc}")]) from exc
    if info.type != pafs.FileType.Directory:
        raise InvalidInputError([Problem(text, None, None, "not a directory")])
    with tempfile.TemporaryDirectory(prefix="distillguard-log-") as tmp:
        local = Path(tmp) / "log"
        pafs.copy_files(
            root, str(local), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem()
        )
        yield local


__all__ = [
    "ENGINES",
    "EngineName",
    "account_features",
    "is_uri",
    "open_engine",
    "scratch_dir",
    "stage_log",
]
