"""The seed's Phase 3 flows on real processes, a real Label Studio and a real PostgreSQL.

Two curation services share the inference service (api role), the training service and Label
Studio: one with no plugin enabled, one with the Aris plugin (curation, the Aristotle
database and training on PostgreSQL). Each has its own gateway; the tests speak HTTP to them
with the API keys of gateway_stack.py, as a client would.

- The OSS standalone flow (no plugin): upload → batch → Label Studio tasks → gold stars →
  snapshot → a fine-tuning job accepts it.
- The Aris extended flow: conquest → batch (metadata names the conquest) → the Aris handlers
  import it through curation into the candidate schema's Label Studio project (parsed by the
  plugin's parser) and record the analysis → a person's gold star in Label Studio (the
  webhook) → VICTORY with one rating row → Eidos examples and an `aris.aristotle` snapshot that
  a fine-tuning job accepts; the reverse sync (VICTORY set through the plugin's API → the gold
  star on the Label Studio task); the Aristotle database down while a gold star arrives (the
  delivery is retried; once it is back, exactly one rating row).

The batches are finished through the inference service's own domain objects with prepared
answers (curation_support.finish_batch: no vLLM needed, the services see only the feed and the
files, as in production).
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import psycopg
import pytest
from aris_support import candidate_answer
from curation_support import CurationProcess, finish_batch, ticket
from gateway_stack import KEY_A, KEY_ADMIN, KEY_B, Gateway, start_gateway
from label_studio_sdk.client import LabelStudio
from support import (
    MODEL_NAME,
    PG_ADMIN_URL,
    InferenceClient,
    postgres_database,
    signed,
    wait_until,
)
from training_support import TrainingProcess

from loomstack.curation.v1 import curation_pb2, curation_pb2_grpc
from loomstack_curation.labelstudio_server import LabelStudioServer, free_port
from loomstack_curation.predictions import regions
from loomstack_curation.registry import TaskRegistry, Vocabulary
from loomstack_kit.plugins import FeedEvent, load_plugins

pytestmark = [pytest.mark.labelstudio, pytest.mark.postgres]
ROOT = Path(__file__).resolve().parents[2]
PROJECT = "team-a"  # KEY_A's project
SECRET = "phase3-webhook-secret"
CONQUESTS = 5


@dataclass
class Site:
    gateway: Gateway
    curation: CurationProcess

    def http(self, key: str = KEY_A) -> httpx.Client:
        return self.gateway.http(key)


def _curation(
    home: Path, inference: Any, ls: LabelStudioServer, database_url: str, **env: str
) -> CurationProcess:
    port = free_port()
    return CurationProcess(
        home,
        {
            "LOOMSTACK_CURATION_INFERENCE_ADDRESS": inference.address,
            "LOOMSTACK_CURATION_DATABASE_URL": database_url,
            "LOOMSTACK_CURATION_LABEL_STUDIO_URL": ls.url,
            "LOOMSTACK_CURATION_LABEL_STUDIO_TOKEN": ls.token,
            "LOOMSTACK_CURATION_LABEL_STUDIO_PROJECT_PREFIX": f"p3-{uuid.uuid4().hex[:6]} ",
            "LOOMSTACK_CURATION_HTTP_PORT": str(port),
            "LOOMSTACK_CURATION_PUBLIC_URL": f"http://127.0.0.1:{port}",
            "LOOMSTACK_CURATION_WEBHOOK_SECRET": SECRET,
            "LOOMSTACK_CURATION_RECONCILE_SECONDS": "3600",  # gold stars come by webhook here
            "LOOMSTACK_CURATION_FEED_WAIT_SECONDS": "1",
            "LOOMSTACK_CURATION_POLL_SECONDS": "0.2",
            "LOOMSTACK_CURATION_RETRY_BASE_SECONDS": "0.5",
            "LOOMSTACK_CURATION_RETRY_MAX_SECONDS": "1",
            **env,
        },
    ).start()


@pytest.fixture(scope="module")
def training(inference_api: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with postgres_database() as url:
        process = TrainingProcess(
            tmp_path_factory.mktemp("p3-training"),
            inference_api.address,
            LOOMSTACK_TRAINING_DATABASE_URL=url,
        ).start()
        try:
            yield process
        finally:
            process.terminate()


@pytest.fixture(scope="module")
def sites(
    inference_api: Any,
    training: Any,
    label_studio_server: LabelStudioServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Any]]:
    with (
        postgres_database() as oss_db,
        postgres_database() as aris_db,
        postgres_database() as aristotle_db,
    ):
        oss = _curation(
            tmp_path_factory.mktemp("p3-oss"), inference_api, label_studio_server, oss_db
        )
        aris = _curation(
            tmp_path_factory.mktemp("p3-aris"),
            inference_api,
            label_studio_server,
            aris_db,
            LOOMSTACK_CURATION_PLUGINS="aris",
            LOOMSTACK_CURATION_PLUGINS_REQUIRED="aris",
            LOOMSTACK_ARIS_DATABASE_URL=aristotle_db,
            LOOMSTACK_ARIS_RECONCILE_SECONDS="1",
        )
        gateways: list[Gateway] = []
        try:
            for name, curation, plugins in (("oss", oss, ""), ("aris", aris, "aris")):
                gateways.append(
                    start_gateway(
                        tmp_path_factory.mktemp(f"p3-gateway-{name}"),
                        inference_api.address,
                        f"p3-gateway-{name}",
                        LOOMSTACK_GATEWAY_CURATION_ADDRESS=curation.address,
                        LOOMSTACK_GATEWAY_TRAINING_ADDRESS=training.address,
                        LOOMSTACK_GATEWAY_PLUGINS=plugins,
                    )
                )
            yield {
                "oss": Site(gateways[0], oss),
                "aris": Site(gateways[1], aris),
                "aristotle_db": aristotle_db,
                "inference_home": Path(inference_api.home),
            }
        finally:
            for gw in gateways:
                gw.proc.terminate()
                gw.proc.wait(15)
            aris.stop()
            oss.stop()


def batch_line(custom_id: str, content: str) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": MODEL_NAME, "messages": [{"role": "user", "content": content}]},
    }


def submit(site: Site, lines: list[dict[str, Any]], metadata: dict[str, str]) -> str:
    client = site.gateway.client()
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    uploaded = client.files.create(file=("input.jsonl", data), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata=metadata,
    )
    return batch.id


def imported_tasks(site: Site, batch_id: str, count: int) -> list[dict[str, Any]]:
    def tasks() -> list[dict[str, Any]] | None:
        with site.http() as http:
            found = http.get("/v1/curation/tasks", params={"batch_id": batch_id}).json()
        data = found.get("data") or []
        return data if len(data) == count else None

    return wait_until(tasks, 90, 0.2, f"the tasks of {batch_id}")


def accepted_by_fine_tuning(site: Site, training_file: str) -> None:
    with site.http() as http:
        job = http.post(
            "/v1/fine_tuning/jobs",
            json={"model": MODEL_NAME, "training_file": training_file, "suffix": "p3"},
        )
        assert job.status_code == 200, job.text
        body = job.json()
        assert body["object"] == "fine_tuning.job" and body["status"] in (
            "validating_files",
            "queued",
            "running",
        )
        assert body["training_file"] == training_file
        # Accepted is what these flows show; the training service's own tests train.
        assert http.post(f"/v1/fine_tuning/jobs/{body['id']}/cancel").status_code == 200


def test_oss_standalone_flow_without_a_plugin(
    sites: dict[str, Any], label_studio: LabelStudio
) -> None:
    site: Site = sites["oss"]
    with site.http() as http:
        listed = http.get("/v1/plugins").json()["data"]
    assert all(p["state"] == "disabled" for p in listed)  # installed, none enabled
    schema = TaskRegistry.load(ROOT / "schemas").get("classify_ticket")
    answers = {i: json.dumps({"category": "Billing", "urgency": "High"}) for i in range(6)}
    batch_id = submit(
        site, [batch_line(f"t{i}", ticket(i)) for i in range(6)], {"schema_type": "classify_ticket"}
    )
    finish_batch(sites["inference_home"], batch_id, set(), answer=answers.__getitem__)
    tasks = imported_tasks(site, batch_id, 6)
    for task in tasks[:5]:
        label_studio.annotations.create(
            id=task["id"],
            result=regions(schema, {"category": "Billing", "urgency": "High"}, gold=True),
        )
    wait_until(
        lambda: sum(t["gold"] for t in imported_tasks(site, batch_id, 6)) == 5,
        60,
        0.2,
        "the gold stars by webhook",
    )
    # The curation feed over HTTP: the project's own events, paged by sequence.
    starred = {t["id"] for t in tasks[:5]}

    def gold_events(key: str, **params: Any) -> list[dict[str, Any]]:
        with site.http(key) as http:
            body = http.get("/v1/curation/events", params={"limit": 1000, **params}).json()
        return [
            e
            for e in body["data"]
            if e["type"] == "task.gold_set" and e["data"]["batch_id"] == batch_id
        ]

    events = gold_events(KEY_A)
    assert {e["data"]["ls_task_id"] for e in events} == starred
    assert {e["data"]["origin"] for e in events} == {"label_studio"}
    assert gold_events(KEY_B) == []  # another project's key sees none of them
    with site.http() as http:
        first = http.get("/v1/curation/events", params={"limit": 1}).json()
        later = http.get("/v1/curation/events", params={"after": first["last_id"]}).json()
        assert first["has_more"] and later["data"][0]["sequence"] > first["last_id"]
        assert http.get("/v1/curation/events", params={"after": -1}).status_code == 400
    cli = site.gateway.cli("curation", "events", "--limit", "1000", "--json")
    assert cli.returncode == 0, cli.stderr
    assert len(json.loads(cli.stdout)["data"]) >= len(events)
    with site.http() as http:
        snapshot = http.post(
            "/v1/curation/snapshots",
            json={
                "name": f"oss-{batch_id}",
                "filter": {"schema_id": "classify_ticket", "gold_only": True},
            },
        )
    assert snapshot.status_code == 200, snapshot.text
    assert snapshot.json()["training_examples"] == 5
    accepted_by_fine_tuning(site, snapshot.json()["training_file_id"])


def conquest(site: Site, title: str, **extra: Any) -> dict[str, Any]:
    with site.http() as http:
        made = http.post(
            "/v1/plugins/aris/conquests",
            json={
                "type": "CANDIDATE",
                "title": title,
                "philosopher": "ada@example.com",
                "domain": "recruiting",
                "use_as_example": True,
                **extra,
            },
        )
    assert made.status_code == 200, made.text
    assert made.json()["status"] == "DRAFT" and made.json()["result"] == "PENDING"
    return made.json()


def get_conquest(site: Site, conquest_id: str) -> dict[str, Any]:
    with site.http() as http:
        reply = http.get(f"/v1/plugins/aris/conquests/{conquest_id}")
    assert reply.status_code == 200, reply.text
    return reply.json()


def analyse(site: Site, sites: dict[str, Any], conquest_id: str, i: int) -> dict[str, Any]:
    """Runs the conquest's batch and waits for its Label Studio task."""
    batch_id = submit(
        site,
        [batch_line(f"c{i}", f"Candidate {i}: ten years of backend work at two startups.")],
        {"conquest_id": conquest_id, "conquest_type": "CANDIDATE"},
    )
    finish_batch(sites["inference_home"], batch_id, set(), answer=lambda _: candidate_answer())
    [task] = imported_tasks(site, batch_id, 1)
    wait_until(
        lambda: get_conquest(site, conquest_id)["status"] == "COMPLETED", 60, 0.2, "the analysis"
    )
    return task


