"""Checks of a fine-tuning request before anything trains: files, examples, hyperparameters.

A training file is OpenAI chat JSONL (`{"messages": [{"role", "content"}, ...]}` per line);
`{"prompt", "completion"}` lines are accepted too and become a user and an assistant turn.
A validation file must use the same format as its training file. Every problem names its
line, and nothing is queued while any problem remains.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import orjson

from loomstack_kit.errors import InvalidArgument

Messages = list[dict[str, str]]
CHAT, PROMPT_COMPLETION = "chat", "prompt_completion"
ROLES = ("system", "user", "assistant")
MAX_REPORTED = 5


@dataclass(frozen=True)
class TrainingFile:
    """A checked file: its format and its examples as chat messages."""

    format: str
    examples: list[Messages]
    total_tokens: int


def _line_format(obj: Any) -> str | None:
    if isinstance(obj, dict) and "messages" in obj:
        return CHAT
    if isinstance(obj, dict) and "prompt" in obj and "completion" in obj:
        return PROMPT_COMPLETION
    return None


def chat_messages(messages: Any) -> tuple[Messages | None, str | None]:
    """A `messages` value as role/content turns, or what is wrong with it (which turn)."""
    if not isinstance(messages, list) or not messages:
        return None, "`messages` must be a non-empty list"
    out: Messages = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            return None, f"messages[{i}] must be an object"
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            return None, f"messages[{i}].role is {role!r}: use one of {', '.join(ROLES)}"
        if not isinstance(content, str):
            return None, f"messages[{i}].content must be a string"
        out.append({"role": role, "content": content})
    return out, None


def _messages_of(obj: dict[str, Any], fmt: str) -> tuple[Messages | None, str | None]:
    """The example as chat messages, or what is wrong with it."""
    if fmt == PROMPT_COMPLETION:
        prompt, completion = obj["prompt"], obj["completion"]
        if not isinstance(prompt, str) or not isinstance(completion, str) or not completion:
            return None, "`prompt` and `completion` must be strings, `completion` non-empty"
        return [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": completion},
        ], None
    out, problem = chat_messages(obj["messages"])
    if out is None:
        return None, problem
    if not any(m["role"] == "assistant" for m in out):
        return None, "no assistant message: every example needs an assistant turn to learn from"
    return out, None


def parse_training_file(
    content: bytes,
    *,
    param: str,
    count_tokens: Callable[[Messages], int],
    max_tokens: int,
    min_examples: int = 0,
    expected_format: str | None = None,
) -> TrainingFile:
    """Every example of a file, or InvalidArgument naming the first bad lines."""
    problems: list[tuple[int, str]] = []
    examples: list[Messages] = []
    fmt: str | None = None
    total_tokens = 0
    for line_no, raw in enumerate(content.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            problems.append((line_no, f"not valid JSON ({exc})"))
            continue
        line_fmt = _line_format(obj)
        if line_fmt is None:
            problems.append(
                (line_no, "expected an object with `messages` (or `prompt` and `completion`)")
            )
            continue
        if fmt is None:
            fmt = line_fmt
        elif line_fmt != fmt:
            problems.append((line_no, f"{line_fmt} line in a {fmt} file"))
            continue
        messages, why = _messages_of(obj, line_fmt)
        if messages is None:
            problems.append((line_no, str(why)))
            continue
        tokens = count_tokens(messages)
        if tokens > max_tokens:
            problems.append((line_no, f"{tokens} tokens, over the limit of {max_tokens}"))
            continue
        total_tokens += tokens
        examples.append(messages)
        if len(problems) >= MAX_REPORTED:
            break
    if problems:
        listed = "; ".join(f"line {n}: {why}" for n, why in problems[:MAX_REPORTED])
        raise InvalidArgument(
            f"{param} has invalid lines: {listed}",
            code=f"invalid_{param}",
            param=param,
            line=problems[0][0],
        )
    if expected_format is not None and fmt is not None and fmt != expected_format:
        raise InvalidArgument(
            f"{param} is in {fmt} format but the training file is in {expected_format} format",
            code=f"invalid_{param}",
            param=param,
        )
    if len(examples) < max(min_examples, 1):
        raise InvalidArgument(
            f"{param} has {len(examples)} examples; at least {max(min_examples, 1)} are required",
            code=f"invalid_{param}",
            param=param,
        )
    return TrainingFile(fmt or CHAT, examples, total_tokens)


@dataclass(frozen=True)
class Hyperparameters:
    """Every training setting of a job, defaults filled in."""

    n_epochs: int
    batch_size: int
    learning_rate: float
    max_seq_length: int
    lora_r: int
    lora_alpha: int
    lora_dropout: float
    lora_target_modules: tuple[str, ...]
    max_steps: int | None = None
    save_steps: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (the trainer config and the database row)."""
        out = asdict(self)
        out["lora_target_modules"] = list(self.lora_target_modules)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Hyperparameters:
        """The inverse of `to_dict`."""
        return cls(**{**data, "lora_target_modules": tuple(data["lora_target_modules"])})


