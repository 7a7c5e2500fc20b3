"""The main job end to end: the official openai client → gateway → inference → vLLM."""

from __future__ import annotations

import json
import time

import pytest
from support import MODEL_NAME, MODEL_PATH, batch_line, wait_until

pytestmark = pytest.mark.engine

TERMINAL = {"completed", "failed", "expired", "cancelled"}


def _jsonl(lines: list[dict[str, object]]) -> bytes:
    return b"".join(json.dumps(x).encode() + b"\n" for x in lines)


def _run(client, lines, **kwargs):  # type: ignore[no-untyped-def]
    f = client.files.create(file=("input.jsonl", _jsonl(lines)), purpose="batch")
    batch = client.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h", **kwargs
    )
    return wait_until(
        lambda: (b := client.batches.retrieve(batch.id)).status in TERMINAL and b,
        300,
        0.5,
        "batch to finish",
    )


def _by_id(client, file_id):  # type: ignore[no-untyped-def]
    return {
        o["custom_id"]: o
        for o in map(json.loads, client.files.content(file_id).content.splitlines())
    }


def test_batch_with_output_and_error_files(stack) -> None:  # type: ignore[no-untyped-def]
    client = stack.client()
    system = {"role": "system", "content": "You are a helpful assistant."}
    lines = [
        {
            **batch_line("paris", ""),
            "body": {
                "model": MODEL_NAME,
                "max_tokens": 24,
                "temperature": 0,
                "messages": [system, {"role": "user", "content": "What is the capital of France?"}],
            },
        },
        *[batch_line(f"q{i}", f"Name a colour number {i}.", max_tokens=8) for i in range(6)],
        batch_line("too-long", "hi", max_tokens=100_000),
    ]
    batch = _run(client, lines, metadata={"purpose": "e2e"})
    assert batch.status == "completed", batch
    assert batch.request_counts.total == 8
    assert (batch.request_counts.completed, batch.request_counts.failed) == (7, 1)
    assert batch.metadata == {"purpose": "e2e"}
    assert batch.output_file_id and batch.error_file_id
    assert batch.in_progress_at and batch.finalizing_at and batch.completed_at
    assert batch.created_at <= batch.in_progress_at <= batch.completed_at
    out = _by_id(client, batch.output_file_id)
    assert set(out) == {"paris", *(f"q{i}" for i in range(6))}
    answer = out["paris"]["response"]["body"]["choices"][0]["message"]["content"]
    assert "Paris" in answer
    assert out["q0"]["response"]["status_code"] == 200 and out["q0"]["error"] is None
    assert out["q0"]["response"]["body"]["usage"]["completion_tokens"] <= 8
    usage = batch.usage
    assert usage.output_tokens == sum(
        o["response"]["body"]["usage"]["completion_tokens"] for o in out.values()
    )
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    errors = _by_id(client, batch.error_file_id)
    assert list(errors) == ["too-long"]
    failed = errors["too-long"]["response"]
    assert failed["status_code"] == 400
    assert failed["body"]["error"]["param"] == "max_tokens"
    assert "max_tokens" in failed["body"]["error"]["message"]
    # The batch and its files are listed.
    assert batch.id in [b.id for b in client.batches.list(limit=50).data]
    assert batch.output_file_id in [f.id for f in client.files.list(purpose="batch_output").data]


def test_every_request_parameter_reaches_vllm(stack) -> None:  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    client = stack.client()
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "population"],
        "additionalProperties": False,
    }
    messages = [
        {"role": "system", "content": "You answer in JSON."},
        {"role": "user", "content": "Give a city and its population."},
    ]
    lines = [
        {
            **batch_line("json", ""),
            "body": {
                "model": MODEL_NAME,
                "messages": messages,
                "max_tokens": 60,
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "city", "schema": schema},
                },
            },
        },
        batch_line("n2", "Say a word.", n=2, max_tokens=5, temperature=1.0, seed=1),
        batch_line("stop", "Count from 1 to 10.", stop=["5"], max_tokens=40, temperature=0),
        batch_line("seed-a", "Tell me a story.", seed=1234, temperature=1.0, max_tokens=12),
        batch_line("seed-b", "Tell me a story.", seed=1234, temperature=1.0, max_tokens=12),
        batch_line("logprobs", "Hello!", logprobs=True, top_logprobs=2, max_tokens=3),
        batch_line("template", "Exactly this prompt.", max_tokens=1),
    ]
    batch = _run(client, lines)
    assert batch.status == "completed" and batch.request_counts.failed == 0, batch
    out = {k: v["response"]["body"] for k, v in _by_id(client, batch.output_file_id).items()}
    doc = json.loads(out["json"]["choices"][0]["message"]["content"])
    assert set(doc) == {"city", "population"} and isinstance(doc["population"], int)
    assert len(out["n2"]["choices"]) == 2
    stop_choice = out["stop"]["choices"][0]
    assert "5" not in stop_choice["message"]["content"] and stop_choice["finish_reason"] == "stop"
    assert (
        out["seed-a"]["choices"][0]["message"]["content"]
        == out["seed-b"]["choices"][0]["message"]["content"]
    )
    top = out["logprobs"]["choices"][0]["logprobs"]["content"]
    assert len(top) == 3 and all(len(t["top_logprobs"]) == 2 for t in top)
    # The model's own chat template is applied: the prompt is exactly the templated tokens.
    tokenizer = AutoTokenizer.from_pretrained(MODEL_PATH)
    expected = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Exactly this prompt."}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
    )["input_ids"]
    assert out["template"]["usage"]["prompt_tokens"] == len(expected)


