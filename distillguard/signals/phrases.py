"""Weighted phrase scoring for reasoning-chain elicitation, grader / reward-model use and "safe rewrite" requests.

Each score is a logistic of a bias plus the weights of matching phrases (and, for
reasoning, the ``thinking`` flag and the tokens-out per token-in ratio). Weights
favour phrases that ask for *the trace itself* (internal reasoning, chain of thought,
a reasoning trace for a given answer) over ordinary benchmark prompting ("Let's think
step by step"), which eval labs send every day. The content part abstains (null) when
the prompt is empty.
"""

from __future__ import annotations

from typing import Final

import polars as pl

from distillguard.signals.text import phrase_score, sigmoid

REASONING_PHRASES: Final[tuple[tuple[str, float], ...]] = (
    (r"internal (reasoning|monologue|thoughts?)", 3.0),
    (r"chain[- ]of[- ]thought", 2.5),
    (
        r"reasoning (trace|chain|process)|thought process|scratch ?pad|hidden (reasoning|thoughts?)",
        2.5,
    ),
    (r"(every|each|all( the)?) (intermediate|single) (step|reasoning)", 2.0),
    (
        r"(full|complete|entire|detailed|exhaustive) (reasoning|derivation|explanation of (your|the) reasoning)",
        2.0,
    ),
    (r"reasoning behind", 1.5),
    (r"(completed|given|final|correct) answer", 0.8),
    (
        r"(show|write out|explain|walk through|reveal|output) (all |each |every )?(of )?(your|the) (work|reasoning|steps|thinking)",
        1.5,
    ),
    (r"before (giving |stating |writing )?(the|your) final (answer|code)", 1.0),
    (r"<think>|<reasoning>|\[reasoning\]", 2.0),
    (r"think(ing)? step[- ]by[- ]step|step[- ]by[- ]step", 0.6),
)
REASONING_BIAS: Final = -3.0

GRADER_PHRASES: Final[tuple[tuple[str, float], ...]] = (
    (r"reward model|reward signal|scalar reward|preference (data|label|model)", 3.0),
    (r"rubric", 1.8),
    (
        r"(rate|score|grade|judge|evaluate|assess|critique) (the |this |each |both |these )?(following |two |above |below )*(ai |assistant('s)? |model('s)? |chatbot('s)? )?(answer|response|completion|output|repl(y|ies)|solution|summary|candidate)",
        2.5,
    ),
    (
        r"(response|completion|output|answer) (a|1)\b.{0,200}(response|completion|output|answer) (b|2)\b",
        2.2,
    ),
    (r"(which|what) (one|response|completion|answer) is better", 2.0),
    (
        r"on a scale (of|from) \d+ (to|-) ?\d+|from \d+ ?(to|-) ?\d+ for (helpfulness|harmlessness|correctness|accuracy|quality)",
        1.2,
    ),
    (r"(helpful(ness)?|harmless(ness)?|honest(y)?)\b.{0,40}\b(score|rating|rank)", 1.0),
    (r"(output|reply|return|respond with) only the (score|rating|number|label|letter)", 1.2),
    (r"\b(correct|incorrect)\b.{0,40}ground truth|ground truth.{0,40}\b(correct|incorrect)\b", 1.2),
    (r"\b(grade|rate|score)\b", 0.5),
)
GRADER_BIAS: Final = -3.2

REWRITE_PHRASES: Final[tuple[tuple[str, float], ...]] = (
    (
        r"(rewrite|revise|edit|improve|fix) (the|this|that)( following)? (ai('s)?|assistant('s)?|model('s)?|chatbot('s)?)? ?(response|answer|completion|reply|output)",
        2.2,
    ),
    (r"(ai|assistant|model|chatbot)('s)? (response|answer|completion|reply|output)", 0.8),
    (r"harmless|safety (policy|guidelines)|(make|be) (it )?(safe|safer)|unsafe|harmful", 1.6),
    (r"refus(e|al)|declin(e|es|ing)", 1.0),
    (r"helpful,? (honest|and harmless)|more helpful", 0.8),
    (r"critique.{0,80}(revis|rewrit)|(revis|rewrit).{0,80}critique", 1.5),
    (r"\b(rewrite|revise|rephrase|paraphrase)\b", 0.8),
)
REWRITE_BIAS: Final = -3.8


def reasoning_expr(
    prompt: pl.Expr, thinking: pl.Expr, ratio: pl.Expr, has_content: pl.Expr
) -> pl.Expr:
    """Reasoning-elicitation probability of a lower-cased prompt; null without content."""
    return reasoning_from_phrases(reasoning_phrases(prompt), thinking, ratio, has_content)


def reasoning_phrases(prompt: pl.Expr) -> pl.Expr:
    """The prompt-only part of the reasoning log-odds (bias + phrase weights) of a lower-cased prompt."""
    return phrase_score(prompt, REASONING_PHRASES, REASONING_BIAS)


def reasoning_from_phrases(
    phrases: pl.Expr, thinking: pl.Expr, ratio: pl.Expr, has_content: pl.Expr
) -> pl.Expr:
    """Reasoning-elicitation probability from :func:`reasoning_phrases` plus the per-exchange terms.

    Split so the regex part runs once per distinct prompt and the cheap per-exchange terms per row.
    """
    logit = phrases + thinking.fill_null(False).cast(pl.Float64) * 0.8
    # Long outputs for short prompts are what reasoning traces look like; capped so it only nudges.
    logit = logit + (ratio.fill_null(1.0).clip(0.05, 50.0).log(2.0) * 0.25).clip(-0.5, 1.0)
    return pl.when(has_content).then(sigmoid(logit)).otherwise(None)


def grader_expr(prompt: pl.Expr, has_content: pl.Expr) -> pl.Expr:
    """Grader / reward-model use probability of a lower-cased prompt; null without content."""
    return (
        pl.when(has_content)
        .then(sigmoid(phrase_score(prompt, GRADER_PHRASES, GRADER_BIAS)))
        .otherwise(None)
    )


def rewrite_expr(prompt: pl.Expr, has_content: pl.Expr) -> pl.Expr:
    """ "Safe rewrite" request probability of a lower-cased prompt; null without content."""
    return (
        pl.when(has_content)
        .then(sigmoid(phrase_score(prompt, REWRITE_PHRASES, REWRITE_BIAS)))
        .otherwise(None)
    )
