"""Training fixtures: a real inference service (api role: files, the model registry) and a
real training service process whose trainers run in the Unsloth environment."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from training_support import TRAINER_PYTHON, GatewayProcess, TrainingClient, TrainingProcess


@pytest.fixture(scope="session")
def trainer_python() -> str:
    """The trainer environment's python (make training-install)."""
    if not Path(TRAINER_PYTHON).exists():
        pytest.fail(f"no trainer environment at {TRAINER_PYTHON}: run `make training-install`")
    return TRAINER_PYTHON


@dataclass
class InferenceStack:
    """The inference service as two processes on one home: the api role (files, batches, the
    model registry) and an engine role with LoRA on (rank up to 8), as in a cluster. The api
    answers at once; only the serving checks wait for the engine (`wait_ready`)."""

    api: Any
    engine: Any

    @property
    def address(self) -> str:
        return str(self.api.address)

    @property
    def spans(self) -> Path:
        """Where the api role (and the training service beside it) export their spans."""
        return Path(self.api.home) / "spans.jsonl"

    def wait_ready(self, timeout: float) -> None:
        self.engine.wait_ready(timeout)


@pytest.fixture(scope="session")
def training_inference(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InferenceStack]:
    """A real inference api process and a real vLLM engine process (LoRA on) sharing a home.
    The engine loads while the first jobs train."""
    from support import InferenceProcess

    home = tmp_path_factory.mktemp("training-inference")
    # Traced, as the training service is: an eval gate is one trace across both.
    api = InferenceProcess(
        home,
        roles="api",
        name="inference-api",
        env={"LOOMSTACK_INFERENCE_OTEL_EXPORTER": f"jsonl:{home / 'spans.jsonl'}"},
    )
    api.start().wait_ready(120)
    engine = InferenceProcess(
        home,
        roles="engine",
        name="inference-engine",
        env={"LOOMSTACK_INFERENCE_MAX_LORA_RANK": "8"},
    )
    try:
        engine.start()
        yield InferenceStack(api, engine)
    finally:
        engine.terminate()
        api.terminate()


@pytest.fixture(scope="module")
def inference_api_only(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real inference service, api role only (files, the model registry; no engine ever
    serves a model here)."""
    from support import api_only_inference

    with api_only_inference(tmp_path_factory.mktemp("inference-api")) as process:
        yield process


@pytest.fixture(scope="module")
def training_service(
    tmp_path_factory: pytest.TempPathFactory, training_inference: object, trainer_python: str
) -> Iterator[TrainingProcess]:
    """A real training service process (SQLite, filesystem blobs) on an ephemeral port."""
    home = tmp_path_factory.mktemp("training")
    stack: InferenceStack = training_inference  # type: ignore[assignment]
    process = TrainingProcess(
        home, stack.address, LOOMSTACK_TRAINING_OTEL_EXPORTER=f"jsonl:{stack.spans}"
    ).start()
    try:
        yield process
    finally:
        process.terminate()


@pytest.fixture()
def client(
    training_service: TrainingProcess, training_inference: object
) -> Iterator[TrainingClient]:
    """gRPC stubs for the training service and the inference FileService."""
    c = TrainingClient(training_service.address, training_inference.address)  # type: ignore[attr-defined]
    try:
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory,
    training_inference: object,
    training_service: TrainingProcess,
) -> Iterator[GatewayProcess]:
    """The real gateway in front of both services (the official openai client talks to it)."""
    process = GatewayProcess(
        tmp_path_factory.mktemp("gateway"),
        training_inference.address,  # type: ignore[attr-defined]
        training_service.address,
    ).start()
    try:
        yield process
    finally:
        process.terminate()


@pytest.fixture(autouse=True)
def _no_job_outlives_its_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a test that used the training service, no job of it is left queued or running."""
    yield
    if "training_service" not in request.fixturenames:
        return
    service: TrainingProcess = request.getfixturevalue("training_service")
    inference: Any = request.getfixturevalue("training_inference")
    c = TrainingClient(service.address, inference.address)
    try:
        c.cancel_unfinished()
    finally:
        c.close()
