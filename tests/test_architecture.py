"""House rules checked on the source: data flows forward between stages; every module says what it is for."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "distillguard"

# Data-flow order: a stage may import core/ and the stages before it, never one after it.
STAGES = (
    "core",
    "ingest",
    "signals",
    "features",
    "linking",
    "scoring",
    "enforce",
    "evidence",
    "share",
    "simulate",
    "evaluate",
    "engines",
)
# The wiring modules sit above every stage.
TOP_LEVEL = ("pipeline", "cli", "__main__", "__init__")

MODULES = sorted(PACKAGE.rglob("*.py"))


def _stage_of(module: Path) -> str:
    parts = module.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else module.stem


def _imported_stages(tree: ast.AST) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "distillguard" and len(parts) > 1:
                found.add(parts[1])
    return found


@pytest.mark.parametrize("module", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_stage_imports_only_earlier_stages(module: Path) -> None:
    stage = _stage_of(module)
    if stage in TOP_LEVEL:
        return
    assert stage in STAGES, f"{module.name}: package {stage!r} is not a known stage"
    allowed = set(STAGES[: STAGES.index(stage) + 1])
    imported = _imported_stages(ast.parse(module.read_text(encoding="utf-8")))
    later = sorted((imported - allowed) - set(TOP_LEVEL))
    assert not later, f"{module.relative_to(PACKAGE)} ({stage}) imports later stages {later}"


@pytest.mark.parametrize("module", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_states_its_purpose(module: Path) -> None:
    docstring = ast.get_docstring(ast.parse(module.read_text(encoding="utf-8")))
    assert docstring, f"{module.relative_to(PACKAGE)} has no module docstring"
    assert docstring.strip().splitlines()[0].strip(), (
        "the first docstring line must say what it is for"
    )


def test_pipeline_and_cli_are_not_imported_by_stages() -> None:
    for module in MODULES:
        if _stage_of(module) in TOP_LEVEL:
            continue
        imported = _imported_stages(ast.parse(module.read_text(encoding="utf-8")))
        assert not imported & {"pipeline", "cli"}, (
            f"{module.relative_to(PACKAGE)} imports the wiring layer"
        )
