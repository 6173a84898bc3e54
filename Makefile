# Every target creates .venv on first use; `make test` is what CI runs. `make install` installs the
# exact versions in requirements.lock (what CI passed with); `make lock` re-resolves them.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DIR ?= demo-data

.PHONY: install lock test test-fast demo bench lint clean image stack stack-down stack-test

install: $(VENV)/.installed

# uv installs the same locked versions as pip would, downloading in parallel (seconds, not minutes).
$(VENV)/.installed: pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c requirements.lock uv
	$(BIN)/uv pip install --python $(BIN)/python -q -c requirements.lock -e '.[dev]'
	touch $@

# Re-resolve every dependency (pyproject's ranges, the dev extra) to exact versions, for every
# platform from Python 3.11 up (CI tests Linux, 3.11); commit the result once `make test` passes.
lock: install
	$(BIN)/uv pip compile pyproject.toml --extra dev --universal --python-version 3.11 --quiet --output-file requirements.lock

test: install
	$(BIN)/pytest -q

test-fast: install
	$(BIN)/pytest -q -m "not slow and not integration"

# The pipeline image (docker/Dockerfile) on python:3.11-slim, or, where Docker Hub is unreachable,
# on a base made from Debian's packages (docker/local-base.sh picks or builds it; BASE=... wins).
# A Docker engine must answer: docker/engine.sh installs and starts one (root).
IMAGE ?= osteo-pipeline:latest
image:
	base="$(or $(BASE),$$(docker/local-base.sh))" && docker build -q -f docker/Dockerfile --build-arg BASE="$$base" -t $(IMAGE) .

# The compose stack with local stand-ins for what it pulls from Docker Hub (docker/compose.local.yaml:
# PostgreSQL from Debian, moto's S3 server for MinIO, optuna-dashboard from PyPI). Secrets from
# docker/.env (cp docker/.env.example docker/.env). `make stack-test` brings up a throw-away copy
# of its own (tests/test_stack.py: two retrains through the deployment, the model server following).
COMPOSE = docker compose -f docker/compose.yaml -f docker/compose.local.yaml --env-file docker/.env
stack: image
	@test -f docker/.env || { echo "docker/.env missing: cp docker/.env.example docker/.env and set its secrets" >&2; exit 1; }
	$(COMPOSE) build postgres minio optuna-dashboard
	$(COMPOSE) up -d

stack-down:
	$(COMPOSE) down

stack-test: install image
	$(BIN)/pytest -q -m stack tests/test_stack.py

# ImageNet weights come from Keras's cache (a download, or `osteo weights install`); without them
# the demo trains a random-init backbone and says so.
demo: install
	test -d $(DEMO_DIR) || $(BIN)/osteo synth $(DEMO_DIR) --seed 42
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/osteo run $(DEMO_DIR) --config configs/demo.yaml
	@echo
	@echo "Compare runs:   $(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db -h 127.0.0.1 -p 5000"
	@echo "Serve:          $(BIN)/osteo serve   (follows models:/osteo-knee@production on 127.0.0.1:5055)"
	@echo "Registry:       $(BIN)/osteo models"

bench: install
	$(BIN)/python bench/serving_latency.py
	$(BIN)/python bench/serving_load.py
	$(BIN)/python bench/training_speed.py
	$(BIN)/python bench/tune_workers.py
	$(BIN)/python bench/cv_search.py
	$(BIN)/python bench/copies.py
	$(BIN)/python bench/scoring.py

# CI runs this before the tests: ruff's rules (line length 100 included), ruff's formatting, and
# tools/check_structure.py (no module of 400 lines or more, no repeated block of six lines).
LINTED = osteo_pipeline flows tests bench tools
lint: install
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/python tools/check_structure.py

clean:
	rm -rf outputs $(DEMO_DIR) .pytest_cache .prefect mlflow.db optuna.db mlruns/[!.]*
