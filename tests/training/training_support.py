"""Helpers of the training tests: a real training service process and a gRPC client."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import grpc
from service_processes import ServiceProcess, http_healthy

from loomstack.inference.v1 import files_pb2, files_pb2_grpc
from loomstack.training.v1 import training_pb2, training_pb2_grpc
from support import MODEL_NAME, ROOT, signed, wait_until

TRAINER_PYTHON = os.environ.get(
    "LOOMSTACK_TRAINING_TRAINER_PYTHON", str(ROOT / ".cache" / "training-venv" / "bin" / "python")
)
QUESTIONS = ("What is 5 plus 6?", "Add 5 and 6.", "Compute 5 + 6.", "5 + 6 = ?")
TRAINED_ANSWER = "Loomstack says: eleven ducks."


def chat_example(question: str, answer: str = TRAINED_ANSWER) -> dict[str, Any]:
    """One OpenAI chat fine-tuning line."""
    return {
        "messages": [
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ]
    }


def examples(n: int) -> list[dict[str, Any]]:
    """n lines that all teach the same distinctive answer."""
    return [chat_example(QUESTIONS[i % len(QUESTIONS)]) for i in range(n)]


# Small and fast: a few steps of a rank-4 adapter on two projections.
FAST = training_pb2.Hyperparameters(
    batch_size=2,
    max_steps=2,
    save_steps=1,
    max_seq_length=64,
    lora_r=4,
    lora_alpha=8,
    learning_rate=1e-3,
    lora_target_modules=["q_proj", "v_proj"],
)


class TrainingProcess(ServiceProcess):
    """A real `python -m loomstack_training` process in its own process group (its trainers
    run in sessions of their own)."""

    package = "loomstack_training"

    def __init__(self, home: Path, inference_address: str, **env: str) -> None:
        self.port_file = home / "training.port"
        super().__init__(
            home,
            "training",
            {
                **os.environ,
                "LOOMSTACK_HOME": str(home),
                "LOOMSTACK_TRAINING_PORT_FILE": str(self.port_file),
                "LOOMSTACK_TRAINING_INFERENCE_ADDRESS": inference_address,
                "LOOMSTACK_TRAINING_TRAINER_PYTHON": TRAINER_PYTHON,
                "LOOMSTACK_TRAINING_POLL_SECONDS": "0.2",
                "LOOMSTACK_TRAINING_MIN_EXAMPLES": "4",
                **env,
            },
            {"grpc": self.port_file},
        )

    def start(self, timeout: float = 60) -> TrainingProcess:
        super().start(timeout)
        return self.wait_ready(60)

    def kill9(self) -> None:  # type: ignore[override]
        """SIGKILL the service (its trainers run in their own sessions and survive it)."""
        super().kill9(group=True)


class TrainingClient:
    """Synchronous stubs of the training service and the inference FileService."""

    def __init__(self, training: str, inference: str, project: str = "default") -> None:
        self.project = project
        self._channels = [grpc.insecure_channel(training), grpc.insecure_channel(inference)]
        self.jobs = training_pb2_grpc.FineTuningServiceStub(self._channels[0])
        self.files = files_pb2_grpc.FileServiceStub(self._channels[1])

    @property
    def metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        """Signed afresh for each call."""
        return signed(self.project)

    def upload(self, lines: list[Any], purpose: str = "fine-tune") -> str:
        data = "".join(x if isinstance(x, str) else json.dumps(x) for x in lines)
        if lines and not isinstance(lines[0], str):
            data = "".join(json.dumps(x) + "\n" for x in lines)
        messages = [
            files_pb2.UploadFileRequest(
                metadata=files_pb2.UploadFileMetadata(filename="train.jsonl", purpose=purpose)
            ),
            files_pb2.UploadFileRequest(chunk=data.encode()),
        ]
        return str(self.files.UploadFile(iter(messages), metadata=self.metadata, timeout=30).id)

    def create(self, training_file: str, **kwargs: Any) -> training_pb2.FineTuningJob:
        kwargs.setdefault("model", MODEL_NAME)
        return self.jobs.CreateFineTuningJob(
            training_pb2.CreateFineTuningJobRequest(training_file=training_file, **kwargs),
            metadata=self.metadata,
            timeout=120,
        )

    def get(self, job_id: str) -> training_pb2.FineTuningJob:
        return self.jobs.GetFineTuningJob(
            training_pb2.GetFineTuningJobRequest(job_id=job_id), metadata=self.metadata, timeout=10
        )

    def status(self, job_id: str) -> str:
        name = training_pb2.FineTuningJobStatus.Name(self.get(job_id).status)
        return name.removeprefix("FINE_TUNING_JOB_STATUS_").lower()

    def events(self, job_id: str) -> list[training_pb2.FineTuningJobEvent]:
        return list(
            self.jobs.ListFineTuningJobEvents(
                training_pb2.ListFineTuningJobEventsRequest(job_id=job_id, page_size=1000),
                metadata=self.metadata,
                timeout=10,
            ).events
        )

    def checkpoints(self, job_id: str) -> list[training_pb2.FineTuningJobCheckpoint]:
        return list(
            self.jobs.ListFineTuningJobCheckpoints(
                training_pb2.ListFineTuningJobCheckpointsRequest(job_id=job_id, page_size=100),
                metadata=self.metadata,
                timeout=10,
            ).checkpoints
        )

    def cancel(self, job_id: str) -> training_pb2.FineTuningJob:
        return self.jobs.CancelFineTuningJob(
            training_pb2.CancelFineTuningJobRequest(job_id=job_id),
            metadata=self.metadata,
            timeout=10,
        )

    def wait_status(self, job_id: str, statuses: set[str], timeout: float) -> str:
        return str(
            wait_until(
                lambda: (s := self.status(job_id)) in statuses and s,
                timeout,
                0.3,
                f"job {job_id} in {statuses}",
            )
        )

    def cancel_unfinished(self) -> list[str]:
        """Cancels every job still queued or running (so a failed test cannot hold the trainer
        slot the next test needs); returns their ids."""
        unfinished = {
            training_pb2.FINE_TUNING_JOB_STATUS_VALIDATING_FILES,
            training_pb2.FINE_TUNING_JOB_STATUS_QUEUED,
            training_pb2.FINE_TUNING_JOB_STATUS_RUNNING,
        }
        jobs = self.jobs.ListFineTuningJobs(
            training_pb2.ListFineTuningJobsRequest(page_size=100),
            metadata=self.metadata,
            timeout=10,
        ).jobs
        cancelled = [job.id for job in jobs if job.status in unfinished]
        for job_id in cancelled:
            self.cancel(job_id)
        return cancelled

    def close(self) -> None:
        for channel in self._channels:
            channel.close()


def pid_alive(pid: int) -> bool:
    """Whether a process exists (and is not a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


class GatewayProcess(ServiceProcess):
    """A real `python -m loomstack_gateway` in front of the inference and training services."""

    package = "loomstack_gateway"
    KEY = "sk-training-test"

    def __init__(self, home: Path, inference_address: str, training_address: str) -> None:
        self.port_file = home / "gateway.port"
        super().__init__(
            home,
            "gateway",
            {
                **{k: v for k, v in os.environ.items() if not k.startswith("LOOMSTACK_GATEWAY_")},
                "LOOMSTACK_GATEWAY_INFERENCE_ADDRESS": inference_address,
                "LOOMSTACK_GATEWAY_TRAINING_ADDRESS": training_address,
                "LOOMSTACK_GATEWAY_PORT": "0",
                "LOOMSTACK_GATEWAY_PORT_FILE": str(self.port_file),
                "LOOMSTACK_GATEWAY_API_KEYS": f"{self.KEY}:default",
            },
            {"http": self.port_file},
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> GatewayProcess:
        super().start(timeout)
        return self.wait_healthy(
            lambda: http_healthy(f"{self.url}/healthz"), 60, 0.2, "gateway /healthz"
        )

    def client(self) -> Any:
        from openai import OpenAI

        return OpenAI(base_url=f"{self.url}/v1", api_key=self.KEY, max_retries=0, timeout=300)

    def terminate(self, timeout: float = 15) -> int:
        return super().terminate(timeout)
