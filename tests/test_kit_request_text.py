"""The kit's NUL check of request strings (loomstack_kit/request_text.py): which fields it
reads and the name it gives the field. The services' refusal over real gRPC is in
tests/curation/test_curation_requests.py and, through the gateway on PostgreSQL, in
tests/fuzz/test_gateway_fuzz.py."""

from __future__ import annotations

from typing import Any

import pytest

from loomstack.curation.v1 import curation_pb2
from loomstack.inference.v1 import batches_pb2, chat_pb2, files_pb2
from loomstack.training.v1 import training_pb2
from loomstack_kit.errors import InvalidArgument
from loomstack_kit.request_text import reject_nul

REFUSED: list[tuple[str, Any, str]] = [
    ("string", files_pb2.GetFileRequest(file_id="file-\x00"), "file_id"),
    ("nested", curation_pb2.CreateSnapshotRequest(
        name="ok", filter=curation_pb2.SnapshotFilter(schema_id="\x00")), "filter.schema_id"),
    ("map value", batches_pb2.CreateBatchRequest(metadata={"team": "a\x00"}), "metadata"),
    ("map key", batches_pb2.CreateBatchRequest(metadata={"te\x00am": "a"}), "metadata"),
    ("repeated", training_pb2.CreateFineTuningJobRequest(
        hyperparameters=training_pb2.Hyperparameters(lora_target_modules=["q", "v\x00"])),
     "hyperparameters.lora_target_modules"),
]  # fmt: skip


@pytest.mark.parametrize("case", REFUSED, ids=[c[0] for c in REFUSED])
def test_a_string_field_holding_nul_is_invalid_argument_naming_it(
    case: tuple[str, Any, str],
) -> None:
    _, message, param = case
    with pytest.raises(InvalidArgument) as caught:
        reject_nul(message)
    assert caught.value.param == param
    assert caught.value.message == f"{param} must not contain NUL characters"


def test_bytes_and_text_without_nul_pass() -> None:
    reject_nul(chat_pb2.CreateChatCompletionRequest(request_json=b'{"model": "m\x00"}'))
    reject_nul(files_pb2.UploadFileRequest(chunk=b"\x00" * 16))
    reject_nul(batches_pb2.CreateBatchRequest(input_file_id="file-1", metadata={"k": "v 😀"}))
