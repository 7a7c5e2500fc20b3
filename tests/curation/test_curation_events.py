"""The curation event feed, on SQLite and PostgreSQL: annotations recorded by webhook and
reconcile, gold stars given or taken (only when the task's star changes), auto-accepted
annotations and snapshots are events, committed with the change, naming who made it (Label
Studio, the API, a plugin, auto-accept), also when the real Label Studio reports a change made
through its API by webhook before that call returns; `ListEvents` on a real in-process gRPC
server (the kit's, with signed identities) pages a project's own events after a cursor and
long-polls for new ones."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from curation_support import Crash, make_curation, serve_http, ticket
from label_studio_sdk.client import LabelStudio
from support import wait_until

from loomstack.curation.v1 import curation_pb2 as pb
from loomstack.curation.v1 import curation_pb2_grpc
from loomstack_curation.__main__ import PACKAGE
from loomstack_curation.annotations import AnnotationRecord
from loomstack_curation.events import CurationEvents
from loomstack_curation.http_app import create_app
from loomstack_curation.inference_client import InferenceClient
from loomstack_curation.ml_backend import MLBackend
from loomstack_curation.predictions import regions
from loomstack_curation.reconcile import reconcile
from loomstack_curation.servicer import EventServicer
from loomstack_curation.snapshots import SnapshotFilter
from loomstack_curation.webhook import handle_event
from loomstack_kit.database import write_transaction
from loomstack_kit.identity import IdentitySigner
from loomstack_kit.plugins import (
    ANNOTATION_CREATED,
    ANNOTATION_UPDATED,
    GOLD_REMOVED,
    GOLD_SET,
    SNAPSHOT_CREATED,
    FeedEvent,
)
from loomstack_kit.server import GrpcServer, Registration
from loomstack_kit.settings import ServiceSettings

BILLING = {"category": "Billing", "urgency": "High"}
OTHER = {"category": "Other", "urgency": "Low"}
SNAPSHOT_FIELDS = ("snapshot_id", "name", "version", "format", "training_examples")


def summary(events: list[FeedEvent]) -> list[tuple[str, int, bool, str]]:
    """(type, task, gold after the change, origin) of annotation and gold events."""
    return [(e.type, e.data["ls_task_id"], e.data["gold"], e.data["origin"]) for e in events]


class Feed:
    """Reads the feed as a consumer does: from its cursor on, every project's events."""

    def __init__(self, events: CurationEvents) -> None:
        self.events = events
        self.cursor = 0
        self.seen: list[FeedEvent] = []

    def new(self) -> list[FeedEvent]:
        """The events after the cursor (in pages of 2, to page as consumers do); moves it."""
        found: list[FeedEvent] = []
        while page := self.events.after(None, self.cursor, 2):
            found += page
            self.cursor = page[-1].sequence
        self.seen += found
        return found


