"""The stack under test: the real inference service (api role) and the real gateway, and the
batch inputs the tests send.

Both run as subprocesses on ephemeral ports with a temporary `LOOMSTACK_HOME`; the tests talk to
the gateway with the official `openai` client (and httpx where a raw request is the point).
No vLLM engine runs: chat is expected to answer 503.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from openai import OpenAI
from service_processes import ServiceProcess, http_healthy, stop_process
from support import SERVICE_SECRET

REPO = Path(__file__).resolve().parents[2]
MODEL_NAME = "SmolLM2-135M-Instruct"
MODEL_PATH = os.environ.get(
    "LOOMSTACK_INFERENCE_MODEL_PATH", str(REPO / ".cache" / "models" / MODEL_NAME)
)
KEY_A, KEY_B, KEY_PAGES, KEY_ADMIN = "sk-test-a", "sk-test-b", "sk-test-pages", "sk-test-admin"
API_KEYS = f"{KEY_A}:team-a,{KEY_B}:team-b,{KEY_PAGES}:team-pages,{KEY_ADMIN}:*"
UPLOAD_BUFFER_BYTES = 1024 * 1024
START_TIMEOUT = 60.0


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any LOOMSTACK_ setting but the run's service secret
    (every process of a stack holds the same one), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOMSTACK_")}
    env["LOOMSTACK_SERVICE_SECRET"] = SERVICE_SECRET
    env.update(extra)
    return env


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL (its process group) if it does not stop in 15 s."""
    stop_process(proc, 15)


def free_port() -> int:
    """A port nothing listens on (for a gateway whose upstream is down)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class Gateway:
    """A running gateway process."""

    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def cli(self, *args: str, key: str = KEY_A) -> subprocess.CompletedProcess[str]:
        """`loomstack <args>` against this gateway with `key` (wide output, one minute)."""
        env = {
            **os.environ,
            "LOOMSTACK_BASE_URL": self.base_url,
            "LOOMSTACK_API_KEY": key,
            "COLUMNS": "250",
        }
        return subprocess.run(
            [sys.executable, "-m", "loomstack_cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def client(self, key: str = KEY_A) -> OpenAI:
        """The official openai client, no retries (tests want the first answer)."""
        return OpenAI(base_url=self.base_url, api_key=key, max_retries=0, timeout=60)

    def http(self, key: str | None = KEY_A) -> httpx.Client:
        """A raw HTTP client, with the bearer key unless `key` is None."""
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)


class _Service(ServiceProcess):
    """A service of the stack under test, its log truncated at each start."""

    def __init__(self, package: str, home: Path, name: str, env: dict[str, str]) -> None:
        self.package = package
        port_file = home / f"{name}.port"
        env = {
            **env,
            f"LOOMSTACK_{package.removeprefix('loomstack_').upper()}_PORT_FILE": str(port_file),
        }
        super().__init__(home, name, env, {"port": port_file}, log_mode="wb")


def start_inference(home: Path, **extra_env: str) -> tuple[str, subprocess.Popen[bytes]]:
    """Starts `python -m loomstack_inference` (api role) on a free port: (address, process)."""
    env = clean_env(
        LOOMSTACK_HOME=str(home),
        LOOMSTACK_INFERENCE_ROLES="api",
        LOOMSTACK_INFERENCE_MODEL_PATH=MODEL_PATH,
        LOOMSTACK_INFERENCE_MODEL_NAME=MODEL_NAME,
        LOOMSTACK_INFERENCE_PORT="0",
        LOOMSTACK_INFERENCE_LOG_JSON="false",
        **extra_env,
    )
    service = _Service("loomstack_inference", home, "inference", env).start(START_TIMEOUT)
    assert service.proc is not None
    return service.address, service.proc


def start_gateway(tmp: Path, inference_address: str, name: str, **extra_env: str) -> Gateway:
    """Starts `python -m loomstack_gateway` on a free port and waits for /healthz."""
    settings = {
        "LOOMSTACK_GATEWAY_INFERENCE_ADDRESS": inference_address,
        "LOOMSTACK_GATEWAY_PORT": "0",
        "LOOMSTACK_GATEWAY_API_KEYS": API_KEYS,
        "LOOMSTACK_GATEWAY_UPLOAD_BUFFER_BYTES": str(UPLOAD_BUFFER_BYTES),
        "LOOMSTACK_GATEWAY_UPSTREAM_TIMEOUT_SECONDS": "30",
    }
    env = clean_env(**{**settings, **extra_env})  # `extra_env` may replace a default
    service = _Service("loomstack_gateway", tmp, name, env).start(START_TIMEOUT)
    url = f"http://127.0.0.1:{service.port}"
    try:
        service.wait_healthy(lambda: http_healthy(f"{url}/healthz"), START_TIMEOUT, 0.05)
    except BaseException:
        service.terminate(15)
        raise
    assert service.proc is not None
    return Gateway(url, service.proc, service.log_path)


def request_line(custom_id: str, content: str = "What is the capital of France?") -> dict:
    """One valid batch input line."""
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": MODEL_NAME,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": 16,
        },
    }


def jsonl(lines: list[dict]) -> bytes:
    """JSONL bytes of the lines."""
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def upload_batch_input(client: OpenAI, n: int = 3, prefix: str = "req") -> str:
    """Uploads a valid batch input file; returns its id."""
    content = jsonl([request_line(f"{prefix}-{i}") for i in range(n)])
    return client.files.create(file=("input.jsonl", content), purpose="batch").id


def poll(fn, until, timeout: float = 15.0, interval: float = 0.1):  # type: ignore[no-untyped-def]
    """Calls `fn` until `until(result)` holds; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = fn()
        if until(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s; last result: {result!r}")
        time.sleep(interval)


# -- raw HTTP on the wire: what a streaming client sees (body limits, floods) -----------------


@dataclass
class RawAnswer:
    """What a raw client got: the response (None when the connection broke before one came),
    how many body bytes it managed to send, and whether the gateway then closed the
    connection."""

    status: int | None
    headers: dict[str, str]
    body: bytes
    sent: int
    closed: bool


def _read_answer(sock: socket.socket) -> tuple[int | None, dict[str, str], bytes, bool]:
    """Status, headers and body of one HTTP/1.1 response with a Content-Length, and whether
    the peer closed the connection (EOF or reset) before or after it."""
    data = bytearray()
    try:
        while b"\r\n\r\n" not in data:
            piece = sock.recv(65536)
            if not piece:
                return None, {}, b"", True
            data += piece
        head, _, rest = bytes(data).partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])
        }
        body = bytearray(rest)
        while len(body) < int(headers.get("content-length", "0")):
            piece = sock.recv(65536)
            if not piece:
                return status, headers, bytes(body), True
            body += piece
    except (ConnectionResetError, BrokenPipeError):
        return None, {}, b"", True
    # Closed afterwards? EOF or a reset within a moment means yes; a keep-alive stays quiet.
    sock.settimeout(0.5)
    try:
        closed = sock.recv(1) == b""
    except TimeoutError:
        closed = False
    except OSError:
        closed = True
    return status, headers, bytes(body), closed


