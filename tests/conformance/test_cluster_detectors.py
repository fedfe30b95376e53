"""Conformance suite over every registered cluster-level detector (style.md, tests that can fail #1)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from distillguard.core.detector import KEY_COLUMNS, Detector, Level
from distillguard.linking.clusters import CLUSTER_DETECTORS


def _table(seed: int, n: int = 40) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table(
        {
            "cluster_id": [f"C-{i:03d}" for i in range(n)],
            "size": rng.integers(3, 300, n),
            "n_exchanges": rng.integers(10, 10_000, n),
            "mean_weight": rng.uniform(0, 10, n),
            "n_kinds": rng.integers(0, 8, n),
            "capability_top_share": rng.uniform(0, 1, n),
            "n_classified": np.where(rng.random(n) < 0.2, 0, rng.integers(1, 1000, n)),
            "synchrony_share": rng.uniform(0, 1, n),
            "density": rng.uniform(0, 1, n),
        }
    )


@pytest.fixture(params=sorted(CLUSTER_DETECTORS))
def detector(request: pytest.FixtureRequest) -> Detector:
    instance: Detector = CLUSTER_DETECTORS[request.param]()
    return instance


def _scores(det: Detector, table: pa.Table) -> dict[str, float | None]:
    result = det.score(table).scores
    return dict(zip(result["cluster_id"].to_pylist(), result["score"].to_pylist(), strict=True))


def test_registered_and_described(detector: Detector) -> None:
    info = detector.info
    assert info.level is Level.CLUSTER
    assert CLUSTER_DETECTORS[info.id] is type(detector)
    assert info.falsepositives and info.runbook and info.version


def test_same_input_same_scores(detector: Detector) -> None:
    assert _scores(detector, _table(1)) == _scores(detector, _table(1))


def test_input_not_mutated(detector: Detector) -> None:
    table = _table(2)
    before = table.to_pydict()
    detector.score(table)
    assert table.to_pydict() == before


def test_row_order_irrelevant(detector: Detector) -> None:
    table = _table(3)
    shuffled = table.take(pa.array(np.random.default_rng(0).permutation(table.num_rows)))
    assert _scores(detector, table) == _scores(detector, shuffled)


def test_scores_in_unit_interval_and_keys(detector: Detector) -> None:
    result = detector.score(_table(4))
    assert tuple(c for c in KEY_COLUMNS[Level.CLUSTER]) == ("cluster_id",)
    assert {"cluster_id", "score", "value", "abstain_reason"} <= set(result.scores.column_names)
    for s, reason in zip(
        result.scores["score"].to_pylist(), result.scores["abstain_reason"].to_pylist(), strict=True
    ):
        assert (s is None) == (reason is not None)
        assert s is None or 0.0 <= s <= 1.0


def test_missing_optional_columns_abstain(detector: Detector) -> None:
    bare = _table(5).select(["cluster_id"])
    result = detector.score(bare)
    assert result.scores.num_rows == bare.num_rows
    assert all(
        r is not None and r.startswith("abstain")
        for r in result.scores["abstain_reason"].to_pylist()
    )


def test_evidence_points_at_rows_that_exist(detector: Detector) -> None:
    table = _table(6)
    result = detector.score(table)
    assert set(result.evidence) <= set(table["cluster_id"].to_pylist())
    assert set(result.evidence)  # evidence exists for scored clusters


def test_empty_table(detector: Detector) -> None:
    result = detector.score(_table(7, n=0))
    assert result.scores.num_rows == 0
