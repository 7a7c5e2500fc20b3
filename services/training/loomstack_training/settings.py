"""Settings of the training service (environment prefix `LOOMSTACK_TRAINING_`)."""

from __future__ import annotations

import sys
from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from loomstack_kit.settings import ServiceSettings


class TrainingSettings(ServiceSettings):
    """What the service, its runners and its validation read."""

    model_config = SettingsConfigDict(env_prefix="LOOMSTACK_TRAINING_", extra="ignore")

    database_url: str = Field("", description="SQLAlchemy URL; empty = SQLite under home.")
    blob_backend: str = Field("filesystem", description="filesystem or database.")
    blob_dir: Path | None = Field(None, description="Filesystem blob root; default home/blobs.")
    inference_address: str = Field(
        "127.0.0.1:50051", description="The inference service (files, the model registry)."
    )

    runner: str = Field("local", description="Where trainers run: local or kubernetes.")
    trainer_python: str = Field(
        sys.executable,
        description="Python of the trainer environment (make training-install) for `local`.",
    )
    work_dir: Path | None = Field(None, description="Job directories; default home/training.")
    max_concurrent_jobs: int = Field(1, description="Trainers running at once (local runner).")
    poll_seconds: float = Field(0.5, description="How often the runner looks for queued jobs.")
    cancel_grace_seconds: float = Field(
        20.0, description="After SIGTERM, how long a trainer may take to checkpoint and exit."
    )
    log_tail_lines: int = Field(20, description="Trainer log lines quoted in a failure.")

    # The kubernetes runner (a batch/v1 Job per fine-tuning job).
    kubeconfig: str = Field("", description="Kubeconfig path; empty = in-cluster ServiceAccount.")
    kubernetes_namespace: str = Field("default", description="Namespace of the training Jobs.")
    kubernetes_image: str = Field(
        "ghcr.io/loomstack/training:0.1.0-cuda", description="Trainer image (Unsloth on CUDA)."
    )
    kubernetes_trainer_python: str = Field("python", description="Python in the trainer image.")
    kubernetes_trainer_script: str = Field(
        "/app/services/training/loomstack_training/trainer.py",
        description="trainer.py inside the trainer image.",
    )
    kubernetes_gpu_resource: str = Field("nvidia.com/gpu", description="GPU resource name.")
    kubernetes_gpu_count: int = Field(1, description="GPUs per training Job (limits).")
    kubernetes_node_selector: str = Field("{}", description="nodeSelector of the Job's pod (JSON).")
    kubernetes_tolerations: str = Field("[]", description="Tolerations of the Job's pod (JSON).")
    kubernetes_backoff_limit: int = Field(0, description="Job backoffLimit (retries of the pod).")
    kubernetes_active_deadline_seconds: int = Field(
        86_400, description="Job activeDeadlineSeconds (longest training run)."
    )
    kubernetes_ttl_seconds_after_finished: int = Field(
        3600, description="Job ttlSecondsAfterFinished (how long a finished Job is kept)."
    )
    kubernetes_work_volume_claim: str = Field(
        "", description="ReadWriteMany PVC mounted at work_dir by the service and every Job."
    )
    kubernetes_service_account: str = Field("", description="ServiceAccount of the Job's pod.")
    kubernetes_watch_seconds: int = Field(3600, description="Timeout of one Job watch request.")

    # Training file limits.
    min_examples: int = Field(10, description="Fewest training examples accepted.")
    max_file_bytes: int = Field(512 * 1024 * 1024, description="Largest training file read.")
    max_seq_length: int = Field(2048, description="Default (and largest) tokens per example.")

    # Defaults of unset hyperparameters.
    default_n_epochs: int = Field(3, description="Epochs.")
    default_batch_size: int = Field(8, description="Examples per step.")
    default_learning_rate: float = Field(2e-4, description="Learning rate at multiplier 1.")
    default_lora_r: int = Field(16, description="LoRA rank.")
    default_lora_alpha: int = Field(32, description="LoRA alpha.")
    default_lora_dropout: float = Field(0.0, description="LoRA dropout.")
    default_lora_target_modules: str = Field(
        "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
        description="Comma-separated LoRA target modules.",
    )
    dtype: str = Field("float32", description="Training dtype: float32 (CPU) or bfloat16.")

    serve_wait_seconds: float = Field(
        600.0,
        ge=0,
        description=(
            "After registering a fine-tuned model, how long its job stays running until a ready "
            "engine serves the model (the engines fetch and load the adapter first); past it the "
            "job succeeds with a warning event, and requests to the model get 503 until an "
            "engine serves it."
        ),
    )

    # Eval gate.
    eval_margin: float = Field(
        0.0, description="Token overlap the fine-tuned model must gain over the base."
    )
    eval_max_tokens: int = Field(128, description="Longest answer generated per eval prompt.")
    eval_timeout_seconds: float = Field(3600.0, description="Longest wait for an eval batch.")

    # On-demand A/B comparisons.
    comparison_max_tokens: int = Field(
        128, description="Longest answer per prompt when a comparison sets no max_tokens."
    )
    comparison_max_items: int = Field(1000, description="Most prompts in one comparison.")
    comparison_timeout_seconds: float = Field(
        3600.0, description="Longest wait for one model's comparison batch."
    )
    comparison_max_attempts: int = Field(
        2, description="Runs of a comparison a restart may interrupt before it is failed."
    )

    def resolved_database_url(self) -> str:
        """The configured URL, or SQLite in the home directory."""
        return self.database_url or f"sqlite:///{self.home / 'training.db'}"

    def resolved_blob_dir(self) -> Path:
        """The filesystem blob root."""
        return self.blob_dir or self.home / "training-blobs"

    def resolved_work_dir(self) -> Path:
        """Where job directories (config, data, log, checkpoints) live."""
        return (self.work_dir or self.home / "training").absolute()
