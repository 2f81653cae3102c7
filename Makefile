# Two commands on a fresh machine: `make lab` (set up + open the suite) and `make test` (set up + run the tests).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8888

.PHONY: lab test test-browser demo figures site app bench lint clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e . 2>&1 | grep -v "is ignored: it is neither" || true
	$(PY) -c "import lossreduce_demo, torch, ipywidgets"
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(PY) -m pip install -q -e ".[dev,frameworks]" 2>&1 | grep -v "is ignored: it is neither" || true
	$(PY) -c "import pytest, hypothesis, nbclient, xdist"
	touch $@

# jupyter lab refuses to start as root (containers, CI images) unless told it is meant.
ALLOW_ROOT := $(if $(filter 0,$(shell id -u 2>/dev/null)),--allow-root)

lab: $(VENV)/.installed  ## set up and open the suite in JupyterLab
	$(VENV)/bin/jupyter lab $(ALLOW_ROOT) notebooks/00_start_here.ipynb

test: $(VENV)/.installed-dev  ## set up and run every test (notebooks included, in fast mode), one worker per core (≤ 4)
	LOSSREDUCE_FAST=1 LOSSREDUCE_THREADS=1 $(PY) -m pytest -m "not browser" -n auto --maxprocesses 4

test-browser: $(VENV)/.installed-dev  ## widgets in JupyterLab and Voila, driven in headless Chromium
	LOSSREDUCE_FAST=1 LOSSREDUCE_THREADS=1 $(PY) -m pytest -m browser

demo: $(VENV)/.installed  ## the headless default job: a weights report on the shipped data, then E1 (~1-2 min)
	$(PY) -m lossreduce_demo weights data/default_chats.jsonl --scheme token-mean --micro-batches 4 \
		--normalization local --out build/demo/weights.csv
	LOSSREDUCE_THREADS=$${LOSSREDUCE_THREADS:-1} $(PY) -m lossreduce_demo experiment e1 --seeds 3 --out build/demo

figures: $(VENV)/.installed  ## regenerate the README's figures in docs/figures
	$(PY) -m lossreduce_demo.figures docs/figures

site: $(VENV)/.installed  ## every notebook executed (default mode) and rendered to build/site/index.html
	LOSSREDUCE_THREADS=$${LOSSREDUCE_THREADS:-1} $(PY) -m lossreduce_demo.site build/site $(SITE_FLAGS)

APP_PORT ?= 8866

app: $(VENV)/.installed  ## the workshop dashboard as an app (Voila, code hidden) on http://localhost:$(APP_PORT)
	$(VENV)/bin/voila notebooks/app.ipynb --port=$(APP_PORT)

bench: $(VENV)/.installed-dev
	for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check lossreduce_demo tests bench notebooks

clean:
	rm -rf build results .pytest_cache
