"""The trainer's loss mask with the default model's real tokenizer and chat template: only the
assistant turns (with their end-of-turn marker) carry labels; system and user turns are -100."""

from __future__ import annotations

from typing import Any

import pytest

from loomstack_training.trainer import assistant_labels, assistant_spans
from support import MODEL_PATH

CHAT = [
    {"role": "system", "content": "You answer in one word."},
    {"role": "user", "content": "Capital of France?"},
    {"role": "assistant", "content": "Paris"},
    {"role": "user", "content": "And of Italy?"},
    {"role": "assistant", "content": "Rome"},
]


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(MODEL_PATH)


def _render(tokenizer: Any) -> Any:
    def render(messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        text: str = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )
        return text

    return render


def _labelled(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[list[int], list[int]]:
    text, spans = assistant_spans(_render(tokenizer), messages)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoded["input_ids"])
    return ids, assistant_labels(ids, list(encoded["offset_mapping"]), spans)


def test_only_the_assistant_turns_carry_labels(tokenizer: Any) -> None:
    ids, labels = _labelled(tokenizer, CHAT)
    assert len(labels) == len(ids)
    kept = tokenizer.decode([t for t in labels if t != -100])
    masked = tokenizer.decode([t for t, label in zip(ids, labels, strict=True) if label == -100])
    assert "Paris" in kept and "Rome" in kept
    assert "<|im_end|>" in kept  # the model learns to stop
    for prompt_text in ("Capital of France?", "And of Italy?", "You answer in one word."):
        assert prompt_text not in kept
        assert prompt_text in masked
    # The assistant header is the prompt's generation prompt: no loss on it either.
    assert "assistant" not in kept


def test_the_labels_line_up_with_the_whole_chat(tokenizer: Any) -> None:
    ids, labels = _labelled(tokenizer, CHAT)
    whole = tokenizer(
        tokenizer.apply_chat_template(CHAT, tokenize=False), add_special_tokens=False
    )["input_ids"]
    assert ids == list(whole)
    assert all(label in (-100, token) for label, token in zip(labels, ids, strict=True))


def test_a_template_that_is_not_prefix_stable_gives_no_spans() -> None:
    def render(messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        # Puts the turn count first, so a shorter chat is not a prefix of a longer one.
        body = "".join(f"[{m['role']}]{m['content']}" for m in messages)
        return f"{len(messages)}:{body}" + ("[assistant]" if add_generation_prompt else "")

    text, spans = assistant_spans(render, CHAT)
    assert text.startswith("5:")
    assert spans == []
    assert assistant_labels([1, 2, 3], [(0, 1), (1, 2), (2, 3)], spans) == [-100, -100, -100]
