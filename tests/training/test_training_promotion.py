"""A promoted job succeeds only once an engine can serve its model, within a bound.

The training side of it against a real inference service that has no engine (api role): the
job waits `running` with an event, then, past `serve_wait_seconds`, succeeds with a warning
event and its model stays registered; a job cancelled while it waits is not succeeded and its
model is removed. The other side, a chat request sent the instant a real job succeeds being
answered by the real engine, is test_training_jobs.py's trained-and-served test."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loomstack_kit.blobstore import FilesystemBlobStore
from loomstack_kit.database import create_db_engine, migrate
from loomstack_kit.errors import InvalidArgument
from loomstack_kit.settings import ServiceSettings
from loomstack_training.__main__ import MIGRATIONS, VERSION_TABLE
from loomstack_training.inference import InferenceClient
from loomstack_training.jobs import Jobs, JobView, fine_tuned_model_name
from loomstack_training.promotion import Promotion
from loomstack_training.validation import Hyperparameters
from support import MODEL_NAME, MODEL_PATH

HP = Hyperparameters(1, 2, 1e-3, 64, 4, 8, 0.0, ("q_proj",))
PROJECT = "team-promotion"


@pytest.fixture()
def inference(inference_api_only: Any) -> Iterator[InferenceClient]:
    client = InferenceClient(inference_api_only.address, ServiceSettings())
    yield client
    client.close()


def _running_job(jobs: Jobs, suffix: str) -> JobView:
    job = jobs.create(
        project=PROJECT,
        model=MODEL_NAME,
        base_model_path=MODEL_PATH,
        training_file="file-1",
        validation_file=None,
        suffix=suffix,
        seed=1,
        hyperparameters=HP,
        metadata={},
        runner="local",
    )
    jobs.mark_queued(job.id, "files ok")
    claimed = jobs.claim_next("local")
    assert claimed is not None and claimed.id == job.id
    return claimed


def _promotion(
    tmp_path: Path, inference: InferenceClient, wait: float
) -> tuple[Jobs, Promotion, Path]:
    url = f"sqlite:///{tmp_path / 'training.db'}"
    migrate(url, MIGRATIONS, VERSION_TABLE)
    jobs = Jobs(create_db_engine(url))

    async def register(job: JobView, name: str, source: str) -> None:
        await asyncio.to_thread(
            inference.register_adapter, job.project, name, parent=job.model, source=source
        )

    async def ready_engines(job: JobView, name: str) -> int:
        return await asyncio.to_thread(inference.ready_engines, job.project, name)

    async def unregister(job: JobView, name: str) -> None:
        await asyncio.to_thread(inference.delete_model, job.project, name)

    promotion = Promotion(
        jobs,
        FilesystemBlobStore(tmp_path / "blobs"),
        register=register,
        ready_engines=ready_engines,
        unregister=unregister,
        serve_wait_seconds=wait,
        poll_seconds=0.2,
    )
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    return jobs, promotion, adapter


def _messages(jobs: Jobs, job_id: str) -> list[tuple[str, str]]:
    events, _ = jobs.events(None, job_id, limit=100)
    return [(e.level, e.message) for e in reversed(events)]


async def test_without_an_engine_the_job_waits_then_succeeds_with_a_warning(
    tmp_path: Path, inference: InferenceClient
) -> None:
    jobs, promotion, adapter = _promotion(tmp_path, inference, wait=1.5)
    job = _running_job(jobs, "nowhere")
    name = fine_tuned_model_name(MODEL_NAME, "nowhere", job.id)
    started = time.monotonic()
    task = asyncio.create_task(promotion.finish(job, adapter, {"trained_tokens": 8, "steps": 2}))
    await asyncio.sleep(0.8)
    # Registered, not served: the job is still running and says what it waits for.
    assert jobs.status_of(job.id) == "running"
    assert inference.model(PROJECT, name, param="model").parent == MODEL_NAME
    assert ("info", f"Waiting for an engine to serve {name} (up to 2 s)") in _messages(jobs, job.id)
    await asyncio.wait_for(task, 10)
    assert time.monotonic() - started >= 1.5
    done = jobs.get(PROJECT, job.id)
    assert done.status == "succeeded" and done.fine_tuned_model == name
    messages = _messages(jobs, job.id)
    assert messages[-2][0] == "warn"
    assert messages[-2][1].startswith(f"No engine served {name} within 2 s")
    assert messages[-1] == ("info", f"The job has successfully completed: {name}")
    assert inference.ready_engines(PROJECT, name) == 0


async def test_a_job_cancelled_while_it_waits_is_not_succeeded_and_its_model_goes(
    tmp_path: Path, inference: InferenceClient
) -> None:
    jobs, promotion, adapter = _promotion(tmp_path, inference, wait=60)
    job = _running_job(jobs, "cancelled")
    name = fine_tuned_model_name(MODEL_NAME, "cancelled", job.id)
    task = asyncio.create_task(promotion.finish(job, adapter, {"trained_tokens": 8, "steps": 2}))
    for _ in range(50):
        if any(m.startswith("Waiting for an engine") for _, m in _messages(jobs, job.id)):
            break
        await asyncio.sleep(0.1)
    jobs.cancel(PROJECT, job.id)
    await asyncio.wait_for(task, 5)
    assert jobs.get(PROJECT, job.id).status == "cancelled"
    assert jobs.get(PROJECT, job.id).fine_tuned_model is None
    with pytest.raises(InvalidArgument):
        inference.model(PROJECT, name, param="model")
