# casefetch: `make run` runs the pipeline, `make test` runs the whole suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install run test test-fast lint typecheck check bench lock clean

# Exactly the locked versions (requirements-dev.lock: the project's dependencies, the test
# and dev tools), then the project itself as an editable install.
$(BIN)/casefetch: pyproject.toml requirements-dev.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --require-hashes --no-deps -r requirements-dev.lock
	$(BIN)/pip install --quiet --no-deps -e .
	@touch $@

install: $(BIN)/casefetch

# The whole pipeline on this machine (receiver on :8080, a worker, a private Redis when none
# answers on localhost:6379), with development defaults you can override from the environment.
run: install
	WEBHOOK_BEARER_TOKENS="$${WEBHOOK_BEARER_TOKENS:-dev-token}" \
	DOWNLOAD_ALLOW_PRIVATE_NETWORKS="$${DOWNLOAD_ALLOW_PRIVATE_NETWORKS:-true}" \
	$(BIN)/casefetch run

# Every test, the slow fault-injection, container and browser ones included, with branch
# coverage of the code and of the receivers and workers the tests start (the gate is in
# pyproject.toml). Each session starts its own redis-server.
test: install
	rm -f .coverage .coverage.*
	$(BIN)/coverage run -m pytest
	$(BIN)/coverage combine --quiet
	$(BIN)/coverage report

test-fast: install
	$(BIN)/pytest -m "not slow"

SOURCES := casefetch casefetch_tools receiver worker tests bench

lint: install
	$(BIN)/ruff check $(SOURCES)
	$(BIN)/ruff format --check $(SOURCES)

# mypy strict on the code and the tests (pyproject.toml: no per-module relaxation).
typecheck: install
	$(BIN)/mypy

# What CI runs (.ci/run): every check, then every test with the coverage gate.
check: lint typecheck test

bench: install
	$(BIN)/python -m bench

# After changing a dependency in pyproject.toml: pin every version again, with hashes.
# requirements.lock goes into the image; requirements-dev.lock adds the test and dev tools.
LOCK := $(VENV)/bin/uv pip compile pyproject.toml --universal --python-version 3.11 \
	--generate-hashes --no-header --quiet --extra dashboard
lock: install
	$(BIN)/pip install --quiet uv
	$(LOCK) -o requirements.lock
	$(LOCK) --extra test --extra dev -o requirements-dev.lock

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
