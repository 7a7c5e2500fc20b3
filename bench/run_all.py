"""Loomstack benchmarks (``make bench``): raw engine vs full stack, gateway overhead, submission.

Scenarios, run one after another so that no two engines ever share the machine:

* **raw** — ``bench/raw_engine.py`` in a subprocess: N chat requests × M output tokens through
  vLLM's ``LLM.chat`` (``ignore_eos``, temperature 0, compiled unless ``--quick``).
* **stack** — the same N requests (``bench/workload.py``) as an OpenAI batch input file through
  the real gateway and inference service (api + engine roles): upload, ``batches.create``, poll
  ``batches.retrieve`` every 0.2 s, check the output file; output tokens/s and the ratio to raw
  (goal ≥ 0.95×).
* **gateway** — ``GET /v1/batches/{id}`` through the gateway vs the direct gRPC
  ``BatchService.GetBatch`` (C-core client): sequential p50/p99 and the added latency, timed
  with a lean keep-alive client (http.client; httpx's own figures alongside), then throughput
  with 32 concurrent clients and requests/s per core of the gateway process (goals: p50 added
  ≤ 1 ms, ≥ 1,000 req/s per core). Inference runs the api role only, so no engine takes CPU.
* **submit** — upload + create of a 50,000-line, ~100 MB file through the gateway, timed (goal
  ≤ 5 s), sampling the RSS of the gateway and the inference service every 50 ms (goal: flat).
* **curation** — against a real Label Studio: 10,000 batch results imported by the curation
  service's importer (predictions built, chunks of 500, every id recorded) vs a direct
  label-studio-sdk bulk import of the same, pre-built tasks; then 10,000 annotated tasks read
  back by the reconcile and turned into a snapshot vs a direct SDK export (goal ≥ 0.9× each).

Each scenario writes ``<out>/<scenario>.json``; ``<out>/summary.md`` gets a table with the
machine's facts and every result, and is printed at the end::

    python bench/run_all.py --out .cache/bench                       # make bench
    python bench/run_all.py --out /tmp/bench --quick                 # smoke run, minutes
    python bench/run_all.py --out /tmp/bench --only stack --profile  # py-spy on the service

``--profile`` records the inference process with py-spy during the stack batch (raw collapsed
stacks, summarised by ``bench/profile_summary.py``); profiled numbers are not for reporting.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import lora
import psutil
from harness import (
    API_KEY,
    MODEL_NAME,
    MODEL_PATH,
    PROJECT,
    REPO,
    RssSampler,
    Service,
    cpu_seconds,
    latency_summary,
    load_average,
    machine_info,
    signer,
    start_gateway,
    start_inference,
)
from openai import OpenAI
from workload import make_chat_requests, write_jsonl

from loomstack.inference.v1 import batches_pb2, batches_pb2_grpc

BENCH = Path(__file__).resolve().parent
SCENARIOS = ("raw", "raw_lora", "stack", "gateway", "submit", "curation", "training")
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
POLL_SECONDS = 0.2
STACK_GOAL = 0.95
ADDED_P50_GOAL_MS = 1.0
PER_CORE_GOAL = 1000.0
SUBMIT_GOAL_SECONDS = 5.0
CURATION_GOAL = 0.9
CURATION_TASKS = 10_000
MIB = 1024 * 1024


@dataclass(frozen=True)
class Config:
    """What to run and how big."""

    out: Path
    only: tuple[str, ...]
    requests: int
    max_tokens: int
    enforce_eager: bool
    warmup_calls: int
    latency_calls: int
    concurrency: int
    throughput_seconds: float
    submit_lines: int
    submit_line_bytes: int
    quick: bool
    profile: bool
    py_spy: str
    keep_workdirs: bool
    lora: bool


# -- small helpers -----------------------------------------------------------------------------


def write_json(cfg: Config, name: str, result: dict[str, Any]) -> None:
    """Writes one scenario's result to ``<out>/<name>.json``."""
    path = cfg.out / f"{name}.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"[bench] wrote {path}", flush=True)


def say(message: str) -> None:
    """Progress on stdout, with the current 1-minute load."""
    print(f"[bench {time.strftime('%H:%M:%S')} load {load_average()[0]:.2f}] {message}", flush=True)


def openai_client(gateway: Service, timeout: float = 600) -> OpenAI:
    """The official client pointed at the gateway, no retries."""
    return OpenAI(
        base_url=f"http://127.0.0.1:{gateway.port}/v1",
        api_key=API_KEY,
        max_retries=0,
        timeout=timeout,
    )


def timestamp(msg: Any, name: str) -> float | None:
    """A proto Timestamp field as float seconds, None when unset."""
    if not msg.HasField(name):
        return None
    ts = getattr(msg, name)
    return float(ts.seconds) + float(ts.nanos) / 1e9


class Workdir:
    """A temporary directory for one scenario's services; logs are copied to ``<out>/logs``."""

    def __init__(self, cfg: Config, name: str) -> None:
        self.cfg = cfg
        self.name = name
        self.path = Path(tempfile.mkdtemp(prefix=f"loomstack-bench-{name}-"))
        self.services: list[Service] = []

    def __enter__(self) -> Workdir:
        return self

    def __exit__(self, *exc: object) -> None:
        for service in reversed(self.services):
            service.stop()
        logs = self.cfg.out / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        for service in self.services:
            if service.log_path.exists():
                shutil.copy(service.log_path, logs / f"{self.name}-{service.name}.log")
        if self.cfg.keep_workdirs:
            print(f"[bench] kept {self.path}", flush=True)
        else:
            shutil.rmtree(self.path, ignore_errors=True)

    def inference(
        self, roles: str, enforce_eager: bool, extra_env: dict[str, str] | None = None
    ) -> tuple[Service, float]:
        """Starts the inference service with ``roles`` and waits until it is ready."""
        service, seconds = start_inference(
            self.path, roles=roles, enforce_eager=enforce_eager, extra_env=extra_env
        )
        self.services.append(service)
        return service, seconds

    def gateway(self, inference: Service) -> Service:
        """Starts the gateway in front of ``inference``."""
        service = start_gateway(self.path, inference.port)
        self.services.append(service)
        return service


# -- raw ---------------------------------------------------------------------------------------


def scenario_raw(cfg: Config, name: str = "raw", extra: list[str] | None = None) -> dict[str, Any]:
    """``bench/raw_engine.py`` in a subprocess; its own JSON plus the wall time and load."""
    tmp_json = cfg.out / f"{name}.engine.json"
    cmd = [
        sys.executable,
        str(BENCH / "raw_engine.py"),
        "--model",
        str(MODEL_PATH),
        "--requests",
        str(cfg.requests),
        "--max-tokens",
        str(cfg.max_tokens),
        "--json-out",
        str(tmp_json),
        *(["--enforce-eager"] if cfg.enforce_eager else []),
        *(extra or []),
    ]
    log_path = cfg.out / "logs" / f"{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "4")}
    load_before = load_average()
    say(f"{name}: {cfg.requests} requests × {cfg.max_tokens} tokens through LLM.chat {extra or ''}")
    started = time.perf_counter()
    with log_path.open("wb") as log:
        proc = subprocess.run(
            cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, check=False
        )
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"raw_engine.py exited with {proc.returncode}:\n{tail}")
    result: dict[str, Any] = json.loads(tmp_json.read_text())
    tmp_json.unlink()
    result.update(
        scenario=name,
        command=" ".join(cmd[1:]),
        wall_seconds=round(wall, 1),
        load_average_before=load_before,
        load_average_after=load_average(),
    )
    return result


