"""Settings of the curation service (environment prefix `LOOMSTACK_CURATION_`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from loomstack_kit.settings import PluginSettings


class CurationSettings(PluginSettings):
    """What the curation process needs: its database, the schemas, Label Studio, inference."""

    model_config = SettingsConfigDict(env_prefix="LOOMSTACK_CURATION_", extra="ignore")

    database_url: str = Field("", description="SQLAlchemy URL; empty = SQLite under home.")
    schemas_dir: Path = Field(Path("schemas"), description="Directory of the task schema files.")
    inference_address: str = Field(
        "127.0.0.1:50051", description="The inference service (files, batch events, chat)."
    )

    label_studio_url: str = Field("", description="Label Studio base URL; empty = not used.")
    label_studio_token: str = Field("", description="Label Studio (legacy) API token.")
    label_studio_project_prefix: str = Field(
        "", description="Prefix of our project titles (several installations, one Label Studio)."
    )
    label_studio_timeout: float = Field(60.0, description="Seconds per Label Studio call.")

    # The HTTP side: Label Studio's webhook and the ML backend.
    http_host: str = Field("127.0.0.1", description="Address the HTTP endpoints bind.")
    http_port: int = Field(0, description="HTTP port; 0 picks a free one.")
    http_port_file: Path | None = Field(None, description="The bound HTTP port is written here.")
    public_url: str = Field(
        "", description="URL Label Studio reaches our HTTP endpoints on; empty = no webhook."
    )
    webhook_secret: str = Field("", description="Shared secret Label Studio's webhook sends.")
    ml_backend_username: str = Field(
        "",
        description="User Label Studio's ML backend connection sends (basic auth); without "
        "user and password the ML backend's routes are refused.",
    )
    ml_backend_password: str = Field("", repr=False, description="Its password (prefer the file).")
    ml_backend_password_file: Path | None = Field(
        None, description="A file holding that password (the chart mounts a Secret)."
    )
    ml_backend_max_tasks: int = Field(
        64, ge=1, description="Most tasks one ML backend predict call may ask for."
    )

    # Import queue and reconcile.
    import_chunk: int = Field(500, description="Tasks per Label Studio import call.")
    retry_base_seconds: float = Field(2.0, description="First retry delay; doubles per attempt.")
    retry_max_seconds: float = Field(300.0, description="Longest retry delay.")
    poll_seconds: float = Field(1.0, description="How often the import queue is looked at.")
    feed_wait_seconds: int = Field(10, description="Long-poll of the batch event feed.")
    reconcile_seconds: float = Field(60.0, description="Period of the annotation reconcile.")
    plugin_max_attempts: int = Field(
        8,
        ge=1,
        description="Deliveries of an event a plugin handler fails on before it is dead-lettered "
        "(retried with the import's backoff in between).",
    )
    plugin_handler_timeout_seconds: float = Field(
        120.0,
        gt=0,
        description="Longest a plugin handler call may take; past it the call counts as failed "
        "(the event is retried) and the feed moves on.",
    )
    plugin_handler_threads: int = Field(
        4, ge=1, description="Threads plugin handlers run on (their own: a hung one takes one)."
    )
    allow_auto_accept: bool = Field(
        True,
        description="Honour metadata.curation_auto_accept (predictions imported as accepted "
        "annotations); false: every task waits for a person.",
    )

    # ML backend: the model asked for predictions.
    model: str = Field("SmolLM2-135M-Instruct", description="Model the ML backend asks.")
    max_tokens: int = Field(256, description="max_tokens of an ML backend prediction.")

    def resolved_database_url(self) -> str:
        """The configured URL, or SQLite in the home directory."""
        return self.database_url or f"sqlite:///{self.home / 'curation.db'}"