def test_aris_extended_flow_and_both_sync_directions(
    sites: dict[str, Any], label_studio: LabelStudio
) -> None:
    site: Site = sites["aris"]
    with site.http() as http:
        plugins = {p["id"]: p for p in http.get("/v1/plugins").json()["data"]}
        assert http.get("/v1/plugins/aris/conquests/conq_nope").status_code == 404
        bad = http.post("/v1/plugins/aris/conquests", json={"type": "WIZARD", "title": "x"})
    assert plugins["aris"]["state"] == "loaded" and plugins["aris"]["required"]
    assert "aris.candidate" in plugins["aris"]["contributions"]["schemas"]
    assert bad.status_code == 400 and "CANDIDATE" in bad.json()["error"]["message"]

    aris = load_plugins(["aris"]).loaded[0]
    vocabulary = Vocabulary(scales=aris.ratings, parsers=aris.parsers)
    assert aris.schemas is not None
    schema = TaskRegistry.load(aris.schemas, vocabulary=vocabulary).get("aris.candidate")

    made = [conquest(site, f"Candidate {i}") for i in range(CONQUESTS + 1)]
    tasks = [analyse(site, sites, c["id"], i) for i, c in enumerate(made)]
    first = get_conquest(site, made[0]["id"])
    assert first["response"] and first["prompt"]  # the analysis, recorded in Aristotle
    # The plugin's parser read the model's prose answer into the pre-filled choices.
    ls_task = label_studio.tasks.get(id=str(tasks[0]["id"]))
    [prediction] = ls_task.predictions
    chosen = {r["from_name"]: r["value"]["choices"] for r in prediction.result}
    assert chosen["recommendation"] == ["Strong Yes"] and chosen["trajectory"] == ["Strong"]

    # A person's gold star in Label Studio → VICTORY in Aristotle, one rating row each.
    answers = {
        "recommendation": "Strong Yes",
        "trajectory": "Strong",
        "company_pedigree": "Average",
        "education_pedigree": "Exceptional",
    }
    for task in tasks[:CONQUESTS]:
        label_studio.annotations.create(id=task["id"], result=regions(schema, answers, gold=True))
    for c in made[:CONQUESTS]:
        wait_until(
            lambda c=c: get_conquest(site, c["id"])["result"] == "VICTORY", 60, 0.2, "VICTORY"
        )
    assert get_conquest(site, made[CONQUESTS]["id"])["result"] == "PENDING"
    with psycopg.connect(sites["aristotle_db"]) as conn:
        rows = conn.execute(
            "SELECT conquest_id, count(*) FROM aris_ml_analysis_rating WHERE is_gold_star "
            "GROUP BY conquest_id"
        ).fetchall()
    assert sorted(r[0] for r in rows) == sorted(c["id"] for c in made[:CONQUESTS])
    assert all(r[1] == 1 for r in rows)

    # Eidos examples and the Aristotle snapshot, which a fine-tuning job accepts.
    with site.http() as http:
        icl = http.get(
            "/v1/plugins/aris/icl_examples",
            params={"user_email": "ada@example.com", "domain": "recruiting", "limit": 3},
        )
        assert icl.status_code == 200, icl.text
        assert len(icl.json()["data"]) == 3
        nobody = http.get("/v1/plugins/aris/icl_examples", params={"user_email": "bob@example.com"})
        assert nobody.json()["data"] == []
        snapshot = http.post(
            "/v1/curation/snapshots",
            json={
                "name": "aristotle",
                "exporter": "aris.aristotle",
                "exporter_options": {"user_email": "ada@example.com", "domain": "recruiting"},
            },
        )
    assert snapshot.status_code == 200, snapshot.text
    body = snapshot.json()
    assert body["exporter"] == "aris.aristotle"
    # The five conquests share one prompt shape and answer: distinct prompts, five examples.
    assert body["training_examples"] + body["validation_examples"] == CONQUESTS
    accepted_by_fine_tuning(site, body["training_file_id"])

    # The reverse sync: VICTORY through the plugin's API → the gold star on the task.
    last = made[CONQUESTS]
    with site.http() as http:
        set_result = http.post(
            f"/v1/plugins/aris/conquests/{last['id']}/result", json={"result": "VICTORY"}
        )
    assert set_result.status_code == 200, set_result.text
    wait_until(
        lambda: imported_tasks(site, tasks[CONQUESTS]["batch_id"], 1)[0]["gold"],
        60,
        0.2,
        "the gold star in Label Studio",
    )
    ls_annotations = label_studio.annotations.list(id=tasks[CONQUESTS]["id"])
    assert any(r.get("from_name") == schema.training.gold for a in ls_annotations for r in a.result)

    # The echo of that gold star (origin plugin:aris) reaches the gold → VICTORY handler,
    # which writes the rating row and starts no loop: one row, the sync done, and no further
    # gold-star change of the task on the curation feed.
    def ratings() -> int:
        with psycopg.connect(sites["aristotle_db"]) as conn:
            [(count,)] = conn.execute(
                "SELECT count(*) FROM aris_ml_analysis_rating WHERE conquest_id = %s",
                (last["id"],),
            ).fetchall()
        return int(count)

    wait_until(lambda: ratings() >= 1, 30, 0.2, "the echo's rating row")
    assert not get_conquest(site, last["id"])["gold_sync_pending"]
    with site.http() as http:
        health = http.get("/v1/plugins/aris/health").json()
    assert health["object"] == "aris.health" and health["database_reachable"]
    assert (health["victories"], health["pending_gold_syncs"]) == (CONQUESTS + 1, 0)
    gold_events = [
        e
        for e in curation_events(site)
        if e.data.get("ls_task_id") == tasks[CONQUESTS]["id"] and e.type.startswith("task.gold")
    ]
    assert [(e.type, e.data["origin"]) for e in gold_events] == [("task.gold_set", "plugin:aris")]
    assert ratings() == 1


