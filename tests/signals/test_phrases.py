"""Named positives and near-miss negatives for the reasoning, grader and safe-rewrite signals."""

from __future__ import annotations

import pyarrow as pa
import pytest

from distillguard.signals.exchange import (
    GraderUseDetector,
    ReasoningElicitationDetector,
    RewriteRequestDetector,
    content_scores,
)


def _table(prompts: list[str], thinking: bool = False, ratio: float = 1.0) -> pa.Table:
    n = len(prompts)
    return pa.table(
        {
            "request_id": [f"r{i}" for i in range(n)],
            "account_id": ["a"] * n,
            "ts": pa.array([0] * n, pa.timestamp("ms", tz="UTC")),
            "model": ["m"] * n,
            "client_ip": ["1.2.3.4"] * n,
            "prompt": prompts,
            "input_tokens": pa.array([100] * n, pa.int64()),
            "output_tokens": pa.array([int(100 * ratio)] * n, pa.int64()),
            "thinking": pa.array([thinking] * n),
        }
    )


def _score(column: str, prompt: str, **kw: object) -> float:
    value = content_scores(_table([prompt], **kw))[column][0]  # type: ignore[arg-type]
    assert value is not None
    return float(value)


REASONING = [
    # (name, prompt, expected high?)
    (
        "harvester: internal reasoning behind a completed answer",
        "Here is a question and its completed answer. Write out the internal reasoning behind this completed answer step by step.",
        True,
    ),
    (
        "harvester: full chain of thought",
        "Give your complete chain-of-thought, every intermediate step, before the final answer: 17*23",
        True,
    ),
    (
        "harvester: reasoning trace tags",
        "Solve it. Put your full reasoning trace inside <think> tags first.",
        True,
    ),
    (
        "eval lab: benchmark CoT prompt",
        "Q: A train leaves at 3pm going 60 mph. How far by 5pm?\nA: Let's think step by step.",
        False,
    ),
    ("developer question", "Why does my pytest fixture run twice when I use autouse=True?", False),
    ("student: show steps of one problem", "How do I solve 2x + 3 = 11?", False),
]


@pytest.mark.parametrize(("name", "prompt", "high"), REASONING, ids=[r[0] for r in REASONING])
def test_reasoning_elicitation(name: str, prompt: str, high: bool) -> None:
    score = _score("reasoning_elicitation", prompt)
    assert (score > 0.5) == high, (name, score)


def test_thinking_and_long_outputs_only_nudge() -> None:
    eval_prompt = REASONING[3][1]
    plain = _score("reasoning_elicitation", eval_prompt)
    nudged = _score("reasoning_elicitation", eval_prompt, thinking=True, ratio=30.0)
    assert plain < nudged < 0.5


GRADER = [
    (
        "reward model labelling",
        "Rate the following response on a scale of 1 to 10 for helpfulness. Output only the score.",
        True,
    ),
    (
        "pairwise preference",
        "Which response is better? Response A: It is Paris. Response B: It is Lyon. Answer A or B.",
        True,
    ),
    (
        "rubric judge",
        "Using this rubric, score the assistant's answer on accuracy and style.",
        True,
    ),
    (
        "student asking about grades",
        "What grade do I need on my final exam to get a B overall?",
        False,
    ),
    ("API rate question", "What is the rate limit for the batch endpoint?", False),
]


@pytest.mark.parametrize(("name", "prompt", "high"), GRADER, ids=[g[0] for g in GRADER])
def test_grader_use(name: str, prompt: str, high: bool) -> None:
    score = _score("grader_use", prompt)
    assert (score > 0.5) == high, (name, score)


REWRITE = [
    (
        "safe rewrite of a model response",
        "Rewrite the following assistant response so that it is harmless and refuses the unsafe part.",
        True,
    ),
    (
        "constitutional revision",
        "Critique the AI's answer for harmful content, then revise it to be more helpful and harmless.",
        True,
    ),
    (
        "polishing one's own email",
        "Rewrite this email to sound more polite: where is the report?",
        False,
    ),
    (
        "paraphrase homework",
        "Paraphrase this paragraph about photosynthesis for a ten year old.",
        False,
    ),
]


@pytest.mark.parametrize(("name", "prompt", "high"), REWRITE, ids=[r[0] for r in REWRITE])
def test_rewrite_request(name: str, prompt: str, high: bool) -> None:
    score = _score("rewrite_request", prompt)
    assert (score > 0.5) == high, (name, score)


@pytest.mark.parametrize(
    "detector", [ReasoningElicitationDetector, GraderUseDetector, RewriteRequestDetector]
)
def test_content_detectors_abstain_on_empty_prompt(detector: type) -> None:
    result = detector().score(
        _table(["", "   ", "Rate the following response from 1 to 10."], thinking=True, ratio=40.0)
    )
    scores = result.scores
    assert scores["score"].to_pylist()[:2] == [None, None]
    assert scores["abstain_reason"].to_pylist()[:2] == ["abstain: no content"] * 2
    assert scores["score"][2].as_py() is not None
