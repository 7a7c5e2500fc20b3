"""Raw-engine baseline: the benchmark workload straight through vLLM's ``LLM.chat``, in-process.

This is the ceiling the full stack is measured against: no API, no queue, no batch files, just
the engine. It runs the requests from ``bench/workload.py`` (the same ones the full-stack
benchmark submits) and reports engine start and generation time separately::

    python bench/raw_engine.py --model .cache/models/SmolLM2-135M-Instruct \\
        --requests 1000 --max-tokens 64 --json-out raw.json

``--enforce-eager`` skips graph compilation: it starts faster but generates more slowly, so use it
for smoke runs, not for numbers. ``VLLM_CPU_KVCACHE_SPACE`` (GiB) defaults to 4.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from workload import make_chat_requests

from loomstack_inference.engine import preferred_dtype

DEFAULT_KVCACHE_GIB = "4"


def _cpu_split() -> tuple[float, float]:
    """CPU seconds (user + system) of this process and of its live descendants."""
    import psutil

    me = psutil.Process()
    own = me.cpu_times()
    children = 0.0
    for child in me.children(recursive=True):
        try:
            times = child.cpu_times()
        except psutil.Error:
            continue
        children += times.user + times.system
    return own.user + own.system, children


def run(
    model: Path,
    requests: int,
    max_tokens: int,
    enforce_eager: bool,
    *,
    max_lora_rank: int = 0,
    adapter: Path | None = None,
    adapter_share: float = 1.0,
) -> dict[str, Any]:
    """Start an engine on ``model``, run the workload, and return the measurements.

    ``max_lora_rank`` > 0 starts the engine with ``enable_lora`` (as an engine that can serve
    fine-tuned models); ``adapter`` then sends ``adapter_share`` of the requests (every k-th)
    with a ``LoRARequest`` for that adapter directory, the rest to the base model."""
    # vLLM reads its environment when it is imported, so set the default first.
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", DEFAULT_KVCACHE_GIB)
    import vllm
    from vllm import LLM, SamplingParams

    lines = make_chat_requests(requests, max_tokens, model=model.name)
    conversations = [line["body"]["messages"] for line in lines]
    sampling = SamplingParams(max_tokens=max_tokens, ignore_eos=True, temperature=0)

    started = time.perf_counter()
    # The same dtype choice as the service (float32 on a CPU without bf16 instructions).
    dtype = preferred_dtype()
    lora_args: dict[str, Any] = (
        {"enable_lora": True, "max_lora_rank": max_lora_rank, "max_loras": 4}
        if max_lora_rank
        else {}
    )
    llm = LLM(model=str(model), enforce_eager=enforce_eager, dtype=dtype, **lora_args)
    engine_start_seconds = time.perf_counter() - started
    lora_request: Any = None
    if adapter is not None:
        from vllm.lora.request import LoRARequest

        every = max(1, round(1 / adapter_share)) if adapter_share > 0 else 0
        one = LoRARequest("bench-adapter", 1, str(adapter))
        lora_request = [one if every and i % every == 0 else None for i in range(len(lines))]

    cpu_before = _cpu_split()
    started = time.perf_counter()
    outputs = llm.chat(conversations, sampling, use_tqdm=False, lora_request=lora_request)
    generate_seconds = time.perf_counter() - started
    cpu_after = _cpu_split()

    scheduler = llm.llm_engine.vllm_config.scheduler_config
    prompt_tokens = sum(len(out.prompt_token_ids or ()) for out in outputs)
    output_tokens = sum(len(out.outputs[0].token_ids) for out in outputs)
    short = sum(1 for out in outputs if len(out.outputs[0].token_ids) != max_tokens)
    return {
        "requests": len(outputs),
        "output_tokens": output_tokens,
        "prompt_tokens": prompt_tokens,
        "engine_start_seconds": round(engine_start_seconds, 3),
        "generate_seconds": round(generate_seconds, 3),
        "output_tokens_per_second": round(output_tokens / generate_seconds, 1),
        "requests_per_second": round(len(outputs) / generate_seconds, 2),
        "requests_short_of_max_tokens": short,
        # CPU seconds spent during generation by this process (vLLM's front end: chat template,
        # tokenizing, detokenizing) and by its children (the engine core: scheduling, forward).
        "frontend_cpu_seconds": round(cpu_after[0] - cpu_before[0], 2),
        "engine_core_cpu_seconds": round(cpu_after[1] - cpu_before[1], 2),
        "max_tokens": max_tokens,
        "model": str(model),
        "enforce_eager": enforce_eager,
        "max_lora_rank": max_lora_rank,
        "adapter_requests": sum(1 for r in lora_request or () if r is not None),
        "max_num_seqs": scheduler.max_num_seqs,
        "max_num_batched_tokens": scheduler.max_num_batched_tokens,
        "compilation_mode": getattr(
            llm.llm_engine.vllm_config.compilation_config.mode, "name", "?"
        ),
        "dtype": str(llm.llm_engine.model_config.dtype),
        "kv_cache_gib": float(os.environ["VLLM_CPU_KVCACHE_SPACE"]),
        "vllm_version": vllm.__version__,
        "sample_output": outputs[0].outputs[0].text if outputs else "",
    }


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description="Raw vLLM LLM.chat baseline for the benchmarks.")
    parser.add_argument("--model", type=Path, required=True, help="model directory")
    parser.add_argument("--requests", type=int, default=1000, help="number of chat requests")
    parser.add_argument("--max-tokens", type=int, default=64, help="output tokens per request")
    parser.add_argument("--json-out", type=Path, default=None, help="write the results here")
    parser.add_argument(
        "--enforce-eager",
        action="store_true",
        help="skip graph compilation (faster start, slower generation; not for benchmarks)",
    )
    parser.add_argument(
        "--max-lora-rank", type=int, default=0, help="> 0: an engine with enable_lora"
    )
    parser.add_argument("--adapter", type=Path, default=None, help="a LoRA adapter directory")
    parser.add_argument(
        "--adapter-share", type=float, default=1.0, help="share of the requests on the adapter"
    )
    args = parser.parse_args(argv)
    if not (args.model / "config.json").is_file():
        parser.error(f"{args.model} is not a model directory (run scripts/prepare_model.py)")
    if args.requests < 1:
        parser.error("--requests must be >= 1")

    if args.adapter is not None and not args.max_lora_rank:
        parser.error("--adapter needs --max-lora-rank")
    result = run(
        args.model.resolve(),
        args.requests,
        args.max_tokens,
        args.enforce_eager,
        max_lora_rank=args.max_lora_rank,
        adapter=args.adapter.resolve() if args.adapter else None,
        adapter_share=args.adapter_share,
    )
    text = json.dumps(result, indent=2)
    print(text)
    if args.json_out is not None:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
