"""Files through the gateway with the official openai client: upload, list, retrieve, content,
delete, project isolation, and the streamed upload path (field order, bounded memory)."""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from pathlib import Path

import openai
import psutil
import pytest
from openai import OpenAI

from gateway_stack import (
    KEY_A,
    KEY_ADMIN,
    KEY_B,
    UPLOAD_BUFFER_BYTES,
    Gateway,
    jsonl,
    poll,
    request_line,
)


def test_create_retrieve_content_delete(client: OpenAI) -> None:
    content = jsonl([request_line(f"c-{i}") for i in range(5)])
    created = client.files.create(file=("my input.jsonl", content), purpose="batch")
    assert created.id.startswith("file-")
    assert created.object == "file"
    assert created.bytes == len(content)
    assert created.filename == "my input.jsonl"
    assert created.purpose == "batch"
    assert created.status == "processed"
    assert created.model_extra and created.model_extra["line_count"] == 5
    assert abs(created.created_at - time.time()) < 60

    got = client.files.retrieve(created.id)
    assert got.model_dump() == created.model_dump()
    assert client.files.content(created.id).content == content

    deleted = client.files.delete(created.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (created.id, "file", True)
    with pytest.raises(openai.NotFoundError) as exc:
        client.files.retrieve(created.id)
    assert exc.value.body["code"] == "file_not_found"  # type: ignore[index]


def test_list_filters_and_pages(gateway: Gateway) -> None:
    client = gateway.client(KEY_B)
    ids = [
        client.files.create(file=(f"f{i}.jsonl", jsonl([request_line("x")])), purpose="batch").id
        for i in range(3)
    ]
    user_data = client.files.create(file=("notes.txt", b"hello"), purpose="user_data").id

    page = client.files.list(purpose="batch", limit=2)
    assert [f.id for f in page.data] == ids[::-1][:2]
    assert page.has_more is True
    rest = client.files.list(purpose="batch", limit=2, after=page.data[-1].id)
    assert [f.id for f in rest.data] == ids[:1]
    assert rest.has_more is False
    assert [f.id for f in client.files.list(purpose="batch", limit=2)] == ids[::-1]  # auto-paging
    assert [f.id for f in client.files.list(purpose="user_data")] == [user_data]

    raw = gateway.http(KEY_B).get("/v1/files", params={"purpose": "batch", "limit": 2}).json()
    assert raw["object"] == "list"
    assert raw["first_id"] == ids[2] and raw["last_id"] == ids[1] and raw["has_more"] is True


def test_projects_are_isolated(gateway: Gateway, client: OpenAI) -> None:
    mine = client.files.create(file=("a.jsonl", jsonl([request_line("a")])), purpose="batch").id
    other = gateway.client(KEY_B)
    with pytest.raises(openai.NotFoundError):
        other.files.retrieve(mine)
    with pytest.raises(openai.NotFoundError):
        other.files.delete(mine)
    assert mine not in {f.id for f in other.files.list()}
    assert gateway.client(KEY_ADMIN).files.retrieve(mine).id == mine


def _multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "b0undary") -> bytes:
    out = b""
    for name, filename, value in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        out += value + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def _post_raw(gateway: Gateway, body: bytes, boundary: str = "b0undary") -> tuple[int, dict]:
    resp = gateway.http().post(
        "/v1/files",
        content=body,
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    return resp.status_code, resp.json()


def test_purpose_after_the_file_is_accepted_when_small(gateway: Gateway, client: OpenAI) -> None:
    content = jsonl([request_line(f"late-{i}") for i in range(20)])
    status, doc = _post_raw(
        gateway, _multipart([("file", "late.jsonl", content), ("purpose", None, b"batch")])
    )
    assert status == 200, doc
    assert doc["purpose"] == "batch" and doc["bytes"] == len(content)
    assert client.files.content(doc["id"]).content == content


def test_purpose_after_a_large_file_is_refused(gateway: Gateway, client: OpenAI) -> None:
    before = {f.id for f in client.files.list()}
    big = b"x" * (UPLOAD_BUFFER_BYTES * 2)
    status, doc = _post_raw(
        gateway, _multipart([("file", "big.jsonl", big), ("purpose", None, b"batch")])
    )
    assert status == 400
    assert doc["error"]["param"] == "purpose"
    assert doc["error"]["code"] == "purpose_after_file"
    assert {f.id for f in client.files.list()} == before


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        (_multipart([("purpose", None, b"batch")]), "file", "missing_file"),
        (_multipart([("file", "a.jsonl", b"{}\n")]), "purpose", "missing_purpose"),
        # cut before the closing boundary: nothing may be stored
        (
            _multipart([("purpose", None, b"batch"), ("file", "a.jsonl", b"{}\n")])[:-12],
            "file",
            "invalid_multipart",
        ),
    ],
)
def test_malformed_uploads(
    gateway: Gateway, client: OpenAI, body: bytes, param: str, code: str
) -> None:
    before = {f.id for f in client.files.list()}
    status, doc = _post_raw(gateway, body)
    assert status == 400, doc
    assert (doc["error"]["param"], doc["error"]["code"]) == (param, code)
    assert doc["error"]["type"] == "invalid_request_error"
    assert {f.id for f in client.files.list()} == before


