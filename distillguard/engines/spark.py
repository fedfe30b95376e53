"""The Spark engine: the same Ibis expressions as the embedded engine, executed by Apache Spark SQL.

Inputs reach Spark as Parquet: a local Parquet dataset (the signal parts the batch path writes)
is read in place when Spark runs locally; anything else (an in-memory Arrow table, or any input
when executors run elsewhere) is first written under the engine's *stage* directory, which must
be a URI every executor can read on a real cluster (``spark.distillguard.stageDir``, e.g.
``hdfs:///tmp/distillguard`` or ``s3a://bucket/tmp``). Results come back through Arrow
(``DataFrame.toArrow``), never through pandas, and are cast to the types the embedded engine
returns, so every later stage sees the same tables whichever engine ran.

Spark has no unsigned integers: a ``uint64`` column (the template ids) is read by Spark as
``decimal(20,0)``, which keeps every value and its order; results carry it back as ``uint64``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import ibis
import ibis.expr.datatypes as dt
import ibis.expr.types as ir
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from distillguard.core.engine import trace_call
from distillguard.core.errors import ConfigError

#: Spark settings of the local session the engine starts when none is running. A cluster run
#: (spark-submit) brings its own session, and these are not applied to it.
LOCAL_CONF: Final[Mapping[str, str]] = {
    "spark.sql.session.timeZone": "UTC",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.driver.bindAddress": "127.0.0.1",
    "spark.driver.host": "127.0.0.1",
    # A few partitions per core: the default 200 costs seconds of task overhead on small shuffles.
    "spark.sql.shuffle.partitions": "8",
    "spark.sql.adaptive.enabled": "true",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.driver.memory": "4g",
    "spark.sql.parquet.int96RebaseModeInRead": "CORRECTED",
}
#: Environment variable of extra settings for the local session, ``key=value`` pairs separated by
#: whitespace or commas (e.g. ``spark.driver.memory=12g spark.sql.shuffle.partitions=64``).
CONF_ENV: Final = "DISTILLGUARD_SPARK_CONF"
#: Spark setting naming where inputs are staged for executors (a URI on a cluster).
STAGE_DIR_CONF: Final = "spark.distillguard.stageDir"
_UNSIGNED_AS: Final = pa.decimal128(20, 0)


def _compiler() -> Any:
    """Ibis' Spark compiler with DuckDB's ``epoch_seconds``: fractional seconds, not truncated.

    The stages were written against the embedded engine, where ``EPOCH(ts)`` keeps the
    milliseconds; Spark's ``unix_timestamp`` drops them, which would move inter-arrival
    gaps and account ages. Both engines must read the same instant the same way.
    """
    from ibis.backends.sql.compilers.pyspark import PySparkCompiler

    class _Compiler(PySparkCompiler):  # type: ignore[misc]
        def visit_ExtractEpochSeconds(self, op: Any, *, arg: Any) -> Any:
            return self.f.unix_micros(self.cast(arg, dt.timestamp)) / 1_000_000.0

    return _Compiler()


def _is_local_master(master: str) -> bool:
    return master.startswith("local")


def _under_spark_submit() -> bool:
    """This driver was started by spark-submit (PySpark then joins the JVM spark-submit runs)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def conf_from_env(text: str | None) -> dict[str, str]:
    """Settings from :data:`CONF_ENV`'s value; a pair without ``=`` or with an empty key is an error."""
    conf: dict[str, str] = {}
    for pair in (text or "").replace(",", " ").split():
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{CONF_ENV}: {pair!r} is not key=value")
        conf[key.strip()] = value
    return conf


def _local_session(master: str, conf: Mapping[str, str]) -> Any:
    from pyspark.sql import SparkSession

    # Spark binds the driver to the machine's external address unless told otherwise.
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    builder = SparkSession.builder.master(master).appName("distillguard")
    for key, value in {**LOCAL_CONF, **conf}.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    # Spark's INFO/WARN lines (plan truncation, native-hadoop) would bury the progress display.
    session.sparkContext.setLogLevel("ERROR")
    return session