def curation_events(site: Site) -> list[Any]:
    """Every event of the site's curation feed (its own gRPC API, as project team-a)."""
    channel = grpc.insecure_channel(site.curation.address)
    stub = curation_pb2_grpc.EventServiceStub(channel)
    found, after = [], 0
    while True:
        page = stub.ListEvents(
            curation_pb2.ListEventsRequest(after_sequence=after, page_size=1000),
            metadata=signed(PROJECT),
        ).events
        if not page:
            channel.close()
            return [
                FeedEvent("curation", e.sequence, e.type, e.project, json.loads(e.data_json))
                for e in found
            ]
        found += page
        after = page[-1].sequence


def test_aristotle_down_during_a_gold_star_loses_and_doubles_nothing(
    sites: dict[str, Any], label_studio: LabelStudio
) -> None:
    site: Site = sites["aris"]
    made = conquest(site, "Candidate while the database is down")
    task = analyse(site, sites, made["id"], 99)
    aris = load_plugins(["aris"]).loaded[0]
    assert aris.schemas is not None
    schema = TaskRegistry.load(
        aris.schemas, vocabulary=Vocabulary(scales=aris.ratings, parsers=aris.parsers)
    ).get("aris.candidate")
    name = sites["aristotle_db"].rsplit("/", 1)[1]
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
    try:
        answers = {
            "recommendation": "Yes",
            "trajectory": "Average",
            "company_pedigree": "Strong",
            "education_pedigree": "Average",
        }
        label_studio.annotations.create(id=task["id"], result=regions(schema, answers, gold=True))

        def failing() -> list[dict[str, Any]] | None:
            with site.http(KEY_ADMIN) as http:
                page = http.get("/v1/plugin_deliveries", params={"plugin": "aris"}).json()
            found = [d for d in page["data"] if d["data"].get("ls_task_id") == task["id"]]
            return found or None

        [delivery] = wait_until(failing, 60, 0.2, "the failed delivery")
        assert delivery["handler"] == "gold_to_victory" and delivery["status"] == "retrying"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    wait_until(lambda: get_conquest(site, made["id"])["result"] == "VICTORY", 60, 0.2, "the retry")
    with psycopg.connect(sites["aristotle_db"]) as conn:
        [(count,)] = conn.execute(
            "SELECT count(*) FROM aris_ml_analysis_rating WHERE conquest_id = %s", (made["id"],)
        ).fetchall()
    assert count == 1


