# The two commands a newcomer needs: `make run` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Most tests wait on PostgreSQL, Redis or a subprocess, so four workers keep two cores busy (at most six: one
# Redis database each, tests/integration/conftest.py). TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= 4

.PHONY: run test lint bench clean

$(BIN)/deploy-tokens: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

run: $(BIN)/deploy-tokens
	$(BIN)/deploy-tokens serve --host 127.0.0.1 --port 8080

test: lint
	.ci/services
	.ci/tools
	$(BIN)/python -m pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)

lint: $(BIN)/deploy-tokens
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: $(BIN)/deploy-tokens
	.ci/services
	.ci/tools
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) var

# The end-to-end stack (service + nginx/git/pypiserver/docker-registry) for trying real clients by hand.
.PHONY: e2e-stack
e2e-stack: $(BIN)/deploy-tokens
	.ci/tools
	$(BIN)/python scripts/e2e_stack.py $(E2E_ARGS)
