"""Fine-tuned models in the benchmarks: the raw engine with LoRA, and batches on adapters.

The stack scenario runs the engine as ``make up`` starts it (LoRA up to rank 16), so a gap
between an engine that can serve adapters and one that cannot never hides behind a differently
configured stack. This module adds what concerns adapters:

* the raw side with ``enable_lora`` (``bench/raw_engine.py --max-lora-rank``): base requests
  only, every request on an adapter, and half of them on it;
* on the running stack: an adapter that changes nothing (``write_blank_adapter``: the same LoRA
  kernels and cost as a trained one) registered like a fine-tuned model, a batch whose every
  line names it, and a base batch and an adapter batch at once (a batch runs one model, as in
  OpenAI's API, so "mixed" is two batches sharing the engine);
* the engine settings each side ran with, read from the engine's ``engine settings`` log lines.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import grpc
from harness import MODEL_NAME, MODEL_PATH, PROJECT, Service, signer
from openai import OpenAI
from workload import make_chat_requests, write_jsonl

from loomstack.inference.v1 import models_pb2, models_pb2_grpc
from loomstack_inference.blank_adapter import write_blank_adapter

# What `make up` starts (cli/loomstack_cli/local_stack.py: LOCAL_MAX_LORA_RANK).
STACK_LORA_RANK = 16
ADAPTER_NAME = f"ft:{MODEL_NAME}:bench:blank"
ADAPTER_GOAL = 0.9
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})


def raw_variants(adapter_dir: Path) -> dict[str, list[str]]:
    """`raw_engine.py` arguments of each raw LoRA variant."""
    lora = ["--max-lora-rank", str(STACK_LORA_RANK)]
    return {
        "lora_base": lora,
        "lora_adapter": [*lora, "--adapter", str(adapter_dir)],
        "lora_mixed": [*lora, "--adapter", str(adapter_dir), "--adapter-share", "0.5"],
    }


def blank_adapter(directory: Path) -> Path:
    """The benchmark's adapter (rank 16 on the trainer's default target modules)."""
    if not (directory / "adapter_config.json").exists():
        write_blank_adapter(MODEL_PATH, directory, rank=STACK_LORA_RANK)
    return directory


def register_adapter(inference: Service, source: Path, timeout: float = 600) -> float:
    """Registers the adapter as the benchmark project's fine-tuned model and waits until an
    engine serves it (a separate LoRA engine starts first); returns the seconds that took."""
    started = time.perf_counter()
    identity = signer()
    with grpc.insecure_channel(f"127.0.0.1:{inference.port}") as channel:
        stub = models_pb2_grpc.ModelServiceStub(channel)
        stub.CreateModel(
            models_pb2.CreateModelRequest(
                model_id=ADAPTER_NAME, parent=MODEL_NAME, source=str(source)
            ),
            metadata=identity.metadata(PROJECT),
            timeout=30,
        )
        while True:
            model = stub.GetModel(
                models_pb2.GetModelRequest(model_id=ADAPTER_NAME),
                metadata=identity.metadata(PROJECT),
                timeout=30,
            )
            if model.ready_engines > 0:
                return time.perf_counter() - started
            inference.check_alive()
            if time.perf_counter() - started > timeout:
                raise TimeoutError(f"no engine served {ADAPTER_NAME} within {timeout:.0f} s")
            time.sleep(0.5)


def run_batches(
    client: OpenAI,
    workdir: Path,
    plan: dict[str, str],
    requests: int,
    max_tokens: int,
    inference: Service,
    poll_seconds: float = 0.2,
) -> dict[str, Any]:
    """Creates one batch per entry of `plan` (name → model) at once, each of `requests` lines,
    and waits for all; the output tokens of all of them over the wall time from the first
    create to the last completion."""
    created: dict[str, Any] = {}
    for name, model in plan.items():
        path = workdir / f"{name}.jsonl"
        lines = make_chat_requests(requests, max_tokens, MODEL_NAME)
        for line in lines:
            line["body"]["model"] = model
        write_jsonl(lines, path)
        created[name] = client.files.create(file=(path.name, path.read_bytes()), purpose="batch")
    t0 = time.perf_counter()
    batches = {
        name: client.batches.create(
            input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        for name, upload in created.items()
    }
    done: dict[str, float] = {}
    while len(done) < len(batches):
        time.sleep(poll_seconds)
        inference.check_alive()
        for name, batch in batches.items():
            if name in done:
                continue
            batches[name] = client.batches.retrieve(batch.id)
            if batches[name].status in TERMINAL:
                done[name] = time.perf_counter() - t0
        if time.perf_counter() - t0 > 3600:
            raise TimeoutError(f"batches not done in an hour: {batches}")
    wall = max(done.values())
    result: dict[str, Any] = {"wall_seconds": round(wall, 2), "batches": {}}
    tokens = 0
    for name, batch in batches.items():
        verify = verify_output(client, batch, requests, max_tokens)
        tokens += verify.get("output_tokens", 0)
        result["batches"][name] = {
            "model": plan[name],
            "status": batch.status,
            "seconds": round(done[name], 2),
            "verify": verify,
        }
    result["output_tokens"] = tokens
    result["output_tokens_per_second"] = round(tokens / wall, 1) if wall else None
    result["ok"] = all(b["verify"].get("ok") for b in result["batches"].values())
    return result


def verify_output(client: OpenAI, batch: Any, requests: int, max_tokens: int) -> dict[str, Any]:
    """Every line answered once with `max_tokens` tokens."""
    if not batch.output_file_id:
        return {"ok": False, "output_lines": 0, "failed_lines": requests}
    lines = [json.loads(x) for x in client.files.content(batch.output_file_id).content.splitlines()]
    ids = {line["custom_id"] for line in lines}
    wrong = sum(
        1 for line in lines if line["response"]["body"]["usage"]["completion_tokens"] != max_tokens
    )
    tokens = sum(line["response"]["body"]["usage"]["completion_tokens"] for line in lines)
    failed = batch.request_counts.failed if batch.request_counts else None
    return {
        "ok": len(lines) == requests == len(ids) and wrong == 0 and not failed,
        "output_lines": len(lines),
        "lines_with_wrong_completion_tokens": wrong,
        "failed_lines": failed,
        "output_tokens": tokens,
    }


def engine_settings(log_path: Path) -> list[dict[str, Any]]:
    """The `engine settings` lines the inference service logged (one per vLLM engine)."""
    found = []
    if not log_path.exists():
        return found
    for line in log_path.read_text(errors="replace").splitlines():
        if '"engine settings"' not in line:
            continue
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        found.append(
            {
                k: doc.get(k)
                for k in (
                    "role",
                    "compilation_mode",
                    "enable_lora",
                    "max_lora_rank",
                    "dtype",
                    "max_num_seqs",
                    "max_num_batched_tokens",
                )
            }
        )
    return found
