# Fresh machine: Python 3.11 and make. `make run` = main job on the sample; `make test` = tests.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# no Dagster telemetry from any process a target starts: without it the webserver and daemon
# empty $$DAGSTER_HOME/logs into .logs_queue and upload it (`telemetry: enabled: false` in
# dagster.yaml does not stop them); ocr sets it for its own children too (ocr_jobs/process_env.py)
export DAGSTER_DISABLE_TELEMETRY := 1
# mkdocs-material's console banner about its successor (no network either way)
export NO_MKDOCS_2_WARNING := 1

.PHONY: setup run test test-fast lint validate docs docs-serve dev clean web serve

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

# The documentation site (mkdocs.yml; docs/), built offline into site/: warnings are errors, and
# the generated pages (CLI, settings, assets, benchmark tables) are made by tools/docs_hooks.py
docs: setup
	$(BIN)/mkdocs build --strict --quiet

docs-serve: setup
	$(BIN)/mkdocs serve --strict --dev-addr 127.0.0.1:8000

tools/node_modules: tools/package.json
	if command -v npm >/dev/null; then npm install --prefix tools --silent --no-audit --no-fund; fi

# The map page's libraries from npm, copied next to the page (served from disk, never a CDN).
WEB_VENDOR := ocr_jobs/serve/web/vendor
WEB_FILES := maplibre-gl/dist/maplibre-gl.mjs maplibre-gl/dist/maplibre-gl-worker.mjs \
	maplibre-gl/dist/maplibre-gl.css pmtiles/dist/pmtiles.js \
	topojson-client/dist/topojson-client.min.js us-atlas/states-10m.json

$(WEB_VENDOR)/.installed: web/package.json web/package-lock.json
	if command -v npm >/dev/null; then \
	  npm ci --prefix web --silent --no-audit --no-fund && mkdir -p $(WEB_VENDOR) && \
	  for f in $(WEB_FILES); do cp web/node_modules/$$f $(WEB_VENDOR)/; done && \
	  cp web/node_modules/maplibre-gl/LICENSE.txt $(WEB_VENDOR)/LICENSE-maplibre-gl.txt && \
	  cp web/node_modules/topojson-client/LICENSE $(WEB_VENDOR)/LICENSE-topojson-client.txt && \
	  cp web/node_modules/us-atlas/LICENSE $(WEB_VENDOR)/LICENSE-us-atlas.txt && \
	  touch $@; \
	else echo "npm not found: the map page's libraries are not installed (make web needs npm)"; fi

web: $(WEB_VENDOR)/.installed

# The map of the local environment's outputs on http://127.0.0.1:8765/ (runs `make run` first
# when there are no tiles yet)
serve: setup web
	$(BIN)/ocr serve --env-file envs/local.env --check >/dev/null || $(MAKE) run
	$(BIN)/ocr serve --env-file envs/local.env --open

# three test workers on two cores: the end-to-end tests wait on subprocesses and servers; a
# module's tests stay on one worker (its fixtures, such as a deployment, are made once); the
# 30 slowest tests are listed at the end
test: lint validate docs tools/node_modules web
	$(BIN)/python -m pytest -n 3 --dist loadfile --durations=30

# the developer's loop: everything but the tests marked slow (whole deploys, daemons, browsers)
test-fast: lint web
	$(BIN)/python -m pytest -n 3 --dist loadfile -m "not slow" --durations=10

# The Dagster UI on http://127.0.0.1:$(PORT)/ (make dev PORT=3001 for another port): ocr dev runs
# dg dev with the top-level dagster.yaml (DAGSTER_HOME = this folder) and the local environment's
# OCR_DAGSTER_STORAGE_DIR / OCR_DAGSTER_PG_URL (docs/howto/run.md, "The Dagster instance")
PORT ?= 3000
dev: setup
	$(BIN)/ocr dev --port $(PORT)

clean:
	rm -rf .ocr-data .ocr-inputs .dagster
