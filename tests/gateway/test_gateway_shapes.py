"""The curation shapes are plain functions, like every other shape; this checks each against the
proto's own JSON (the reflective conversion the curation routes used before), field for field,
for messages with every field set and with none, so a field added to a proto and forgotten in
its shape fails here."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from loomstack.curation.v1 import curation_pb2 as pb
from loomstack_gateway.shapes import curation as shapes

_INT64 = {FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64}
_DOCUMENTS = {"definition_json": "definition", "data_json": "data", "manifest_json": "manifest"}


def _proto_json(message: Message, kind: str) -> dict[str, Any]:
    """The oracle: proto JSON (snake_case, every field without presence), 64-bit numbers as
    numbers, enum names lower-cased without their prefix, documents decoded."""

    def numbers(descriptor: Any, body: dict[str, Any]) -> None:
        for field in descriptor.fields:
            if field.name not in body:
                continue
            values = body[field.name] if field.is_repeated else [body[field.name]]
            if field.type in _INT64:
                ints = [int(v) for v in values]
                body[field.name] = ints if field.is_repeated else ints[0]
            elif field.message_type is not None and field.message_type.name != "Timestamp":
                for value in values:
                    numbers(field.message_type, value)

    body = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    numbers(message.DESCRIPTOR, body)
    for key, name in _DOCUMENTS.items():
        if key in body:
            text = body.pop(key)
            body[name] = json.loads(text) if text else None
    for key in ("status", "format"):
        if isinstance(body.get(key), str):
            body[key] = body[key].split("_STATUS_")[-1].split("_FORMAT_")[-1].lower()
    return {"object": kind, **body}


def _ts(seconds: int, nanos: int = 0) -> Timestamp:
    return Timestamp(seconds=seconds, nanos=nanos)


FULL: list[tuple[Message, str, Callable[[Any], dict[str, Any]]]] = [
    (
        pb.Schema(
            id="ticket",
            version=3,
            name="Ticket",
            description="d",
            versions=[1, 2, 3],
            definition_json='{"fields": [1]}',
            source="schemas/ticket.yaml",
            label_studio_project_id=2**40,
        ),
        "curation.schema",
        shapes.schema_object,
    ),
    (
        pb.Task(
            id=2**41,
            label_studio_project_id=7,
            schema_id="ticket",
            schema_version=2,
            batch_id="batch_1",
            custom_id="c-1",
            status=pb.TASK_STATUS_ANNOTATED,
            gold=True,
            annotation_count=3,
            agreement=0.75,
            rating=4,
            corrected=True,
            data_json='{"text": "hi", "n": 1}',
            create_time=_ts(1_700_000_000, 123_000_000),
            annotate_time=_ts(1_700_000_500),
            auto_accepted=True,
        ),
        "curation.task",
        shapes.task_object,
    ),
    (
        pb.TaskStatistics(
            tasks=10,
            annotated=5,
            gold=1,
            corrected=2,
            multi_annotated=3,
            mean_agreement=0.5,
            schemas=[
                pb.SchemaTaskStatistics(schema_id="a", tasks=4, mean_agreement=float("nan")),
                pb.SchemaTaskStatistics(schema_id="b", tasks=6, mean_agreement=float("inf")),
            ],
        ),
        "curation.statistics",
        shapes.statistics_object,
    ),
    (
        pb.Import(
            batch_id="batch_1",
            schema_type="ticket",
            status=pb.IMPORT_STATUS_QUEUED,
            attempts=2,
            error="Label Studio is unreachable",
            result_lines=2**33,
            imported_tasks=5,
            skipped_lines=1,
            prediction_problems=2,
            label_studio_project_id=9,
            next_attempt_time=_ts(1_700_000_100, 5),
            create_time=_ts(1_700_000_000),
            update_time=_ts(1_700_000_050),
            auto_accept=True,
            auto_accepted_tasks=3,
        ),
        "curation.import",
        shapes.import_object,
    ),
    (
        pb.Snapshot(
            id="snap_1",
            name="first",
            version=2,
            format=pb.SNAPSHOT_FORMAT_SHAREGPT,
            filter=pb.SnapshotFilter(
                schema_id="ticket",
                schema_version=1,
                gold_only=True,
                min_agreement=0.8,
                min_rating=3,
                start_time=_ts(1_600_000_000),
                end_time=_ts(1_700_000_000),
                limit=100,
                exclude_auto_accepted=True,
            ),
            validation_fraction=0.1,
            training_file_id="file-t",
            validation_file_id="file-v",
            training_examples=90,
            validation_examples=10,
            duplicates_removed=4,
            incomplete_skipped=1,
            manifest_json='{"counts": {"auto_accepted": 2}}',
            create_time=_ts(1_700_000_000),
            project="team-a",
            exporter="hello.upper_chat",
            exporter_options={"greeting": "hi"},
            auto_accepted_examples=2,
        ),
        "curation.snapshot",
        shapes.snapshot_object,
    ),
    (
        pb.CurationEvent(
            sequence=2**40,
            type="task.gold_set",
            project="team-a",
            data_json='{"ls_task_id": 7, "gold": true, "origin": "api"}',
            create_time=_ts(1_700_000_000, 5),
        ),
        "curation.event",
        shapes.event_object,
    ),
]
EMPTY = [(type(message)(), kind, shape) for message, kind, shape in FULL]
ODD = [
    (pb.Task(status=99), "curation.task", shapes.task_object),  # a status the proto lacks
    (pb.Snapshot(filter=pb.SnapshotFilter()), "curation.snapshot", shapes.snapshot_object),
]


@pytest.mark.parametrize(
    ("message", "kind", "shape"),
    FULL + EMPTY + ODD,
    ids=[
        f"{k}-{w}"
        for w, cases in (("full", FULL), ("empty", EMPTY), ("odd", ODD))
        for _, k, _ in cases
    ],
)
def test_each_curation_shape_is_the_protos_own_json(
    message: Message, kind: str, shape: Callable[[Any], dict[str, Any]]
) -> None:
    assert shape(message) == _proto_json(message, kind)


def test_every_field_of_the_full_messages_is_set() -> None:
    """The full cases set every field of their message (else a forgotten field could hide)."""
    for message, _, _ in FULL:
        set_fields = {f.name for f, _ in message.ListFields()}
        assert set_fields == {f.name for f in message.DESCRIPTOR.fields}, type(message).__name__