@pytest.mark.labelstudio
def test_annotations_and_gold_stars_are_events_naming_who_made_the_change(
    db_url: str, label_studio: LabelStudio, tmp_path: Path, inference: InferenceClient
) -> None:
    cur = make_curation(db_url, label_studio, tmp_path)
    feed = Feed(CurationEvents(cur.engine))
    assert cur.import_tickets("batch_ev", 3) == "completed"
    assert feed.new() == []  # importing tasks changes no annotation
    schema = cur.catalog.get("classify_ticket")
    project_id = cur.projects.ensure("p1", schema)
    by_ticket = {t.data["ticket"]: t.id for t in label_studio.tasks.list(project=project_id)}
    t0, t1, t2 = (by_ticket[ticket(i)] for i in range(3))

    def deliver(annotation: Any, task_id: int, action: str = "ANNOTATION_CREATED") -> None:
        """Label Studio's webhook payload for an annotation, handled as the HTTP side does."""
        handle_event(
            cur.annotations,
            {
                "action": action,
                "annotation": annotation.model_dump(mode="json"),
                "task": {"id": task_id},
                "project": {"id": project_id},
            },
        )

    # People annotate in Label Studio; its webhook tells us.
    a0 = label_studio.annotations.create(id=t0, result=regions(schema, BILLING, gold=True))
    a1 = label_studio.annotations.create(id=t1, result=regions(schema, BILLING))
    deliver(a0, t0)
    deliver(a1, t1)
    created = feed.new()
    assert summary(created) == [
        (ANNOTATION_CREATED, t0, True, "label_studio"),
        (GOLD_SET, t0, True, "label_studio"),
        (ANNOTATION_CREATED, t1, False, "label_studio"),
    ]
    assert [e.sequence for e in created] == sorted({e.sequence for e in created})
    assert {(e.feed, e.project) for e in created} == {("curation", "p1")}
    assert created[0].data == {
        "ls_task_id": t0,
        "ls_annotation_id": a0.id,
        "batch_id": "batch_ev",
        "custom_id": "t0",
        "schema_id": "classify_ticket",
        "schema_version": schema.version,
        "gold": True,
        "origin": "label_studio",
    }
    assert created[0].created_at > 0

    # The same annotations again (a re-delivered webhook, the reconcile): no event.
    deliver(a0, t0)
    deliver(a1, t1, "ANNOTATION_UPDATED")
    reconcile(label_studio, cur.projects, cur.annotations)
    assert feed.new() == []

    # The star taken away in Label Studio, the webhook missed: the reconcile reports it.
    label_studio.annotations.update(id=a0.id, result=regions(schema, BILLING))
    reconcile(label_studio, cur.projects, cur.annotations)
    assert summary(feed.new()) == [
        (ANNOTATION_UPDATED, t0, False, "label_studio"),
        (GOLD_REMOVED, t0, False, "label_studio"),
    ]
    # An answer changed, the star not: an update, no gold event.
    deliver(label_studio.annotations.update(id=a1.id, result=regions(schema, OTHER)), t1)
    assert summary(feed.new()) == [(ANNOTATION_UPDATED, t1, False, "label_studio")]

    # A change that rolls back leaves neither the annotation nor its events.
    starred = AnnotationRecord(
        id=2**40,
        task_id=t2,
        result=regions(schema, BILLING, gold=True),
        was_cancelled=False,
        updated_at=time.time(),
    )
    with pytest.raises(Crash), write_transaction(cur.engine) as conn:
        assert cur.annotations.record_automatic(conn, [starred]) == 1
        raise Crash("dies before the commit")
    assert feed.new() == []
    assert cur.queries.get_many("p1", [t2])[0].annotation_count == 0

    # Stars given through the API: origin `api`; a plugin names itself.
    cur.queries.set_gold("p1", [t1], True)
    assert summary(feed.new()) == [
        (ANNOTATION_UPDATED, t1, True, "api"),
        (GOLD_SET, t1, True, "api"),
    ]
    cur.queries.set_gold("p1", [t2], True, origin="plugin:demo")  # made from the prediction
    assert summary(feed.new()) == [
        (ANNOTATION_CREATED, t2, True, "plugin:demo"),
        (GOLD_SET, t2, True, "plugin:demo"),
    ]
    # A star given again is no gold event.
    cur.queries.set_gold("p1", [t1], True)
    assert GOLD_SET not in [e.type for e in feed.new()]

    # The annotation deleted in Label Studio: the star goes with it.
    (t2_annotation,) = cur.queries.get_many("p1", [t2])
    assert t2_annotation.annotation_id is not None
    handle_event(
        cur.annotations,
        {
            "action": "ANNOTATIONS_DELETED",
            "annotations": [{"id": t2_annotation.annotation_id}],
            "project": {"id": project_id},
        },
    )
    (removed,) = feed.new()
    assert (removed.type, removed.data["ls_task_id"], removed.data["gold"]) == (
        GOLD_REMOVED,
        t2,
        False,
    )
    assert removed.data["ls_annotation_id"] is None

    # A snapshot stored is an event too.
    snap = cur.snapshots.create(
        "p1",
        "events-gold",
        SnapshotFilter(gold_only=True),
        upload=lambda project, name, content: inference.upload(project, name, content),
    )
    (stored,) = feed.new()
    assert (stored.type, stored.project) == (SNAPSHOT_CREATED, "p1")
    assert {k: stored.data[k] for k in SNAPSHOT_FIELDS} == {
        "snapshot_id": snap.id,
        "name": "events-gold",
        "version": 1,
        "format": "openai_chat",
        "training_examples": 1,
    }
    # Another project's consumer sees none of it.
    assert cur.annotations.events.after("p2", 0, 1000) == []
    assert cur.annotations.events.after("p1", 0, 1000) == feed.seen


