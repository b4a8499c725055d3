# casefetch: `make run` runs the pipeline, `make test` runs the whole suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install run test test-fast lint typecheck check bench clean

$(BIN)/casefetch: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,dev]'
	@touch $@

install: $(BIN)/casefetch

# The whole pipeline on this machine (receiver on :8080, a worker, a private Redis when none
# answers on localhost:6379), with development defaults you can override from the environment.
run: install
	WEBHOOK_BEARER_TOKENS="$${WEBHOOK_BEARER_TOKENS:-dev-token}" \
	DOWNLOAD_ALLOW_PRIVATE_NETWORKS="$${DOWNLOAD_ALLOW_PRIVATE_NETWORKS:-true}" \
	$(BIN)/casefetch run

# Every test, the slow fault-injection ones included. Each session starts its own redis-server.
test: install
	$(BIN)/pytest

test-fast: install
	$(BIN)/pytest -m "not slow"

lint: install
	$(BIN)/ruff check casefetch receiver worker tests bench

typecheck: install
	$(BIN)/mypy

check: lint typecheck test

bench: install
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
