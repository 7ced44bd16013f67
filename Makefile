# Two commands do everything on a fresh machine:
#   make reproduce   set up .venv, generate the built-in data if missing, run the notebook pipeline on it
#   make test        the same set-up, then the linter and the whole test suite (unit tests, end-to-end runs, nbval)
#   make unit        the unit tests alone (no end-to-end training, no notebook): about a minute on two cores
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.emotionlib-installed
PROFILE ?= smoke
DATA ?= data/synthetic
RUN ?= runs/$(PROFILE)
SEEDS ?= 3
SMALL ?=
LAYOUT ?= artphoto
KERNEL := emotionlib

.PHONY: setup browser reproduce test unit lint format lab bench bench-cuda data clean-runs notebooks

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -e ".[dev]"
	$(PY) -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python (emotionlib)" >/dev/null
	@$(MAKE) --no-print-directory browser
	@touch $(STAMP)

# The browser test (tests/test_browser.py) drives the system's Chromium through Playwright; nothing downloads a
# browser. Installed here when missing and possible (root with apt-get, as in CI); never fails the set-up.
CHROMIUM ?= /usr/lib/chromium/chromium
CHROMIUM_INSTALL := apt-get install -y chromium
browser:
	@if command -v chromium >/dev/null || command -v chromium-browser >/dev/null || test -x $(CHROMIUM); then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	     { DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(CHROMIUM_INSTALL) -qq --no-install-recommends; } >/dev/null 2>&1; then \
	     echo "installed Chromium for the browser test"; \
	else echo "no Chromium: the browser test will be skipped (fails under CI=true); install it with: sudo $(CHROMIUM_INSTALL)"; fi

# The built-in synthetic dataset (data/README.md); regenerated only when missing.
$(DATA)/synth_meta.json: | setup
	$(BIN)/emotionlib synth --builtin --out $(DATA)

data: $(DATA)/synth_meta.json
	$(BIN)/emotionlib data $(DATA)

reproduce: setup
	$(BIN)/emotionlib reproduce --profile $(PROFILE) --out $(RUN) --seeds $(SEEDS) --kernel $(KERNEL) $(if $(filter-out data/synthetic,$(DATA)),--data $(DATA),) $(if $(SMALL),--small-data $(SMALL) --layout $(LAYOUT),)

# nbval runs the committed notebooks in file order in notebooks/ and compares the cells marked
# NBVAL_CHECK_OUTPUT with their committed outputs (notebooks/README.md).
test: setup lint
	$(PY) -m pytest --nbval-lax --nbval-kernel-name $(KERNEL) tests notebooks

# The unit tests: files that train nothing end to end and run no notebook (the `slow` marker covers the rest).
UNIT_TESTS := tests/test_model.py tests/test_losses.py tests/test_data.py tests/test_experiment.py tests/test_cli.py \
	tests/test_checkpoint.py \
	tests/test_environment.py
unit: setup
	$(PY) -m pytest -m "not slow and not browser" $(UNIT_TESTS)

# ruff's linter and formatter (pyproject.toml, [tool.ruff]): lint fails on a finding or on an unformatted file;
# `make format` formats the tree.
lint: setup
	$(BIN)/ruff check emotionlib tests
	$(BIN)/ruff format --check emotionlib tests

format: setup
	$(BIN)/ruff format emotionlib tests

# Re-execute the committed notebooks in place with their default parameters: the reference outputs nbval compares
# against. They reuse runs/smoke when it holds a finished run; remove it first to record the training as well.
notebooks: setup
	$(BIN)/emotionlib notebooks --kernel $(KERNEL)

lab: setup
	$(BIN)/jupyter lab notebooks/

bench: setup
	$(BIN)/emotionlib bench --out runs/bench

# On a machine with an NVIDIA GPU: the paper profile's bf16 images/s and the fraction of the chip's bf16 peak
bench-cuda: setup
	$(BIN)/emotionlib bench --device cuda --out runs/bench

clean-runs:
	@echo "runs/ holds your results; delete it by hand if you mean it: rm -r runs/"