@pytest.mark.labelstudio
def test_auto_accepted_annotations_are_events_of_auto_accept(
    db_url: str, label_studio: LabelStudio, tmp_path: Path
) -> None:
    cur = make_curation(db_url, label_studio, tmp_path)
    feed = Feed(CurationEvents(cur.engine))
    assert cur.import_tickets("batch_auto", 3, auto_accept=True) == "completed"
    events = feed.new()
    assert [(e.type, e.data["custom_id"], e.data["gold"], e.data["origin"]) for e in events] == [
        (ANNOTATION_CREATED, f"t{i}", False, "auto_accept") for i in range(3)
    ]
    # The reconcile finds Label Studio saying the same: nothing new.
    reconcile(label_studio, cur.projects, cur.annotations)
    assert feed.new() == []


def _refuse_chat(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("no prediction is asked for")


@pytest.mark.labelstudio
def test_a_change_label_studio_reports_by_webhook_first_is_still_the_callers(
    db_url: str, label_studio: LabelStudio, tmp_path: Path
) -> None:
    """Label Studio calls our webhook while it saves an annotation, before its API call
    returns: the gold stars a plugin gives are its events, not Label Studio's."""
    cur = make_curation(db_url, label_studio, tmp_path)
    feed = Feed(CurationEvents(cur.engine))
    secret = secrets.token_hex(16)
    backend = MLBackend(cur.catalog, cur.projects, _refuse_chat, model="unused")
    with serve_http(create_app(cur.annotations, backend, secret, None)) as url:
        cur.projects.webhook_url = f"{url}/labelstudio/webhook"
        cur.projects.webhook_secret = secret
        assert cur.import_tickets("batch_hook", 2) == "completed"
        schema = cur.catalog.get("classify_ticket")
        project_id = cur.projects.ensure("p1", schema)
        by_ticket = {t.data["ticket"]: t.id for t in label_studio.tasks.list(project=project_id)}
        t0, t1 = by_ticket[ticket(0)], by_ticket[ticket(1)]

        # A person's annotation comes by webhook alone.
        label_studio.annotations.create(id=t0, result=regions(schema, BILLING))
        arrived = wait_until(feed.new, 30, 0.05, "Label Studio's webhook call")
        assert summary(arrived) == [(ANNOTATION_CREATED, t0, False, "label_studio")]

        cur.queries.set_gold("p1", [t0, t1], True, origin="plugin:demo")
        assert summary(feed.new()) == [
            (ANNOTATION_UPDATED, t0, True, "plugin:demo"),
            (GOLD_SET, t0, True, "plugin:demo"),
            (ANNOTATION_CREATED, t1, True, "plugin:demo"),
            (GOLD_SET, t1, True, "plugin:demo"),
        ]
        # Label Studio's own changes are its own again.
        (t1_task,) = cur.queries.get_many("p1", [t1])
        label_studio.annotations.update(id=t1_task.annotation_id, result=regions(schema, OTHER))
        changed = wait_until(feed.new, 30, 0.05, "Label Studio's webhook call")
        assert summary(changed) == [
            (ANNOTATION_UPDATED, t1, False, "label_studio"),
            (GOLD_REMOVED, t1, False, "label_studio"),
        ]


# ---- the gRPC API --------------------------------------------------------------------------


@dataclass
class Api:
    stub: Any
    signer: IdentitySigner
    events: CurationEvents

    def record(self, project: str, n: int) -> None:
        """A committed change of a project (a snapshot stored, say)."""
        with write_transaction(self.events.engine) as conn:
            self.events.record(conn, SNAPSHOT_CREATED, project, {"snapshot_id": f"snap_{n}"})

    async def list(self, project: str | None, **fields: Any) -> Any:
        return await self.stub.ListEvents(
            pb.ListEventsRequest(**fields), metadata=self.signer.metadata(project), timeout=40
        )


@pytest_asyncio.fixture
async def api(db_url: str, tmp_path: Path) -> AsyncIterator[Api]:
    cur = make_curation(db_url, None, tmp_path)
    secret = secrets.token_hex(16)
    settings = ServiceSettings(host="127.0.0.1", port=0, drain_seconds=0, service_secret=secret)
    events = CurationEvents(cur.engine, poll_seconds=0.05)
    server = GrpcServer(
        settings,
        [
            Registration(
                curation_pb2_grpc.add_EventServiceServicer_to_server,
                EventServicer(events),
                PACKAGE + "EventService",
            )
        ],
    )
    await server.start()
    await server.set_ready(True)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield Api(
            curation_pb2_grpc.EventServiceStub(channel),
            IdentitySigner(secret.encode(), "gateway"),
            events,
        )
    await server.stop()
    cur.engine.dispose()


async def test_list_events_pages_a_projects_own_events_after_a_cursor(api: Api) -> None:
    for n in range(7):
        await asyncio.to_thread(api.record, "p1" if n % 3 else "p2", n)
    # A transaction that rolls back leaves no event.
    with pytest.raises(Crash), write_transaction(api.events.engine) as conn:
        api.events.record(conn, SNAPSHOT_CREATED, "p1", {"snapshot_id": "snap_lost"})
        raise Crash("dies before the commit")

    async def every(project: str | None) -> list[Any]:
        found, after = [], 0
        while page := (await api.list(project, after_sequence=after, page_size=2)).events:
            assert len(page) <= 2
            found += page
            after = page[-1].sequence
        return found

    mine = await every("p1")
    assert [json.loads(e.data_json) for e in mine] == [
        {"snapshot_id": f"snap_{n}"} for n in (1, 2, 4, 5)
    ]
    assert {(e.type, e.project) for e in mine} == {(SNAPSHOT_CREATED, "p1")}
    assert all(e.create_time.seconds > 0 for e in mine)
    assert [e.sequence for e in mine] == sorted({e.sequence for e in mine})
    theirs = await every("p2")
    assert [json.loads(e.data_json)["snapshot_id"] for e in theirs] == [
        "snap_0",
        "snap_3",
        "snap_6",
    ]
    assert await every("p3") == []
    # An admin caller (no project) reads every project's, in order.
    everything = await every(None)
    assert [e.sequence for e in everything] == sorted(e.sequence for e in mine + theirs)
    # From a cursor on; the default page takes the rest.
    rest = await api.list("p1", after_sequence=mine[1].sequence)
    assert [e.sequence for e in rest.events] == [e.sequence for e in mine[2:]]

    for fields, param in (
        ({"page_size": -1}, "page_size"),
        ({"after_sequence": -1}, "after_sequence"),
        ({"wait_seconds": -1}, "wait_seconds"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await api.list("p1", **fields)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, param
        assert param in (caught.value.details() or "")


async def test_list_events_waits_for_the_projects_next_event(api: Api) -> None:
    await asyncio.to_thread(api.record, "p1", 0)
    (first,) = (await api.list("p1")).events
    # Nothing new: the call answers when its wait is over, with nothing.
    started = time.monotonic()
    assert list((await api.list("p1", after_sequence=first.sequence, wait_seconds=1)).events) == []
    assert time.monotonic() - started >= 0.9

    waiting = asyncio.create_task(api.list("p1", after_sequence=first.sequence, wait_seconds=30))
    done, _ = await asyncio.wait({waiting}, timeout=0.5)
    assert not done  # still waiting
    # Another project's event does not answer it...
    await asyncio.to_thread(api.record, "p2", 1)
    done, _ = await asyncio.wait({waiting}, timeout=0.5)
    assert not done
    # ...its own does, at once.
    recorded = time.monotonic()
    await asyncio.to_thread(api.record, "p1", 2)
    reply = await asyncio.wait_for(waiting, 10)
    assert time.monotonic() - recorded < 5
    assert [json.loads(e.data_json) for e in reply.events] == [{"snapshot_id": "snap_2"}]