def raw_exchange(
    url: str, head: bytes, chunks: Iterable[bytes], *, stop_on_answer: bool = True
) -> RawAnswer:
    """Sends a request's head, then its body chunk by chunk as a streaming client does, and
    reads the answer. With `stop_on_answer` the client stops sending as soon as an answer
    arrives; without it, it sends until the gateway closes the connection or the body ends."""
    host, port = url.removeprefix("http://").split(":")
    sent = 0
    broken = False
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head)
        for chunk in chunks:
            if stop_on_answer and select.select([sock], [], [], 0)[0]:
                break
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                broken = True
                break
            sent += len(chunk)
        status, headers, body, closed = _read_answer(sock)
    return RawAnswer(status, headers, body, sent, closed or broken)


def request_head(
    method: str,
    path: str,
    key: str | None,
    *,
    length: int | None = None,
    chunked: bool = False,
    **headers: str,
) -> bytes:
    """An HTTP/1.1 request head: a body of `length` bytes, a chunked body, or none."""
    lines = [f"{method} {path} HTTP/1.1", "Host: loomstack.test"]
    if key is not None:
        lines.append(f"Authorization: Bearer {key}")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    elif length is not None:
        lines.append(f"Content-Length: {length}")
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def body_chunks(total: int, chunk: int = 1024 * 1024, *, chunked: bool = False) -> Iterator[bytes]:
    """`total` bytes of a JSON-looking body in pieces, framed for chunked encoding if asked."""
    piece = b'{"pad": "' + b"x" * (chunk - 9)
    left = total
    while left > 0:
        data = piece[: min(chunk, left)]
        left -= len(data)
        yield b"%x\r\n%s\r\n" % (len(data), data) if chunked else data
    if chunked:
        yield b"0\r\n\r\n"


async def _answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    await reader.readexactly(int(headers.get("content-length", "0")))
    return int(lines[0].split()[1]), headers


async def http_flood(
    url: str, heads: list[bytes], connections: int
) -> list[tuple[int, dict[str, str]]]:
    """Sends the bodiless requests `heads` over `connections` keep-alive connections at once
    (a bare asyncio client: httpx costs milliseconds of CPU per request, enough to make the
    client, not the gateway, set the pace); (status, headers) of every answer, in no order."""
    host, port = url.removeprefix("http://").split(":")
    pending = iter(heads)
    answers: list[tuple[int, dict[str, str]]] = []

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            for head in pending:
                writer.write(head)
                status, headers = await _answer(reader)
                answers.append((status, headers))
                if headers.get("connection") == "close":
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, int(port))
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(connections)))
    return answers
