# Fresh machine: Python 3.11 and make. `make run` = main job on the sample; `make test` = tests.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run test lint validate dev clean

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

run: setup
	$(BIN)/ocr sample-data
	$(BIN)/ocr regions refresh --check
	$(BIN)/ocr deploy --all-region-ids --create-pyramid --write-regional-stats --allow-all-processed

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

validate: setup
	$(BIN)/dagster definitions validate -w workspace.yaml

tools/node_modules: tools/package.json
	if command -v npm >/dev/null; then npm install --prefix tools --silent --no-audit --no-fund; fi

test: lint validate tools/node_modules
	$(BIN)/python -m pytest -n 2

dev: setup
	mkdir -p .dagster/local && cp dagster.yaml .dagster/local/dagster.yaml
	DAGSTER_HOME=$(CURDIR)/.dagster/local $(BIN)/dagster dev -w workspace.yaml

clean:
	rm -rf .ocr-data .dagster
