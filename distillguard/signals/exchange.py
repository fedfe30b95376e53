"""Per-exchange signals: one wide table (see ``SIGNAL_SCHEMA``) and the exchange-level detectors behind it.

Columns of the signals table (one row per exchange; the linking and scoring stages code against these names):

==========================  ===============  =====================================================
column                      type             meaning
==========================  ===============  =====================================================
request_id                  string           from the log
account_id                  string           from the log
end_user_id                 string, null     from the log (resellers / SaaS)
api_key_id                  string, null     from the log
ts                          timestamp[ms,UTC]
model                       string
client_ip                   string
ip_prefix                   string, null     ``a.b.c.0/24`` (IPv4) or ``x:y:z::/48`` (IPv6); null if invalid
asn                         int64, null      from ip_intel longest-prefix match
network_kind                string           residential/mobile/business/education/datacenter/vpn/proxy/tor/unknown
user_agent                  string, null
input_tokens                int64
output_tokens               int64
thinking                    bool, null
tools_count                 int64, null
system_prompt_sha256        string, null
capability                  string, null     one of ``capability.CLASSES``; null when no content
capability_conf             float64, null    classifier probability of ``capability``
reasoning_elicitation       float64, null    P(prompt asks for the reasoning trace); null when no content
grader_use                  float64, null    P(model used as grader / reward model); null when no content
rewrite_request             float64, null    P("safe rewrite" of a model response); null when no content
template_id                 uint64, null     LSH-clustered scaffold id (paraphrases share it); null when no content
scaffold_hash               uint64, null     exact hash of the first masked scaffold characters; null when no content
has_content                 bool             prompt non-empty
==========================  ===============  =====================================================
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar, Final, Protocol

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from distillguard.core.atomic import atomic_path
from distillguard.core.detector import Detections, DetectorInfo, Level, Status
from distillguard.core.errors import InvalidInputError, Problem
from distillguard.core.schema import EXCHANGE_OPTIONAL, TS_TYPE
from distillguard.signals.capability import CapabilityModel, load_model
from distillguard.signals.network import AddressContext, network_context
from distillguard.signals.phrases import (
    grader_expr,
    reasoning_from_phrases,
    reasoning_phrases,
    rewrite_expr,
)
from distillguard.signals.template import TemplateIndex, TemplateParams, fingerprints
from distillguard.signals.text import distinct

NO_CONTENT: Final = "abstain: no content"
NO_INTEL: Final = "abstain: address not in ip_intel"
EVIDENCE_SAMPLE: Final = 5

SIGNAL_SCHEMA: Final = pa.schema(
    [
        pa.field("request_id", pa.string()),
        pa.field("account_id", pa.string()),
        pa.field("end_user_id", pa.string()),
        pa.field("api_key_id", pa.string()),
        pa.field("ts", TS_TYPE),
        pa.field("model", pa.string()),
        pa.field("client_ip", pa.string()),
        pa.field("ip_prefix", pa.string()),
        pa.field("asn", pa.int64()),
        pa.field("network_kind", pa.string()),
        pa.field("user_agent", pa.string()),
        pa.field("input_tokens", pa.int64()),
        pa.field("output_tokens", pa.int64()),
        pa.field("thinking", pa.bool_()),
        pa.field("tools_count", pa.int64()),
        pa.field("system_prompt_sha256", pa.string()),
        pa.field("capability", pa.string()),
        pa.field("capability_conf", pa.float64()),
        pa.field("reasoning_elicitation", pa.float64()),
        pa.field("grader_use", pa.float64()),
        pa.field("rewrite_request", pa.float64()),
        pa.field("template_id", pa.uint64()),
        pa.field("scaffold_hash", pa.uint64()),
        pa.field("has_content", pa.bool_()),
    ]
)

_NEEDED: Final = (
    "request_id",
    "account_id",
    "ts",
    "model",
    "client_ip",
    "prompt",
    "input_tokens",
    "output_tokens",
)


class LogLike(Protocol):
    """What :func:`compute_exchange_signals` needs from ``distillguard.ingest.Log``."""

    @property
    def exchanges(self) -> ds.Dataset: ...

    @property
    def ip_intel(self) -> pa.Table | None: ...


def conform(table: pa.Table) -> pa.Table:
    """Input exchanges with every optional contract column present (nulls where absent); required ones checked."""
    missing = [c for c in _NEEDED if c not in table.column_names]
    if missing:
        raise InvalidInputError(
            [Problem("exchanges", None, c, "required column missing for signals") for c in missing]
        )
    for f in EXCHANGE_OPTIONAL:
        if f.name not in table.column_names:
            table = table.append_column(f.name, pa.nulls(table.num_rows, f.type))
    return table


def template_params(config: Mapping[str, Any]) -> TemplateParams:
    """Template parameters from the ``signals.template`` config section (defaults if absent)."""
    section = dict((config.get("signals") or {}).get("template") or {})
    return TemplateParams(**section)


def _prompt_content(prompts: pl.Series) -> pl.DataFrame:
    """Prompt-only content signals per prompt: ``has_content, reasoning_phrases, grader_use, rewrite_request``."""
    # Requests for a trace sit in the opening or closing lines; the middle is payload.
    full = pl.col("prompt")
    clipped = pl.when(full.str.len_chars() > 2000).then(
        full.str.slice(0, 1500) + pl.lit("\n") + full.str.slice(-500)).otherwise(full)  # fmt: skip
    has = full.is_not_null() & (full.str.strip_chars().str.len_chars() > 0)
    frame = pl.DataFrame({"prompt": prompts}).with_columns(
        lowered=clipped.str.to_lowercase(), has_content=has
    )
    lowered, has_col = pl.col("lowered"), pl.col("has_content")
    return frame.select(
        has_content=has_col,
        reasoning_phrases=reasoning_phrases(lowered),
        grader_use=grader_expr(lowered, has_col),
        rewrite_request=rewrite_expr(lowered, has_col),
    )


def _row_content(table: pa.Table, prompt_content: pl.DataFrame) -> pl.DataFrame:
    """Per-exchange content scores from the per-row prompt part (:func:`_prompt_content` gathered to rows)."""
    frame = pl.from_arrow(table.select(["thinking", "input_tokens", "output_tokens"]))
    assert isinstance(frame, pl.DataFrame)
    frame = frame.hstack(prompt_content)
    ratio = pl.col("output_tokens").cast(pl.Float64) / pl.col("input_tokens").cast(pl.Float64).clip(
        1.0, None
    )
    has_col = pl.col("has_content")
    return frame.select(
        has_content=has_col,
        reasoning_elicitation=reasoning_from_phrases(
            pl.col("reasoning_phrases"), pl.col("thinking"), ratio, has_col
        ),
        grader_use=pl.col("grader_use"),
        rewrite_request=pl.col("rewrite_request"),
    )


def content_scores(table: pa.Table) -> pl.DataFrame:
    """``has_content, reasoning_elicitation, grader_use, rewrite_request`` per row of ``table``."""
    t = conform(table)
    uniq, index = distinct(t.column("prompt"))
    return _row_content(t, _prompt_content(uniq)[pl.Series(index)])


#: Distinct prompts whose prompt-only signals :class:`PromptSignals` remembers across batches (bounds memory).
PROMPT_CACHE_ROWS: Final = 200_000
#: ... and at most this many bytes of prompt text, so long prompts cannot blow the memory bound.
PROMPT_CACHE_BYTES: Final = 256 << 20


class PromptSignals:
    """Prompt-only signals (phrases, capability, template fingerprint) per distinct prompt, remembered across batches.

    Templated and scripted traffic sends the same prompts batch after batch; each is scored
    once. Values are pure functions of the prompt (and model / template parameters), so a
    remembered row equals a recomputed one. First in, first out beyond ``limit`` prompts or
    ``max_bytes`` of prompt text.
    """

    def __init__(
        self, model: CapabilityModel, params: TemplateParams, limit: int = PROMPT_CACHE_ROWS,
        max_bytes: int = PROMPT_CACHE_BYTES,
    ) -> None:  # fmt: skip
        self.model, self.params, self.limit, self.max_bytes = model, params, limit, max_bytes
        self._cache: pl.DataFrame | None = None

    def _compute(self, prompts: pl.Series) -> pl.DataFrame:
        label, conf = self.model.predict(prompts)
        full, short, keys = fingerprints(prompts, self.params)
        return _prompt_content(prompts).with_columns(
            prompt=prompts, capability=label, capability_conf=pl.Series(conf, dtype=pl.Float64),
            full_hash=pl.Series(full, dtype=pl.UInt64), scaffold_hash=pl.Series(short, dtype=pl.UInt64),
            band_keys=pl.Series(keys, dtype=pl.Array(pl.UInt64, self.params.bands)),
        )  # fmt: skip

    def lookup(self, prompts: pl.Series) -> pl.DataFrame:
        """One row per (distinct) prompt, in order: the :meth:`_compute` columns, without ``prompt``."""
        keyed = pl.DataFrame({"prompt": prompts})
        if self._cache is None:
            table = self._compute(prompts)
        else:
            missing = keyed.join(
                self._cache.select("prompt"), on="prompt", how="anti", nulls_equal=True
            )["prompt"]
            table = (
                pl.concat([self._cache, self._compute(missing)]) if len(missing) else self._cache
            )
        kept = table.tail(self.limit)
        newest_bytes = kept["prompt"].str.len_bytes().fill_null(0).reverse().cum_sum().reverse()
        self._cache = kept.filter(newest_bytes <= self.max_bytes)
        out = keyed.join(table, on="prompt", how="left", maintain_order="left", nulls_equal=True)
        assert out.height == len(prompts)
        return out.drop("prompt")


def exchange_signals(
    table: pa.Table,
    *,
    model: CapabilityModel,
    index: TemplateIndex,
    intel: pa.Table | None,
    prompts: PromptSignals | None = None,
    addresses: AddressContext | None = None,
) -> pa.Table:
    """The signals table (:data:`SIGNAL_SCHEMA`) for one batch of contract exchanges.

    Every prompt-only signal (phrases, capability, template fingerprint) is computed once per
    distinct prompt (and, with ``prompts`` carried over batches, once per run) and gathered
    back: API traffic repeats prompts heavily and the regex / classifier work dominates.
    Results equal the row-by-row computation (``tests/signals/test_exchange_fast.py``).
    """
    t = conform(table)
    uniq, rows = distinct(t.column("prompt"))
    cache = prompts if prompts is not None else PromptSignals(model, index.params)
    per = cache.lookup(uniq)
    weights = np.bincount(rows, minlength=len(uniq)).astype(np.float64)
    tid, shash, valid = index.assign_fingerprints(
        per["full_hash"].to_numpy(),
        per["scaffold_hash"].to_numpy(),
        per["band_keys"].to_numpy(),
        weights,
    )
    gather = pl.Series(rows)
    content = _row_content(
        t, per.select("has_content", "reasoning_phrases", "grader_use", "rewrite_request")[gather]
    )
    net = (
        addresses(t.column("client_ip"))
        if addresses is not None
        else network_context(t.column("client_ip"), intel)
    )
    has = content["has_content"].to_numpy()
    conf = per["capability_conf"].to_numpy()[rows]
    tid, shash, valid = tid[rows], shash[rows], valid[rows]
    columns: dict[str, Any] = {name: t.column(name) for name in (
        "request_id", "account_id", "end_user_id", "api_key_id", "ts", "model", "client_ip")}  # fmt: skip
    columns.update(
        ip_prefix=net.column("ip_prefix"),
        asn=net.column("asn"),
        network_kind=net.column("network_kind"),
        user_agent=t.column("user_agent"),
        input_tokens=t.column("input_tokens"),
        output_tokens=t.column("output_tokens"),
        thinking=t.column("thinking"),
        tools_count=t.column("tools_count"),
        system_prompt_sha256=t.column("system_prompt_sha256"),
        capability=per["capability"].to_arrow().take(pa.array(rows)),
        capability_conf=pa.array(conf, mask=~has | np.isnan(conf)),
        reasoning_elicitation=content["reasoning_elicitation"].to_arrow(),
        grader_use=content["grader_use"].to_arrow(),
        rewrite_request=content["rewrite_request"].to_arrow(),
        template_id=pa.array(tid, type=pa.uint64(), mask=~valid),
        scaffold_hash=pa.array(shash, type=pa.uint64(), mask=~valid),
        has_content=pa.array(has, type=pa.bool_()),
    )
    return pa.table(
        {f.name: columns[f.name].cast(f.type) for f in SIGNAL_SCHEMA}, schema=SIGNAL_SCHEMA
    )


def _batches(dataset: ds.Dataset, rows: int) -> Iterator[pa.Table]:
    for batch in dataset.to_batches(batch_size=rows):
        if batch.num_rows:
            yield pa.Table.from_batches([batch])


def _write_part(signals: pa.Table, path: Path) -> None:
    with atomic_path(path) as staged:
        pq.write_table(signals, staged, compression="zstd")


def compute_exchange_signals(
    log: LogLike, config: Mapping[str, Any], work_dir: str | Path | None = None
) -> pa.Table | ds.Dataset:
    """Signals for every exchange of ``log``, in batches with progress.

    With ``work_dir`` the batches are written as Parquet parts under
    ``work_dir/signals/`` (each atomically) and a dataset over them is returned —
    the way to run the seed scale in bounded memory; otherwise one table.
    """
    section = config.get("signals") or {}
    rows = int(section.get("batch_rows", 250_000))
    model = load_model()
    index = TemplateIndex(template_params(config))
    prompt_signals = PromptSignals(model, index.params)
    addresses = AddressContext(log.ip_intel)
    dataset = log.exchanges
    total = dataset.count_rows()
    out_dir = Path(work_dir) / "signals" if work_dir is not None else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        for old in out_dir.glob("part-*.parquet"):
            old.unlink()
    parts: list[pa.Table] = []
    columns = [
        c for c in dataset.schema.names if c in {*_NEEDED, *(f.name for f in EXCHANGE_OPTIONAL)}
    ]
    # Parts are written on a second thread while the next batch computes (Parquet encoding and zstd
    # release the GIL; medium seed 7: 9.4 / 7.5 s -> 6.6 / 5.6 s for the stage); one part pending at most.
    pending: Future[None] | None = None
    with (
        Progress(
            TextColumn("signals"), BarColumn(), TextColumn("{task.completed:,}/{task.total:,} exchanges"),
            TimeElapsedColumn(), transient=True,
        ) as progress,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="signals-writer") as writer,
    ):  # fmt: skip
        task = progress.add_task("signals", total=total)
        for i, batch in enumerate(_batches(dataset, rows)):
            signals = exchange_signals(
                batch.select(columns),
                model=model,
                index=index,
                intel=log.ip_intel,
                prompts=prompt_signals,
                addresses=addresses,
            )
            if out_dir is not None:
                if pending is not None:
                    pending.result()
                pending = writer.submit(_write_part, signals, out_dir / f"part-{i:05d}.parquet")
            else:
                parts.append(signals)
            progress.advance(task, batch.num_rows)
        if pending is not None:
            pending.result()
    if out_dir is not None:
        return ds.dataset(out_dir, format="parquet", schema=SIGNAL_SCHEMA)
    return pa.concat_tables(parts) if parts else SIGNAL_SCHEMA.empty_table()


# --------------------------------------------------------------------------- detectors


def _scores(
    table: pa.Table,
    score: pa.Array,
    value: pa.Array,
    reason: str,
    extra: Mapping[str, pa.Array] | None = None,
) -> pa.Table:
    abstain = pc.if_else(
        score.is_null(), pa.scalar(reason, pa.string()), pa.scalar(None, pa.string())
    )
    cols: dict[str, Any] = {"request_id": table.column("request_id"), "score": score.cast(pa.float64()),
                            "value": value.cast(pa.float64()), "abstain_reason": abstain}  # fmt: skip
    cols.update(extra or {})
    return pa.table(cols)


class _ContentDetector:
    column: ClassVar[str]
    info: ClassVar[DetectorInfo]

    def score(self, table: pa.Table) -> Detections:
        t = conform(table)
        values = content_scores(t)[self.column].to_arrow()
        return Detections(self.info, _scores(t, values, values, NO_CONTENT))


class ReasoningElicitationDetector(_ContentDetector):
    """Prompts that ask for the model's reasoning trace itself.

    Why: reasoning traces are the most valuable distillation target; harvesters ask for
    "the internal reasoning behind this completed answer", chains of thought, every
    intermediate step. Benign look-alikes: eval labs and students ("Let's think step
    by step" benchmark prompts, "show your work"), weighted low here. Verify: read the
    sampled prompts; a harvester pairs answers with requests for the trace, in bulk.
    """

    column = "reasoning_elicitation"
    info = DetectorInfo(
        id="signals.reasoning_elicitation", version="1", level=Level.EXCHANGE, status=Status.TEST,
        description="prompt asks for the reasoning trace (phrases, thinking flag, output/input ratio)",
        falsepositives=("eval lab chain-of-thought benchmark prompts", "students asking to show work"),
        runbook="Read sampled prompts: does the request ask for hidden/internal reasoning of given answers?",
    )  # fmt: skip


class GraderUseDetector(_ContentDetector):
    """Prompts that use the model as a grader or reward model (rubrics, A/B preference, scores).

    Why: preference and reward data for training another model is a distillation target.
    Benign look-alikes: eval labs using LLM-as-judge, teachers grading essays. Verify:
    volume and uniformity of grading prompts; whether the graded responses come from
    another model.
    """

    column = "grader_use"
    info = DetectorInfo(
        id="signals.grader_use", version="1", level=Level.EXCHANGE, status=Status.TEST,
        description="model used as grader / reward model",
        falsepositives=("eval labs running LLM-as-judge", "teachers grading with a rubric"),
        runbook="Read sampled prompts: are they rubric/preference judgements of other model outputs, in bulk?",
    )  # fmt: skip


class RewriteRequestDetector(_ContentDetector):
    """Requests to rewrite a model response to be safe / harmless / more helpful.

    Why: "safe rewrite" pairs are alignment training data (constitutional-style revisions).
    Benign look-alikes: trust-and-safety teams, writers asking to polish their own text
    (scored low unless a model response or safety is mentioned). Verify: do the texts
    being rewritten look like model completions?
    """

    column = "rewrite_request"
    info = DetectorInfo(
        id="signals.rewrite_request", version="1", level=Level.EXCHANGE, status=Status.TEST,
        description="request to rewrite a model response to be safe / harmless / more helpful",
        falsepositives=("trust-and-safety teams", "editors polishing their own drafts"),
        runbook="Read sampled prompts: is the rewritten text a model completion, and is it bulk?",
    )  # fmt: skip


class CapabilityDetector:
    """Capability targeted by the prompt (classifier over hashed n-grams); score is the classifier's confidence.

    Why: a campaign concentrates on a few high-value capabilities (coding, tool use,
    reasoning). One exchange proves nothing; the account-level concentration does.
    Benign look-alikes: any focused product (a coding agent is all coding). Verify:
    read a sample of prompts labelled with the capability.
    """

    info: ClassVar[DetectorInfo] = DetectorInfo(
        id="signals.capability", version="1", level=Level.EXCHANGE, status=Status.TEST,
        description="capability targeted by the prompt (hashed n-gram linear classifier)",
        falsepositives=("focused products: coding agents, translation apps",),
        runbook="Read sampled prompts per capability; check the label fits.",
    )  # fmt: skip

    def score(self, table: pa.Table) -> Detections:
        t = conform(table)
        label, conf = load_model().predict(pl.Series(values=t.column("prompt")).cast(pl.String))
        score = pa.array(conf, mask=np.isnan(conf))
        return Detections(
            self.info, _scores(t, score, score, NO_CONTENT, {"label": label.to_arrow()})
        )


class TemplateFingerprintDetector:
    """Prompt-template fingerprint: how many exchanges in the input share this exchange's scaffold.

    Why: a harvesting operation fills one scaffold (or a few paraphrases) with thousands
    of items. Benign look-alikes: SaaS backends (constant system prompt and a fixed user
    template), eval labs (benchmark templates), enterprise batch jobs. Verify: pull the
    sampled request ids and compare the prompts; the linking stage checks whether
    *unrelated* accounts share it. score = 1 - 1/size; value = size.
    """

    info: ClassVar[DetectorInfo] = DetectorInfo(
        id="signals.template", version="1", level=Level.EXCHANGE, status=Status.TEST,
        description="slot-masked scaffold MinHash/LSH template id; score grows with rows sharing it",
        falsepositives=("SaaS backends with a fixed template", "eval labs", "enterprise batch jobs"),
        runbook="Compare the sampled prompts: same scaffold with different slot values?",
    )  # fmt: skip

    def __init__(self, params: TemplateParams | None = None) -> None:
        self.params = params or TemplateParams()

    def score(self, table: pa.Table) -> Detections:
        t = conform(table)
        tid, _, valid = TemplateIndex(self.params).assign(
            pl.Series(values=t.column("prompt")).cast(pl.String)
        )
        frame = pl.DataFrame(
            {"request_id": pl.Series(values=t.column("request_id")), "tid": tid, "valid": valid}
        )
        sizes = frame.with_columns(size=pl.len().over("tid"))["size"].to_numpy().astype(np.float64)
        size = np.where(valid, sizes, np.nan)
        score = pa.array(1.0 - 1.0 / size, mask=~valid)
        shared = (
            frame.filter(pl.col("valid"))
            .group_by("tid")
            .agg(
                pl.col("request_id").sort().head(EVIDENCE_SAMPLE).alias("sample"),
                pl.len().alias("n"),
            )
            .filter(pl.col("n") > 1)
        )
        evidence = {
            str(row["sample"][0]): {"template_id": int(row["tid"]), "n_exchanges": int(row["n"]),
                                    "sample_request_ids": list(row["sample"])}
            for row in shared.iter_rows(named=True)
        }  # fmt: skip
        extra = {"template_id": pa.array(tid, type=pa.uint64(), mask=~valid)}
        return Detections(
            self.info, _scores(t, score, pa.array(size, mask=~valid), NO_CONTENT, extra), evidence
        )


#: Prior risk of a network kind for extraction traffic; unknown kinds abstain.
KIND_RISK: Final[Mapping[str, float]] = {
    "tor": 1.0, "proxy": 0.9, "vpn": 0.6, "datacenter": 0.5, "mobile": 0.1,
    "residential": 0.1, "business": 0.0, "education": 0.0,
}  # fmt: skip


class NetworkKindDetector:
    """Network kind of the client address (ip_intel longest-prefix match).

    Why: hydra clusters rotate through residential proxies, VPN exits and datacenters to
    look unrelated. Benign look-alikes: VPN users, SaaS backends in the cloud, corporate
    egress. A kind alone never justifies action; the account-level shares and the
    cross-account sharing of prefixes do. Verify: the prefix's other accounts.
    """

    info: ClassVar[DetectorInfo] = DetectorInfo(
        id="signals.network_kind", version="1", level=Level.EXCHANGE, status=Status.TEST,
        description="prior risk of the client network kind (proxy/tor > vpn > datacenter)",
        falsepositives=("VPN users", "cloud-hosted SaaS backends", "corporate egress"),
        runbook="Look up the prefix in ip_intel and list other accounts using it.",
    )  # fmt: skip

    def __init__(self, intel: pa.Table | None = None) -> None:
        self.intel = intel

    def score(self, table: pa.Table) -> Detections:
        t = conform(table)
        net = network_context(t.column("client_ip"), self.intel)
        kinds = pl.Series(values=net.column("network_kind"))
        risk = kinds.replace_strict(
            dict(KIND_RISK), default=None, return_dtype=pl.Float64
        ).to_arrow()
        extra = {"network_kind": net.column("network_kind"), "ip_prefix": net.column("ip_prefix")}
        return Detections(self.info, _scores(t, risk, risk, NO_INTEL, extra))
