# Two commands on a fresh clone: `make demo` and `make test`. Each creates .venv if missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
# The recloop home the UIs and the service use (`make airflow STATE=var/demo` after a demo).
STATE ?= var
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# pip-compile flags that produced requirements.lock; `make lock` reuses the existing pins.
LOCK_FLAGS := --strip-extras --extra dev --allow-unsafe --generate-hashes \
	--no-emit-index-url --no-emit-find-links -o requirements.lock pyproject.toml

.PHONY: setup demo test test-fast lint lock lock-upgrade bench airflow mlflow serve clean bento images

setup: $(STAMP)

# The interpreter's own pip (23.x) mishandles extras under --require-hashes, so the lock's
# pinned pip is installed first; everything else comes from the lock, hashes checked.
$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check \
		"$$(grep -E '^pip==' requirements.lock | cut -d' ' -f1)"
	$(BIN)/pip install --quiet --require-hashes -r requirements.lock
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# The whole loop in its own home (var/demo, recreated each time): Airflow DAGs, the BentoML
# service, simulated users, a taste shift, its detection, retraining, the new champion.
# Afterwards `make airflow STATE=var/demo` and `make mlflow STATE=var/demo` show what it did.
demo: setup
	rm -rf var/demo
	RECLOOP_HOME=$(CURDIR)/var/demo $(BIN)/recloop demo

test: lint
	$(BIN)/pytest

test-fast: setup
	$(BIN)/pytest -m "not slow"

lint: setup
	$(BIN)/ruff check recloop training serving monitoring feature_repo dags tests benchmarks docker
	$(BIN)/ruff format --check recloop training serving monitoring feature_repo dags tests benchmarks docker
	cd dbt_project && ../$(BIN)/sqlfluff lint models

lock: setup
	$(BIN)/pip-compile --quiet $(LOCK_FLAGS)

lock-upgrade: setup
	$(BIN)/pip-compile --quiet --upgrade $(LOCK_FLAGS)

bench: setup
	$(BIN)/python -m benchmarks.eventlog --json

# The Airflow UI with the project's DAGs, state under var/airflow; prints the admin password.
# standalone starts its components as `airflow` from PATH, hence the venv first on PATH.
airflow: setup
	PATH=$(CURDIR)/$(BIN):$$PATH AIRFLOW_HOME=$(abspath $(STATE))/airflow \
	AIRFLOW__CORE__DAGS_FOLDER=$(CURDIR)/dags AIRFLOW__CORE__LOAD_EXAMPLES=False \
	RECLOOP_HOME=$(abspath $(STATE)) \
	$(BIN)/airflow standalone

# The MLflow UI over the local tracking store and registry (runs, plots, model cards, aliases).
mlflow: setup
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(abspath $(STATE))/mlflow/mlflow.db --port 5000

# The BentoML service on the champion (docs page at http://127.0.0.1:3000/). Needs an API key:
# RECLOOP_SERVING__API_KEYS='["<key>"]' make serve
serve: setup
	RECLOOP_HOME=$(abspath $(STATE)) $(BIN)/recloop serve

clean:
	rm -rf var .pytest_cache

VERSION ?= 0.1.0

# The serving Bento (bentofile.yaml) and the three images of docker/compose.yaml (Docker needed).
bento: setup
	$(BIN)/bentoml build -f bentofile.yaml --version $(VERSION)

images: bento
	docker build -f docker/airflow.Dockerfile -t recloop-airflow:$(VERSION) .
	docker build -f docker/airflow.Dockerfile --target training -t recloop-training:$(VERSION) .
	$(BIN)/bentoml containerize recloop:$(VERSION) -t recloop-serving:$(VERSION)
