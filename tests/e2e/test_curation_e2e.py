"""The curation loop end to end on the shared vLLM engine: a batch submitted with the openai
client and `metadata.schema_type`, prompted with the schema's own rendered prompt and JSON
schema, becomes Label Studio tasks with valid predictions; the ML backend asks the same engine.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from curation.curation_support import CurationProcess, ticket
from label_studio_sdk.client import LabelStudio
from support import MODEL_NAME, wait_until

from loomstack_curation.labelstudio_server import free_port
from loomstack_curation.predictions import label_interface
from loomstack_curation.prompts import render_prompt, response_format
from loomstack_curation.registry import TaskRegistry

pytestmark = [pytest.mark.engine, pytest.mark.labelstudio]
N = 6


def test_batch_with_schema_type_becomes_tasks_with_predictions(
    stack: Any, label_studio_server: Any, label_studio: LabelStudio, tmp_path: Any
) -> None:
    registry = TaskRegistry.load(Path(__file__).resolve().parents[2] / "schemas")
    schema = registry.get("classify_ticket")
    http_port = free_port()
    curation = CurationProcess(
        tmp_path / "curation",
        {
            "LOOMSTACK_CURATION_INFERENCE_ADDRESS": stack.inference.address,
            "LOOMSTACK_CURATION_LABEL_STUDIO_URL": label_studio_server.url,
            "LOOMSTACK_CURATION_LABEL_STUDIO_TOKEN": label_studio_server.token,
            "LOOMSTACK_CURATION_LABEL_STUDIO_PROJECT_PREFIX": f"e2e-{uuid.uuid4().hex[:6]} ",
            "LOOMSTACK_CURATION_HTTP_PORT": str(http_port),
            "LOOMSTACK_CURATION_MAX_TOKENS": "40",
            "LOOMSTACK_CURATION_ML_BACKEND_USERNAME": "label-studio",
            "LOOMSTACK_CURATION_ML_BACKEND_PASSWORD": "e2e-ml-backend-password",
        },
    ).start()
    try:
        client = stack.client()
        lines = [
            {
                "custom_id": f"t{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": MODEL_NAME,
                    "messages": [
                        {"role": "system", "content": render_prompt(schema)},
                        {"role": "user", "content": ticket(i)},
                    ],
                    "response_format": response_format(schema),
                    "max_tokens": 40,
                    "temperature": 0,
                },
            }
            for i in range(N)
        ]
        data = b"".join(json.dumps(x).encode() + b"\n" for x in lines)
        f = client.files.create(file=("tickets.jsonl", data), purpose="batch")
        batch = client.batches.create(
            input_file_id=f.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"schema_type": "classify_ticket"},
        )

        def project_tasks() -> list[Any] | None:
            projects = [
                p
                for p in label_studio.projects.list()
                if (p.title or "").startswith(
                    curation.env["LOOMSTACK_CURATION_LABEL_STUDIO_PROJECT_PREFIX"]
                )
            ]
            if not projects:
                return None
            tasks = list(label_studio.tasks.list(project=projects[0].id, fields="all"))
            return tasks if len(tasks) == N else None

        tasks = wait_until(project_tasks, 300, 1.0, "the batch's tasks in Label Studio")
        assert client.batches.retrieve(batch.id).status == "completed"
        assert sorted(t.data["ticket"] for t in tasks) == sorted(ticket(i) for i in range(N))
        interface = label_interface(schema)
        predicted = [t for t in tasks if t.predictions]
        # Structured output makes the small model answer in the schema: predictions fit.
        assert len(predicted) == N
        for task in predicted:
            (prediction,) = task.predictions
            assert prediction.model_version == MODEL_NAME
            assert {r["from_name"] for r in prediction.result} == {"category", "urgency"}
            for region in prediction.result:
                assert interface.validate_region(region, return_errors=True) == []

        # The ML backend asks the engine for a prediction of a task, in the same format.
        project = f"{tasks[0].project}.1700000000"
        reply = httpx.post(
            f"{curation.http_url}/ml/predict",
            json={"project": project, "tasks": [{"id": tasks[0].id, "data": tasks[0].data}]},
            auth=("label-studio", "e2e-ml-backend-password"),
            timeout=120,
        )
        assert reply.status_code == 200, reply.text
        (result,) = reply.json()["results"]
        for region in result["result"]:
            assert interface.validate_region(region, return_errors=True) == []
    finally:
        curation.stop()
