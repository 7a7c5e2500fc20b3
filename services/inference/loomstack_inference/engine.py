"""The vLLM engine: one base model on `AsyncLLM`, driven through vLLM's own OpenAI serving layer.

Every batch line and every online request goes through `OpenAIServingChat` exactly as
`vllm run-batch` and `vllm serve` do, so the model's chat template, every sampling parameter,
`response_format`, `n`, `stop`, `seed` and `logprobs` apply. vLLM is imported lazily: the api
role never needs it.
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import AsyncIterator
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


class VllmEngine:
    """Owns the `AsyncLLM` client and the chat serving object."""

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
    ) -> None:
        self.model_path = model_path
        self.served_name = served_name
        self.max_model_len = max_model_len
        self.enforce_eager = enforce_eager
        self.dtype = dtype
        self.extra_args = extra_args
        self.max_lora_rank = max_lora_rank
        self.max_loras = max_loras
        self.cpu_memory_fraction = cpu_memory_fraction
        # Adapters of this base model from the registry (name → directory); the runner keeps
        # it current, and each is loaded into vLLM the first time a request names it.
        self.adapters: dict[str, str] = {}
        self._loaded: dict[str, str] = {}  # adapters loaded into vLLM: name → directory
        self._serving_models: Any = None
        self._client_cm: Any = None
        self.client: Any = None
        self.chat: Any = None

    async def start(self) -> None:
        """Loads the model (tens of seconds on CPU) and builds the serving layer."""
        from starlette.datastructures import State
        from vllm.entrypoints.launchers.api_server.app_state import init_app_state
        from vllm.entrypoints.launchers.api_server.entry import build_async_engine_client
        from vllm.entrypoints.launchers.run_batch import make_arg_parser
        from vllm.usage.usage_lib import UsageContext
        from vllm.utils.argparse_utils import FlexibleArgumentParser

        extra = shlex.split(self.extra_args)
        argv = [
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
                if self.lora_enabled
                else []
            ),
            *memory_args(extra, self.cpu_memory_fraction),
            *extra,
        ]
        args = make_arg_parser(FlexibleArgumentParser()).parse_args(argv)
        # Its engine-core and worker processes die with this process (engine_processes.py).
        engine_processes.mark_owner()
        self._client_cm = build_async_engine_client(
            args, usage_context=UsageContext.OPENAI_BATCH_RUNNER
        )
        self.client = await self._client_cm.__aenter__()
        state = State()
        await init_app_state(self.client, state, args, await self.client.get_supported_tasks())
        self.chat = state.openai_serving_chat
        self._serving_models = state.openai_serving_models
        log.info(
            "vLLM engine ready",
            extra={"model": self.served_name, "dtype": str(self.client.model_config.dtype)},
        )

    @property
    def lora_enabled(self) -> bool:
        """Whether this engine serves LoRA adapters."""
        return self.max_lora_rank > 0

    def serves(self, model: str) -> bool:
        """The base model, or one of its registered adapters when LoRA is on."""
        return model == self.served_name or (self.lora_enabled and model in self.adapters)

    async def _ensure_adapter(self, name: str) -> None:
        """Loads a registered adapter into vLLM once; its `LoRARequest` then applies per request."""
        from vllm.entrypoints.serve.lora.protocol import LoadLoRAAdapterRequest

        if (
            name in self._serving_models.lora_requests
            and self._loaded.get(name) == (self.adapters[name])
        ):
            return
        result = await self._serving_models.load_lora_adapter(
            LoadLoRAAdapterRequest(lora_name=name, lora_path=self.adapters[name]),
            base_model_name=self.served_name,
        )
        if not isinstance(result, str) and name not in self._serving_models.lora_requests:
            raise EngineRequestError(*self._error_of(result))
        self._loaded[name] = self.adapters[name]
        log.info("LoRA adapter loaded", extra={"model": name, "path": self.adapters[name]})

    async def set_adapters(self, adapters: dict[str, str]) -> None:
        """The adapters to serve (name → directory); unloads the ones deleted or replaced."""
        from vllm.entrypoints.serve.lora.protocol import UnloadLoRAAdapterRequest

        self.adapters = adapters
        for name, path in list(self._loaded.items()):
            if adapters.get(name) == path:
                continue
            del self._loaded[name]
            if self._serving_models is not None and name in self._serving_models.lora_requests:
                await self._serving_models.unload_lora_adapter(
                    UnloadLoRAAdapterRequest(lora_name=name)
                )
                log.info("LoRA adapter unloaded", extra={"model": name, "path": path})

    async def close(self) -> None:
        """Shuts the engine (and its engine-core process) down."""
        if self._client_cm is not None:
            await self._client_cm.__aexit__(None, None, None)
            self._client_cm = None

    async def _respond(self, body: dict[str, Any] | str) -> Any:
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
        from vllm.entrypoints.serve.exception_handling.error_response import create_error_response

        try:
            if isinstance(body, str):
                request = ChatCompletionRequest.model_validate_json(body)
            else:
                request = ChatCompletionRequest.model_validate(body)
            if self.lora_enabled and request.model in self.adapters:
                await self._ensure_adapter(request.model)
            return await self.chat.create_chat_completion(request, None)
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