def test_the_plugins_cli_commands_speak_to_its_routes(sites: dict[str, Any]) -> None:
    site: Site = sites["aris"]

    def aris(*args: str) -> subprocess.CompletedProcess[str]:
        return site.gateway.cli("aris", *args)

    made = aris("create", "--type", "candidate", "--title", "From the CLI", "--user", "cli@x.org")
    assert made.returncode == 0, made.stderr
    assert '"conquest_type": "CANDIDATE"' in made.stdout
    listed = json.loads(aris("conquests", "--user", "cli@x.org", "--json").stdout)
    [conquest] = listed["data"]
    assert conquest["title"] == "From the CLI" and conquest["status"] == "DRAFT"
    shown = aris("show", conquest["id"])
    assert shown.returncode == 0 and conquest["id"] in shown.stdout
    set_result = aris("result", conquest["id"], "defeat", "--notes", "not a fit")
    assert set_result.returncode == 0 and "DEFEAT" in set_result.stdout
    unknown = aris("show", "conq_000000000000000000000000")
    assert unknown.returncode == 2 and "conq_000000000000000000000000" in unknown.stderr
    bad = aris("create", "--type", "WIZARD", "--title", "x")
    assert bad.returncode == 2 and "CANDIDATE" in bad.stderr
    assert json.loads(aris("health").stdout)["object"] == "aris.health"


