"""Template fingerprint: paraphrased scaffolds collide, unrelated prompts do not, slot values never matter."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distillguard.core.errors import ConfigError
from distillguard.signals.template import TemplateIndex, TemplateParams

HARVEST_VARIANTS = [
    "You are an expert mathematician. Solve the following problem and write out every intermediate step of your reasoning before the final answer:\nA train leaves at 3pm going 60 mph. How far has it gone by 5pm?",
    "You are an expert mathematician. Solve the following problem and write out every intermediate step of your reasoning before giving the final answer:\nIf x = 17 and y = 4, what is 3x+2y?",
    "You're an expert mathematician. Solve this problem and write out each intermediate step of your reasoning before the final answer:\nHow many primes are below 100?",
    "As an expert mathematician, solve the problem below, writing out every intermediate step of your reasoning before the final answer.\nWhat is the derivative of sin(x^2)?",
]
UNRELATED = [
    "Q: A train leaves the station at 3pm going 60 mph. How far has it gone by 5pm?\nA: Let's think step by step.",
    "Write a short story about a dragon who is afraid of the dark and learns to love the night.",
    "Can you explain the difference between a list and a tuple in python, and when to use each?",
    "Translate the following sentence into French: the meeting has been moved to Thursday.",
    "What's a good recipe for a quick vegetarian dinner with chickpeas and spinach?",
]


def _ids(prompts: list[str]) -> np.ndarray:
    tid, _, valid = TemplateIndex().assign(pl.Series(prompts, dtype=pl.String))
    return np.where(valid, tid, 0)


def test_paraphrased_scaffold_variants_collide() -> None:
    ids = _ids(HARVEST_VARIANTS + UNRELATED)
    assert len(set(ids[: len(HARVEST_VARIANTS)].tolist())) == 1
    assert ids[0] not in set(ids[len(HARVEST_VARIANTS) :].tolist())


def test_unrelated_prompts_do_not_collide() -> None:
    ids = _ids(UNRELATED)
    assert len(set(ids.tolist())) == len(UNRELATED)


def test_saas_fixed_template_is_one_template_but_distinct_from_hydra() -> None:
    saas = [f"Summarise this support ticket in two sentences: customer {n} cannot reset password after SSO migration on {d}"
            for n, d in [("#4411", "2026-05-01"), ("#9", "2026-05-03"), ("#77120", "2026-06-11")]]  # fmt: skip
    ids = _ids(saas + HARVEST_VARIANTS[:2])
    assert ids[0] == ids[1] == ids[2]
    assert ids[3] == ids[4] != ids[0]


def test_empty_prompt_has_no_template() -> None:
    tid, shash, valid = TemplateIndex().assign(
        pl.Series(["", "   ", None, "hello there"], dtype=pl.String)
    )
    assert valid.tolist() == [False, False, False, True]
    assert tid[:3].tolist() == [0, 0, 0] and shash[:3].tolist() == [0, 0, 0]


def test_row_order_does_not_change_ids() -> None:
    prompts = HARVEST_VARIANTS + UNRELATED
    order = np.random.default_rng(3).permutation(len(prompts))
    ids = _ids(prompts)
    shuffled = _ids([prompts[i] for i in order])
    assert shuffled.tolist() == ids[order].tolist()


def test_ids_stable_across_batches() -> None:
    index = TemplateIndex()
    first, _, _ = index.assign(pl.Series(HARVEST_VARIANTS[:2] + UNRELATED[:1]))
    # A later batch without the variant that set the id still maps onto the remembered template.
    second, _, _ = index.assign(pl.Series(HARVEST_VARIANTS[2:] + UNRELATED[1:]))
    assert set(second[:2].tolist()) == {first[0]}


def test_bad_parameters_fail_fast_with_advice() -> None:
    with pytest.raises(ConfigError, match="multiple of bands"):
        TemplateParams(num_perm=30, bands=20)


slot_text = st.text(alphabet="abcdefghijklmnopqrstuvwxyz ", min_size=1, max_size=30).filter(
    str.strip
)


@settings(max_examples=40, deadline=None)
@given(
    number=st.integers(min_value=-(10**9), max_value=10**9),
    decimal=st.floats(min_value=0, max_value=1e6, allow_nan=False).map(lambda f: f"{f:.3f}"),
    quoted=slot_text,
    ident=st.from_regex(r"[a-z]{1,8}_[a-z0-9]{1,8}", fullmatch=True),
)
def test_slot_values_never_change_the_template(
    number: int, decimal: str, quoted: str, ident: str
) -> None:
    scaffold = 'You are a grader. Score the answer "{q}" for problem {n} using rubric {i} with tolerance {d} and explain every step.'
    a = scaffold.format(q=quoted, n=number, i=ident, d=decimal)
    b = scaffold.format(q="fixed value", n=7, i="base_rubric", d="0.5")
    tid, shash, _ = TemplateIndex().assign(pl.Series([a, b]))
    assert tid[0] == tid[1]
    assert shash[0] == shash[1]
