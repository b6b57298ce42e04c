# The two commands a newcomer needs: `make run` and `make test`. Both create .venv on first use: `make run`
# installs what the service needs to run, `make test` adds the test extras. What pip says goes to
# .venv/install.log (printed when an install fails), so `make run` prints little before "ready".
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip --disable-pip-version-check
INSTALL_LOG := $(VENV)/install.log
RUN_INSTALLED := $(VENV)/.installed-run
TEST_INSTALLED := $(VENV)/.installed-test
# Most tests wait on PostgreSQL, Redis or a subprocess, so four workers keep two cores busy (at most six: one
# Redis database each, tests/integration/conftest.py). TEST_WORKERS=0 runs everything in one process. Tests
# marked slow are collected first (tests/conftest.py) and handed out two at a time, so they spread over the
# workers from the start instead of queueing on one.
TEST_WORKERS ?= 4

.PHONY: install run test lint bench clean

$(BIN)/python:
	@echo "Creating $(VENV) (Python 3.11+); the install log is $(INSTALL_LOG)."
	@$(PYTHON) -m venv $(VENV)
	@$(PIP) install --upgrade pip > $(INSTALL_LOG) 2>&1 || { cat $(INSTALL_LOG); exit 1; }

$(RUN_INSTALLED): pyproject.toml | $(BIN)/python
	@echo "Installing the service into $(VENV)..."
	@$(PIP) install -e . >> $(INSTALL_LOG) 2>&1 || { cat $(INSTALL_LOG); exit 1; }
	@touch $@

$(TEST_INSTALLED): pyproject.toml | $(BIN)/python
	@echo "Installing the service and its test extras into $(VENV)..."
	@$(PIP) install -e '.[test]' >> $(INSTALL_LOG) 2>&1 || { cat $(INSTALL_LOG); exit 1; }
	@touch $@ $(RUN_INSTALLED)

# The service and what running it needs (the Procfile's processes, honcho), nothing for tests.
install: $(RUN_INSTALLED)

run: $(RUN_INSTALLED)
	@$(BIN)/deploy-tokens serve --host 127.0.0.1 --port 8080

test: lint
	.ci/services
	.ci/tools
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --maxschedchunk 2 $(PYTEST_ARGS)

lint: $(TEST_INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: $(TEST_INSTALLED)
	.ci/services
	.ci/tools
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) var

# The end-to-end stack (service + nginx/git/pypiserver/docker-registry) for trying real clients by hand.
.PHONY: e2e-stack
e2e-stack: $(TEST_INSTALLED)
	.ci/tools
	$(BIN)/python scripts/e2e_stack.py $(E2E_ARGS)
