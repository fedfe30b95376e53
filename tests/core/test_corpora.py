"""Prompt corpora: rendering, capability labels, loading, and the missing-cache error."""

from __future__ import annotations

from pathlib import Path

import pyarrow.compute as pc
import pytest

from distillguard.core.corpora import (
    CAPABILITIES,
    CORPUS_SCHEMA,
    load_corpus,
    load_prompts,
    promptsource_capability,
    render_template,
)
from distillguard.core.errors import ConfigError, DistillguardError


def test_render_template_drops_target_and_fills_variables() -> None:
    text = render_template("{% if x %}Summarise:{% endif %}\n\n{{article}} |||\n{{highlights}}")
    assert text.startswith("Summarise:")
    assert "{{" not in text and "{%" not in text and "highlights" not in text
    assert "city council" in text


@pytest.mark.parametrize(
    ("dataset", "capability"),
    [("cnn_dailymail/3.0.0", "summarization"), ("imdb", "classification"), ("squad", "extraction"),
     ("wmt16/ro-en", "translation"), ("common_gen", "writing"), ("zzz_unknown", "general")],
)  # fmt: skip
def test_promptsource_capability(dataset: str, capability: str) -> None:
    assert promptsource_capability(dataset) == capability


def test_corpora_load_with_labels() -> None:
    table = load_prompts()
    assert table.schema.equals(CORPUS_SCHEMA)
    counts = dict(zip(*pc.value_counts(table["capability"]).flatten(), strict=True))
    assert {k.as_py() for k in counts} <= set(CAPABILITIES)
    assert load_corpus("humaneval").num_rows == 164
    bfcl = load_corpus("bfcl")
    assert pc.mean(bfcl["tools_count"]).as_py() >= 1 and pc.max(bfcl["tools_count"]).as_py() > 3
    coding = load_prompts("coding")
    assert set(coding["capability"].to_pylist()) == {"coding"}
    reasoning = load_prompts(["reasoning"], corpora=["lm_eval"])
    assert reasoning.num_rows > 300 and all(
        "step by step" in t for t in reasoning["text"].to_pylist()
    )


def test_missing_cache_says_run_make_setup(tmp_path: Path) -> None:
    with pytest.raises(DistillguardError, match="make setup"):
        load_corpus("humaneval", cache=tmp_path)


def test_unknown_names_are_rejected() -> None:
    with pytest.raises(ConfigError, match="unknown corpus"):
        load_corpus("nope")
    with pytest.raises(ConfigError, match="unknown capability"):
        load_prompts("poetry")
