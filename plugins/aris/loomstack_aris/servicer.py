"""The gRPC ConquestService: converts protos to domain calls and back, nothing more. Each RPC
makes one domain call (in a worker thread: the store is synchronous) and converts the typed
result with a `*_to_proto` function; domain errors become statuses in the kit's interceptor.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from loomstack.aris.v1 import conquests_pb2, conquests_pb2_grpc
from loomstack_kit.errors import InvalidArgument
from loomstack_kit.identity import project_of
from loomstack_kit.plugins import CurationContext
from loomstack_kit.server import Registration

from .conquests import Annotation, Conquest, ConquestFilter, ConquestStore, NewConquest, Rating
from .examples import IclExample, icl_examples
from .proto_enums import RESULT, RESULT_OF, STATUS, STATUS_OF, TYPE, TYPE_OF, member
from .terms import ConquestResult, ConquestStatus, ConquestType
from .victories import VictorySync

SERVICE_NAME = "loomstack.aris.v1.ConquestService"

_ICL_FORMAT = {
    conquests_pb2.ICL_EXAMPLE_FORMAT_UNSPECIFIED: "messages",
    conquests_pb2.ICL_EXAMPLE_FORMAT_MESSAGES: "messages",
    conquests_pb2.ICL_EXAMPLE_FORMAT_TEXT: "text",
}


def _ts(seconds: float | None) -> Timestamp | None:
    if not seconds:
        return None
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def conquest_to_proto(c: Conquest) -> Any:
    """A conquest as its proto."""
    return conquests_pb2.Conquest(
        id=c.id,
        project=c.project,
        type=TYPE[c.type],
        title=c.title,
        description=c.description,
        status=STATUS[c.status],
        result=RESULT[c.result],
        result_notes=c.result_notes,
        use_as_example=c.use_as_example,
        evaluated_by=c.evaluated_by,
        evaluate_time=_ts(c.evaluated_at),
        create_time=_ts(c.created_at),
        update_time=_ts(c.updated_at),
        start_time=_ts(c.started_at),
        complete_time=_ts(c.completed_at),
        philosopher=c.philosopher,
        domain=c.domain,
        prompt_json=json.dumps(c.prompts, ensure_ascii=False),
        response_json=json.dumps(c.responses, ensure_ascii=False),
        batch_id=c.batch_id or "",
        gold_sync_pending=c.gold_sync_pending,
        problem=c.problem,
    )


def rating_to_proto(r: Rating) -> Any:
    """A rating row as its proto."""
    message = conquests_pb2.Rating(
        id=r.id,
        conquest_id=r.conquest_id,
        analysis_type=r.analysis_type,
        feedback=r.feedback,
        is_gold_star=r.is_gold_star,
        use_as_sample_response=r.use_as_sample_response,
        include_in_training=r.include_in_training,
        philosopher=r.philosopher,
        domain=r.domain,
        ls_task_id=r.ls_task_id,
        ls_annotation_id=r.ls_annotation_id or 0,
        create_time=_ts(r.created_at),
        update_time=_ts(r.updated_at),
    )
    if r.rating is not None:
        message.rating = r.rating
    return message


def icl_example_to_proto(e: IclExample) -> Any:
    """An in-context-learning example as its proto."""
    return conquests_pb2.IclExample(
        conquest_id=e.conquest_id,
        type=TYPE[e.type],
        philosopher=e.philosopher,
        domain=e.domain,
        messages=[
            conquests_pb2.ChatMessage(role=m["role"], content=m["content"]) for m in e.messages
        ],
        text=e.text,
    )


class ConquestServicer(conquests_pb2_grpc.ConquestServiceServicer):
    """Conquests, ratings, verdicts, the victory sync, ICL examples and health."""

    def __init__(self, store: ConquestStore, victories: VictorySync) -> None:
        self.store = store
        self.victories = victories

    async def CreateConquest(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        c = request.conquest
        kind = member(c.type, TYPE_OF, "conquest.type")
        if kind is None:
            valid = ", ".join(t.value for t in ConquestType)
            raise InvalidArgument(f"conquest.type is required (one of {valid})", param="type")
        status = member(c.status, STATUS_OF, "conquest.status")
        new = NewConquest(
            type=kind.value,
            title=c.title,
            description=c.description,
            philosopher=c.philosopher,
            domain=c.domain,
            status=(status or ConquestStatus.DRAFT).value,
            use_as_example=c.use_as_example,
        )
        created = await asyncio.to_thread(self.store.create, project_of(context), new)
        return conquest_to_proto(created)

    async def GetConquest(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        found = await asyncio.to_thread(self.store.get, project_of(context), request.conquest_id)
        return conquest_to_proto(found)

    async def ListConquests(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        flt = ConquestFilter(
            type=member(request.type, TYPE_OF, "type"),
            status=member(request.status, STATUS_OF, "status"),
            result=member(request.result, RESULT_OF, "result"),
            philosopher=request.philosopher,
            domain=request.domain,
        )
        page = await asyncio.to_thread(
            self.store.list_conquests,
            project_of(context),
            flt,
            request.page_size,
            request.page_token,
        )
        return conquests_pb2.ListConquestsResponse(
            conquests=[conquest_to_proto(c) for c in page.conquests],
            next_page_token=page.next_page_token,
        )

    async def AnnotateConquest(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        annotation = Annotation(
            rating=request.rating if request.HasField("rating") else None,
            feedback=request.feedback,
            analysis_type=request.analysis_type,
            is_gold_star=request.is_gold_star,
            use_as_sample_response=request.use_as_sample_response,
            include_in_training=(
                request.include_in_training if request.HasField("include_in_training") else True
            ),
            ls_task_id=request.ls_task_id,
            ls_annotation_id=request.ls_annotation_id or None,
        )
        rating = await asyncio.to_thread(
            self.store.annotate, project_of(context), request.conquest_id, annotation
        )
        return rating_to_proto(rating)

    async def SetConquestResult(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        result = member(request.result, RESULT_OF, "result")
        if result is None:
            valid = ", ".join(r.value for r in ConquestResult)
            raise InvalidArgument(f"result is required (one of {valid})", param="result")
        updated = await asyncio.to_thread(
            lambda: self.victories.set_result(
                project_of(context),
                request.conquest_id,
                result.value,
                notes=request.result_notes,
                evaluated_by=request.evaluated_by,
                use_as_example=(
                    request.use_as_example if request.HasField("use_as_example") else None
                ),
            )
        )
        return conquest_to_proto(updated)

    async def SyncVictories(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        counts = await asyncio.to_thread(self.victories.sync_pending, project_of(context))
        return conquests_pb2.SyncVictoriesResponse(
            synced=counts.synced, waiting=counts.waiting, failed=counts.failed
        )

    async def ListIclExamples(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        kind = member(request.type, TYPE_OF, "type")
        fmt = _ICL_FORMAT.get(request.format)
        if fmt is None:
            raise InvalidArgument(f"format {request.format} is not a known value", param="format")
        examples = await asyncio.to_thread(
            lambda: icl_examples(
                self.store,
                project_of(context),
                philosopher=request.philosopher,
                domain=request.domain,
                conquest_type=kind.value if kind else "",
                limit=request.limit,
                fmt=fmt,
            )
        )
        return conquests_pb2.ListIclExamplesResponse(
            examples=[icl_example_to_proto(e) for e in examples]
        )

    async def GetArisHealth(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        health = await asyncio.to_thread(self.store.health, project_of(context))
        return conquests_pb2.ArisHealth(
            database_reachable=health.database_reachable,
            conquests=health.conquests,
            victories=health.victories,
            pending_gold_syncs=health.pending_gold_syncs,
            ratings=health.ratings,
        )


def grpc_services(context: CurationContext) -> Sequence[Registration]:
    """The servicer curation adds to its server, on the plugin's database."""
    store = ConquestStore(context.database)
    servicer = ConquestServicer(store, VictorySync(store, context))
    return [
        Registration(
            conquests_pb2_grpc.add_ConquestServiceServicer_to_server, servicer, SERVICE_NAME
        )
    ]
