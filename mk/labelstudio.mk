# Label Studio: the real annotation server for curation tests and local runs.
# Included from the main Makefile (which defines BIN, PY and PYTHON_BASE).
#   make labelstudio-install   its own virtual environment (it pins Django), once per version
#   make labelstudio           start it in the background on 127.0.0.1:$(LABEL_STUDIO_PORT)
#   make labelstudio-stop      stop it
# `make labelstudio` keeps the last run's projects, tasks and annotations (and its token);
# LABEL_STUDIO_FRESH=1 wipes them first (curation then imports its batches again into new
# Label Studio projects, without the annotations).

PYTHON_BASE           ?= python3
LABEL_STUDIO_VERSION  ?= 1.23.2
LABEL_STUDIO_VENV     ?= .cache/labelstudio-venv
LABEL_STUDIO_PORT     ?= 8089
LABEL_STUDIO_DIR      ?= .loomstack/labelstudio
LABEL_STUDIO_USER     ?= admin@loomstack.local
LABEL_STUDIO_PASSWORD ?= loomstack-admin
# 40 hex digits; empty: the token saved in $(LABEL_STUDIO_DIR)/connection.env, or a new random
# one the first time (printed, and saved there).
LABEL_STUDIO_TOKEN    ?=
LABEL_STUDIO_FRESH    ?=
LABEL_STUDIO_STAMP    := $(LABEL_STUDIO_VENV)/.installed-label-studio-$(LABEL_STUDIO_VERSION)
# The start/stop logic is plain standard library, shared with the pytest fixture.
LABEL_STUDIO_SERVER   := PYTHONPATH=services/curation $(PY) -m loomstack_curation.labelstudio_server

# The test fixture finds the server here.
export LOOMSTACK_LABEL_STUDIO_VENV ?= $(abspath $(LABEL_STUDIO_VENV))

.PHONY: labelstudio-install labelstudio labelstudio-stop

$(LABEL_STUDIO_STAMP):
	test -x $(LABEL_STUDIO_VENV)/bin/python || $(PYTHON_BASE) -m venv $(LABEL_STUDIO_VENV)
	$(LABEL_STUDIO_VENV)/bin/pip install -q --upgrade pip
	$(LABEL_STUDIO_VENV)/bin/pip install -q "label-studio==$(LABEL_STUDIO_VERSION)"
	rm -f $(LABEL_STUDIO_VENV)/.installed-label-studio-*
	touch $@

labelstudio-install: $(LABEL_STUDIO_STAMP)

labelstudio: $(LABEL_STUDIO_STAMP) | $(BIN)/python
	$(LABEL_STUDIO_SERVER) start --venv $(LABEL_STUDIO_VENV) --data-dir $(LABEL_STUDIO_DIR) \
		--port $(LABEL_STUDIO_PORT) --username $(LABEL_STUDIO_USER) \
		--password $(LABEL_STUDIO_PASSWORD) --token "$(LABEL_STUDIO_TOKEN)" \
		$(if $(LABEL_STUDIO_FRESH),--fresh)

labelstudio-stop: | $(BIN)/python
	$(LABEL_STUDIO_SERVER) stop --data-dir $(LABEL_STUDIO_DIR)
