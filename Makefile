# glidein: `make demo` runs the embedded default end to end; `make test` runs the test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[server,dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m glidein_demo.demo

test: $(STAMP)
	$(BIN)/ruff check glidein_client glidein_server glidein_demo glidein_sim tests benchmarks
	$(BIN)/ruff format --check glidein_client glidein_server glidein_demo glidein_sim tests benchmarks
	$(BIN)/mypy
	$(BIN)/python -m pytest -q --durations=25

lint: $(STAMP)
	$(BIN)/ruff check glidein_client glidein_server glidein_demo glidein_sim tests benchmarks
	$(BIN)/ruff format --check glidein_client glidein_server glidein_demo glidein_sim tests benchmarks
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m benchmarks.throughput

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
