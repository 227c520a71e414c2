# The README's two commands: `make demo` and `make test`. Both bootstrap .venv from nothing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench bench-capture bench-capture-scale bench-trigger-cost bench-idle bench-failover bench-odata-delta bench-odata-follow clean services browser

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/dualwrite demo

# pytest-xdist workers of `make test` (0: all tests in one process); each worker has databases
# of its own (docs/operations.md). Chosen by measurement on 2 cores: see docs/operations.md.
TEST_WORKERS ?= 3

services:
	TEST_WORKERS=$(TEST_WORKERS) bash scripts/services.sh
	bash scripts/cap.sh

# Debian's Chromium and the playwright package, for the console's browser tests
browser: $(STAMP)
	bash scripts/browser.sh $(VENV)

test: $(STAMP) services browser
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy
	$(BIN)/python -m pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

bench: $(STAMP) services
	bash scripts/bench-deps.sh
	$(BIN)/python bench/initial_sync.py

bench-capture: $(STAMP) services
	bash scripts/bench-deps.sh
	$(BIN)/python bench/capture.py

# capture with 100 maps on one link, and a backlog drained after a pause (--backlog 1000000
# for the full figure: BACKLOG=1000000)
bench-capture-scale: $(STAMP) services
	$(BIN)/python bench/capture_scale.py --backlog $(or $(BACKLOG),100000)

# what the capture triggers cost the application's commits, inside the server, against Bucardo's
bench-trigger-cost: $(STAMP) services
	bash scripts/bench-deps.sh
	$(BIN)/python bench/trigger_cost.py

# what a quiet link costs (CPU of idle run and serve)
bench-idle: $(STAMP) services
	$(BIN)/python bench/idle.py

# how long a link goes without an applier when the active one fails
bench-failover: $(STAMP) services
	$(BIN)/python bench/failover.py

# OData delta links against polling a served set with plain paged GETs
bench-odata-delta: $(STAMP) services
	$(BIN)/python bench/odata_delta.py

# capture lag of `dualwrite run` following an OData side (serve by delta links, CAP and serve
# by polling) against plain paged GETs of the same set
bench-odata-follow: $(STAMP) services
	$(BIN)/python bench/odata_follow.py

clean:
	rm -rf $(VENV) demo .pytest_cache .mypy_cache .ruff_cache
