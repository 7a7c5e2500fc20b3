"""The Label Studio ML backend: each prediction runs as the Loomstack project whose Label
Studio project asks, a call takes at most the configured number of tasks, and every route
needs Label Studio's basic auth credentials (all refused when none are configured). The app
is served by a real HTTP server (uvicorn); the model it asks is a stand-in `chat` that records
the project each call names (the identity the inference service would see). The last test
registers the backend in the real Label Studio with basic auth and has Label Studio fetch
predictions through it."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from curation_support import Curation, ls_tasks, make_curation, serve_http
from label_studio_sdk.client import LabelStudio
from label_studio_sdk.core.api_error import ApiError

from loomstack_curation import tables
from loomstack_curation.http_app import create_app
from loomstack_curation.ml_auth import Credentials, load_credentials
from loomstack_curation.ml_backend import MLBackend
from loomstack_kit.database import write_transaction
from loomstack_kit.errors import InvalidArgument, NotFound, TooLarge

USER, PASSWORD = "label-studio", "f3a9c0ffee5e1c2e7d41b8e2a61d0b5c9e7f2a10"
ANSWER = json.dumps({"category": "Billing", "urgency": "Low"})


class RecordingChat:
    """Stands for the inference service's chat: answers in the schema and records the
    project every call runs as."""

    def __init__(self) -> None:
        self.projects: list[str] = []

    def __call__(self, project: str, request: dict[str, Any]) -> dict[str, Any]:
        assert request["response_format"]["type"] == "json_schema"
        self.projects.append(project)
        return {"choices": [{"message": {"role": "assistant", "content": ANSWER}}]}


def map_project(cur: Curation, project: str, ls_project: int) -> None:
    """A mapping row, as `ProjectMap.ensure` records it."""
    schema = cur.catalog.get("classify_ticket")
    with write_transaction(cur.engine) as conn:
        conn.execute(
            tables.projects.insert().values(
                project=project,
                schema_key=schema.key,
                schema_id=schema.id,
                schema_version=schema.version,
                ls_project_id=ls_project,
                title=f"{project}/{schema.key}",
                created_at=time.time(),
            )
        )


def backend(cur: Curation, chat: RecordingChat, max_tasks: int = 64) -> MLBackend:
    return MLBackend(cur.catalog, cur.projects, chat, model="m", max_tasks=max_tasks)


def task(i: int) -> dict[str, Any]:
    return {"id": i, "data": {"ticket": f"Ticket {i}: my invoice is wrong"}}


def test_predictions_run_as_the_project_of_the_label_studio_project(tmp_path: Path) -> None:
    cur = make_curation(f"sqlite:///{tmp_path / 'c.db'}", None, tmp_path)
    map_project(cur, "team-a", 101)
    map_project(cur, "team-b", 202)
    chat = RecordingChat()
    ml = backend(cur, chat, max_tasks=3)
    reply = ml.predict({"project": "202.1700000000", "tasks": [task(1), task(2)]})
    assert chat.projects == ["team-b", "team-b"]
    assert [r["score"] for r in reply["results"]] == [1.0, 1.0]
    assert ml.predict({"project": 101, "tasks": [task(3)]})["results"][0]["result"]
    assert chat.projects[-1] == "team-a"
    assert ml.setup({"project": "101.1"}) == {"model_version": "loomstack:m"}

    called = len(chat.projects)
    with pytest.raises(TooLarge, match="the limit is 3") as too_many:
        ml.predict({"project": "202.1", "tasks": [task(i) for i in range(4)]})
    assert too_many.value.param == "tasks"
    with pytest.raises(NotFound, match="not a Loomstack curation project"):
        ml.predict({"project": "303.1", "tasks": [task(1)]})
    for project in ("x", "²", "9" * 30, None, "-1"):
        with pytest.raises(InvalidArgument):
            ml.predict({"project": project, "tasks": [task(1)]})
    with pytest.raises(InvalidArgument, match="needs its `data`"):
        ml.predict({"project": "202.1", "tasks": [task(1), {"id": 2}]})
    assert len(chat.projects) == called  # nothing refused reached the model


def test_credentials_come_from_the_value_or_the_file(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text(f"{PASSWORD}\n")
    assert load_credentials(USER, "", secret) == Credentials(USER, PASSWORD)
    assert load_credentials(USER, "given", secret) == Credentials(USER, "given")
    assert load_credentials(USER, "", None) is None
    assert load_credentials("", PASSWORD) is None
    assert PASSWORD not in repr(Credentials(USER, PASSWORD))


def test_the_routes_need_the_credentials_and_fail_closed(tmp_path: Path) -> None:
    cur = make_curation(f"sqlite:///{tmp_path / 'c.db'}", None, tmp_path)
    map_project(cur, "team-b", 202)
    chat = RecordingChat()
    ml = backend(cur, chat, max_tasks=2)
    body = {"project": "202.1", "tasks": [task(1)]}
    with serve_http(create_app(cur.annotations, ml, "s3cret", Credentials(USER, PASSWORD))) as url:
        assert httpx.get(f"{url}/ml/health", auth=(USER, PASSWORD)).json()["status"] == "UP"
        for route in ("health", "setup", "predict", "webhook"):
            for auth in (None, (USER, "wrong"), ("someone", PASSWORD), (USER, PASSWORD + "x")):
                send = httpx.get if route == "health" else httpx.post
                refused = send(f"{url}/ml/{route}", auth=auth, **_body(route, body))
                assert refused.status_code == 401, (route, auth)
                assert refused.headers["www-authenticate"].startswith("Basic ")
                assert refused.json()["error"]["type"] == "invalid_request_error"
        malformed = httpx.post(
            f"{url}/ml/predict", json=body, headers={"Authorization": "Basic !!not-base64"}
        )
        assert malformed.status_code == 401 and "error" in malformed.json()
        assert chat.projects == []

        ok = httpx.post(f"{url}/ml/predict", json=body, auth=(USER, PASSWORD))
        assert ok.status_code == 200 and len(ok.json()["results"]) == 1
        assert chat.projects == ["team-b"]
        many = httpx.post(
            f"{url}/ml/predict",
            json={"project": "202.1", "tasks": [task(i) for i in range(3)]},
            auth=(USER, PASSWORD),
        )
        assert many.status_code == 413
        assert "the limit is 2" in many.json()["error"]["message"]
        assert many.json()["error"]["param"] == "tasks"
        setup = httpx.post(f"{url}/ml/setup", json={"project": "202.1"}, auth=(USER, PASSWORD))
        assert setup.status_code == 200
        hook = httpx.post(
            f"{url}/ml/webhook", json={"action": "START_TRAINING"}, auth=(USER, PASSWORD)
        )
        assert hook.status_code == 201

    # No credentials configured: refused, whatever is sent.
    with serve_http(create_app(cur.annotations, ml, "s3cret", None)) as url:
        for route in ("health", "setup", "predict", "webhook"):
            send = httpx.get if route == "health" else httpx.post
            refused = send(f"{url}/ml/{route}", auth=(USER, PASSWORD), **_body(route, body))
            assert refused.status_code == 401
            assert refused.json()["error"]["code"] == "ml_backend_disabled"
    assert chat.projects == ["team-b"]


def _body(route: str, body: dict[str, Any]) -> dict[str, Any]:
    return {} if route == "health" else {"json": body}


@pytest.mark.labelstudio
def test_label_studio_with_basic_auth_gets_predictions_as_the_project(
    label_studio: LabelStudio, tmp_path: Path
) -> None:
    cur = make_curation(f"sqlite:///{tmp_path / 'c.db'}", label_studio, tmp_path)
    assert cur.import_tickets("batch_a", 2, project="team-a") == "completed"
    assert cur.import_tickets("batch_b", 3, project="team-b") == "completed"
    schema = cur.catalog.get("classify_ticket")
    ls_project = cur.projects.lookup("team-b", schema)
    assert ls_project is not None
    # Tasks without predictions, the way a person adds them in Label Studio.
    made = label_studio.projects.import_tasks(
        id=ls_project,
        request=[{"data": {"ticket": f"Ticket {i}: cannot log in"}} for i in range(2)],
        return_task_ids=True,
    )
    new_ids: list[int] = made.model_dump()["task_ids"]
    chat = RecordingChat()
    ml = backend(cur, chat)
    with serve_http(create_app(cur.annotations, ml, "s3cret", Credentials(USER, PASSWORD))) as url:
        # Label Studio checks the backend (health, setup) with the credentials it is given.
        with pytest.raises(ApiError) as wrong:
            label_studio.ml.create(
                url=f"{url}/ml",
                project=ls_project,
                title="loomstack",
                auth_method="BASIC_AUTH",
                basic_auth_user=USER,
                basic_auth_pass="wrong",
            )
        assert wrong.value.status_code == 400
        assert "authentication parameters were either not provided or are incorrect" in (
            json.dumps(wrong.value.body)
        )
        registered = label_studio.ml.create(
            url=f"{url}/ml",
            project=ls_project,
            title="loomstack",
            auth_method="BASIC_AUTH",
            basic_auth_user=USER,
            basic_auth_pass=PASSWORD,
        )
        assert registered.id is not None
        # "Retrieve predictions" in the Data Manager: Label Studio calls /predict itself.
        label_studio.actions.create(
            id="retrieve_tasks_predictions",
            project=ls_project,
            selected_items={"all": False, "included": new_ids},
        )
    by_id = {t.id: t for t in ls_tasks(label_studio, ls_project)}
    for task_id in new_ids:
        (prediction,) = by_id[task_id].predictions
        assert prediction.model_version == "loomstack:m"
        values = {r["from_name"]: r["value"] for r in prediction.result}
        assert values == {"category": {"choices": ["Billing"]}, "urgency": {"choices": ["Low"]}}
    assert chat.projects and set(chat.projects) == {"team-b"}
