# initlab: `make repro` runs the whole pipeline, `make test` the tests. Both set up .venv first.
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)
export MLFLOW_DISABLE_TELEMETRY ?= true

.PHONY: setup repro test test-fast lint ui clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

repro: setup            ## run every stage that is out of date (all of them on a fresh clone)
	dvc repro

test: setup             ## fast tests, then the slow end-to-end tests (dvc repro of the CI profile)
	pytest -q
	pytest -q -m slow

test-fast: setup
	pytest -q

lint: setup
	ruff check src tests

ui: setup               ## the MLflow UI on http://127.0.0.1:5000, local only
	mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

clean:
	rm -rf pipeline mlflow.db mlflow.db-* mlruns