@dataclass(frozen=True)
class Defaults:
    """The service's defaults for unset hyperparameters."""

    n_epochs: int
    batch_size: int
    learning_rate: float
    max_seq_length: int
    lora_r: int
    lora_alpha: int
    lora_dropout: float
    lora_target_modules: tuple[str, ...]


def _in_range(name: str, value: float, low: float, high: float, *, low_open: bool = False) -> None:
    ok = (value > low if low_open else value >= low) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise InvalidArgument(
            f"hyperparameters.{name} is {value}: it must be in {bracket}{low}, {high}]",
            code="invalid_hyperparameters",
            param=f"hyperparameters.{name}",
        )


def resolve_hyperparameters(
    given: dict[str, Any], defaults: Defaults, *, context_length: int
) -> Hyperparameters:
    """The job's settings: what was given (checked against its range), else the defaults."""
    known = set(Hyperparameters.__dataclass_fields__) | {"learning_rate_multiplier"}
    unknown = sorted(set(given) - known)
    if unknown:
        raise InvalidArgument(
            f"unknown hyperparameters: {', '.join(unknown)}",
            code="invalid_hyperparameters",
            param=f"hyperparameters.{unknown[0]}",
        )
    n_epochs = int(given.get("n_epochs", defaults.n_epochs))
    _in_range("n_epochs", n_epochs, 1, 50)
    batch_size = int(given.get("batch_size", defaults.batch_size))
    _in_range("batch_size", batch_size, 1, 256)
    if "learning_rate" in given:
        learning_rate = float(given["learning_rate"])
        _in_range("learning_rate", learning_rate, 0, 0.1, low_open=True)
    else:
        multiplier = float(given.get("learning_rate_multiplier", 1.0))
        _in_range("learning_rate_multiplier", multiplier, 0, 10, low_open=True)
        learning_rate = defaults.learning_rate * multiplier
    max_seq_length = int(given.get("max_seq_length", min(defaults.max_seq_length, context_length)))
    _in_range("max_seq_length", max_seq_length, 16, context_length)
    lora_r = int(given.get("lora_r", defaults.lora_r))
    _in_range("lora_r", lora_r, 1, 256)
    lora_alpha = int(given.get("lora_alpha", defaults.lora_alpha))
    _in_range("lora_alpha", lora_alpha, 1, 1024)
    lora_dropout = float(given.get("lora_dropout", defaults.lora_dropout))
    if not 0 <= lora_dropout < 1:
        raise InvalidArgument(
            f"hyperparameters.lora_dropout is {lora_dropout}: it must be in [0, 1)",
            code="invalid_hyperparameters",
            param="hyperparameters.lora_dropout",
        )
    modules: Sequence[str] = given.get("lora_target_modules") or defaults.lora_target_modules
    if not all(isinstance(m, str) and m.isidentifier() for m in modules):
        raise InvalidArgument(
            "hyperparameters.lora_target_modules must be module names like q_proj",
            code="invalid_hyperparameters",
            param="hyperparameters.lora_target_modules",
        )
    max_steps = given.get("max_steps")
    if max_steps is not None:
        _in_range("max_steps", int(max_steps), 1, 1_000_000)
    save_steps = given.get("save_steps")
    if save_steps is not None:
        _in_range("save_steps", int(save_steps), 1, 1_000_000)
    return Hyperparameters(
        n_epochs=n_epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        max_seq_length=max_seq_length,
        lora_r=lora_r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        lora_target_modules=tuple(modules),
        max_steps=int(max_steps) if max_steps is not None else None,
        save_steps=int(save_steps) if save_steps is not None else None,
    )


def check_suffix(suffix: str) -> None:
    """OpenAI's rule: at most 18 characters; we also keep it to a model-name-safe alphabet."""
    if len(suffix) > 18 or not all(c.isalnum() or c in "-_." for c in suffix):
        raise InvalidArgument(
            f"suffix {suffix!r} must be at most 18 letters, digits, '-', '_' or '.'",
            code="invalid_suffix",
            param="suffix",
        )


class ChatTokenCounter:
    """Counts an example's tokens with the base model's own tokenizer and chat template."""

    def __init__(self, model_path: str) -> None:
        from transformers import AutoTokenizer

        self.tokenizer: Any = AutoTokenizer.from_pretrained(model_path)

    def __call__(self, messages: Messages) -> int:
        ids = self.tokenizer.apply_chat_template(messages, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return len(ids)
