# initlab: `make repro` runs the whole pipeline, `make test` the tests. Both set up .venv first.
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)
export MLFLOW_DISABLE_TELEMETRY ?= true

.PHONY: setup lock repro verify test test-fast lint ui clean postgres server server-stop cluster cluster-stop

# The environment is locked: requirements.lock pins every package (torch's CUDA wheels included) with
# its SHA-256, for Linux x86_64 and Python 3.11. pyproject.toml keeps the ranges; `make lock` is the
# one deliberate step that moves the pins.
LOCK := requirements.lock
PIP_VERSION := 26.3
PIP_COMPILE := pip-compile --generate-hashes --allow-unsafe --extra dev --strip-extras \
	--no-emit-index-url --no-emit-find-links --no-emit-trusted-host --output-file $(LOCK) pyproject.toml

setup: $(VENV)/.installed

$(VENV)/.installed: $(LOCK) pyproject.toml
	python3 -m venv --clear $(VENV)
	$(BIN)/pip install -q pip==$(PIP_VERSION)
	$(BIN)/pip install -q --require-hashes --no-deps -r $(LOCK)
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	$(BIN)/pip check
	touch $@

lock:                   ## re-resolve pyproject.toml's ranges to the newest releases into requirements.lock
	test -x $(BIN)/pip-compile || { python3 -m venv $(VENV) && $(BIN)/pip install -q pip==$(PIP_VERSION) pip-tools; }
	$(PIP_COMPILE) --upgrade
	$(MAKE) setup

repro: setup            ## run every stage that is out of date (all of them on a fresh clone)
	dvc repro

verify: setup          ## after `make repro`: identical to the committed results, within bound on another CPU, or a regression
	initlab verify

test: setup postgres    ## fast tests, then the slow end-to-end tests (dvc repro of the CI profile, the server)
	pytest -q
	pytest -q -m slow

test-fast: setup
	pytest -q

lint: setup             ## ruff's checks and its formatter (the same as .pre-commit-config.yaml and .ci/run)
	ruff check src tests
	ruff format --check src tests

ui: setup               ## the MLflow UI on http://127.0.0.1:5000, local only
	@echo "open http://127.0.0.1:5000/#/experiments?workflowType=machine_learning"
	mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

# The team's tracking server (`initlab server --help`): MLflow's server with its basic-auth app on
# PostgreSQL, on 127.0.0.1:5001, data in .server/. The login comes from the environment:
#   export MLFLOW_TRACKING_USERNAME=<name> MLFLOW_TRACKING_PASSWORD=<password>   (never in a file in git)
postgres:               ## PostgreSQL's server programs (Debian's package) when this machine lacks them
	@command -v pg_ctl >/dev/null || ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || \
		{ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql; }

server: setup postgres  ## start PostgreSQL and the MLflow server; then MLFLOW_TRACKING_URI=http://127.0.0.1:5001
	initlab server start

server-stop: setup      ## stop both (their data stay in .server/)
	initlab server stop

# A Ray cluster on this machine, to try `initlab train --ray` (docs/cluster.md): a head that runs
# no tasks and WORKERS worker nodes of one CPU each, with Ray's token authentication. Then:
#   export RAY_AUTH_MODE=token INITLAB_RAY_ADDRESS=auto && dvc repro
WORKERS ?= 2
RAY_PORT ?= 6379
RAY := RAY_AUTH_MODE=token RAY_USAGE_STATS_ENABLED=0 ray
cluster: setup          ## start a local Ray cluster (head + WORKERS=2 nodes of 1 CPU); then INITLAB_RAY_ADDRESS=auto
	$(RAY) start --head --num-cpus 0 --port $(RAY_PORT) --include-dashboard=false --disable-usage-stats
	for i in $$(seq $(WORKERS)); do $(RAY) start --address 127.0.0.1:$(RAY_PORT) --num-cpus 1 || exit 1; done
	$(RAY) status --address 127.0.0.1:$(RAY_PORT)
	@echo "export RAY_AUTH_MODE=token INITLAB_RAY_ADDRESS=auto   # then: dvc repro, or initlab train <study>"

cluster-stop: setup     ## stop every Ray node of this machine
	$(RAY) stop

clean:                  ## remove every stage output but the committed metrics, and the MLflow store
	git clean -fdXq pipeline
	rm -rf mlflow.db mlflow.db-* mlruns
