"""A Label Studio ML backend: Label Studio asks it for predictions of tasks, it asks the model.

The routes are the ones Label Studio's ML backend protocol calls (`label-studio-ml-backend`'s
`api.py`): `GET /health` → `{"status": "UP"}`; `POST /setup` (project, schema = the labeling
config) → `{"model_version"}`; `POST /predict` (`tasks`, `project` as `"<id>.<timestamp>"`) →
`{"results": [{"result", "score", "model_version"}, ...], "model_version"}`, one entry per
task in order; `POST /webhook` (training events) → 201. The project's schema comes from our
schema → project mapping, the prompt and `response_format` from the schema, the regions from
predictions.py, so they are the same as an imported batch's.

Each prediction runs as the Loomstack project the Label Studio project belongs to (the chat
call names it), never as a default project, and a call takes at most `max_tasks` tasks (Label
Studio sends every selected task in one call). Authentication is http_app.py's (basic auth).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from loomstack_kit.errors import InvalidArgument, NotFound, TooLarge

from .catalog import SchemaCatalog
from .predictions import build_prediction
from .projects import MappedProject, ProjectMap
from .prompts import render_messages, response_format
from .task_schema import TaskSchema

# chat(Loomstack project, request) → OpenAI chat.completion object.
Chat = Callable[[str, dict[str, Any]], dict[str, Any]]
DEFAULT_MAX_TASKS = 64
_PROJECT = re.compile(r"([0-9]{1,18})(?:\.[0-9]*)?")


def project_id_of(value: Any) -> int:
    """Label Studio sends the project as `"<id>.<timestamp>"` (or a bare id)."""
    found = _PROJECT.fullmatch(str(value if value is not None else ""))
    if found is None:
        raise InvalidArgument(
            f"project {str(value)[:40]!r} is not a Label Studio project id", param="project"
        )
    return int(found.group(1))


class MLBackend:
    """The backend's logic, independent of the HTTP framework."""

    def __init__(
        self,
        catalog: SchemaCatalog,
        projects: ProjectMap,
        chat: Chat,
        *,
        model: str,
        max_tokens: int = 256,
        max_tasks: int = DEFAULT_MAX_TASKS,
    ) -> None:
        self.catalog = catalog
        self.projects = projects
        self.chat = chat
        self.model = model
        self.max_tokens = max_tokens
        self.max_tasks = max_tasks

    @property
    def model_version(self) -> str:
        return f"loomstack:{self.model}"

    def health(self) -> dict[str, Any]:
        return {"status": "UP", "model_class": "LoomstackChat", "model_version": self.model_version}

    def setup(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        if payload.get("project") is not None:
            self._schema(project_id_of(payload.get("project")))
        return {"model_version": self.model_version}

    def _schema(self, project_id: int) -> tuple[MappedProject, TaskSchema]:
        mapped = self.projects.by_project_id(project_id)
        if mapped is None:
            raise NotFound(
                f"Label Studio project {project_id} is not a Loomstack curation project",
                param="project",
            )
        return mapped, self.catalog.get(mapped.schema_id, mapped.schema_version)

    def predict(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        tasks = payload.get("tasks")
        if not isinstance(tasks, list):
            raise InvalidArgument("`tasks` must be a list of tasks", param="tasks")
        if len(tasks) > self.max_tasks:
            raise TooLarge(
                f"{len(tasks)} tasks in one predict call; the limit is {self.max_tasks} "
                "(LOOMSTACK_CURATION_ML_BACKEND_MAX_TASKS): ask for fewer tasks at once",
                param="tasks",
            )
        datas = [task.get("data") if isinstance(task, Mapping) else None for task in tasks]
        if not all(isinstance(data, Mapping) for data in datas):
            raise InvalidArgument("every task needs its `data`", param="tasks")
        mapped, schema = self._schema(project_id_of(payload.get("project")))
        results = []
        for data in datas:
            assert isinstance(data, Mapping)
            request: dict[str, Any] = {
                "model": self.model,
                "messages": render_messages(schema, data),
                "max_tokens": self.max_tokens,
                "temperature": 0,
            }
            fmt = response_format(schema)
            if fmt is not None:
                request["response_format"] = fmt
            reply = self.chat(mapped.project, request)
            answer = str(
                ((reply.get("choices") or [{}])[0].get("message") or {}).get("content") or ""
            )
            prediction = build_prediction(schema, answer)
            score = 1.0 if prediction.ok else 0.0
            results.append(
                {"result": prediction.regions, "score": score, "model_version": self.model_version}
            )
        return {"results": results, "model_version": self.model_version}
