"""Any value a proto field can carry gets an answer, never a server error: the curation
servicers on a real in-process gRPC server (the kit's, with signed identities), on SQLite and
PostgreSQL, are sent integers past every column's range, NUL characters, Unicode digits, huge
page sizes and tokens, undefined enum numbers, Timestamps outside years 1-9999 and NaN; each bad
one is INVALID_ARGUMENT naming its field, each extreme but valid one an ordinary answer."""

from __future__ import annotations

import asyncio
import math
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from curation_support import make_curation
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2, status_pb2

from loomstack.curation.v1 import curation_pb2 as pb
from loomstack.curation.v1 import curation_pb2_grpc
from loomstack_curation.__main__ import PACKAGE
from loomstack_curation.import_records import ImportRecords
from loomstack_curation.servicer import (
    ImportServicer,
    SchemaServicer,
    SnapshotServicer,
    TaskServicer,
)
from loomstack_kit.errors import DETAILS_KEY
from loomstack_kit.identity import IdentitySigner
from loomstack_kit.server import GrpcServer, Registration
from loomstack_kit.settings import ServiceSettings

MAX_INT64 = 2**63 - 1


class Signed(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Adds the signed identity (project p1, as the gateway signs it) to every call."""

    def __init__(self, metadata: Any) -> None:
        self.metadata = metadata

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        details = details._replace(metadata=self.metadata, timeout=10)
        return await continuation(details, request)


class Stubs:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.schemas = curation_pb2_grpc.SchemaServiceStub(channel)
        self.tasks = curation_pb2_grpc.TaskServiceStub(channel)
        self.imports = curation_pb2_grpc.ImportServiceStub(channel)
        self.snapshots = curation_pb2_grpc.SnapshotServiceStub(channel)


@pytest_asyncio.fixture
async def stubs(db_url: str, tmp_path: Path) -> AsyncIterator[Stubs]:
    cur = make_curation(db_url, None, tmp_path)
    secret = secrets.token_hex(16)
    settings = ServiceSettings(host="127.0.0.1", port=0, drain_seconds=0, service_secret=secret)

    def upload(_project: str, _name: str, _content: bytes) -> str:
        raise AssertionError("no snapshot of these requests may store a file")

    server = GrpcServer(
        settings,
        [
            Registration(
                curation_pb2_grpc.add_SchemaServiceServicer_to_server,
                SchemaServicer(cur.catalog, cur.projects),
                PACKAGE + "SchemaService",
            ),
            Registration(
                curation_pb2_grpc.add_TaskServiceServicer_to_server,
                TaskServicer(cur.queries),
                PACKAGE + "TaskService",
            ),
            Registration(
                curation_pb2_grpc.add_ImportServiceServicer_to_server,
                ImportServicer(ImportRecords(cur.engine)),
                PACKAGE + "ImportService",
            ),
            Registration(
                curation_pb2_grpc.add_SnapshotServiceServicer_to_server,
                SnapshotServicer(cur.snapshots, upload),
                PACKAGE + "SnapshotService",
            ),
        ],
    )
    await server.start()
    await server.set_ready(True)
    signed = Signed(IdentitySigner(secret.encode(), "gateway").metadata("p1"))
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{server.port}", interceptors=[signed]
    ) as channel:
        yield Stubs(channel)
    await server.stop()
    cur.engine.dispose()


def ts(seconds: int, nanos: int = 0) -> Timestamp:
    return Timestamp(seconds=seconds, nanos=nanos)


def snap(**fields: Any) -> pb.CreateSnapshotRequest:
    return pb.CreateSnapshotRequest(**{"name": "ok", **fields})


def only(**fields: Any) -> pb.CreateSnapshotRequest:
    return snap(filter=pb.SnapshotFilter(**fields))


# (case, request, the field the error must name); the request type names the RPC.
BAD: list[tuple[str, Any, str]] = [
    ("page_size < 0", pb.ListSchemasRequest(page_size=-1), "page_size"),
    ("schema NUL", pb.GetSchemaRequest(schema_id="a\x00"), "schema_id"),
    ("version < 0", pb.GetSchemaRequest(schema_id="classify_ticket", version=-1), "version"),
    ("schema 600 chars", pb.RenderPromptRequest(schema_id="x" * 600), "schema_id"),
    ("token past int64", pb.ListTasksRequest(page_token=str(MAX_INT64 + 1)), "page_token"),
    ("token of 40 digits", pb.ListTasksRequest(page_token="9" * 40), "page_token"),
    ("Unicode digit token", pb.ListTasksRequest(page_token="²"), "page_token"),
    ("negative token", pb.ListTasksRequest(page_token="-1"), "page_token"),
    ("unknown status", pb.ListTasksRequest(status=99), "status"),
    ("batch_id NUL", pb.ListTasksRequest(batch_id="b\x00"), "batch_id"),
    ("statistics NUL", pb.GetTaskStatisticsRequest(schema_id="\x00"), "schema_id"),
    ("task id < 0", pb.SetTasksGoldRequest(task_ids=[-(2**63)]), "task_ids"),
    ("no task ids", pb.SetTasksGoldRequest(), "task_ids"),
    ("1,001 task ids", pb.SetTasksGoldRequest(task_ids=range(1, 1002)), "task_ids"),
    ("import token", pb.ListImportsRequest(page_token="1e5"), "page_token"),
    ("offset past int64", pb.ListImportsRequest(page_token="9" * 20), "page_token"),
    ("import NUL", pb.GetImportRequest(batch_id="\x00"), "batch_id"),
    ("snapshot NUL", pb.GetSnapshotRequest(snapshot_id="snap_\x00"), "snapshot_id"),
    ("list name NUL", pb.ListSnapshotsRequest(name="\x00"), "name"),
    ("list page_size < 0", pb.ListSnapshotsRequest(page_size=-(2**31)), "page_size"),
    ("name with newline", snap(name="gold\n"), "name"),
    ("unknown format", snap(format=42), "format"),
    ("year 300,000", only(start_time=ts(10**13)), "filter.start_time"),
    ("before year 1", only(end_time=ts(-(2**62))), "filter.end_time"),
    ("negative nanos", only(start_time=ts(5, -1)), "filter.start_time"),
    ("NaN agreement", only(min_agreement=math.nan), "min_agreement"),
    ("infinite fraction", snap(validation_fraction=math.inf), "validation_fraction"),
    ("NaN fraction", snap(validation_fraction=math.nan), "validation_fraction"),
    ("limit < 0", only(limit=-(2**31)), "limit"),
    ("rating < 0", only(min_rating=-1), "min_rating"),
    ("schema_version < 0", only(schema_version=-1), "schema_version"),
    ("filter schema NUL", only(schema_id="\x00"), "filter.schema_id"),
]


def call(s: Stubs, request: Any) -> Any:
    """The RPC a request message belongs to (`ListTasksRequest` → TaskService.ListTasks)."""
    rpc = type(request).__name__.removesuffix("Request")
    for stub in (s.schemas, s.tasks, s.imports, s.snapshots):
        if hasattr(stub, rpc):
            return getattr(stub, rpc)(request)
    raise AssertionError(f"no RPC {rpc}")


def error_param(exc: grpc.aio.AioRpcError) -> str | None:
    for key, value in exc.trailing_metadata() or ():
        if key == DETAILS_KEY:
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return info.metadata.get("param")
    return None


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
async def test_a_bad_value_is_invalid_argument_naming_the_field(
    stubs: Stubs, case: tuple[str, Any, str]
) -> None:
    _, request, param = case
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(stubs, request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert error_param(caught.value) == param


async def test_extreme_but_valid_values_get_ordinary_answers(stubs: Stubs) -> None:
    huge, top = 2**31 - 1, str(MAX_INT64)
    replies = await asyncio.gather(
        call(stubs, pb.ListSchemasRequest(page_size=huge)),
        call(stubs, pb.ListSchemasRequest(page_token="\U0010ffff")),
        call(stubs, pb.ListTasksRequest(page_size=huge, page_token=top)),
        call(stubs, pb.ListTasksRequest(schema_id="é" * 512, status=3)),
        call(stubs, pb.ListImportsRequest(page_size=huge, page_token=top)),
        call(stubs, pb.ListSnapshotsRequest(page_token=top, name="😀")),
        call(stubs, pb.GetTaskStatisticsRequest(schema_id="\U0001f600")),
    )
    assert {s.id for s in replies[0].schemas} >= {"classify_ticket", "rate_answer"}
    assert list(replies[1].schemas) == [] and replies[1].next_page_token == ""
    assert not replies[2].tasks and not replies[3].tasks
    assert not replies[4].imports and not replies[5].snapshots and replies[6].tasks == 0

    # Values in range that name nothing are NOT_FOUND / FAILED_PRECONDITION, as for any caller.
    expected = [
        (grpc.StatusCode.NOT_FOUND, pb.SetTasksGoldRequest(task_ids=[MAX_INT64])),
        (grpc.StatusCode.NOT_FOUND, pb.GetImportRequest(batch_id="batch_" + "z" * 500)),
        (grpc.StatusCode.NOT_FOUND, pb.GetSnapshotRequest(snapshot_id="snap_😀")),
        (grpc.StatusCode.NOT_FOUND, pb.GetSchemaRequest(schema_id="classify_ticket", version=huge)),
        (grpc.StatusCode.FAILED_PRECONDITION, only(start_time=ts(253_402_300_799, 999_999_999))),
        (grpc.StatusCode.FAILED_PRECONDITION, only(limit=huge, min_rating=5)),
    ]
    for code, request in expected:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(stubs, request)
        assert caught.value.code() == code, caught.value.details()
