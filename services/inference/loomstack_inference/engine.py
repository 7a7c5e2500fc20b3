"""The vLLM engine: one base model on `AsyncLLM`, driven through vLLM's own OpenAI serving layer.

Every batch line and every online request goes through `OpenAIServingChat` exactly as
`vllm run-batch` and `vllm serve` do, so the model's chat template, every sampling parameter,
`response_format`, `n`, `stop`, `seed` and `logprobs` apply. vLLM is imported lazily: the api
role never needs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shlex
import time
from collections.abc import AsyncIterator
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import orjson

from . import engine_processes
from .ids import new_id

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LineOutcome:
    """The output-file line of one request and its token counts."""

    ok: bool
    line_json: str
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0


class EngineRequestError(Exception):
    """vLLM rejected a request (status code and OpenAI error object attached)."""

    def __init__(self, status_code: int, error: dict[str, Any]) -> None:
        super().__init__(error.get("message", "request failed"))
        self.status_code = status_code
        self.error = error


def splittable(line: str) -> str:
    """The JSON line with U+2028, U+2029 and U+0085 escaped.

    JSON allows them raw inside strings, and orjson and pydantic write them raw, but Python's
    `str.splitlines()` (and JavaScript before ES2019) break lines there: a model's answer
    containing one would split an output line in two for such readers. Escaped, the line means
    the same and breaks only at its newline.
    """
    if "\u2028" in line or "\u2029" in line or "\x85" in line:
        line = line.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
        line = line.replace("\x85", "\\u0085")
    return line


def _error_line(custom_id: str, status_code: int, error: dict[str, Any]) -> str:
    text = orjson.dumps(
        {
            "id": new_id("batch_req_"),
            "custom_id": custom_id,
            "response": {
                "status_code": status_code,
                "request_id": new_id("req_"),
                "body": {"error": error},
            },
            "error": {
                "code": error.get("code") or "request_failed",
                "message": error.get("message"),
            },
        }
    ).decode()
    return splittable(text)


def preferred_dtype(requested: str = "auto") -> str:
    """The dtype to hand vLLM: ``requested`` unless it is 'auto' on a CPU without bf16.

    On a CPU with neither AVX512-BF16 nor AMX, oneDNN cannot build a bf16 matmul and vLLM falls
    back to an emulated one: measured on a 2-core AVX2 EPYC, SmolLM2-135M in bf16 is more than
    5x slower than in float32. A GPU, or a CPU with bf16 instructions, keeps the model's dtype.
    """
    if requested != "auto":
        return requested
    import torch

    if torch.cuda.is_available():
        return "auto"
    cpu = torch.cpu
    if cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported():
        return "auto"
    return "float32"


def memory_args(extra_args: list[str], cpu_memory_fraction: float) -> list[str]:
    """`--gpu-memory-utilization` for a CPU engine, unless the engine arguments set it.

    On the CPU backend that flag is the share of the machine's memory vLLM reserves for the
    KV cache, and vLLM refuses to start when that much is not free: its default (0.92) fails as
    soon as anything else on the machine (Label Studio, a trainer, a test run) holds a few GiB.
    On a GPU the flag keeps its meaning and vLLM's default.
    """
    import torch

    given = any(a.startswith("--gpu-memory-utilization") for a in extra_args)
    if given or torch.cuda.is_available():
        return []
    return ["--gpu-memory-utilization", str(cpu_memory_fraction)]


def lora_disables_compilation() -> bool:
    """Whether vLLM runs an engine with LoRA enabled without graph compilation on this machine.

    vLLM's CPU platform sets `CompilationMode.NONE` whenever a LoRA config is present
    (`vllm/platforms/cpu.py`): every request of such an engine, base-model ones included, runs
    uncompiled. CUDA compiles and captures graphs with LoRA enabled (the LoRA kernels have
    cudagraph-safe variants), so one engine serves both there.
    """
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


@dataclass
class _Backend:
    """One vLLM engine (`AsyncLLM` in its engine-core process) with vLLM's chat serving layer."""

    lora: bool
    client: Any = None
    chat: Any = None
    serving_models: Any = None
    shutdown_timeout: float | None = None
    starter: Executor | None = None

    async def start(self, argv: list[str], starter: Executor | None = None) -> None:
        """Starts the engine; with `starter`, vLLM's blocking start (config, spawning the
        engine core, loading the model, the warm-up: a minute on CPU) runs in that thread, so
        the service keeps answering meanwhile (a LoRA engine starting beside a serving one)."""
        from starlette.datastructures import State
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.entrypoints.launchers.api_server.app_state import init_app_state
        from vllm.entrypoints.launchers.run_batch import make_arg_parser
        from vllm.utils.argparse_utils import FlexibleArgumentParser

        args = make_arg_parser(FlexibleArgumentParser()).parse_args(argv)
        engine_args = AsyncEngineArgs.from_cli_args(args)
        # Its engine-core and worker processes die with this process (engine_processes.py).
        engine_processes.mark_owner()
        if starter is None:
            self.client = self._create(engine_args)
        else:
            loop = asyncio.get_running_loop()
            self.client = await loop.run_in_executor(starter, self._create, engine_args)
            self.starter = starter
        await self.client.reset_mm_cache()
        state = State()
        await init_app_state(self.client, state, args, await self.client.get_supported_tasks())
        self.chat = state.openai_serving_chat
        self.serving_models = state.openai_serving_models

    def _create(self, engine_args: Any) -> Any:
        """vLLM's `AsyncLLM`, as its API server builds one (`build_async_engine_client`)."""
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.async_llm import AsyncLLM

        # vLLM sizes its scheduler by usage context: only LLM_CLASS gets the offline batch
        # sizes (on CPU 256 sequences / 4,096 tokens a step, against 128 / 2,048 for every
        # other context); an engine that runs batches wants those, as `LLM.chat` has them. The
        # context changes nothing else but usage statistics. engine_args may set both.
        config = engine_args.create_engine_config(usage_context=UsageContext.LLM_CLASS)
        self.shutdown_timeout = config.shutdown_timeout
        return AsyncLLM.from_vllm_config(
            vllm_config=config,
            usage_context=UsageContext.LLM_CLASS,
            enable_log_requests=engine_args.enable_log_requests,
            aggregate_engine_logging=engine_args.aggregate_engine_logging,
            disable_log_stats=engine_args.disable_log_stats,
        )

    async def close(self) -> None:
        if self.client is not None:
            client, self.client = self.client, None
            if self.starter is None:
                client.shutdown(timeout=self.shutdown_timeout)
            else:
                await asyncio.get_running_loop().run_in_executor(
                    self.starter, lambda: client.shutdown(timeout=self.shutdown_timeout)
                )