def test_not_multipart(gateway: Gateway) -> None:
    resp = gateway.http().post("/v1/files", json={"purpose": "batch"})
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "invalid_content_type"


def _write_big_file(path: Path, size: int) -> str:
    line = jsonl([request_line("x" * 10, "y" * 400)])
    digest = hashlib.sha256()
    written = 0
    with path.open("wb") as out:
        block = line * (1024 * 1024 // len(line))
        while written < size:
            out.write(block)
            digest.update(block)
            written += len(block)
    return digest.hexdigest()


def test_large_upload_streams_through_bounded_memory(
    gateway: Gateway, client: OpenAI, tmp_path: Path
) -> None:
    size = 60 * 1024 * 1024
    path = tmp_path / "big.jsonl"
    sha = _write_big_file(path, size)
    proc = psutil.Process(gateway.proc.pid)

    # Warm up allocator pools and code paths first, so that the baseline is the steady state.
    warm = tmp_path / "warm.jsonl"
    _write_big_file(warm, 8 * 1024 * 1024)
    for _ in range(2):
        with warm.open("rb") as f:
            client.files.delete(client.files.create(file=f, purpose="batch").id)
    baseline = proc.memory_info().rss

    peak = baseline
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, proc.memory_info().rss)
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with path.open("rb") as f:
            created = client.files.create(file=f, purpose="batch")
    finally:
        done.set()
        sampler.join()

    assert created.bytes == path.stat().st_size
    growth = peak - baseline
    assert growth < size // 4, f"gateway RSS grew by {growth / 2**20:.1f} MiB during the upload"

    # The content comes back identical, streamed as well.
    digest = hashlib.sha256()
    with client.files.with_streaming_response.content(created.id) as resp:
        assert resp.headers["content-type"] == "application/octet-stream"
        for chunk in resp.iter_bytes():
            digest.update(chunk)
    assert digest.hexdigest() == sha
    client.files.delete(created.id)


def _disconnects(gateway: Gateway) -> float:
    metrics = gateway.http(None).get("/metrics").text
    label = 'loomstack_gateway_requests_total{method="POST",route="/v1/files",status="499"} '
    return sum(float(line[len(label) :]) for line in metrics.splitlines() if line.startswith(label))


def test_client_disconnect_mid_upload_stores_nothing(gateway: Gateway, client: OpenAI) -> None:
    before = {f.id for f in client.files.list()}
    disconnects = _disconnects(gateway)
    host, port = gateway.url.removeprefix("http://").split(":")
    head = (
        b'--XyZ\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="cut.jsonl"\r\n\r\n'
    )
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            b"POST /v1/files HTTP/1.1\r\nHost: test\r\n"
            + f"Authorization: Bearer {KEY_A}\r\n".encode()
            + b"Content-Type: multipart/form-data; boundary=XyZ\r\n"
            + b"Content-Length: 50000000\r\n\r\n"
            + head
        )
        for _ in range(4):
            sock.sendall(b"y" * 1024 * 1024)
    # The gateway notices (and counts a 499), the cancelled RPC records nothing.
    poll(lambda: _disconnects(gateway), lambda n: n > disconnects, timeout=10)
    assert {f.id for f in client.files.list()} == before
    assert "Traceback" not in gateway.log.read_text()
