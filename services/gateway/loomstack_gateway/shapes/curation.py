"""Curation protos → the curation objects of our API (schemas, tasks, statistics, imports,
snapshots), by one reflective pass over the message: proto JSON with snake_case fields, 64-bit
integers as numbers, enum names lower-cased without their prefix and embedded JSON documents
decoded. (The curation messages have many fields and nested messages; one pass keeps their
JSON in step with the protos.)"""

from __future__ import annotations

import json
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor

_JSON_FIELDS = {"definition_json": "definition", "data_json": "data", "manifest_json": "manifest"}

_INT64 = {
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED64,
    FieldDescriptor.TYPE_SFIXED64,
}


def _numbers(descriptor: Any, body: dict[str, Any]) -> None:
    """Proto JSON writes 64-bit integers as strings; our clients want numbers."""
    for field in descriptor.fields:
        if field.name not in body:
            continue
        repeated = bool(field.is_repeated)
        values = body[field.name] if repeated else [body[field.name]]
        if field.type in _INT64:
            ints = [int(v) for v in values]
            body[field.name] = ints if repeated else ints[0]
        elif (
            field.message_type is not None
            and field.message_type.full_name != "google.protobuf.Timestamp"
        ):
            for value in values:
                _numbers(field.message_type, value)


def curation_object(message: Any, kind: str) -> dict[str, Any]:
    """A proto as JSON: snake_case fields, numbers as numbers, enum names in lower case
    without their prefix, embedded JSON documents decoded, `object` naming the kind."""
    body = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    _numbers(message.DESCRIPTOR, body)
    for key, name in _JSON_FIELDS.items():
        if key in body:
            text = body.pop(key)
            body[name] = json.loads(text) if text else None
    for key in ("status", "format"):
        if isinstance(body.get(key), str):
            body[key] = body[key].split("_STATUS_")[-1].split("_FORMAT_")[-1].lower()
    return {"object": kind, **body}
