"""Training fixtures: a real inference service (api role: files, the model registry) and a
real training service process whose trainers run in the Unsloth environment."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from training_support import TRAINER_PYTHON, GatewayProcess, TrainingClient, TrainingProcess


@pytest.fixture(scope="session")
def trainer_python() -> str:
    """The trainer environment's python (make training-install)."""
    if not Path(TRAINER_PYTHON).exists():
        pytest.fail(f"no trainer environment at {TRAINER_PYTHON}: run `make training-install`")
    return TRAINER_PYTHON


@pytest.fixture(scope="session")
def training_inference(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A real inference service, api role only (no engine): files and the model registry."""
    from support import InferenceProcess

    home = tmp_path_factory.mktemp("training-inference")
    process = InferenceProcess(home, roles="api", name="inference-api").start().wait_ready(120)
    try:
        yield process
    finally:
        process.terminate()


@pytest.fixture(scope="module")
def training_service(
    tmp_path_factory: pytest.TempPathFactory, training_inference: object, trainer_python: str
) -> Iterator[TrainingProcess]:
    """A real training service process (SQLite, filesystem blobs) on an ephemeral port."""
    home = tmp_path_factory.mktemp("training")
    process = TrainingProcess(home, training_inference.address).start()  # type: ignore[attr-defined]
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
