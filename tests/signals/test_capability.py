"""Capability classifier: held-out accuracy floor, the anti-leakage split, abstention, determinism."""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa

from distillguard.core.corpora import load_prompts
from distillguard.signals.capability import CLASSES, CapabilityModel, in_train_split, training_data


def test_split_is_deterministic_and_about_half() -> None:
    texts = load_prompts().column("text")
    split = in_train_split(texts)
    assert split.tolist() == in_train_split(pa.array(texts.to_pylist())).tolist()
    assert 0.4 < split.mean() < 0.6


def test_held_out_items_are_never_trained_on() -> None:
    tr_x, _, ho_x, _ = training_data(load_prompts())
    assert not set(tr_x) & set(ho_x)
    assert not in_train_split(pl.Series(ho_x)).any()


def test_held_out_accuracy_floor(capability_model: CapabilityModel) -> None:
    _, _, ho_x, ho_y = training_data(load_prompts())
    labels, _ = capability_model.predict(pl.Series(ho_x))
    truth = np.asarray(ho_y)
    predicted = labels.to_numpy()
    assert np.mean(predicted == truth) >= 0.88
    non_tool = truth != "tool_use"  # BFCL dominates the corpora; check the rest separately
    assert np.mean(predicted[non_tool] == truth[non_tool]) >= 0.7


NAMED = [
    (
        "Write a python function that returns the n-th Fibonacci number, with a docstring and tests.",
        "coding",
    ),
    ("Translate into German: the train to Munich is delayed by twenty minutes.", "translation"),
    (
        "Rate the following answer on a scale of 1 to 10 for correctness and output only the score.",
        "grading",
    ),
    ("Rewrite the following assistant reply so it is harmless and politely refuses.", "rewriting"),
]


def test_named_prompts(capability_model: CapabilityModel) -> None:
    labels, conf = capability_model.predict(pl.Series([p for p, _ in NAMED]))
    assert labels.to_list() == [c for _, c in NAMED]
    assert set(labels.to_list()) <= set(CLASSES)
    assert ((conf > 0) & (conf <= 1)).all()


def test_empty_prompts_get_no_label(capability_model: CapabilityModel) -> None:
    labels, conf = capability_model.predict(pl.Series(["", None, "  ", "hello"], dtype=pl.String))
    assert labels.to_list()[:3] == [None, None, None]
    assert np.isnan(conf[:3]).all() and not np.isnan(conf[3])


def test_prediction_independent_of_batch_composition(capability_model: CapabilityModel) -> None:
    prompts = [p for p, _ in NAMED]
    alone, conf_alone = capability_model.predict(pl.Series(prompts[:1]))
    together, conf_together = capability_model.predict(pl.Series(prompts[::-1]))
    assert alone[0] == together[-1]
    assert abs(conf_alone[0] - conf_together[-1]) < 1e-12
