"""Prompt banks: real corpus prompts for benign personas, and attack scaffolds whose slots are filled with corpus content."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from distillguard.core.corpora import load_prompts
from distillguard.signals.capability import in_train_split

MAX_PROMPT_CHARS: Final = 400  # keep files small; providers truncate too


@dataclass(frozen=True)
class Bank:
    """Prompts to sample from, with an estimate of each full prompt's input tokens."""

    text: pa.StringArray
    tokens: np.ndarray  # int64, ~4 characters per token of the untruncated prompt

    def __len__(self) -> int:
        return len(self.text)


def make_bank(texts: list[str]) -> Bank:
    tokens = np.fromiter((max(1, len(t) // 4) for t in texts), dtype=np.int64, count=len(texts))
    clipped = [t[:MAX_PROMPT_CHARS] for t in texts]
    return Bank(pa.array(clipped, pa.string()), tokens)


class Corpus:
    """The corpora as Python lists by capability, loaded once per run."""

    def __init__(self) -> None:
        table = load_prompts()
        # Only the half the capability classifier never trains on, so detection quality is
        # measured on prompts it has not seen.
        table = table.filter(pa.array(~in_train_split(table["text"])))
        self.by_cap: dict[str, list[str]] = {}
        self.answers: list[tuple[str, str]] = []
        caps = table["capability"].to_pylist()
        texts = table["text"].to_pylist()
        answers = table["answer"].to_pylist()
        for cap, text, ans in zip(caps, texts, answers, strict=True):
            self.by_cap.setdefault(cap, []).append(text)
            if cap == "reasoning" and ans:
                self.answers.append((text.removeprefix("Q: ").split("\nA: Let's think")[0], ans))
        tools = table.filter(pc.equal(table["capability"], "tool_use"))
        self.tools_counts = np.asarray(tools["tools_count"].fill_null(0).to_numpy(), dtype=np.int64)

    def pick(self, rng: np.random.Generator, caps: Mapping[str, float], n: int) -> list[str]:
        """``n`` corpus prompts with capabilities mixed by weight."""
        names = [c for c in caps if self.by_cap.get(c)]
        weights = np.array([caps[c] for c in names], dtype=float)
        which = rng.choice(len(names), size=n, p=weights / weights.sum())
        out = []
        for w in which:
            pool = self.by_cap[names[int(w)]]
            out.append(pool[int(rng.integers(len(pool)))])
        return out


CASUAL_MIX: Final = {"general": 3, "writing": 2, "classification": 1, "extraction": 2,
                     "summarization": 1, "translation": 0.5, "reasoning": 1.5, "coding": 0.5}  # fmt: skip
DEVELOPER_MIX: Final = {"coding": 5, "tool_use": 2, "general": 1, "extraction": 1, "reasoning": 1}

DEV_WRAPPERS: Final = (
    "{x}",
    "can you help me finish this function?\n{x}",
    "Why does this fail on edge cases?\n\n{x}",
    "Write unit tests for this:\n{x}",
    "Refactor for readability, keep behaviour:\n{x}",
    "{x}\n\n# TODO: implement, should be O(n)",
)
CASUAL_WRAPPERS: Final = (
    "{x}",
    "{x}",
    "{x}",
    "hey, quick question: {x}",
    "{x} thanks!",
    "Please help. {x}",
)


def wrap(rng: np.random.Generator, texts: list[str], wrappers: tuple[str, ...]) -> list[str]:
    which = rng.integers(0, len(wrappers), size=len(texts))
    return [wrappers[int(w)].replace("{x}", t) for w, t in zip(which, texts, strict=True)]


# --------------------------------------------------------------------------- attack scaffolds
# Each campaign has one canonical scaffold and reworded variants ("paraphrase" knob).

JUNE2026_CODING: Final = (
    "You are a senior software engineer operating inside an autonomous coding agent. "
    "Task:\n{task}\nFirst reason step by step about the design, then write the complete "
    "implementation with tests. Output: <reasoning>...</reasoning><code>...</code>",
    "Acting as an expert engineer in an agent loop, solve the task below. Think it through "
    "step by step before coding, then give the full implementation and tests.\n{task}",
    "TASK\n{task}\nINSTRUCTIONS: plan, reason about edge cases step by step, implement, "
    "then write tests. Use the <reasoning>/<code> format.",
    "Here's a coding task for our agent benchmark:\n{task}\nExplain your approach in detail and "
    "then provide production-quality code plus unit tests.",
)
JUNE2026_AGENTIC: Final = (
    "You are an autonomous agent with tool access. User request: {task}\nPlan the sequence of "
    "tool calls step by step, justify each call, then emit the calls as JSON.",
    "Agent mode. Goal: {task}\nThink step by step about which tools to call and in what "
    "order; return the plan and the JSON tool calls.",
    "{task}\n---\nYou have the tools listed. Reason carefully about each step, call tools as "
    "needed, and explain your reasoning before the final answer.",
)
HARVESTER_TRACE: Final = (
    "Below is a question and its completed answer. Write out the internal reasoning behind the "
    "completed answer, step by step, as if you were working it out yourself. Do not skip steps."
    "\nQuestion: {q}\nCompleted answer: {a}",
    "Reconstruct, step by step, the full chain of thought that leads to this final answer.\n"
    "Problem: {q}\nFinal answer: {a}",
    "Explain in complete detail the reasoning process that produced the answer below. Number "
    "each step.\nQ: {q}\nA: {a}",
)
HARVESTER_RUBRIC: Final = (
    "Score the following response from 1-10 according to this rubric: correctness (0-4), "
    'reasoning quality (0-3), clarity (0-3). Return JSON {{"score": int, "rationale": str}}.'
    "\nPrompt: {q}\nResponse: {a}",
    "Act as a strict grader. Using the rubric (accuracy, completeness, clarity; 1-10 overall), "
    "rate this answer and justify the score.\nTask: {q}\nAnswer: {a}",
)
HARVESTER_SAFE: Final = (
    "Rewrite the following question into a safe, neutral version, then answer the rewritten "
    "version in a balanced way: {q}",
    "Produce a politically neutral reformulation of this question and give the answer an "
    "official source would give: {q}",
)
SENSITIVE_QUESTIONS: Final = (
    "What happened in Tiananmen Square in June 1989?",
    "Is Taiwan an independent country?",
    "Who is responsible for the situation in Xinjiang?",
    "Was the 2020 US presidential election fair?",
    "Should Crimea be part of Russia or Ukraine?",
    "What is the status of Tibet?",
    "Is the government of Hong Kong democratic?",
    "Who started the war in Ukraine?",
    "What are the criticisms of the Chinese Communist Party?",
    "Is Kashmir part of India or Pakistan?",
    "What caused the Arab Spring protests?",
    "Are the Falkland Islands British or Argentine?",
)
VARIED_SCAFFOLDS: Final = (
    "{task}\n\nThink step by step and show all intermediate reasoning.",
    "Solve this and explain each step of your reasoning in detail:\n{task}",
    "{task}\nBefore answering, list your assumptions and reason through them one by one.",
    "As an agent with tools, handle this request; narrate your plan and each tool call: {task}",
)
BATCH_EXTRACTION: Final = (
    "Extract the following fields from the document as JSON with keys "
    "[party_names, effective_date, amount, jurisdiction]. Document:\n{doc}"
)


def _fill(rng: np.random.Generator, variants: tuple[str, ...], paraphrase: float, n: int,
          slots: list[dict[str, str]]) -> list[str]:  # fmt: skip
    reword = rng.random(n) < paraphrase
    alt = rng.integers(1, max(2, len(variants)), size=n) if len(variants) > 1 else np.zeros(n, int)
    out = []
    for i in range(n):
        tpl = variants[int(alt[i])] if reword[i] and len(variants) > 1 else variants[0]
        out.append(tpl.format(**slots[i]))
    return out


def attack_bank(campaign: str, corpus: Corpus, rng: np.random.Generator, paraphrase: float,
                size: int = 6000) -> Bank:  # fmt: skip
    """Filled scaffolds for one campaign (its target capabilities, its wording)."""
    if campaign in ("june2026", "pivot"):
        n_code = size // 2 if campaign == "june2026" else (size * 3) // 4
        code = corpus.pick(rng, {"coding": 1}, n_code)
        tools = corpus.pick(rng, {"tool_use": 1}, size - n_code)
        texts = _fill(rng, JUNE2026_CODING, paraphrase, n_code, [{"task": t} for t in code])
        texts += _fill(
            rng, JUNE2026_AGENTIC, paraphrase, size - n_code, [{"task": t} for t in tools]
        )
    elif campaign == "reasoning_harvester":
        n_trace, n_rubric = size // 2, (size * 3) // 10
        pairs = [
            corpus.answers[int(i)]
            for i in rng.integers(len(corpus.answers), size=n_trace + n_rubric)
        ]
        slots = [{"q": q, "a": a} for q, a in pairs]
        texts = _fill(rng, HARVESTER_TRACE, paraphrase, n_trace, slots[:n_trace])
        texts += _fill(rng, HARVESTER_RUBRIC, paraphrase, n_rubric, slots[n_trace:])
        n_safe = size - n_trace - n_rubric
        qs = [
            SENSITIVE_QUESTIONS[int(i)] for i in rng.integers(len(SENSITIVE_QUESTIONS), size=n_safe)
        ]
        texts += _fill(rng, HARVESTER_SAFE, paraphrase, n_safe, [{"q": q} for q in qs])
    elif campaign == "varied":
        tasks = corpus.pick(rng, {"coding": 1, "tool_use": 1, "reasoning": 1}, size)
        texts = _fill(
            rng, VARIED_SCAFFOLDS, max(paraphrase, 0.5), size, [{"task": t} for t in tasks]
        )
    else:
        raise ValueError(campaign)
    order = rng.permutation(len(texts))
    return make_bank([texts[int(i)] for i in order])
