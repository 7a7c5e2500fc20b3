"""Settings of the gateway (environment prefix `LOOMSTACK_GATEWAY_`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from loomstack_kit.settings import PluginSettings

MIB = 1024 * 1024


class GatewaySettings(PluginSettings):
    """What the gateway listens on, where the services are, and who may call it."""

    model_config = SettingsConfigDict(
        env_prefix="LOOMSTACK_GATEWAY_", extra="ignore", populate_by_name=True
    )

    host: str = Field("127.0.0.1", description="Address the HTTP server binds.")
    port: int = Field(8080, description="HTTP port; 0 picks a free one (see `port_file`).")
    inference_address: str = Field(
        "127.0.0.1:50051", description="host:port of the inference service's gRPC API."
    )
    curation_address: str = Field(
        "127.0.0.1:50052", description="host:port of the curation service's gRPC API."
    )
    training_address: str = Field(
        "127.0.0.1:50053", description="host:port of the training service's gRPC API."
    )
    api_keys: str = Field(
        "",
        description="Comma-separated `key:project` pairs; project `*` makes an admin key.",
    )
    api_keys_file: Path | None = Field(
        None,
        description=(
            "A file holding `key:project` pairs in the same form as `api_keys` (commas or "
            "newlines between them); the chart mounts its Secret here. Both set: both count."
        ),
    )
    api_key: str = Field(
        "",
        validation_alias="LOOMSTACK_API_KEY",
        description=(
            "One key for the default project (`LOOMSTACK_API_KEY`, as `make up` prints). With a "
            "key list set, the development key `sk-loomstack-dev` here is ignored unless the "
            "list names it, and a key the list names keeps the list's project."
        ),
    )

    # Limits (see key_limits.py and body_limits.py).
    rate_limit_per_minute: int = Field(
        600,
        ge=0,
        description=(
            "Requests per minute per API key (a moving window of 60 s; admin keys too); over "
            "it: 429 with Retry-After. 0 = off."
        ),
    )
    concurrency_limit: int = Field(
        32,
        ge=0,
        description=(
            "Requests of one API key in flight at once, per gateway replica (a streamed "
            "answer counts until it ends); over it: 429 with Retry-After. 0 = off."
        ),
    )
    rate_limit_storage: str = Field(
        "memory://",
        repr=False,
        description=(
            "Where the rate limit windows live: `memory://` (each replica counts alone) or "
            "`redis://[:password@]host:port/db` (`rediss://`, `redis+unix://`), shared by every "
            "replica so the limit holds across them. While Redis fails, requests are admitted "
            "and a warning is logged."
        ),
    )
    rate_limit_key_prefix: str = Field(
        "loomstack-gateway",
        description="Prefix of the rate limit keys in Redis (installations sharing one Redis).",
    )
    max_json_body_bytes: int = Field(
        16 * MIB,
        ge=1,
        description=(
            "Largest request body of every route but file uploads (chat, batches, comparisons, "
            "curation, fine-tuning); larger: 413, refused before the body is read whole."
        ),
    )
    max_drain_bytes: int = Field(
        MIB,
        ge=0,
        description=(
            "Most bytes of a refused request's remaining body read and discarded, so that a "
            "client still sending reads the answer; when more is left the connection is closed."
        ),
    )
    upstream_timeout_seconds: float = Field(
        60.0, description="Deadline of unary calls to the services."
    )
    ready_timeout_seconds: float = Field(2.0, description="Deadline of the /readyz health check.")
    upload_chunk_bytes: int = Field(MIB, description="Size of the chunks streamed upstream.")
    upload_buffer_bytes: int = Field(
        16 * MIB,
        description=(
            "Most file bytes held while waiting for a `purpose` field sent after the file part; "
            "a larger file must send `purpose` first (the openai client always does)."
        ),
    )
    max_message_bytes: int = Field(64 * MIB, description="Largest gRPC message either way.")
    access_log: bool = Field(False, description="Log every request (the metrics count them).")

    # /admin/services: what the gateway reports and restarts (see routes/admin.py).
    admin_backend: str = Field(
        "local",
        description=(
            "`local`: the embedded default's processes (pid files under `home/run`); "
            "`kubernetes`: this release's Deployments through the Kubernetes API; `none`: off."
        ),
    )
    admin_namespace: str = Field(
        "", description="Kubernetes namespace; empty = the pod's own (its ServiceAccount's)."
    )
    admin_label_selector: str = Field(
        "app.kubernetes.io/part-of=loomstack",
        description="Label selector of the Deployments (and their pods) /admin may see and touch.",
    )
    admin_kubeconfig: str = Field(
        "", description="A kubeconfig file to use instead of the in-cluster ServiceAccount."
    )
    admin_events: bool = Field(
        False, description="Also read Warning events (needs `list` on events in the Role)."
    )
    admin_max_replicas: int = Field(32, description="Most replicas /admin may scale a service to.")
