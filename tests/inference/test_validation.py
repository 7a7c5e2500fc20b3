"""Bad batch input: each case is rejected with its line and field, and nothing is stored."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa
from support import MODEL_NAME, batch_line

from loomstack_inference.tables import batch_requests, batches, shards
from loomstack_kit.errors import InvalidArgument, NotFound, TooLarge


async def _chunks(data: bytes, size: int = 7) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def _upload(domain, data: bytes, purpose: str = "batch"):  # type: ignore[no-untyped-def]
    return await domain.files.upload("p1", "in.jsonl", purpose, _chunks(data))


def _create(domain, file_id: str):  # type: ignore[no-untyped-def]
    return domain.batches.create(
        "p1",
        input_file_id=file_id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={},
    )


def _nothing_stored(domain) -> None:  # type: ignore[no-untyped-def]
    with domain.engine.connect() as conn:
        for table in (batches, batch_requests, shards):
            assert conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one() == 0


GOOD = batch_line("a", "hi")

CASES = [
    ("not json", [GOOD, b"{not json"], "invalid_json", 2, None),
    ("not an object", [GOOD, GOOD | {"custom_id": "b"}, [1, 2]], "invalid_line", 3, None),
    (
        "missing custom_id",
        [{k: v for k, v in GOOD.items() if k != "custom_id"}],
        "missing_custom_id",
        1,
        "custom_id",
    ),
    (
        "duplicate custom_id",
        [GOOD, batch_line("b", "x"), GOOD],
        "duplicate_custom_id",
        3,
        "custom_id",
    ),
    ("method", [GOOD | {"method": "GET"}], "invalid_method", 1, "method"),
    ("url", [GOOD | {"url": "/v1/embeddings"}], "invalid_url", 1, "url"),
    ("model missing", [{**GOOD, "body": {"messages": []}}], "missing_model", 1, "body.model"),
    (
        "model unknown",
        [batch_line("a", "x") | {"body": {"model": "gpt-9", "messages": []}}],
        "model_not_found",
        1,
        "body.model",
    ),
    (
        "models differ",
        [GOOD, {**batch_line("b", "x"), "body": {"model": "other", "messages": []}}],
        "model_not_found",
        2,
        "body.model",
    ),
    ("invalid utf-8", [GOOD, b'{"custom_id": "\xff\xfe"}'], "invalid_utf8", 2, None),
    ("stream in batch", [batch_line("a", "x", stream=True)], "invalid_stream", 1, "body.stream"),
]


@pytest.mark.parametrize(
    ("name", "lines", "code", "line", "param"), CASES, ids=[c[0] for c in CASES]
)
async def test_bad_line_is_rejected_with_line_and_field(
    domain, name, lines, code, line, param
) -> None:  # type: ignore[no-untyped-def]
    data = b""
    for item in lines:
        data += (item if isinstance(item, bytes) else json.dumps(item).encode()) + b"\n"
    rec = await _upload(domain, data)
    with pytest.raises(InvalidArgument) as err:
        _create(domain, rec.id)
    assert err.value.code == code
    assert err.value.line == line
    assert err.value.param == param
    assert f"line {line}" in err.value.message
    _nothing_stored(domain)


async def test_duplicate_custom_id_names_both_lines(domain) -> None:  # type: ignore[no-untyped-def]
    data = b"".join(json.dumps(x).encode() + b"\n" for x in [GOOD, batch_line("b", "x"), GOOD])
    rec = await _upload(domain, data)
    with pytest.raises(InvalidArgument, match="line 1 and line 3"):
        _create(domain, rec.id)


async def test_models_that_differ_between_lines(domain) -> None:  # type: ignore[no-untyped-def]
    domain.registry.register_model("other-model", "/nowhere", 2048)
    other = {**batch_line("b", "x"), "body": {"model": "other-model", "messages": []}}
    data = b"".join(json.dumps(x).encode() + b"\n" for x in [GOOD, other])
    rec = await _upload(domain, data)
    with pytest.raises(InvalidArgument) as err:
        _create(domain, rec.id)
    assert err.value.code == "mismatched_model" and err.value.line == 2
    _nothing_stored(domain)


async def test_empty_file(domain) -> None:  # type: ignore[no-untyped-def]
    rec = await _upload(domain, b"\n\n")
    with pytest.raises(InvalidArgument, match="no requests") as err:
        _create(domain, rec.id)
    assert err.value.code == "empty_file"
    _nothing_stored(domain)


async def test_line_limit(domain) -> None:  # type: ignore[no-untyped-def]
    data = b"".join(json.dumps(batch_line(f"c{i}", "x")).encode() + b"\n" for i in range(101))
    rec = await _upload(domain, data)
    with pytest.raises(InvalidArgument, match="more than 100 requests") as err:
        _create(domain, rec.id)
    assert err.value.line == 101
    _nothing_stored(domain)


async def test_size_limit_stores_no_file(domain) -> None:  # type: ignore[no-untyped-def]
    domain.files.max_bytes = 1000
    with pytest.raises(TooLarge):
        await _upload(domain, b"x" * 1001)
    assert domain.files.list_files("p1")[0] == []
    assert not any(p.is_file() for p in domain.files.blobs.root.rglob("*"))


async def test_wrong_purpose_and_unknown_file(domain) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidArgument, match="invalid purpose") as err:
        await _upload(domain, b"{}\n", purpose="batch_output")
    assert err.value.param == "purpose"
    rec = await _upload(domain, json.dumps(GOOD).encode() + b"\n", purpose="fine-tune")
    with pytest.raises(InvalidArgument, match="purpose 'batch'"):
        _create(domain, rec.id)
    with pytest.raises(NotFound):
        _create(domain, "file-nope")
    # Another project's file is invisible.
    with pytest.raises(NotFound):
        domain.files.get("p2", rec.id)


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"completion_window": "48h"}, "completion_window"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"metadata": {"k" * 65: "v"}}, "metadata.kkkkkkkkkkkkkkkkkkkk"),
        ({"metadata": {"k": "v" * 513}}, "metadata.k"),
        ({"endpoint": "/v1/completions"}, "endpoint"),
        ({"priority": 5}, "priority"),
    ],
)
async def test_bad_batch_parameters(domain, kwargs, param) -> None:  # type: ignore[no-untyped-def]
    rec = await _upload(domain, json.dumps(GOOD).encode() + b"\n")
    args = {
        "input_file_id": rec.id,
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
        "metadata": {},
    } | kwargs
    with pytest.raises(InvalidArgument) as err:
        domain.batches.create("p1", **args)
    assert err.value.param == param
    _nothing_stored(domain)


async def test_valid_file_becomes_rows_and_shards(domain) -> None:  # type: ignore[no-untyped-def]
    data = b"".join(json.dumps(batch_line(f"c{i}", f"q{i}")).encode() + b"\n\n" for i in range(10))
    rec = await _upload(domain, data)
    view = domain.batches.create(
        "p1",
        input_file_id=rec.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"team": "x"},
    )
    assert view.status == "in_progress" and view.total == 10 and view.model == MODEL_NAME
    assert view.metadata == {"team": "x"}
    with domain.engine.connect() as conn:
        ranges = conn.execute(
            sa.select(shards.c.start_line, shards.c.end_line).order_by(shards.c.seq)
        ).all()
    # Blank lines are skipped but keep their numbers: lines 1,3,5,...,19 in shards of 4.
    assert [tuple(r) for r in ranges] == [(1, 7), (9, 15), (17, 19)]
