"""`/v1/files`: OpenAI's Files API over the inference service's FileService."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from starlette.requests import ClientDisconnect
from starlette.responses import Response, StreamingResponse

from loomstack.inference.v1 import files_pb2
from loomstack_kit.errors import InvalidArgument

from ..auth import caller_of
from ..direct_routes import direct
from ..multipart_stream import MultipartStream
from ..responses import OrjsonResponse
from ..settings import GatewaySettings
from ..shapes import inference as shapes
from ..uploads import FileUpload
from ..upstream import Inference, prefetched

log = logging.getLogger(__name__)

# nginx's status for "the client closed the connection before the response".
CLIENT_CLOSED_REQUEST = 499
_UPLOAD_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "purpose"],
                    "properties": {
                        "purpose": {"type": "string", "enum": ["batch", "fine-tune", "user_data"]},
                        "file": {"type": "string", "format": "binary"},
                    },
                }
            }
        },
    }
}


_CONTENT_DOC = {
    "description": "The file's bytes.",
    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
}


def files_router(inference: Inference, settings: GatewaySettings) -> APIRouter:
    """The Files routes, bound to the inference service's client."""
    router = APIRouter(prefix="/v1/files", tags=["files"])
    timeout = settings.upstream_timeout_seconds

    @router.post("", summary="Upload a file", openapi_extra=_UPLOAD_DOC)
    async def create_file(request: Request) -> Response:
        form = MultipartStream(
            request.headers.get("content-type"), chunk_bytes=settings.upload_chunk_bytes
        )
        upload = FileUpload(
            inference.files, caller_of(request).metadata, buffer_bytes=settings.upload_buffer_bytes
        )
        try:
            stored = await upload.run(request.stream(), form)
        except ClientDisconnect:
            # The upload RPC is cancelled; there is no one left to answer.
            log.info("client disconnected during an upload")
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        return OrjsonResponse(shapes.file_object(stored))

    @router.get("", summary="List files")
    async def list_files(
        request: Request,
        purpose: str = "",
        limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
        after: str = "",
        # `asc` gets its own 400 (unsupported_order); the document lists what is served.
        order: Annotated[
            Literal["asc", "desc"], Query(json_schema_extra={"enum": ["desc"]})
        ] = "desc",
    ) -> Response:
        if order != "desc":
            raise InvalidArgument(
                "order=asc is not supported: files are listed newest first",
                param="order",
                code="unsupported_order",
            )
        resp = await inference.files.ListFiles(
            files_pb2.ListFilesRequest(purpose=purpose, page_size=limit, page_token=after),
            metadata=caller_of(request).metadata,
            timeout=timeout,
        )
        return OrjsonResponse(shapes.file_list(resp))

    @router.get("/{file_id}", summary="Retrieve a file")
    @direct
    async def get_file(request: Request, file_id: str) -> Response:
        resp = await inference.files.GetFile(
            files_pb2.GetFileRequest(file_id=file_id),
            metadata=caller_of(request).metadata,
            timeout=timeout,
        )
        return OrjsonResponse(shapes.file_object(resp))

    @router.delete("/{file_id}", summary="Delete a file")
    async def delete_file(request: Request, file_id: str) -> Response:
        resp = await inference.files.DeleteFile(
            files_pb2.DeleteFileRequest(file_id=file_id),
            metadata=caller_of(request).metadata,
            timeout=timeout,
        )
        return OrjsonResponse(shapes.file_deleted(resp))

    @router.get(
        "/{file_id}/content",
        summary="Retrieve a file's content",
        response_class=StreamingResponse,
        responses={200: _CONTENT_DOC},
    )
    @direct
    async def file_content(request: Request, file_id: str) -> Response:
        call = inference.files.DownloadFileContent(
            files_pb2.DownloadFileContentRequest(file_id=file_id),
            metadata=caller_of(request).metadata,
        )
        messages = await prefetched(call)

        async def body() -> AsyncIterator[bytes]:
            async for msg in messages:
                yield msg.chunk

        return StreamingResponse(body(), media_type="application/octet-stream")

    return router