def scenario_raw_lora(cfg: Config) -> dict[str, Any]:
    """The raw engine with ``enable_lora`` (rank 16, as ``make up``): base requests only, every
    request on the benchmark adapter, half on it."""
    adapter = lora.blank_adapter(cfg.out / "blank-adapter")
    result: dict[str, Any] = {"scenario": "raw_lora", "adapter": str(adapter)}
    for variant, extra in lora.raw_variants(adapter).items():
        result[variant] = scenario_raw(cfg, f"raw_{variant}", extra)
    return result


# -- stack -------------------------------------------------------------------------------------


def _split_cpu(inference: Service) -> tuple[float, float]:
    """CPU seconds of the inference process itself and of its children (vLLM's engine core)."""
    proc = inference.process
    own = cpu_seconds(proc)
    return own, cpu_seconds(proc, children=True) - own


def _start_profiler(cfg: Config, pid: int) -> subprocess.Popen[bytes] | None:
    if not cfg.profile:
        return None
    out = cfg.out / "stack-profile.txt"
    cmd = [cfg.py_spy, "record", "--pid", str(pid), "--rate", "100", "--format", "raw", "--threads"]
    cmd += ["--output", str(out)]
    say(f"profiling inference pid {pid} with py-spy → {out}")
    log = (cfg.out / "logs" / "py-spy.log").open("wb")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)


