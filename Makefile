# The two commands of the README: `make demo` and `make test`. Both build .venv when needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export MLOPS_HOME ?= $(CURDIR)/.mlops_home
export DAGSTER_HOME ?= $(MLOPS_HOME)/dagster
# No telemetry (the code sets the same defaults; see mlops_resources/storage.py).
export GX_ANALYTICS_ENABLED ?= false
export FEAST_USAGE ?= False
export MLFLOW_DISABLE_TELEMETRY ?= true
export DO_NOT_TRACK ?= 1
# Never unpickle a model artifact (the suite loads skops and torch weights itself).
export MLFLOW_ALLOW_PICKLE_DESERIALIZATION := false

.PHONY: install demo dev serve test test-integration lint mlflow-ui clean

# Installs pinned versions from constraints.txt (torch 2.13.0: the CPU build where one is on disk).
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/python -m mlops_assets demo

# dagster dev with the instance's run queue limits; stops on Ctrl-C or SIGTERM (see the script).
DEV_HOST ?= 127.0.0.1
DEV_PORT ?= 3000
dev: install
	$(BIN)/python -m mlops_assets demo-data
	bash scripts/dagster-dev.sh $(DEV_HOST) $(DEV_PORT)

# The champion of every pipeline behind HTTP (docs/serving.md): POST /<pipeline>/predict, /docs.
SERVE_HOST ?= 127.0.0.1
SERVE_PORT ?= 8000
serve: install
	$(BIN)/python -m mlops_assets serve --host $(SERVE_HOST) --port $(SERVE_PORT)

mlflow-ui: install
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(MLOPS_HOME)/mlflow/mlflow.db -h 127.0.0.1 -p 5000

test: install
	$(BIN)/ruff check .
	$(BIN)/pytest -q -p no:cacheprovider --durations=15 --ignore=tests/integration

# Production profile on real servers (PostgreSQL, Redis, moto S3, MLflow server) and the UI in
# headless Chromium; installs what it needs and stops every server it started (scripts/).
test-integration: install
	bash scripts/integration.sh

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(MLOPS_HOME)
