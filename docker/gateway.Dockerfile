# syntax=docker/dockerfile:1.7
# The HTTP gateway (`python -m loomstack_gateway`): the OpenAI-compatible REST API in front of
# the gRPC services. Build from the repository root (see docker/README.md):
#   docker build -f docker/gateway.Dockerfile -t ghcr.io/loomstack/gateway:0.1.0 .

# ---- build: a virtual environment with the gateway and the kit ---------------------------------
FROM python:3.12.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY requirements/constraints.txt requirements/constraints.txt
COPY libs/kit libs/kit
COPY gen/python gen/python
COPY services/gateway services/gateway
# The repository's own plugin, installed and disabled until the chart's plugins.enabled names it.
COPY plugins/aris plugins/aris
RUN pip install --no-cache-dir -c requirements/constraints.txt \
      ./libs/kit ./gen/python ./services/gateway ./plugins/aris

# ---- runtime: non-root, read-only-root-filesystem friendly -------------------------------------
FROM python:3.12.11-slim-bookworm AS runtime
LABEL org.opencontainers.image.title="loomstack-gateway" \
      org.opencontainers.image.description="Loomstack HTTP gateway (OpenAI-compatible REST API)" \
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
    LOOMSTACK_GATEWAY_HOST=0.0.0.0 \
    LOOMSTACK_GATEWAY_PORT=8080
USER 10001:10001
WORKDIR /home/loomstack
EXPOSE 8080
ENTRYPOINT ["python", "-m", "loomstack_gateway"]