def test_online_chat_unary_and_streaming(stack) -> None:  # type: ignore[no-untyped-def]
    client = stack.client()
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    reply = client.chat.completions.create(
        model=MODEL_NAME, messages=messages, max_tokens=24, temperature=0
    )
    text = reply.choices[0].message.content
    assert "Paris" in text and reply.usage.completion_tokens <= 24
    chunks = list(
        client.chat.completions.create(
            model=MODEL_NAME, messages=messages, max_tokens=24, temperature=0, stream=True
        )
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text
    assert len(chunks) > 3


def test_engine_rejection_is_an_openai_error(stack) -> None:  # type: ignore[no-untyped-def]
    import openai

    client = stack.client()
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model=MODEL_NAME, max_tokens=100_000, messages=[{"role": "user", "content": "hi"}]
        )
    assert err.value.status_code == 400
    assert "max_tokens" in str(err.value.body)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "hi"}]
        )


def test_cancel_in_the_middle_of_a_batch(stack) -> None:  # type: ignore[no-untyped-def]
    client = stack.client()
    lines = [
        batch_line(f"c{i}", f"Write about {i}.", max_tokens=16, ignore_eos=True) for i in range(400)
    ]
    f = client.files.create(file=("input.jsonl", _jsonl(lines)), purpose="batch")
    batch = client.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    wait_until(
        lambda: client.batches.retrieve(batch.id).request_counts.completed >= 10,
        300,
        0.3,
        "progress",
    )
    cancelled_at = time.monotonic()
    assert client.batches.cancel(batch.id).status in ("cancelling", "cancelled")
    final = wait_until(
        lambda: (b := client.batches.retrieve(batch.id)).status in TERMINAL and b,
        60,
        0.3,
        "cancel to finish",
    )
    assert final.status == "cancelled"
    assert time.monotonic() - cancelled_at < 30, "cancel is honoured within a micro-batch"
    done = final.request_counts.completed
    assert 10 <= done < 400
    # Bytes: str.splitlines would also break at U+2028 or \x85 inside an answer (JSON leaves
    # them unescaped); JSON Lines are split at newlines only.
    out = client.files.content(final.output_file_id).content.splitlines()
    assert len(out) == done
    assert len({json.loads(x)["custom_id"] for x in out}) == done


def test_models_list_shows_the_served_model(stack) -> None:  # type: ignore[no-untyped-def]
    models = stack.client().models.list().data
    assert MODEL_NAME in [m.id for m in models]


def test_api_only_replica_forwards_chat_to_a_registered_engine(api_replica) -> None:  # type: ignore[no-untyped-def]
    """An api-role replica has no engine: it finds the model's engine in the registry."""
    from support import InferenceClient

    from loomstack.inference.v1 import chat_pb2

    client = InferenceClient(api_replica.address)
    try:
        body = {
            "model": MODEL_NAME,
            "max_tokens": 5,
            "messages": [{"role": "user", "content": "Hi"}],
        }
        reply = client.chat.CreateChatCompletion(
            chat_pb2.CreateChatCompletionRequest(request_json=json.dumps(body).encode()),
            metadata=client.metadata,
            timeout=60,
        )
        assert json.loads(reply.response_json)["usage"]["completion_tokens"] <= 5
        chunks = list(
            client.chat.StreamChatCompletion(
                chat_pb2.StreamChatCompletionRequest(request_json=json.dumps(body).encode()),
                metadata=client.metadata,
                timeout=60,
            )
        )
        assert json.loads(chunks[0].chunk_json)["object"] == "chat.completion.chunk"
    finally:
        client.close()
