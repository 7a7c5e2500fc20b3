# syntax=docker/dockerfile:1.7
# The curation service (`python -m loomstack_curation`): the gRPC API, Label Studio's webhook and
# the ML backend (HTTP), and the `migrate` command the Helm chart's hook Job runs. CPU only.
# Build from the repository root (see docker/README.md):
#   docker build -f docker/curation.Dockerfile -t ghcr.io/loomstack/curation:0.1.0 .

# ---- build: a virtual environment with the curation service and the kit ------------------------
FROM python:3.12.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY requirements/constraints.txt requirements/constraints.txt
COPY libs/kit libs/kit
COPY gen/python gen/python
COPY services/curation services/curation
# The repository's own plugin, installed and disabled until the chart's plugins.enabled names it.
COPY plugins/aris plugins/aris
RUN pip install --no-cache-dir -c requirements/constraints.txt \
      ./libs/kit ./gen/python ./services/curation ./plugins/aris

# ---- runtime: non-root, read-only-root-filesystem friendly -------------------------------------
FROM python:3.12.11-slim-bookworm AS runtime
LABEL org.opencontainers.image.title="loomstack-curation" \
      org.opencontainers.image.description="Loomstack curation service (task schemas, Label Studio imports, annotations, dataset snapshots)" \
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
    LOOMSTACK_CURATION_HOME=/tmp/loomstack \
    LOOMSTACK_CURATION_HOST=0.0.0.0 \
    LOOMSTACK_CURATION_PORT=50052 \
    LOOMSTACK_CURATION_HTTP_HOST=0.0.0.0 \
    LOOMSTACK_CURATION_HTTP_PORT=8081 \
    LOOMSTACK_CURATION_SCHEMAS_DIR=/etc/loomstack/schemas
USER 10001:10001
WORKDIR /home/loomstack
EXPOSE 50052 8081
ENTRYPOINT ["python", "-m", "loomstack_curation"]
CMD ["serve"]
