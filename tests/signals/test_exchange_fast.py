"""The distinct-prompt / cross-batch fast path of ``exchange_signals`` equals the row-by-row computation."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from distillguard.ingest.ipintel import lookup
from distillguard.signals.capability import CapabilityModel
from distillguard.signals.exchange import SIGNAL_SCHEMA, PromptSignals, conform, exchange_signals
from distillguard.signals.network import AddressContext, ip_prefixes, network_context
from distillguard.signals.phrases import grader_expr, reasoning_expr, rewrite_expr
from distillguard.signals.template import TemplateIndex, TemplateParams, band_keys, scaffolds
from distillguard.signals.text import distinct

from .synth import IPS, make_exchanges

INTEL = pa.table(
    {
        "cidr": ["81.2.69.0/24", "34.64.0.0/10", "73.0.0.0/8", "73.162.44.0/24", "2a02:8108::/32"],
        "asn": pa.array([20712, 396982, 7922, 7922, 3209], pa.int64()),
        "asn_org": ["A&A", "GOOGLE", "COMCAST", "COMCAST", "Vodafone"],
        "kind": ["residential", "datacenter", "residential", "proxy", "residential"],
    }
)


def _batches() -> list[pa.Table]:
    """Three batches sharing prompts (templated traffic repeats them), with null prompts / addresses mixed in."""
    table = make_exchanges(3_000, seed=5)
    rng = np.random.default_rng(5)
    vocabulary = table.column("prompt").to_pylist()[:400]
    prompts: list[str | None] = [
        vocabulary[i] for i in rng.integers(0, len(vocabulary), table.num_rows).tolist()
    ]
    ips = table.column("client_ip").to_pylist()
    for i in rng.choice(len(prompts), 40, replace=False).tolist():
        prompts[i] = None
    for i in rng.choice(len(ips), 20, replace=False).tolist():
        ips[i] = None if i % 2 else "not-an-ip"
    thinking = pa.array(rng.random(len(prompts)) < 0.4)
    table = table.set_column(
        table.schema.get_field_index("prompt"), "prompt", pa.array(prompts, pa.string())
    )
    table = table.set_column(
        table.schema.get_field_index("client_ip"), "client_ip", pa.array(ips, pa.string())
    )
    table = table.set_column(table.schema.get_field_index("thinking"), "thinking", thinking)
    return [table.slice(0, 1_200), table.slice(1_200, 1_000), table.slice(2_200)]


class _ReferenceIndex(TemplateIndex):
    """The template assignment as first written: every row, counts from the rows themselves."""

    def assign(
        self, prompts: pl.Series, weights: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        words, exact = scaffolds(prompts, self.params)
        valid = exact.full_hash != 0
        template = np.zeros(len(prompts), dtype=np.uint64)
        if not valid.any():
            return template, exact.scaffold_hash, valid
        _, first, inverse, counts = np.unique(
            exact.full_hash[valid], return_index=True, return_inverse=True, return_counts=True
        )
        keys = band_keys(words["words"].gather(np.flatnonzero(valid)[first]), self.params)
        template[valid] = self._components(keys, counts)[inverse]
        return template, exact.scaffold_hash, valid


def _reference(table: pa.Table, model: CapabilityModel, index: TemplateIndex) -> pa.Table:
    """Row-by-row signals: every expression over every row, no deduplication or caching."""
    t = conform(table)
    frame = pl.from_arrow(t.select(["prompt", "thinking", "input_tokens", "output_tokens"]))
    assert isinstance(frame, pl.DataFrame)
    full = pl.col("prompt")
    clipped = pl.when(full.str.len_chars() > 2000).then(
        full.str.slice(0, 1500) + pl.lit("\n") + full.str.slice(-500)).otherwise(full)  # fmt: skip
    ratio = pl.col("output_tokens").cast(pl.Float64) / pl.col("input_tokens").cast(pl.Float64).clip(
        1.0, None
    )
    has = full.is_not_null() & (full.str.strip_chars().str.len_chars() > 0)
    frame = frame.with_columns(lowered=clipped.str.to_lowercase(), has_content=has, ratio=ratio)
    low, hc = pl.col("lowered"), pl.col("has_content")
    content = frame.select(
        has_content=hc,
        reasoning_elicitation=reasoning_expr(low, pl.col("thinking"), pl.col("ratio"), hc),
        grader_use=grader_expr(low, hc),
        rewrite_request=rewrite_expr(low, hc),
    )
    prompts = pl.Series(values=t.column("prompt")).cast(pl.String)
    label, conf = model.predict(prompts)
    tid, shash, valid = index.assign(prompts)
    hit = lookup(t.column("client_ip"), INTEL)
    has_np = content["has_content"].to_numpy()
    cols: dict[str, Any] = {
        f.name: t.column(f.name) for f in SIGNAL_SCHEMA if f.name in t.column_names
    }
    cols.update(
        ip_prefix=ip_prefixes(t.column("client_ip")),
        asn=hit.column("asn"),
        network_kind=hit.column("kind"),
        capability=label.to_arrow(),
        capability_conf=pa.array(conf, mask=~has_np | np.isnan(conf)),
        reasoning_elicitation=content["reasoning_elicitation"].to_arrow(),
        grader_use=content["grader_use"].to_arrow(),
        rewrite_request=content["rewrite_request"].to_arrow(),
        template_id=pa.array(tid, type=pa.uint64(), mask=~valid),
        scaffold_hash=pa.array(shash, type=pa.uint64(), mask=~valid),
        has_content=pa.array(has_np, type=pa.bool_()),
    )
    return pa.table(
        {f.name: cols[f.name].cast(f.type) for f in SIGNAL_SCHEMA}, schema=SIGNAL_SCHEMA
    )


@pytest.mark.parametrize(
    ("limit", "max_bytes"), [(200_000, 1 << 30), (50, 1 << 30), (200_000, 4_000)]
)
def test_fast_path_equals_row_by_row(
    capability_model: CapabilityModel, limit: int, max_bytes: int
) -> None:
    # Small limits force cache eviction between batches: evicted prompts must be recomputed identically.
    params = TemplateParams()
    fast_index, ref_index = TemplateIndex(params), _ReferenceIndex(params)
    cache = PromptSignals(capability_model, params, limit=limit, max_bytes=max_bytes)
    addresses = AddressContext(INTEL, limit=min(limit, 3))
    for batch in _batches():
        fast = exchange_signals(
            batch,
            model=capability_model,
            index=fast_index,
            intel=INTEL,
            prompts=cache,
            addresses=addresses,
        )
        ref = _reference(batch, capability_model, ref_index)
        for name in SIGNAL_SCHEMA.names:
            assert fast.column(name).equals(ref.column(name)), name
    assert len(fast_index.anchor_keys) > 0
    np.testing.assert_array_equal(fast_index.anchor_keys, ref_index.anchor_keys)
    np.testing.assert_array_equal(fast_index.anchor_ids, ref_index.anchor_ids)


def test_fast_path_sees_repeats_and_nulls() -> None:
    # Guards the comparison above against a degenerate batch (no repeats, no nulls to get wrong).
    batch = _batches()[0]
    uniq, index = distinct(batch.column("prompt"))
    assert len(uniq) < batch.num_rows / 2
    later, _ = distinct(_batches()[2].column("prompt"))
    assert later.is_in(uniq, nulls_equal=True).sum() > len(later) / 2  # the cache is exercised
    assert uniq.null_count() == 1
    assert uniq.gather(index).equals(
        pl.Series(values=batch.column("prompt")).cast(pl.String), null_equal=True
    )


def test_weights_stand_for_repeated_rows() -> None:
    prompts = ["Translate into French: the cat {}".replace("{}", str(i % 3)) for i in range(9)] + [
        "",
        None,
    ]
    series = pl.Series(prompts, dtype=pl.String)
    full, one = TemplateIndex(), TemplateIndex()
    tid_full, _, valid_full = full.assign(series)
    uniq, index = distinct(series)
    tid_u, _, valid_u = one.assign(uniq, weights=np.bincount(index).astype(np.float64))
    np.testing.assert_array_equal(tid_u[index], tid_full)
    np.testing.assert_array_equal(valid_u[index], valid_full)
    np.testing.assert_array_equal(one.anchor_keys, full.anchor_keys)
    assert len(full.anchor_keys) > 0


def test_network_context_per_distinct_address() -> None:
    ips = pa.array([*IPS, None, "bogus", *IPS], pa.string())
    net = network_context(ips, INTEL)
    hit = lookup(ips, INTEL)
    assert net.num_rows == len(ips)
    assert net.column("network_kind").to_pylist() == hit.column("kind").to_pylist()
    assert net.column("ip_prefix").to_pylist() == ip_prefixes(ips).to_pylist()
    assert net.column("ip_prefix")[0].as_py() == "81.2.69.0/24"


def test_address_context_across_batches() -> None:
    context = AddressContext(INTEL, limit=4)
    for ips in ([*IPS, None], ["bogus", *IPS[::-1]], [None, IPS[0], "73.162.44.200"]):
        array = pa.array(ips, pa.string())
        assert context(array).equals(network_context(array, INTEL))
