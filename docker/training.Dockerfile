# syntax=docker/dockerfile:1.7
# The training service (`python -m loomstack_training`) and the trainer its `kubernetes` runner
# starts as GPU Jobs, from one file with the same two builds as the inference image:
#   VARIANT=cuda (default)  Unsloth on the CUDA runtime image   → training:<v>-cuda (the Jobs)
#   VARIANT=cpu             Unsloth's CPU fallback, CPU torch     → training:<v> (the service)
# Build from the repository root:
#   docker build -f docker/training.Dockerfile --build-arg VARIANT=cuda -t ghcr.io/loomstack/training:0.1.0-cuda .

ARG VARIANT=cuda

FROM nvidia/cuda:12.9.1-runtime-ubuntu24.04 AS base-cuda
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev gcc g++ ca-certificates \
 && rm -rf /var/lib/apt/lists/*

FROM python:3.12.11-slim-bookworm AS base-cpu
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc g++ libgomp1 \
 && rm -rf /var/lib/apt/lists/*

# A stage chosen by the build argument, not an image: both candidates above are pinned.
# hadolint ignore=DL3006
FROM base-${VARIANT} AS base

FROM base AS build
ARG VARIANT
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY requirements/constraints.txt requirements/constraints.txt
COPY libs/kit libs/kit
COPY gen/python gen/python
COPY services/training services/training
# The service's pyproject.toml pins Unsloth, TRL and transformers; the CPU build takes torch from
# the PyTorch CPU index.
RUN if [ "$VARIANT" = "cpu" ]; then \
      pip install --no-cache-dir --extra-index-url "$TORCH_CPU_INDEX" -c requirements/constraints.txt \
        ./libs/kit ./gen/python ./services/training; \
    else \
      pip install --no-cache-dir -c requirements/constraints.txt \
        ./libs/kit ./gen/python ./services/training; \
    fi \
 && pip uninstall -y torchvision torchaudio torchcodec

FROM base AS runtime
ARG VARIANT
LABEL org.opencontainers.image.title="loomstack-training" \
      org.opencontainers.image.description="Loomstack training service and Unsloth trainer, ${VARIANT} build" \
      org.opencontainers.image.source="https://github.com/loomstack/loomstack" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 loomstack \
 && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/loomstack \
      --shell /usr/sbin/nologin loomstack
COPY --from=build /opt/venv /opt/venv
# The kubernetes runner starts `python <LOOMSTACK_TRAINING_KUBERNETES_TRAINER_SCRIPT>` in the Jobs;
# its default is this path (the script needs only the trainer libraries, not our packages).
COPY services/training/loomstack_training/trainer.py /app/services/training/loomstack_training/trainer.py
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/loomstack \
    LOOMSTACK_TRAINING_HOST=0.0.0.0 \
    LOOMSTACK_TRAINING_PORT=50053
USER 10001:10001
WORKDIR /home/loomstack
EXPOSE 50053
ENTRYPOINT ["python", "-m", "loomstack_training"]
CMD ["serve"]
