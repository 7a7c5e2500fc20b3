"""Typed settings: one base every service's settings extend.

Each service reads its own environment prefix (`LOOMSTACK_<SERVICE>_`), so one shell can
configure several services without collisions.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_home() -> Path:
    """Where the embedded default keeps its state: `$LOOMSTACK_HOME` or `./.loomstack`."""
    import os

    return Path(os.environ.get("LOOMSTACK_HOME", ".loomstack")).resolve()


class ServiceSettings(BaseSettings):
    """Settings shared by every gRPC service."""

    model_config = SettingsConfigDict(
        env_prefix="LOOMSTACK_", extra="ignore", populate_by_name=True
    )

    host: str = Field("127.0.0.1", description="Address the gRPC server binds.")
    port: int = Field(0, description="gRPC port; 0 picks a free one (tests).")
    metrics_port: int = Field(0, description="Prometheus HTTP port; 0 disables it.")
    grace_seconds: float = Field(10.0, description="Graceful stop budget after SIGTERM.")
    drain_seconds: float = Field(
        1.0,
        ge=0,
        description=(
            "After SIGTERM, how long readiness answers NOT_SERVING while the server still takes "
            "new RPCs (health-checking clients see it before the port closes); the shutdown "
            "hooks run within this time."
        ),
    )
    log_level: str = Field("INFO", description="Root log level.")
    log_json: bool = Field(True, description="One JSON object per log line.")
    otel_exporter: str = Field(
        "none",
        description="Trace exporter: none, console, otlp, or jsonl:<path> (one span per line).",
    )
    home: Path = Field(default_factory=default_home, description="State directory.")
    port_file: Path | None = Field(
        None, description="When set, the bound gRPC port is written here once serving."
    )

    # Shared by every service (no service prefix): one installation, one secret, one CA.
    service_secret: str = Field(
        "",
        validation_alias="LOOMSTACK_SERVICE_SECRET",
        repr=False,
        description=(
            "The installation's service secret (`LOOMSTACK_SERVICE_SECRET`, 16+ bytes) that signs "
            "the caller identity services forward to each other; prefer the file."
        ),
    )
    service_secret_file: Path | None = Field(
        None,
        validation_alias="LOOMSTACK_SERVICE_SECRET_FILE",
        description=(
            "A file holding the service secret (`LOOMSTACK_SERVICE_SECRET_FILE`; the chart "
            "mounts a Secret). Neither set: `<home>/service-secret`, created when missing."
        ),
    )
    grpc_tls_cert_file: Path | None = Field(
        None,
        validation_alias="LOOMSTACK_GRPC_TLS_CERT_FILE",
        description=(
            "PEM certificate of this process for mutual TLS between services "
            "(`LOOMSTACK_GRPC_TLS_CERT_FILE`); with the key and CA files set, servers require "
            "client certificates signed by the CA and clients present this one."
        ),
    )
    grpc_tls_key_file: Path | None = Field(
        None,
        validation_alias="LOOMSTACK_GRPC_TLS_KEY_FILE",
        description="PEM private key of that certificate (`LOOMSTACK_GRPC_TLS_KEY_FILE`).",
    )
    grpc_tls_ca_file: Path | None = Field(
        None,
        validation_alias="LOOMSTACK_GRPC_TLS_CA_FILE",
        description="PEM CA that signs every service's certificate (`LOOMSTACK_GRPC_TLS_CA_FILE`).",
    )
    health_port: int = Field(
        0,
        description=(
            "With mutual TLS: a plaintext port serving only grpc.health.v1, for Kubernetes' "
            "gRPC probes (they cannot speak TLS); 0 = none."
        ),
    )

    def secret(self) -> bytes:
        """The service secret (see `loomstack_kit.identity.load_service_secret`)."""
        from .identity import load_service_secret

        return load_service_secret(self.service_secret, self.service_secret_file, self.home)

    def tls(self) -> tuple[bytes, bytes, bytes] | None:
        """(certificate, key, CA) PEM bytes when mutual TLS is configured, else None; a
        partial configuration is an error (never a silent plaintext fallback)."""
        files = (self.grpc_tls_cert_file, self.grpc_tls_key_file, self.grpc_tls_ca_file)
        if not any(files):
            return None
        if not all(files):
            raise ValueError(
                "mutual TLS needs LOOMSTACK_GRPC_TLS_CERT_FILE, _KEY_FILE and _CA_FILE together"
            )
        return tuple(Path(f).read_bytes() for f in files)  # type: ignore[return-value,arg-type]


class PluginSettings(ServiceSettings):
    """The settings of a service that hosts plugins (`LOOMSTACK_<SERVICE>_PLUGINS`)."""

    plugins: str = Field(
        "",
        description=(
            "Comma-separated names of installed plugins (entry points in `loomstack.plugins`) "
            "this service enables; installed plugins not named here are disabled."
        ),
    )
    plugins_required: str = Field(
        "",
        description=(
            "Comma-separated names of enabled plugins without which the service must not start "
            "(any other plugin that fails to load is skipped and reported)."
        ),
    )

    def enabled_plugins(self) -> list[str]:
        """The names of `plugins`, in order."""
        return [n.strip() for n in self.plugins.split(",") if n.strip()]

    def required_plugins(self) -> list[str]:
        """The names of `plugins_required`."""
        return [n.strip() for n in self.plugins_required.split(",") if n.strip()]
