"""Settings of the inference service (environment prefix `LOOMSTACK_INFERENCE_`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from loomstack_kit.settings import ServiceSettings


class InferenceSettings(ServiceSettings):
    """Both roles read these; the engine role also needs `model_path`."""

    model_config = SettingsConfigDict(env_prefix="LOOMSTACK_INFERENCE_", extra="ignore")

    roles: str = Field("api,engine", description="Comma-separated roles: api, engine.")
    database_url: str = Field("", description="SQLAlchemy URL; empty = SQLite under home.")
    blob_backend: str = Field("filesystem", description="filesystem or database.")
    blob_dir: Path | None = Field(None, description="Filesystem blob root; default home/blobs.")

    # The model this engine serves (engine role) and that the api role registers at start.
    model_name: str = Field("SmolLM2-135M-Instruct", description="Name requests use.")
    model_path: str = Field("", description="Local directory of the weights.")
    max_model_len: int = Field(2048, description="Context length given to vLLM.")
    enforce_eager: bool = Field(False, description="Skip graph compilation (faster start).")
    dtype: str = Field(
        "auto",
        description=(
            "Weight dtype given to vLLM. 'auto': the model's own, except float32 on a CPU "
            "without bfloat16 instructions (AVX512-BF16/AMX), where bf16 matmuls are emulated."
        ),
    )
    engine_args: str = Field("", description="Extra vLLM engine arguments, shell-style.")
    cpu_memory_fraction: float = Field(
        0.15,
        gt=0,
        le=1,
        description=(
            "On a CPU engine: the share of the machine's memory vLLM reserves for the KV cache "
            "(its --gpu-memory-utilization, which engine_args may set instead). vLLM's own "
            "default, 0.92, refuses to start while other processes hold a few GiB."
        ),
    )
    max_lora_rank: int = Field(
        0,
        description=(
            "Largest LoRA rank the engine serves; 0 disables LoRA. With LoRA on, the engine "
            "serves every adapter the registry lists for its model (vLLM LoRARequest per request)."
        ),
    )
    max_loras: int = Field(4, description="LoRA adapters held in one batch at once.")
    lora_engine: str = Field(
        "auto",
        pattern="^(auto|shared|separate)$",
        description=(
            "How adapters are served. `shared`: one vLLM engine with LoRA on serves the base model "
            "and its adapters. `separate`: the base model keeps an engine without LoRA, and a "
            "second, LoRA-enabled engine starts when the first adapter is registered. `auto`: "
            "separate where vLLM compiles an engine only without LoRA (the CPU backend, unless "
            "enforce_eager), else shared."
        ),
    )
    lora_idle_seconds: float = Field(
        300.0,
        ge=0,
        description="A separate LoRA engine stops after this long without any registered adapter.",
    )

    # Limits on input files.
    max_file_bytes: int = Field(200 * 1024 * 1024, description="Largest upload accepted.")
    max_batch_lines: int = Field(50_000, description="Most lines in a batch input file.")

    # Batch runner.
    shard_lines: int = Field(1000, description="Lines per shard (the unit of a lease).")
    max_inflight: int = Field(
        0,
        ge=0,
        description=(
            "Batch lines in flight in the engine at once; 0 = twice the number of sequences "
            "vLLM schedules at once (its max_num_seqs), so it always has lines waiting."
        ),
    )
    max_online_requests: int = Field(
        64,
        ge=1,
        description=(
            "Online chat requests this engine holds at once, apart from the batch lines (so "
            "neither starves the other); one more is refused at once with 503 and Retry-After."
        ),
    )
    lease_seconds: float = Field(20.0, description="A lease not renewed for this long expires.")
    flush_seconds: float = Field(0.5, description="Longest wait before results are committed.")
    flush_lines: int = Field(256, description="Commit results when this many are waiting.")
    poll_seconds: float = Field(1.0, description="How often an idle runner looks for work.")
    engine_id: str = Field("", description="Stable id of this engine; default host-pid.")
    engine_tls_server_name: str = Field(
        "",
        description=(
            "With mutual TLS: the DNS name every engine's certificate carries, checked when chat "
            "is forwarded to an engine at the address it registered (a pod IP, which a "
            "certificate issued in advance cannot name); empty = the dialed host."
        ),
    )
    advertise_address: str = Field("", description="Address other services reach us on.")

    def resolved_database_url(self) -> str:
        """The configured URL, or SQLite in the home directory."""
        return self.database_url or f"sqlite:///{self.home / 'inference.db'}"

    def resolved_blob_dir(self) -> Path:
        """The filesystem blob root."""
        return self.blob_dir or self.home / "blobs"

    def has_role(self, role: str) -> bool:
        """Whether this process runs `role`."""
        return role in {r.strip() for r in self.roles.split(",")}
