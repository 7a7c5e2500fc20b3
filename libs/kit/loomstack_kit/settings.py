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

    model_config = SettingsConfigDict(env_prefix="LOOMSTACK_", extra="ignore")

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