class VllmEngine:
    """One base model served by vLLM, and its LoRA adapters.

    Where vLLM compiles an engine only without LoRA (`lora_disables_compilation`: the CPU
    backend), adapters get an engine of their own (`lora_engine="separate"`): the base model's
    requests keep the compiled engine, and a LoRA-enabled one starts in the background when the
    first adapter of the model is registered (an adapter is served, and advertised, once it is
    up) and stops after `lora_idle_seconds` without any adapter. Measured on a 2-core CPU, the
    base model on a LoRA-enabled engine ran at about a third of the compiled engine's speed.
    Elsewhere one engine serves both (`shared`).
    """

    def __init__(
        self,
        *,
        model_path: str,
        served_name: str,
        max_model_len: int,
        enforce_eager: bool,
        dtype: str = "auto",
        extra_args: str = "",
        max_lora_rank: int = 0,
        max_loras: int = 4,
        cpu_memory_fraction: float = 0.15,
        lora_engine: str = "auto",
        lora_idle_seconds: float = 300.0,
    ) -> None:
        if lora_engine not in ("auto", "shared", "separate"):
            raise ValueError(f"lora_engine must be auto, shared or separate, got {lora_engine!r}")
        self.model_path = model_path
        self.served_name = served_name
        self.max_model_len = max_model_len
        self.enforce_eager = enforce_eager
        self.dtype = dtype
        self.extra_args = extra_args
        self.max_lora_rank = max_lora_rank
        self.max_loras = max_loras
        self.cpu_memory_fraction = cpu_memory_fraction
        self.lora_engine = lora_engine
        self.lora_idle_seconds = lora_idle_seconds
        # Adapters of this base model from the registry (name → directory); the runner keeps
        # it current, and each is loaded into vLLM the first time a request names it.
        self.adapters: dict[str, str] = {}
        self._loaded: dict[str, str] = {}  # adapters loaded into vLLM: name → directory
        self._base = _Backend(lora=False)
        self._lora: _Backend | None = None  # the backend that serves adapters, once up
        self._lora_start: asyncio.Task[None] | None = None
        self._lora_stop: asyncio.Task[None] | None = None
        # The LoRA engine starts and stops in this thread while the base engine serves. One
        # thread for the process's life: the engine core's parent-death signal
        # (engine_processes.py) follows the thread that spawned it, so that thread must not end.
        self._lora_starter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lora-engine")
        self._no_adapters_since: float | None = None

    # -- configuration -------------------------------------------------------------------------

    @property
    def lora_enabled(self) -> bool:
        """Whether this engine serves LoRA adapters."""
        return self.max_lora_rank > 0

    @property
    def separate_lora(self) -> bool:
        """Whether adapters run on an engine of their own (see the class docstring)."""
        if not self.lora_enabled or self.lora_engine == "shared":
            return False
        if self.lora_engine == "separate":
            return True
        # Without compilation (enforce_eager) nothing is lost by sharing: one engine is cheaper.
        return not self.enforce_eager and lora_disables_compilation()

    def _argv(self, *, lora: bool) -> list[str]:
        extra = shlex.split(self.extra_args)
        return [
            "-i",
            "unused",
            "-o",
            "unused",
            "--model",
            self.model_path,
            "--served-model-name",
            self.served_name,
            "--max-model-len",
            str(self.max_model_len),
            "--disable-log-stats",
            "--dtype",
            preferred_dtype(self.dtype),
            *(["--enforce-eager"] if self.enforce_eager else []),
            *(
                [
                    "--enable-lora",
                    "--max-lora-rank",
                    str(self.max_lora_rank),
                    "--max-loras",
                    str(self.max_loras),
                ]
                if lora
                else []
            ),
            *memory_args(extra, self.cpu_memory_fraction),
            *extra,
        ]

    def max_num_seqs(self) -> int:
        """How many sequences the base engine's scheduler runs at once (after start)."""
        return int(self._base.client.vllm_config.scheduler_config.max_num_seqs)

    def _log_settings(self, role: str, backend: _Backend) -> None:
        """One `engine settings` line per vLLM engine: what it really runs with (the benchmarks
        report it, so two differently configured sides never compare unnoticed)."""
        config = backend.client.vllm_config
        log.info(
            "engine settings",
            extra={
                "model": self.served_name,
                "role": role,
                "compilation_mode": getattr(config.compilation_config.mode, "name", "?"),
                "enable_lora": config.lora_config is not None,
                "max_lora_rank": self.max_lora_rank if backend.lora else 0,
                "dtype": str(config.model_config.dtype),
                "enforce_eager": bool(config.model_config.enforce_eager),
                "max_num_seqs": config.scheduler_config.max_num_seqs,
                "max_num_batched_tokens": config.scheduler_config.max_num_batched_tokens,
            },
        )

    # -- life cycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Loads the model (tens of seconds on CPU) and builds the serving layer."""
        shared = self.lora_enabled and not self.separate_lora
        self._base = _Backend(lora=shared)
        await self._base.start(self._argv(lora=shared))
        if shared:
            self._lora = self._base
        self._log_settings("base+lora" if shared else "base", self._base)
        log.info(
            "vLLM engine ready",
            extra={
                "model": self.served_name,
                "dtype": str(self._base.client.model_config.dtype),
                "lora": "separate" if self.separate_lora else ("shared" if shared else "off"),
            },
        )

    async def _start_lora(self) -> None:
        backend = _Backend(lora=True)
        try:
            await backend.start(self._argv(lora=True), self._lora_starter)
        except Exception:
            log.exception("the LoRA engine failed to start")
            with contextlib.suppress(Exception):
                await backend.close()
            return
        self._loaded.clear()
        self._lora = backend
        self._log_settings("lora", backend)
        log.info("LoRA engine ready", extra={"model": self.served_name})

    async def close(self) -> None:
        """Shuts the engines (and their engine-core processes) down."""
        if self._lora_start is not None:
            self._lora_start.cancel()
            with contextlib.suppress(BaseException):
                await self._lora_start
        if self._lora_stop is not None:
            with contextlib.suppress(BaseException):
                await self._lora_stop
        if self._lora is not None and self._lora is not self._base:
            await self._lora.close()
        self._lora = None
        await self._base.close()

    # -- adapters ------------------------------------------------------------------------------

    def serves(self, model: str) -> bool:
        """The base model, or one of its registered adapters once an engine can run it."""
        return model == self.served_name or (model in self.adapters and self._lora is not None)

    def servable(self, adapters: dict[str, str]) -> list[str]:
        """The adapters of `adapters` this engine can run now (what it advertises)."""
        return sorted(adapters) if self._lora is not None else []

    async def _ensure_adapter(self, name: str) -> None:
        """Loads a registered adapter into vLLM once; its `LoRARequest` then applies per request."""
        from vllm.entrypoints.serve.lora.protocol import LoadLoRAAdapterRequest

        assert self._lora is not None
        models = self._lora.serving_models
        if name in models.lora_requests and self._loaded.get(name) == self.adapters[name]:
            return
        result = await models.load_lora_adapter(
            LoadLoRAAdapterRequest(lora_name=name, lora_path=self.adapters[name]),
            base_model_name=self.served_name,
        )
        if not isinstance(result, str) and name not in models.lora_requests:
            raise EngineRequestError(*self._error_of(result))
        self._loaded[name] = self.adapters[name]
        log.info("LoRA adapter loaded", extra={"model": name, "path": self.adapters[name]})

    async def set_adapters(self, adapters: dict[str, str]) -> None:
        """The adapters to serve (name → directory); unloads the ones deleted or replaced, and
        with a separate LoRA engine starts it for the first adapter and stops it when none has
        been registered for `lora_idle_seconds`."""
        from vllm.entrypoints.serve.lora.protocol import UnloadLoRAAdapterRequest

        self.adapters = adapters
        lora = self._lora
        for name, path in list(self._loaded.items()):
            if adapters.get(name) == path:
                continue
            del self._loaded[name]
            if lora is not None and name in lora.serving_models.lora_requests:
                await lora.serving_models.unload_lora_adapter(
                    UnloadLoRAAdapterRequest(lora_name=name)
                )
                log.info("LoRA adapter unloaded", extra={"model": name, "path": path})
        if not self.separate_lora:
            return
        now = time.monotonic()
        if adapters:
            self._no_adapters_since = None
            starting = self._lora_start is not None and not self._lora_start.done()
            if lora is None and not starting:
                log.info("starting the LoRA engine", extra={"model": self.served_name})
                self._lora_start = asyncio.create_task(self._start_lora())
            return
        if self._no_adapters_since is None:
            self._no_adapters_since = now
        if lora is not None and now - self._no_adapters_since >= self.lora_idle_seconds:
            self._lora = None
            self._loaded.clear()
            log.info("stopping the idle LoRA engine", extra={"model": self.served_name})
            # In the background: the caller is the heartbeat, which renews the leases.
            self._lora_stop = asyncio.create_task(lora.close())

    def _backend_for(self, model: str) -> _Backend:
        if model != self.served_name and model in self.adapters and self._lora is not None:
            return self._lora
        return self._base

    async def _respond(self, body: dict[str, Any] | str) -> Any:
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
        from vllm.entrypoints.serve.exception_handling.error_response import create_error_response

        try:
            if isinstance(body, str):
                request = ChatCompletionRequest.model_validate_json(body)
            else:
                request = ChatCompletionRequest.model_validate(body)
            backend = self._backend_for(request.model or self.served_name)
            if backend.lora and request.model in self.adapters:
                await self._ensure_adapter(request.model)
            return await backend.chat.create_chat_completion(request, None)
        except Exception as exc:  # vLLM's own mapping of exceptions to OpenAI errors
            return create_error_response(exc)

    async def run_line(self, custom_id: str, body_json: str) -> LineOutcome:
        """Runs one batch line; a rejected request becomes an error line, never an exception."""
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionResponse

        response = await self._respond(body_json)
        if isinstance(response, ChatCompletionResponse):
            usage = response.usage
            cached = 0
            if usage.prompt_tokens_details is not None:
                cached = usage.prompt_tokens_details.cached_tokens or 0
            line = (
                b'{"id":"'
                + new_id("batch_req_").encode()
                + b'","custom_id":'
                + orjson.dumps(custom_id)
                + b',"response":{"status_code":200,"request_id":"'
                + new_id("req_").encode()
                + b'","body":'
                + response.model_dump_json().encode()
                + b'},"error":null}'
            )
            return LineOutcome(
                True,
                splittable(line.decode()),
                usage.prompt_tokens,
                cached,
                usage.completion_tokens or 0,
            )
        status, error = self._error_of(response)
        return LineOutcome(False, _error_line(custom_id, status, error))

    @staticmethod
    def _error_of(response: Any) -> tuple[int, dict[str, Any]]:
        err = getattr(response, "error", None)
        if err is None:
            return 500, {
                "message": "engine returned no response",
                "type": "server_error",
                "param": None,
                "code": "engine_error",
            }
        doc = err.model_dump()
        status = int(doc.pop("code", 400) or 400)
        return status, {
            "message": doc.get("message"),
            "type": "invalid_request_error" if status < 500 else "server_error",
            "param": doc.get("param"),
            "code": doc.get("type"),
        }

    async def chat_completion(self, request_json: bytes) -> bytes:
        """One online request; raises EngineRequestError when vLLM rejects it."""
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionResponse

        body = orjson.loads(request_json)
        body["stream"] = False
        response = await self._respond(body)
        if isinstance(response, ChatCompletionResponse):
            return response.model_dump_json().encode()
        raise EngineRequestError(*self._error_of(response))

    async def stream_chat_completion(self, request_json: bytes) -> AsyncIterator[bytes]:
        """One streamed request: yields each `chat.completion.chunk` JSON document."""
        body = orjson.loads(request_json)
        body["stream"] = True
        response = await self._respond(body)
        if not hasattr(response, "__aiter__"):
            raise EngineRequestError(*self._error_of(response))
        async for event in response:
            for part in event.split("\n"):
                if not part.startswith("data: "):
                    continue
                data = part[6:].strip()
                if data == "[DONE]":
                    return
                yield data.encode()
