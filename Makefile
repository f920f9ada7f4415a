# Every user-facing command of the project. `make` alone lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CACHE ?= .cache
TINY_MODEL ?= $(CACHE)/tiny-sd
RUNTIME_PORT ?= 8080
MCP_PORT ?= 8000
TORCH_VERSION := 2.13.0
EXTRAS ?= runtime,server,dev

.PHONY: help
help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-28s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: otherwise a dependency pulls a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==$(TORCH_VERSION)
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

.PHONY: install
install: $(VENV)/.installed ## Create .venv with everything (idempotent)

$(TINY_MODEL)/model_index.json: | $(VENV)/.installed
	$(PY) -m diffusers_runtime.tiny $(TINY_MODEL)

.PHONY: tiny-model
tiny-model: $(TINY_MODEL)/model_index.json ## Build the tiny offline model into .cache/tiny-sd

.PHONY: test
test: install tiny-model ## Run the whole test suite
	TINY_MODEL_DIR=$(abspath $(TINY_MODEL)) $(PY) -m pytest $(PYTEST_ARGS)

.PHONY: lint
lint: install ## Ruff lint and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

.PHONY: format
format: install ## Ruff autofix and format
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

.PHONY: run-runtime
run-runtime: install tiny-model ## Run only the diffusers runtime on the tiny model (127.0.0.1:$(RUNTIME_PORT))
	MODEL_ID=$(abspath $(TINY_MODEL)) $(PY) -m diffusers_runtime --http_port $(RUNTIME_PORT) --enable_grpc false

.PHONY: run
run: install tiny-model ## Run the local stack (runtime + MCP server) on the tiny model; Ctrl-C stops it
	MODEL_ID=$(abspath $(TINY_MODEL)) RUNTIME_PORT=$(RUNTIME_PORT) MCP_PORT=$(MCP_PORT) \
		$(PY) -m scripts.local_stack