def _stop_profiler(cfg: Config, proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    profile = cfg.out / "stack-profile.txt"
    if profile.exists():
        subprocess.run(
            [sys.executable, str(BENCH / "profile_summary.py"), str(profile)],
            stdout=(cfg.out / "stack-profile-summary.txt").open("wb"),
            check=False,
        )


def _verify_output(content: bytes, n: int, max_tokens: int) -> dict[str, Any]:
    lines = content.splitlines()
    custom_ids: set[str] = set()
    wrong_tokens = 0
    failed = 0
    output_tokens = 0
    for raw in lines:
        line = json.loads(raw)
        custom_ids.add(line["custom_id"])
        response = line.get("response") or {}
        if response.get("status_code") != 200:
            failed += 1
            continue
        tokens = response["body"]["usage"]["completion_tokens"]
        output_tokens += tokens
        if tokens != max_tokens:
            wrong_tokens += 1
    expected = {f"request-{i:06d}" for i in range(n)}
    return {
        "output_lines": len(lines),
        "output_tokens": output_tokens,
        "failed_lines": failed,
        "lines_with_wrong_completion_tokens": wrong_tokens,
        "custom_ids_match": custom_ids == expected,
        "ok": len(lines) == n and not failed and not wrong_tokens and custom_ids == expected,
    }


def _stack_adapter_batches(
    cfg: Config, work: Workdir, inference: Service, client: OpenAI, results: dict[str, Any]
) -> None:
    """Fine-tuned models on the stack: an adapter batch, then base + adapter at once. Each
    result is recorded as it finishes, so a later failure keeps the earlier figures."""
    adapter_dir = lora.blank_adapter(cfg.out / "blank-adapter")
    say("stack: registering the benchmark adapter, waiting until an engine serves it")
    results["adapter_served_seconds"] = round(lora.register_adapter(inference, adapter_dir), 1)
    say("stack: a batch on the adapter")
    results["adapter"] = lora.run_batches(
        client,
        work.path,
        {"adapter": lora.ADAPTER_NAME},
        cfg.requests,
        cfg.max_tokens,
        inference,
    )
    say("stack: a base batch and an adapter batch at once")
    results["mixed"] = lora.run_batches(
        client,
        work.path,
        {"base": MODEL_NAME, "adapter": lora.ADAPTER_NAME},
        cfg.requests // 2,
        cfg.max_tokens,
        inference,
    )


def scenario_stack(
    cfg: Config, raw: dict[str, Any] | None, raw_lora: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Upload → batch → output file through the gateway; tokens/s and the ratio to raw."""
    with Workdir(cfg, "stack") as work:
        say("stack: starting inference (api,engine) — the first compiled start takes minutes")
        # As `make up` starts it: able to serve fine-tuned models (LoRA up to rank 16).
        inference, ready_seconds = work.inference(
            "api,engine",
            cfg.enforce_eager,
            {
                "LOOMSTACK_INFERENCE_MAX_LORA_RANK": str(lora.STACK_LORA_RANK),
                "LOOMSTACK_INFERENCE_LOG_JSON": "true",
            },
        )
        say(f"stack: inference ready in {ready_seconds:.1f} s")
        gateway = work.gateway(inference)
        client = openai_client(gateway)

        input_path = work.path / "input.jsonl"
        write_jsonl(make_chat_requests(cfg.requests, cfg.max_tokens, MODEL_NAME), input_path)
        started = time.perf_counter()
        uploaded = client.files.create(
            file=(input_path.name, input_path.read_bytes()), purpose="batch"
        )
        upload_seconds = time.perf_counter() - started

        gateway_proc = gateway.process
        cpu_main0, cpu_core0 = _split_cpu(inference)
        cpu_gateway0 = cpu_seconds(gateway_proc)
        profiler = _start_profiler(cfg, inference.pid)
        load_before = load_average()
        say(f"stack: creating the batch ({cfg.requests} lines), polling every {POLL_SECONDS} s")
        t0 = time.perf_counter()
        batch = client.batches.create(
            input_file_id=uploaded.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
        )
        create_seconds = time.perf_counter() - t0
        polls = 0
        while batch.status not in TERMINAL:
            time.sleep(POLL_SECONDS)
            batch = client.batches.retrieve(batch.id)
            polls += 1
            inference.check_alive()
            if time.perf_counter() - t0 > 3600:
                raise TimeoutError(f"batch {batch.id} not done in an hour: {batch.status}")
        wall = time.perf_counter() - t0
        load_after = load_average()
        cpu_main1, cpu_core1 = _split_cpu(inference)
        cpu_gateway1 = cpu_seconds(gateway_proc)
        _stop_profiler(cfg, profiler)
        say(f"stack: batch {batch.status} after {wall:.1f} s")

        channel = grpc.insecure_channel(f"127.0.0.1:{inference.port}")
        stub = batches_pb2_grpc.BatchServiceStub(channel)
        exact = stub.GetBatch(
            batches_pb2.GetBatchRequest(batch_id=batch.id),
            metadata=signer().metadata(PROJECT),
            timeout=10,
        )
        channel.close()
        t_create = timestamp(exact, "create_time")
        t_progress = timestamp(exact, "in_progress_time")
        t_finalizing = timestamp(exact, "finalizing_time")
        t_complete = timestamp(exact, "complete_time")

        verify: dict[str, Any] = {"ok": False}
        download_seconds = 0.0
        if batch.output_file_id:
            started = time.perf_counter()
            content = client.files.content(batch.output_file_id).content
            download_seconds = time.perf_counter() - started
            verify = _verify_output(content, cfg.requests, cfg.max_tokens)
        tokens = verify.get("output_tokens", 0)

        # Fine-tuned models on the same stack: an adapter batch, then base + adapter at once.
        adapter_results: dict[str, Any] = {}
        try:
            if cfg.lora:
                _stack_adapter_batches(cfg, work, inference, client, adapter_results)
        except Exception as exc:  # the base batch's figures stay; the summary names the failure
            say(f"stack: the adapter batches failed: {exc!r}")
            adapter_results["adapter_error"] = f"{type(exc).__name__}: {exc}"
        engine_settings = lora.engine_settings(inference.log_path)

    def rate(seconds: float | None) -> float | None:
        return round(tokens / seconds, 1) if seconds else None

    progress_seconds = (
        t_complete - t_progress if t_complete is not None and t_progress is not None else None
    )
    result: dict[str, Any] = {
        "scenario": "stack",
        "requests": cfg.requests,
        "max_tokens": cfg.max_tokens,
        "enforce_eager": cfg.enforce_eager,
        "status": batch.status,
        "request_counts": batch.request_counts.model_dump() if batch.request_counts else None,
        "verify": verify,
        "error_file_id": batch.error_file_id,
        "inference_ready_seconds": round(ready_seconds, 1),
        "upload_seconds": round(upload_seconds, 3),
        "create_seconds": round(create_seconds, 3),
        "polls": polls,
        "wall_seconds_create_to_completed": round(wall, 2),
        "output_tokens_per_second": rate(wall),
        "requests_per_second": round(cfg.requests / wall, 2),
        # OpenAI's in_progress_at/completed_at are whole seconds; these are the service's own
        # timestamps (gRPC, sub-second), the same instants.
        "seconds_in_progress_to_completed": (
            round(progress_seconds, 2) if progress_seconds is not None else None
        ),
        "output_tokens_per_second_in_progress_to_completed": rate(progress_seconds),
        "seconds_created_to_in_progress": (
            round(t_progress - t_create, 3) if t_progress and t_create else None
        ),
        "seconds_finalizing_to_completed": (
            round(t_complete - t_finalizing, 3) if t_complete and t_finalizing else None
        ),
        "openai_in_progress_at": batch.in_progress_at,
        "openai_completed_at": batch.completed_at,
        "output_download_seconds": round(download_seconds, 3),
        # Where the CPU went during the batch (2 cores: the engine core's threads compete with
        # the service's own process for them).
        "cpu_seconds_inference_process": round(cpu_main1 - cpu_main0, 2),
        "cpu_seconds_engine_core": round(cpu_core1 - cpu_core0, 2),
        "cpu_seconds_gateway": round(cpu_gateway1 - cpu_gateway0, 2),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "inference_env": {
            k: v
            for k, v in inference.env.items()
            if k.startswith(("LOOMSTACK_INFERENCE_", "VLLM_")) and not k.endswith("_FILE")
        },
        "profiled": cfg.profile,
        "engine_settings": engine_settings,
        **adapter_results,
    }
    for key in ("adapter", "mixed"):
        reference = (raw_lora or {}).get(f"lora_{key}")
        measured = adapter_results.get(key, {}).get("output_tokens_per_second")
        if isinstance(reference, dict) and reference.get("output_tokens_per_second") and measured:
            ref_tps = float(reference["output_tokens_per_second"])
            adapter_results[key]["raw_lora_output_tokens_per_second"] = ref_tps
            adapter_results[key]["ratio_to_raw_lora"] = round(measured / ref_tps, 3)
    if "adapter" in adapter_results and "ratio_to_raw_lora" in adapter_results["adapter"]:
        adapter_results["adapter"]["goal_ratio"] = lora.ADAPTER_GOAL
        adapter_results["adapter"]["meets_goal"] = (
            adapter_results["adapter"]["ratio_to_raw_lora"] >= lora.ADAPTER_GOAL
            and adapter_results["adapter"]["ok"]
        )
    if raw is not None and raw.get("output_tokens_per_second"):
        raw_tps = float(raw["output_tokens_per_second"])
        result["raw_output_tokens_per_second"] = raw_tps
        result["raw_frontend_cpu_seconds"] = raw.get("frontend_cpu_seconds")
        result["raw_engine_core_cpu_seconds"] = raw.get("engine_core_cpu_seconds")
        result["raw_from_this_run"] = raw.get("_this_run", False)
        for key, measured in (
            ("ratio_to_raw", result["output_tokens_per_second"]),
            (
                "ratio_to_raw_in_progress_to_completed",
                result["output_tokens_per_second_in_progress_to_completed"],
            ),
        ):
            result[key] = round(measured / raw_tps, 3) if measured else None
        result["goal_ratio"] = STACK_GOAL
        result["meets_goal"] = bool(result["ratio_to_raw"] and result["ratio_to_raw"] >= STACK_GOAL)
    return result


# -- gateway -----------------------------------------------------------------------------------


def _queued_batch(client: OpenAI, lines: int = 3) -> str:
    """Uploads a small valid file and creates a batch that stays queued (no engine runs)."""
    path_lines = make_chat_requests(lines, 16, MODEL_NAME)
    data = b"".join(json.dumps(line).encode() + b"\n" for line in path_lines)
    uploaded = client.files.create(file=("queued.jsonl", data), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    return batch.id


class KeepAliveClient:
    """A lean HTTP/1.1 client on one keep-alive connection (the standard library's http.client).

    The latency comparison times the gateway, not the client: httpx spends about 0.5 ms of
    Python per request on this CPU, the C-core gRPC client a small fraction of that, so httpx
    would count its own cost as the gateway's. Its figures are reported alongside.
    """

    def __init__(self, host: str, port: int, api_key: str) -> None:
        self._conn = http.client.HTTPConnection(host, port, timeout=30)
        self._headers = {"Authorization": f"Bearer {api_key}"}

    def get(self, path: str) -> bytes:
        """The body of a 200 answer to GET ``path``; RuntimeError for any other status."""
        self._conn.request("GET", path, headers=self._headers)
        response = self._conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"GET {path} answered {response.status}: {body[:200]!r}")
        return body

    def close(self) -> None:
        """Closes the connection."""
        self._conn.close()


def _interleaved_latencies(
    calls: dict[str, Callable[[], object]], warmup: int, count: int, block: int = 100
) -> dict[str, list[float]]:
    """Times each call ``count`` times, alternating blocks so drifting load hits all alike."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    perf = time.perf_counter
    done = 0
    while done < count:
        n = min(block, count - done)
        for name, call in calls.items():
            bucket = samples[name]
            for _ in range(n):
                started = perf()
                call()
                bucket.append(perf() - started)
        done += n
    return samples


async def _http_load(
    url: str, path: str, concurrency: int, seconds: float
) -> tuple[int, int, float]:
    """``concurrency`` keep-alive connections GET ``path`` for ``seconds``: (ok, errors, wall).

    A bare asyncio HTTP/1.1 client (a request line, headers, then the status line and
    Content-Length of each answer): httpx's AsyncClient spent about 4.6 ms of CPU per request
    here, so on two cores the load generator, not the gateway, set the pace and took the CPU
    the gateway needed.
    """
    host, port = url.removeprefix("http://").split(":")
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {API_KEY}\r\n\r\n"
    ).encode()
    ok = errors = 0
    deadline = 0.0

    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        await reader.readexactly(length)
        return status == 200

    async def worker() -> None:
        nonlocal ok, errors
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            await one(reader, writer)  # warm the connection
            await ready.wait()
            while time.perf_counter() < deadline:
                try:
                    if await one(reader, writer):
                        ok += 1
                    else:
                        errors += 1
                except (OSError, asyncio.IncompleteReadError):
                    errors += 1  # a dropped connection is counted, then reopened
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, int(port))
        finally:
            writer.close()

    ready = asyncio.Event()
    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    await asyncio.sleep(0.5)  # every connection open and warm
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()
    ready.set()
    await asyncio.gather(*tasks)
    return ok, errors, time.perf_counter() - started


async def _grpc_load(
    address: str, batch_id: str, concurrency: int, seconds: float
) -> tuple[int, int, float]:
    """The same load straight at ``BatchService.GetBatch`` with grpc.aio."""
    ok = errors = 0
    request = batches_pb2.GetBatchRequest(batch_id=batch_id)
    identity = signer()
    metadata = identity.metadata(PROJECT)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = batches_pb2_grpc.BatchServiceStub(channel)
        await stub.GetBatch(request, metadata=metadata, timeout=10)
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal ok, errors
            while time.perf_counter() < deadline:
                try:
                    await stub.GetBatch(request, metadata=identity.metadata(PROJECT), timeout=30)
                    ok += 1
                except grpc.aio.AioRpcError:
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return ok, errors, time.perf_counter() - started


def _throughput(
    label: str,
    run: Callable[[], tuple[int, int, float]],
    gateway: psutil.Process,
    inference: psutil.Process,
) -> dict[str, Any]:
    me = psutil.Process()
    before = (cpu_seconds(gateway), cpu_seconds(inference), cpu_seconds(me))
    load_before = load_average()
    ok, errors, wall = run()
    after = (cpu_seconds(gateway), cpu_seconds(inference), cpu_seconds(me))
    gw_cpu, inf_cpu, client_cpu = (round(a - b, 2) for a, b in zip(after, before, strict=True))
    result: dict[str, Any] = {
        "target": label,
        "ok": ok,
        "errors": errors,
        "seconds": round(wall, 2),
        "requests_per_second": round(ok / wall, 1),
        "cpu_seconds_gateway": gw_cpu,
        "cpu_seconds_inference": inf_cpu,
        "cpu_seconds_client": client_cpu,
        "load_average_before": load_before,
    }
    if gw_cpu > 0:
        result["gateway_cores_used"] = round(gw_cpu / wall, 2)
        result["requests_per_second_per_gateway_core"] = round(ok / gw_cpu, 1)
    if inf_cpu > 0:
        result["inference_cpu_ms_per_request"] = round(1000 * inf_cpu / max(ok, 1), 3)
    return result


def scenario_gateway(cfg: Config) -> dict[str, Any]:
    """GetBatch through the gateway vs direct gRPC: added latency, then throughput per core."""
    with Workdir(cfg, "gateway") as work:
        inference, _ = work.inference("api", enforce_eager=True)
        gateway = work.gateway(inference)
        client = openai_client(gateway, timeout=60)
        batch_id = _queued_batch(client)
        address = f"127.0.0.1:{inference.port}"
        url = f"http://127.0.0.1:{gateway.port}"

        channel = grpc.insecure_channel(address)
        stub = batches_pb2_grpc.BatchServiceStub(channel)
        request = batches_pb2.GetBatchRequest(batch_id=batch_id)
        identity = signer()
        http = httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30
        )
        check = http.get(f"/v1/batches/{batch_id}")
        check.raise_for_status()
        if check.json()["id"] != batch_id:
            raise RuntimeError(f"gateway answered another batch: {check.text[:200]}")
        lean = KeepAliveClient("127.0.0.1", gateway.port, API_KEY)

        def grpc_call() -> object:
            return stub.GetBatch(request, metadata=identity.metadata(PROJECT), timeout=10)

        def http_call() -> object:
            return lean.get(f"/v1/batches/{batch_id}")

        def healthz_call() -> object:
            return lean.get("/healthz")

        def httpx_call() -> object:
            response = http.get(f"/v1/batches/{batch_id}")
            if response.status_code != 200:
                raise RuntimeError(f"GET batch answered {response.status_code}")
            return response

        def httpx_healthz_call() -> object:
            return http.get("/healthz")

        load_before = load_average()
        say(f"gateway: {cfg.latency_calls} sequential calls each (gRPC, gateway, /healthz)")
        samples = _interleaved_latencies(
            {
                "grpc": grpc_call,
                "gateway": http_call,
                "healthz": healthz_call,
                "gateway_httpx": httpx_call,
                "healthz_httpx": httpx_healthz_call,
            },
            cfg.warmup_calls,
            cfg.latency_calls,
        )
        load_after_latency = load_average()
        lean.close()
        http.close()
        channel.close()
        latency = {name: latency_summary(values) for name, values in samples.items()}

        def added_over_grpc(name: str) -> dict[str, float]:
            return {
                f"{q}_ms": round(latency[name][f"{q}_ms"] - latency["grpc"][f"{q}_ms"], 3)
                for q in ("p50", "p90", "p99", "mean")
            }

        added = added_over_grpc("gateway")
        added_httpx = added_over_grpc("gateway_httpx")

        gw_proc, inf_proc = gateway.process, inference.process
        say(f"gateway: {cfg.concurrency} concurrent clients for {cfg.throughput_seconds:g} s")
        through_gateway = _throughput(
            "gateway GET /v1/batches/{id} (asyncio keep-alive client)",
            lambda: asyncio.run(
                _http_load(url, f"/v1/batches/{batch_id}", cfg.concurrency, cfg.throughput_seconds)
            ),
            gw_proc,
            inf_proc,
        )
        direct = _throughput(
            "direct gRPC GetBatch (grpc.aio)",
            lambda: asyncio.run(
                _grpc_load(address, batch_id, cfg.concurrency, cfg.throughput_seconds)
            ),
            gw_proc,
            inf_proc,
        )
        healthz = _throughput(
            "gateway GET /healthz (no upstream call)",
            lambda: asyncio.run(
                _http_load(url, "/healthz", cfg.concurrency, cfg.throughput_seconds)
            ),
            gw_proc,
            inf_proc,
        )

    per_core = through_gateway.get("requests_per_second_per_gateway_core", 0.0)
    return {
        "scenario": "gateway",
        "batch_id": batch_id,
        # The services default to Loomstack's GRPC_EXPERIMENTS (loomstack_kit.grpc_core); the
        # direct client here is a plain grpc client unless the bench's environment sets it.
        "direct_client_grpc_experiments": os.environ.get("GRPC_EXPERIMENTS", ""),
        "warmup_calls": cfg.warmup_calls,
        "latency_calls": cfg.latency_calls,
        "latency": latency,
        "added_latency": added,
        "added_latency_httpx_client": added_httpx,
        "throughput": [through_gateway, direct, healthz],
        "concurrency": cfg.concurrency,
        "load_average_before": load_before,
        "load_average_after_latency": load_after_latency,
        "load_average_after": load_average(),
        "goal_added_p50_ms": ADDED_P50_GOAL_MS,
        "goal_requests_per_second_per_core": PER_CORE_GOAL,
        "meets_latency_goal": added["p50_ms"] <= ADDED_P50_GOAL_MS,
        "meets_throughput_goal": per_core >= PER_CORE_GOAL,
    }


