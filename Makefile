# distillguard: `make demo` runs the main job on the embedded default; `make test` installs and passes the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORPORA := .cache/corpora/.complete
SYSDEPS := .cache/.sysdeps
DEMO := out/demo

.PHONY: setup demo test lint typecheck bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(CORPORA): $(STAMP)
	$(BIN)/python -m distillguard.core.corpora fetch

$(SYSDEPS): scripts/install_system_deps.sh
	bash scripts/install_system_deps.sh
	mkdir -p .cache && touch $(SYSDEPS)

setup: $(STAMP) $(CORPORA) $(SYSDEPS)

# The main job on the embedded default: simulate a labelled small scenario, detect, evaluate.
demo: setup
	$(BIN)/distillguard simulate --scenario default --scale small --seed 2026 --out $(DEMO)/log
	$(BIN)/distillguard validate $(DEMO)/log
	$(BIN)/distillguard detect $(DEMO)/log --out $(DEMO)/results
	$(BIN)/distillguard evaluate $(DEMO)/log $(DEMO)/results

lint: setup
	$(BIN)/ruff check distillguard tests bench scripts
	$(BIN)/ruff format --check distillguard tests bench scripts

typecheck: setup
	$(BIN)/mypy

test: setup
	$(BIN)/ruff check distillguard tests bench scripts
	$(BIN)/ruff format --check distillguard tests bench scripts
	$(BIN)/mypy
	$(BIN)/pytest

# Benchmarks (minutes each on 2 cores); figures go into the README.
bench: setup
	$(BIN)/python bench/bench_validate.py --rows 10000000
	$(BIN)/python bench/bench_detect.py --scale medium --seed 7
	$(BIN)/python bench/bench_replay.py --scale medium --seed 7
	$(BIN)/python bench/bench_service.py --rate 2000 --seconds 10 --redis
	$(BIN)/python bench/bench_spark.py --scale medium --seed 7

clean:
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache
