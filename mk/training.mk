# Training: the Unsloth trainer's own virtual environment.
# Included from the main Makefile (which defines BIN, PY and PYTHON_BASE).
#   make training-install   .cache/training-venv with torch (CPU build where no GPU exists),
#                           unsloth, unsloth_zoo, trl and transformers; once per version set
#                           (`make up`, `make demo` and `make test` run it)
# The training service starts its trainer with this environment's python
# (LOOMSTACK_TRAINING_TRAINER_PYTHON), so Unsloth never touches the main .venv (vLLM's).

PYTHON_BASE          ?= python3
TRAINING_VENV        ?= .cache/training-venv
TRAINING_TORCH       ?= torch==2.13.0
TRAINING_PACKAGES    ?= "unsloth>=2026.10,<2026.11" unsloth_zoo "trl>=1.15,<1.16" "transformers==5.17.0"
TRAINING_STAMP       := $(TRAINING_VENV)/.installed-training-2026.10

# The service and the tests find the trainer's python here.
export LOOMSTACK_TRAINING_TRAINER_PYTHON ?= $(abspath $(TRAINING_VENV))/bin/python

.PHONY: training-install

$(TRAINING_STAMP):
	test -x $(TRAINING_VENV)/bin/python || $(PYTHON_BASE) -m venv $(TRAINING_VENV)
	$(TRAINING_VENV)/bin/pip install -q --upgrade pip
	@# torch first, on its own: where no GPU exists pip settles on the CPU build (no CUDA wheels).
	$(TRAINING_VENV)/bin/pip install -q "$(TRAINING_TORCH)"
	$(TRAINING_VENV)/bin/pip install -q "$(TRAINING_TORCH)" $(TRAINING_PACKAGES)
	@# As in the main environment: the PyPI torchvision/torchaudio/torchcodec do not match the
	@# CPU torch and break `transformers` imports; the trainer needs none of them.
	$(TRAINING_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec || true
	rm -f $(TRAINING_VENV)/.installed-training-*
	touch $@

training-install: $(TRAINING_STAMP)