# -- submit ------------------------------------------------------------------------------------

FILLER = (
    "The committee reviewed the quarterly figures, compared them with last year's results, "
    "and asked for a short written summary of every region before the next meeting. "
)


def write_submit_file(path: Path, lines: int, line_bytes: int) -> int:
    """A valid batch input file of ``lines`` lines of about ``line_bytes`` bytes each."""
    with path.open("w", encoding="utf-8") as out:
        for index in range(lines):
            prompt = f"Request {index}: summarise the following notes in one sentence. "
            line: dict[str, Any] = {
                "custom_id": f"submit-{index:06d}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": MODEL_NAME,
                    "messages": [{"role": "user", "content": prompt}],
                    "max_tokens": 16,
                },
            }
            pad = line_bytes - len(json.dumps(line)) - 1
            if pad > 0:
                start = index % len(FILLER)
                text = (FILLER * (pad // len(FILLER) + 2))[start : start + pad]
                line["body"]["messages"][0]["content"] = prompt + text
            out.write(json.dumps(line) + "\n")
    return path.stat().st_size


def _rss_stats(values: list[int]) -> dict[str, float]:
    if not values:
        return {}
    return {
        "min_mib": round(min(values) / MIB, 1),
        "median_mib": round(statistics.median(values) / MIB, 1),
        "max_mib": round(max(values) / MIB, 1),
    }


def scenario_submit(cfg: Config) -> dict[str, Any]:
    """Upload + create of a large batch file, timed, with the services' RSS sampled."""
    with Workdir(cfg, "submit") as work:
        inference, _ = work.inference("api", enforce_eager=True)
        gateway = work.gateway(inference)
        client = openai_client(gateway, timeout=600)
        path = work.path / "submit.jsonl"
        size = write_submit_file(path, cfg.submit_lines, cfg.submit_line_bytes)
        say(f"submit: {cfg.submit_lines} lines, {size / MIB:.1f} MiB: upload + create")
        processes = {"gateway": gateway.process, "inference": inference.process}
        load_before = load_average()
        with RssSampler(processes, interval=0.05) as sampler:
            time.sleep(1.0)
            t_base = time.perf_counter()
            with path.open("rb") as fh:
                uploaded = client.files.create(file=(path.name, fh), purpose="batch")
            t_uploaded = time.perf_counter()
            batch = client.batches.create(
                input_file_id=uploaded.id,
                endpoint="/v1/chat/completions",
                completion_window="24h",
            )
            t_created = time.perf_counter()
            time.sleep(2.0)
            t_end = time.perf_counter()
        load_after = load_average()
        baseline = sampler.between(0.0, t_base)
        during = sampler.between(t_base, t_created)
        after = sampler.between(t_created, t_end)

    upload_seconds = t_uploaded - t_base
    create_seconds = t_created - t_uploaded
    memory: dict[str, Any] = {}
    for name in processes:
        base = statistics.median(baseline[name]) if baseline[name] else 0
        peak = max(during[name] + after[name], default=0)
        memory[name] = {
            "baseline_mib": round(base / MIB, 1),
            "peak_mib": round(peak / MIB, 1),
            "peak_minus_baseline_mib": round((peak - base) / MIB, 1),
            "during": _rss_stats(during[name]),
            "after": _rss_stats(after[name]),
        }
    total = upload_seconds + create_seconds
    growth = max(m["peak_minus_baseline_mib"] for m in memory.values())
    return {
        "scenario": "submit",
        "lines": cfg.submit_lines,
        "file_bytes": size,
        "file_mib": round(size / MIB, 1),
        "file_line_count": uploaded.model_extra.get("line_count") if uploaded.model_extra else None,
        "batch_status": batch.status,
        "batch_total": batch.request_counts.total if batch.request_counts else None,
        "upload_seconds": round(upload_seconds, 2),
        "create_seconds": round(create_seconds, 2),
        "upload_plus_create_seconds": round(total, 2),
        "upload_mib_per_second": round(size / MIB / upload_seconds, 1),
        "memory": memory,
        "rss_samples": len(sampler.samples),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "goal_seconds": SUBMIT_GOAL_SECONDS,
        "meets_time_goal": total <= SUBMIT_GOAL_SECONDS,
        # "Flat": no process grows by more than a quarter of the file it handles (with a floor
        # of 32 MiB, so that a small --quick file does not judge allocator noise).
        "meets_memory_goal": growth < max(size / MIB / 4, 32.0),
    }


def scenario_curation(cfg: Config) -> dict[str, Any]:
    """Curation import and export throughput vs the label-studio-sdk directly, same server."""
    from label_studio_sdk.client import LabelStudio

    from loomstack_curation.annotations import AnnotationStore
    from loomstack_curation.catalog import SchemaCatalog
    from loomstack_curation.importer import Importer, QueuedImport, read_results
    from loomstack_curation.label_config import label_config
    from loomstack_curation.labelstudio_server import LabelStudioServer, executable_in, free_port
    from loomstack_curation.predictions import build_task
    from loomstack_curation.projects import ProjectMap
    from loomstack_curation.reconcile import reconcile
    from loomstack_curation.snapshots import SnapshotFilter, SnapshotStore
    from loomstack_kit.database import create_db_engine, migrate, write_transaction

    n = 1000 if cfg.quick else CURATION_TASKS
    chunk = 500
    categories = ["Billing", "Technical issue", "Account access", "Feature request", "Other"]
    answers = [{"category": categories[i % 5], "urgency": "High"} for i in range(n)]
    prompts = [f"Ticket {i}: order #{i} arrived broken" for i in range(n)]
    inputs = [
        json.dumps(
            {
                "custom_id": f"t{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"messages": [{"role": "user", "content": prompts[i]}]},
            }
        ).encode()
        for i in range(n)
    ]
    outputs = [
        json.dumps(
            {
                "custom_id": f"t{i}",
                "response": {
                    "status_code": 200,
                    "body": {"choices": [{"message": {"content": json.dumps(answers[i])}}]},
                },
                "error": None,
            }
        ).encode()
        for i in range(n)
    ]
    with Workdir(cfg, "curation") as work:
        venv = Path(os.environ.get("LOOMSTACK_LABEL_STUDIO_VENV", REPO / ".cache/labelstudio-venv"))
        server = LabelStudioServer(
            executable=executable_in(venv),
            data_dir=work.path / "labelstudio",
            port=free_port(),
            log_path=cfg.out / "logs" / "curation-labelstudio.log",
        )
        say("curation: starting Label Studio")
        server.start(timeout=600)
        try:
            client = LabelStudio(base_url=server.url, api_key=server.token, timeout=600)
            url = f"sqlite:///{work.path / 'curation.db'}"
            migrate(
                url,
                str(REPO / "services/curation/loomstack_curation/migrations"),
                "alembic_version_curation",
            )
            engine = create_db_engine(url)
            catalog = SchemaCatalog(REPO / "schemas")
            schema = catalog.get("classify_ticket")
            projects = ProjectMap(engine, client, "bench ")
            importer = Importer(engine, catalog, projects, chunk_size=chunk)

            # Direct: the same tasks, built beforehand, bulk-imported with the SDK.
            direct_tasks = [
                build_task(
                    schema,
                    {},
                    answer=json.dumps(answers[i]),
                    prompt=prompts[i],
                    model_version="bench",
                ).task
                for i in range(n)
            ]

            def direct_import() -> tuple[int, float]:
                project = client.projects.create(
                    title=f"bench direct {time.monotonic_ns()}"[:50],
                    label_config=label_config(schema),
                ).id
                assert project is not None
                say(f"curation: direct SDK import of {n} tasks")
                started = time.perf_counter()
                for start in range(0, n, chunk):
                    client.projects.import_tasks(
                        id=project,
                        request=direct_tasks[start : start + chunk],
                        return_task_ids=True,
                    )
                return project, time.perf_counter() - started

            # Direct imports before and after ours: a busy machine shifts both alike.
            direct_project, direct_before = direct_import()

            say(f"curation: importer, {n} result lines → tasks")
            with write_transaction(engine) as conn:
                importer.enqueue(
                    conn,
                    batch_id="batch_bench",
                    project="bench",
                    schema_type="classify_ticket",
                    model="bench",
                    input_file_id="in",
                    output_file_id="out",
                )
            item = QueuedImport("batch_bench", "bench", "classify_ticket", "bench", "in", "out")
            t0 = time.perf_counter()
            status = importer.attempt(item, lambda _i: read_results(inputs, outputs))
            ours_import = time.perf_counter() - t0
            project_id = projects.ensure(schema)
            imported = client.projects.get(id=project_id).task_number
            _, direct_after = direct_import()
            direct_import_seconds = (direct_before + direct_after) / 2

            # Both projects get the same annotations, made in bulk by Label Studio's own
            # "predictions → annotations" action (setup, not timed).
            say(f"curation: annotating {n} tasks in both projects (setup, not timed)")
            for pid in (project_id, direct_project):
                client.actions.create(
                    id="predictions_to_annotations",
                    project=pid,
                    selected_items={"all": True, "excluded": []},  # type: ignore[arg-type]
                )

            say("curation: direct SDK export")
            t0 = time.perf_counter()
            exported = client.projects.exports.as_json(direct_project)
            direct_export = time.perf_counter() - t0

            say("curation: reconcile + snapshot")
            store = AnnotationStore(engine, catalog)
            written: dict[str, int] = {}

            def upload(_project: str, name: str, content: bytes) -> str:
                (work.path / name).write_bytes(content)
                written[name] = content.count(b"\n")
                return name

            t0 = time.perf_counter()
            outcome = reconcile(client, projects, store, page_size=chunk)
            t_reconciled = time.perf_counter()
            snap = SnapshotStore(engine, catalog).create(
                "bench", "bench", SnapshotFilter(), upload=upload
            )
            ours_export = time.perf_counter() - t0
            engine.dispose()
        finally:
            server.stop()

    import_ratio = direct_import_seconds / ours_import
    export_ratio = direct_export / ours_export
    return {
        "scenario": "curation",
        "tasks": n,
        "chunk": chunk,
        "import_status": status,
        "tasks_in_label_studio": imported,
        "direct_import_seconds": round(direct_import_seconds, 2),
        "direct_import_seconds_before_after": [round(direct_before, 2), round(direct_after, 2)],
        "direct_import_tasks_per_second": round(n / direct_import_seconds, 1),
        "import_seconds": round(ours_import, 2),
        "import_tasks_per_second": round(n / ours_import, 1),
        "import_ratio": round(import_ratio, 3),
        "direct_export_seconds": round(direct_export, 2),
        "direct_export_tasks": len(exported),
        "direct_export_tasks_per_second": round(len(exported) / direct_export, 1),
        "reconcile_seconds": round(t_reconciled - t0, 2),
        "reconciled_tasks": outcome.tasks,
        "export_seconds": round(ours_export, 2),
        "export_tasks_per_second": round(snap.training_examples / ours_export, 1),
        "snapshot_examples": snap.training_examples,
        "export_ratio": round(export_ratio, 3),
        "goal": CURATION_GOAL,
        "meets_goal": import_ratio >= CURATION_GOAL and export_ratio >= CURATION_GOAL,
    }


# -- summary -----------------------------------------------------------------------------------


def _verdict(ok: bool | None) -> str:
    if ok is None:
        return "n/a"
    return "**met**" if ok else "**MISSED**"


def _lora_rows(results: dict[str, Any]) -> list[str]:
    """Rows of the raw LoRA variants, the stack's adapter and mixed batches, and the engine
    settings each side ran with."""
    rows: list[str] = []
    raw, raw_lora = results.get("raw"), results.get("raw_lora")
    raw_tps = raw.get("output_tokens_per_second") if isinstance(raw, dict) else None
    if isinstance(raw_lora, dict) and "error" not in raw_lora:
        for variant, what in (
            ("lora_base", "base requests only"),
            ("lora_adapter", "every request on the adapter"),
            ("lora_mixed", "half the requests on the adapter"),
        ):
            r = raw_lora.get(variant)
            if not isinstance(r, dict):
                continue
            vs = f"; {round(r['output_tokens_per_second'] / raw_tps, 3)}× raw" if raw_tps else ""
            rows.append(
                f"| raw_lora | LLM.chat, enable_lora rank {r['max_lora_rank']}, {what} | "
                f"**{r['output_tokens_per_second']} output tok/s** ({r['generate_seconds']} s; "
                f"compilation {r.get('compilation_mode')}{vs}) | |"
            )
    stack = results.get("stack")
    if not isinstance(stack, dict) or "error" in stack:
        return rows
    for key, what in (("adapter", "every line on the adapter"), ("mixed", "base + adapter")):
        r = stack.get(key)
        if not isinstance(r, dict):
            continue
        goal = f"≥ {r['goal_ratio']}× {_verdict(r.get('meets_goal'))}" if "goal_ratio" in r else ""
        rows.append(
            f"| stack | {what} batch{'es at once' if key == 'mixed' else ''} | "
            f"**{r['output_tokens_per_second']} output tok/s** ({r['wall_seconds']} s; ratio to "
            f"raw with LoRA **{r.get('ratio_to_raw_lora', 'n/a')}**; lines ok: {r['ok']}) "
            f"| {goal} |"
        )
    if "adapter_error" in stack:
        rows.append(f"| stack | adapter batches | failed: {stack['adapter_error']} | **MISSED** |")
    if "adapter_served_seconds" in stack:
        rows.append(
            f"| stack | adapter registered → served | {stack['adapter_served_seconds']} s | |"
        )
    parts = []
    for e in stack.get("engine_settings", []):
        lora_text = f"rank {e['max_lora_rank']}" if e["enable_lora"] else "off"
        parts.append(
            f"{e['role']}: {e['compilation_mode']}, LoRA {lora_text}, {e['dtype']}, "
            f"{e.get('max_num_seqs')} seqs / {e.get('max_num_batched_tokens')} tokens a step"
        )
    settings = "; ".join(parts)
    env = stack.get("inference_env", {})
    rows.append(
        f"| stack | engine settings | {settings or 'n/a'} "
        f"(LOOMSTACK_INFERENCE_MAX_LORA_RANK={env.get('LOOMSTACK_INFERENCE_MAX_LORA_RANK', '0')}, "
        f"LORA_ENGINE={env.get('LOOMSTACK_INFERENCE_LORA_ENGINE', 'auto')}) | |"
    )
    return rows


def summary_markdown(cfg: Config, machine: dict[str, Any], results: dict[str, Any]) -> str:
    """The summary table of a run."""
    rows = [
        "# Loomstack benchmarks",
        "",
        f"Run {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, "
        f"`python bench/run_all.py --out {cfg.out}`"
        + (" --quick" if cfg.quick else "")
        + (f" --only {','.join(cfg.only)}" if cfg.only != SCENARIOS else "")
        + (" --profile (numbers perturbed by py-spy)" if cfg.profile else ""),
        "",
        "| machine | |",
        "|---|---|",
        f"| CPU | {machine['cpu_model']} |",
        f"| cores | {machine['logical_cores']} logical ({machine['usable_cores']} usable) |",
        f"| memory | {machine['memory_gib']} GiB |",
        f"| load average at start (1/5/15 min) | {machine['load_average_at_start']} |",
        f"| vLLM | {machine['vllm']} ({machine['torch']}) |",
        f"| Python | {machine['python']} |",
        f"| git | {machine['git']} |",
        "",
        "| scenario | measurement | value | goal |",
        "|---|---|---|---|",
    ]
    raw = results.get("raw")
    if isinstance(raw, dict) and "error" not in raw:
        rows += [
            f"| raw | {raw['requests']} req × {raw['max_tokens']} tok, LLM.chat"
            f"{' (eager)' if raw['enforce_eager'] else ''} | "
            f"**{raw['output_tokens_per_second']} output tok/s** "
            f"({raw['generate_seconds']} s; engine start {raw['engine_start_seconds']} s; "
            f"CPU s front end {raw.get('frontend_cpu_seconds')} / "
            f"engine core {raw.get('engine_core_cpu_seconds')}; "
            f"load {raw['load_average_before'][0]}) | baseline |",
        ]
    stack = results.get("stack")
    if isinstance(stack, dict) and "error" not in stack:
        rows += [
            f"| stack | upload → batch → output, create → completed | "
            f"**{stack['output_tokens_per_second']} output tok/s** "
            f"({stack['wall_seconds_create_to_completed']} s; "
            f"ratio to raw **{stack.get('ratio_to_raw', 'n/a')}**; "
            f"load {stack['load_average_before'][0]}) | ≥ {STACK_GOAL}× "
            f"{_verdict(stack.get('meets_goal'))} |",
            f"| stack | in_progress_at → completed_at | "
            f"{stack['output_tokens_per_second_in_progress_to_completed']} tok/s "
            f"({stack['seconds_in_progress_to_completed']} s; ratio "
            f"{stack.get('ratio_to_raw_in_progress_to_completed', 'n/a')}) | |",
            f"| stack | output check | {stack['verify'].get('output_lines')} lines, "
            f"{stack['verify'].get('lines_with_wrong_completion_tokens')} with wrong "
            f"completion_tokens, {stack['verify'].get('failed_lines')} failed | "
            f"{_verdict(stack['verify'].get('ok'))} |",
            f"| stack | CPU s during the batch | inference process "
            f"{stack['cpu_seconds_inference_process']}, engine core "
            f"{stack['cpu_seconds_engine_core']}, gateway {stack['cpu_seconds_gateway']} "
            f"(engine ready in {stack['inference_ready_seconds']} s) | |",
        ]
    rows += _lora_rows(results)
    gw = results.get("gateway")
    if isinstance(gw, dict) and "error" not in gw:
        lat = gw["latency"]
        through = gw["throughput"][0]
        direct = gw["throughput"][1]
        healthz = gw["throughput"][2]
        rows += [
            f"| gateway | GetBatch p50 / p99, direct gRPC | {lat['grpc']['p50_ms']} / "
            f"{lat['grpc']['p99_ms']} ms ({lat['grpc']['count']} calls; client "
            f"GRPC_EXPERIMENTS={gw.get('direct_client_grpc_experiments') or 'unset'}) | |",
            f"| gateway | GET /v1/batches/{{id}} p50 / p99 via gateway (http.client) | "
            f"{lat['gateway']['p50_ms']} / {lat['gateway']['p99_ms']} ms | |",
            f"| gateway | added p50 / p99 | **{gw['added_latency']['p50_ms']} / "
            f"{gw['added_latency']['p99_ms']} ms** (GET /healthz alone: "
            f"{lat['healthz']['p50_ms']} / {lat['healthz']['p99_ms']} ms; "
            f"load {gw['load_average_before'][0]}) | p50 ≤ {ADDED_P50_GOAL_MS} ms "
            f"{_verdict(gw['meets_latency_goal'])} |",
            f"| gateway | the same timed with httpx (client included) | added p50 / p99 "
            f"{gw['added_latency_httpx_client']['p50_ms']} / "
            f"{gw['added_latency_httpx_client']['p99_ms']} ms (GET /healthz alone: "
            f"{lat['healthz_httpx']['p50_ms']} ms) | |",
            f"| gateway | {gw['concurrency']} concurrent, GET batch | "
            f"{through['requests_per_second']} req/s; gateway "
            f"{through.get('gateway_cores_used')} cores → "
            f"**{through.get('requests_per_second_per_gateway_core')} req/s per core** "
            f"(inference {through.get('inference_cpu_ms_per_request')} ms CPU/req; "
            f"load {through['load_average_before'][0]}) | ≥ {PER_CORE_GOAL:g}/core "
            f"{_verdict(gw['meets_throughput_goal'])} |",
            f"| gateway | {gw['concurrency']} concurrent, direct gRPC | "
            f"{direct['requests_per_second']} req/s (inference "
            f"{direct.get('inference_cpu_ms_per_request')} ms CPU/req) | |",
            f"| gateway | {gw['concurrency']} concurrent, GET /healthz | "
            f"{healthz['requests_per_second']} req/s, "
            f"{healthz.get('requests_per_second_per_gateway_core')} per gateway core | |",
        ]
    sub = results.get("submit")
    if isinstance(sub, dict) and "error" not in sub:
        mem = sub["memory"]
        rows += [
            f"| submit | {sub['lines']} lines, {sub['file_mib']} MiB: upload + create | "
            f"**{sub['upload_plus_create_seconds']} s** (upload {sub['upload_seconds']} s, "
            f"create {sub['create_seconds']} s; load {sub['load_average_before'][0]}) | "
            f"≤ {SUBMIT_GOAL_SECONDS:g} s {_verdict(sub['meets_time_goal'])} |",
            f"| submit | RSS baseline → peak | gateway {mem['gateway']['baseline_mib']} → "
            f"{mem['gateway']['peak_mib']} MiB (+{mem['gateway']['peak_minus_baseline_mib']}), "
            f"inference {mem['inference']['baseline_mib']} → {mem['inference']['peak_mib']} "
            f"MiB (+{mem['inference']['peak_minus_baseline_mib']}) | flat "
            f"{_verdict(sub['meets_memory_goal'])} |",
        ]
    cur = results.get("curation")
    if isinstance(cur, dict) and "error" not in cur:
        rows += [
            f"| curation | import {cur['tasks']} results → Label Studio tasks | "
            f"**{cur['import_tasks_per_second']} tasks/s** vs SDK bulk import "
            f"{cur['direct_import_tasks_per_second']} tasks/s: ratio **{cur['import_ratio']}** | "
            f"≥ {CURATION_GOAL}× |",
            f"| curation | export {cur['snapshot_examples']} annotated tasks (reconcile + "
            f"snapshot) | **{cur['export_tasks_per_second']} tasks/s** vs SDK export "
            f"{cur['direct_export_tasks_per_second']} tasks/s: ratio **{cur['export_ratio']}** | "
            f"≥ {CURATION_GOAL}× {_verdict(cur['meets_goal'])} |",
        ]
    tr = results.get("training")
    if isinstance(tr, dict) and "error" not in tr:
        rows += [
            f"| training | Unsloth LoRA, {tr['direct']['steps']} steps of "
            f"{tr['hyperparameters']['batch_size']} | **{tr['service']['tokens_per_second']:.1f} "
            f"tokens/s** through the service vs {tr['direct']['tokens_per_second']:.1f} direct: "
            f"ratio **{tr['service_vs_direct_tokens_per_second']:.2f}** (medians of "
            f"{tr.get('rounds', 1)} alternating runs; per round "
            f"{', '.join(f'{r:.2f}' for r in tr.get('per_round_ratios', []))}) | ≥ 0.95× |",
            f"| training | jobs.create → first step | "
            f"**{tr['service']['seconds_create_to_first_step']:.1f} s** (direct script start → "
            f"first step {tr['direct']['seconds_to_first_step']:.1f} s) | |",
        ]
    for name, result in results.items():
        if isinstance(result, dict) and "error" in result:
            rows.append(f"| {name} | failed | `{result['error'][:200]}` | |")
    rows += ["", f"Load average at the end: {load_average()}.", ""]
    return "\n".join(rows)


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> Config:
    """The command line → Config (``--quick`` shrinks every default)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for the results")
    parser.add_argument("--requests", type=int, default=None, help="chat requests (1000)")
    parser.add_argument("--max-tokens", type=int, default=None, help="output tokens each (64)")
    parser.add_argument(
        "--only", default=",".join(SCENARIOS), help=f"comma-separated subset of {SCENARIOS}"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 64 requests × 16 tokens, enforce_eager, fewer calls, 5,000-line submit",
    )
    parser.add_argument("--latency-calls", type=int, default=None, help="sequential calls (2000)")
    parser.add_argument("--throughput-seconds", type=float, default=None, help="load time (10)")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent clients (32)")
    parser.add_argument("--submit-lines", type=int, default=None, help="lines (50000)")
    parser.add_argument("--submit-line-bytes", type=int, default=2000, help="bytes per line")
    parser.add_argument(
        "--enforce-eager", action="store_true", help="no graph compilation (default with --quick)"
    )
    parser.add_argument(
        "--profile", action="store_true", help="py-spy the inference process during the batch"
    )
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or "py-spy", help="binary")
    parser.add_argument("--keep-workdirs", action="store_true", help="keep the services' dirs")
    parser.add_argument(
        "--no-lora",
        action="store_true",
        help="stack: only the base batch (no adapter and mixed batches on the stack)",
    )
    args = parser.parse_args(argv)
    only = tuple(s.strip() for s in args.only.split(",") if s.strip())
    unknown = set(only) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}; choose from {SCENARIOS}")
    quick = args.quick

    def pick(value: Any, full: Any, small: Any) -> Any:
        return value if value is not None else (small if quick else full)

    return Config(
        out=args.out,
        only=tuple(s for s in SCENARIOS if s in only),
        requests=pick(args.requests, 1000, 64),
        max_tokens=pick(args.max_tokens, 64, 16),
        enforce_eager=args.enforce_eager or quick,
        warmup_calls=50 if quick else 200,
        latency_calls=pick(args.latency_calls, 2000, 300),
        concurrency=args.concurrency,
        throughput_seconds=pick(args.throughput_seconds, 10.0, 3.0),
        submit_lines=pick(args.submit_lines, 50_000, 5_000),
        submit_line_bytes=args.submit_line_bytes,
        quick=quick,
        profile=args.profile,
        py_spy=args.py_spy,
        keep_workdirs=args.keep_workdirs,
        lora=not args.no_lora,
    )


def main(argv: list[str] | None = None) -> int:
    """Runs the chosen scenarios, writes their JSON and summary.md, prints the summary."""
    cfg = parse_args(argv)
    if not (MODEL_PATH / "config.json").is_file():
        raise SystemExit(f"{MODEL_PATH} is not a model directory (run `make model`)")
    cfg.out.mkdir(parents=True, exist_ok=True)
    (cfg.out / "logs").mkdir(exist_ok=True)
    machine = machine_info()
    say(f"machine: {machine['cpu_model']}, {machine['logical_cores']} cores, {machine['vllm']}")
    (cfg.out / "machine.json").write_text(json.dumps(machine, indent=2) + "\n")
    config = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}
    results: dict[str, Any] = {}
    failed = False
    for name in cfg.only:
        try:
            if name == "raw":
                result = scenario_raw(cfg)
                result["_this_run"] = True
            elif name == "raw_lora":
                result = scenario_raw_lora(cfg)
            elif name == "stack":
                raw = results.get("raw")
                if not (isinstance(raw, dict) and "output_tokens_per_second" in raw):
                    previous = cfg.out / "raw.json"
                    raw = json.loads(previous.read_text()) if previous.exists() else None
                    if raw is not None:
                        raw["_this_run"] = False
                raw_lora = results.get("raw_lora")
                if not isinstance(raw_lora, dict) or "error" in raw_lora:
                    previous = cfg.out / "raw_lora.json"
                    raw_lora = json.loads(previous.read_text()) if previous.exists() else None
                result = scenario_stack(cfg, raw, raw_lora)
            elif name == "gateway":
                result = scenario_gateway(cfg)
            elif name == "curation":
                result = scenario_curation(cfg)
            elif name == "training":
                from training import scenario_training

                result = scenario_training(cfg.out)
            else:
                result = scenario_submit(cfg)
        except Exception as exc:
            failed = True
            say(f"{name} failed: {exc!r}")
            result = {"scenario": name, "error": f"{type(exc).__name__}: {exc}"}
        result["machine"] = machine
        result["config"] = config
        results[name] = result
        write_json(cfg, name, {k: v for k, v in result.items() if k != "_this_run"})
    summary = summary_markdown(cfg, machine, results)
    (cfg.out / "summary.md").write_text(summary, encoding="utf-8")
    print(summary)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