class SparkEngine:
    """Registers inputs as Spark tables and materialises Ibis expressions back to Arrow.

    ``session``: a running ``SparkSession``; else the active one; else, under spark-submit, the
    session its ``--master``/``--conf`` describe; else a local session on ``master``
    (``local[*]`` by default) with :data:`LOCAL_CONF` plus ``conf``. A session the engine
    started is stopped by :meth:`close`.
    ``stage_dir``: where inputs Spark cannot read in place are written (default: the session's
    ``spark.distillguard.stageDir``, else a local temporary directory removed by :meth:`close`).
    """

    def __init__(
        self,
        session: Any = None,
        *,
        master: str | None = None,
        conf: Mapping[str, str] | None = None,
        stage_dir: str | None = None,
    ) -> None:
        from pyspark.sql import SparkSession

        self._owns_session = False
        if session is None:
            session = SparkSession.getActiveSession()
        if session is None and master is None and _under_spark_submit():
            # spark-submit's --master and --conf decide; the local settings would override them.
            session = SparkSession.builder.getOrCreate()
            self._owns_session = True
        if session is None:
            session = _local_session(
                master or os.environ.get("DISTILLGUARD_SPARK_MASTER", "local[*]"),
                {**conf_from_env(os.environ.get(CONF_ENV)), **(conf or {})},
            )
            self._owns_session = True
        self.session: Any = session
        # Event times are UTC instants; a session zone elsewhere would shift hours and days.
        session.conf.set("spark.sql.session.timeZone", "UTC")
        self.backend: Any = ibis.pyspark.connect(session)
        self.backend.compiler = _compiler()
        self.local = _is_local_master(str(session.sparkContext.master))
        stage = stage_dir or session.conf.get(STAGE_DIR_CONF, None)
        self._owns_stage = stage is None
        if stage is None:
            if not self.local:
                raise ConfigError(
                    f"Spark runs on {session.sparkContext.master}: set {STAGE_DIR_CONF} to a "
                    "directory every executor can read (hdfs://..., s3a://...)"
                )
            stage = tempfile.mkdtemp(prefix="distillguard-spark-")
        self.stage_dir: str = stage.rstrip("/")
        self._fs, self._fs_root = pafs.FileSystem.from_uri(
            self.stage_dir if "://" in self.stage_dir else str(Path(self.stage_dir).resolve())
        )
        self._names: set[str] = set()
        self._staged: list[str] = []
        self._scratch: Path | None = None

    @property
    def scratch(self) -> Path:
        """A driver-local directory for intermediate Parquet (the signal parts).

        With a local stage directory it lives inside it (read in place); with a remote one it
        is a local temporary directory, and :meth:`table` copies what it holds to the stage.
        Either way it is this engine's own (runs may share a stage directory) until :meth:`close`.
        """
        if self._scratch is None:
            if "://" in self.stage_dir:
                self._scratch = Path(tempfile.mkdtemp(prefix="distillguard-spark-scratch-"))
            else:
                Path(self.stage_dir).mkdir(parents=True, exist_ok=True)
                self._scratch = Path(tempfile.mkdtemp(prefix="scratch-", dir=self.stage_dir))
        return self._scratch

    # ------------------------------------------------------------------ Engine protocol

    def table(self, name: str, data: pa.Table | pads.Dataset) -> ir.Table:
        """Expose ``data`` as Spark table ``name`` (read in place when Spark can, else staged)."""
        files = self._readable_in_place(data)
        if files is None:
            files = [self._stage(name, data)]
        frame = self.session.read.parquet(*files)
        frame.createOrReplaceTempView(name)
        self._names.add(name)
        return self.backend.table(name)

    def cache(self, expr: ir.Table) -> ir.Table:
        """``expr`` computed now, written as Parquet under the stage directory and read back as a view.

        Not ``DataFrame.cache()``: an in-memory relation keeps the partitions it was built in,
        and linking's held tables are skewed (a hydra's keys in one or two of them). At the seed
        scale one task spent 27 minutes building a cached pair table while the other core idled,
        and everything reading it inherited the skew. Read back from files, a table is split by
        size, its row count and size are known to the planner, and it leaves the heap to the disk
        as the embedded engine's file-backed holds do.
        """
        started = time.perf_counter()
        table = expr.as_table()
        self.backend._run_pre_execute_hooks(table)
        name = f"held_{uuid.uuid4().hex[:12]}"
        fs_target = f"{self._fs_root}/{name}"
        uri = self._uri(fs_target)
        self._staged.append(fs_target)
        self.session.sql(self.backend.compile(table)).write.parquet(uri)
        self.session.read.parquet(uri).createOrReplaceTempView(name)
        self._names.add(name)
        held: ir.Table = self.backend.table(name)
        trace_call("cache", started)
        return held

    def release_memory(self) -> None:
        """Nothing to give back here: held results are Parquet files, and the JVM's heap is its
        own process's, sized by ``spark.driver.memory``."""

    def to_arrow(self, expr: ir.Table) -> pa.Table:
        """Execute ``expr`` on Spark and return it with the embedded engine's Arrow types."""
        started = time.perf_counter()
        table = expr.as_table()
        self.backend._run_pre_execute_hooks(table)
        sql = self.backend.compile(table)
        from pyspark.sql.types import TimestampType

        frame = self.session.sql(sql)
        # Spark's TimestampType is an instant (shown in the session zone, UTC); Ibis maps it
        # to a naive timestamp, DuckDB's TIMESTAMPTZ to a UTC one: give both the same type.
        instants = {f.name for f in frame.schema.fields if isinstance(f.dataType, TimestampType)}
        schema = table.schema().to_pyarrow()
        fields = [
            pa.field(f.name, pa.timestamp(f.type.unit, tz="UTC"), f.nullable)
            if f.name in instants and pa.types.is_timestamp(f.type) and f.type.tz is None
            else f
            for f in schema
        ]
        result: pa.Table = frame.toArrow()
        trace_call("to_arrow", started, result.num_rows)
        return _conform(result, pa.schema(fields))

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Drop the views, remove what was staged and held (a temporary stage directory whole),
        stop a session this engine started."""
        for name in self._names:
            with contextlib.suppress(Exception):
                self.session.catalog.dropTempView(name)
        self._names.clear()
        if self._owns_stage:
            shutil.rmtree(self.stage_dir, ignore_errors=True)
        else:  # a shared stage directory (a cluster's): remove only this engine's inputs
            for target in self._staged:
                with contextlib.suppress(OSError):
                    self._fs.delete_dir(target)
        self._staged.clear()
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
        if self._owns_session:
            self.session.stop()
            self._owns_session = False

    def __enter__(self) -> SparkEngine:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ helpers

    def _readable_in_place(self, data: pa.Table | pads.Dataset) -> list[str] | None:
        if not isinstance(data, pads.FileSystemDataset) or not data.files:
            return None
        if not isinstance(data.format, pads.ParquetFileFormat):
            return None
        if isinstance(data.filesystem, pafs.LocalFileSystem):
            # Executors on other machines cannot see the driver's disk.
            return [str(Path(f).resolve()) for f in data.files] if self.local else None
        return None

    def _stage(self, name: str, data: pa.Table | pads.Dataset) -> str:
        # Spark skips paths starting with "_" or "." (it takes them for metadata): never stage there.
        target = f"{self._fs_root}/t-{name.lstrip('_.')}-{uuid.uuid4().hex[:12]}"
        pads.write_dataset(
            data,
            target,
            format="parquet",
            filesystem=self._fs,
            max_rows_per_file=2_000_000,
            max_rows_per_group=250_000,
            existing_data_behavior="error",
        )
        self._staged.append(target)
        return self._uri(target)

    def _uri(self, target: str) -> str:
        """What Spark reads for a path of the stage file system."""
        if "://" in self.stage_dir:
            scheme = self.stage_dir.split("://", 1)[0]
            return f"{scheme}://{target}" if not target.startswith(f"{scheme}://") else target
        return target


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Cast Spark's result to the Arrow types Ibis promises (as the embedded engine returns them)."""
    columns = []
    for field in schema:
        column = table.column(field.name)
        if column.type == _UNSIGNED_AS and pa.types.is_decimal(field.type):
            # A uint64 input that Spark widened: give it back its own type.
            column = column.cast(pa.uint64())
        elif column.type != field.type:
            # Naive UTC microseconds → tz-aware; a cast that would lose data raises.
            column = column.cast(field.type)
        columns.append(column)
    return pa.table(columns, names=schema.names)


@contextlib.contextmanager
def spark_engine(**kwargs: Any) -> Iterator[SparkEngine]:
    """A :class:`SparkEngine` closed on exit (the local session stopped, staged inputs removed)."""
    engine = SparkEngine(**kwargs)
    try:
        yield engine
    finally:
        engine.close()