def test_a_restart_and_a_missed_webhook_lose_no_gold_star_and_bad_metadata_harms_nothing(
    inference_api: Any,
    label_studio_server: LabelStudioServer,
    label_studio: LabelStudio,
    tmp_path: Path,
) -> None:
    """The plugin's curation service is down while a person gives a gold star (Label Studio's
    webhook call fails); after a restart its reconcile finds the annotation, the curation feed
    carries it and the plugin makes the conquest a VICTORY with one rating row. A batch whose
    metadata names a conquest that does not exist is imported all the same, and no handler
    failed on it."""
    from loomstack.aris.v1 import conquests_pb2, conquests_pb2_grpc
    from loomstack.curation.v1 import plugins_pb2, plugins_pb2_grpc

    inference = InferenceClient(inference_api.address)
    with postgres_database() as curation_db, postgres_database() as aristotle_db:
        env = {
            "LOOMSTACK_CURATION_PLUGINS": "aris",
            "LOOMSTACK_ARIS_DATABASE_URL": aristotle_db,
        }
        first = _curation(tmp_path, inference_api, label_studio_server, curation_db, **env)
        try:
            channel = grpc.insecure_channel(first.address)
            made = conquests_pb2_grpc.ConquestServiceStub(channel).CreateConquest(
                conquests_pb2.CreateConquestRequest(
                    conquest=conquests_pb2.Conquest(
                        type=conquests_pb2.CONQUEST_TYPE_CANDIDATE, title="Restarted"
                    )
                ),
                metadata=signed("default"),
            )
            batch = inference.create_batch(
                [batch_line("c0", "Candidate 0: a profile.")],
                metadata={"conquest_id": made.id, "conquest_type": "CANDIDATE"},
            )
            stray = inference.create_batch(
                [batch_line("c0", "Candidate 1: another profile.")],
                metadata={
                    "conquest_id": "conq_000000000000000000000000",
                    "conquest_type": "CANDIDATE",
                    "schema_type": "aris.candidate",
                },
            )
            for b in (batch, stray):
                finish_batch(
                    Path(inference_api.home), b.id, set(), answer=lambda _: candidate_answer()
                )
            tasks = curation_pb2_grpc.TaskServiceStub(channel)

            def task_of(batch_id: str) -> Any:
                found = tasks.ListTasks(
                    curation_pb2.ListTasksRequest(batch_id=batch_id), metadata=signed("default")
                ).tasks
                return found[0] if found else None

            task = wait_until(lambda: task_of(batch.id), 90, 0.2, "the conquest's task")
            wait_until(lambda: task_of(stray.id), 90, 0.2, "the stray batch's task")
            failed = plugins_pb2_grpc.PluginServiceStub(channel).ListPluginDeliveries(
                plugins_pb2.ListPluginDeliveriesRequest(), metadata=signed(None)
            )
            assert list(failed.deliveries) == []  # bad metadata is recorded, never raised
            channel.close()
        finally:
            first.stop()
        aris = load_plugins(["aris"]).loaded[0]
        assert aris.schemas is not None
        schema = TaskRegistry.load(
            aris.schemas, vocabulary=Vocabulary(scales=aris.ratings, parsers=aris.parsers)
        ).get("aris.candidate")
        answers = {
            "recommendation": "Maybe",
            "trajectory": "Average",
            "company_pedigree": "Average",
            "education_pedigree": "Weak",
        }
        label_studio.annotations.create(id=task.id, result=regions(schema, answers, gold=True))
        with psycopg.connect(aristotle_db) as conn:
            [(result,)] = conn.execute(
                "SELECT result FROM aris_conquests WHERE id = %s", (made.id,)
            ).fetchall()
        assert result == "PENDING"  # nobody heard the gold star yet

        second = _curation(
            tmp_path,
            inference_api,
            label_studio_server,
            curation_db,
            LOOMSTACK_CURATION_RECONCILE_SECONDS="1",
            **env,
        )
        try:

            def victory() -> bool:
                with psycopg.connect(aristotle_db) as conn:
                    rows = conn.execute(
                        "SELECT c.result, count(r.id) FROM aris_conquests c LEFT JOIN "
                        "aris_ml_analysis_rating r ON r.conquest_id = c.id AND r.is_gold_star "
                        "WHERE c.id = %s GROUP BY c.result",
                        (made.id,),
                    ).fetchall()
                return rows == [("VICTORY", 1)]

            wait_until(victory, 90, 0.5, "the reconciled gold star")
        finally:
            second.stop()
