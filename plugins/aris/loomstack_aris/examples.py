"""VICTORY conquests as examples: the `aris.aristotle` dataset exporter (fine-tuning) and the
Eidos export (in-context-learning examples by user, domain and conquest type).

An example is a conquest's prompt messages (the batch request's `messages`, system message
included) followed by the model's answer as the assistant message; a conquest whose batch had
several requests gives one example per answered request.

Which conquests serve:
- training (`AristotleDatasetExporter`): every VICTORY with an answer, unless one of its
  ratings opts it out with `include_in_training` false (opt-out: the verdict already says the
  answer is good). `gold_only` is implied: a VICTORY is the gold star's counterpart.
- Eidos (ICL): only hand-picked VICTORY conquests, `use_as_example` on the conquest or
  `use_as_sample_response` on a rating (opt-in: a prompt holds a few examples), newest first.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from loomstack_kit.errors import InvalidArgument
from loomstack_kit.plugins import CurationContext, Exporter, ExportRequest

from .conquests import Conquest, ConquestStore, ExampleFilter, text
from .terms import PLUGIN, ConquestType, parse, type_of_schema

Message = dict[str, str]
IclFormat = Literal["messages", "text"]
ICL_FORMATS: tuple[IclFormat, ...] = ("messages", "text")
DEFAULT_ICL_LIMIT = 5
MAX_ICL_LIMIT = 100
EXPORTER_OPTIONS = ("user_email", "domain", "conquest_type")


def _text_of(content: Any) -> str:
    """A message's content as text (the text parts of a multi-part content)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(p.get("text", "")) for p in content if isinstance(p, Mapping) and p.get("text")
        )
    return "" if content is None else str(content)


def chat_examples(conquest: Conquest) -> list[list[Message]]:
    """The conquest's answered requests as OpenAI chat examples."""
    prompts = {p.get("custom_id", ""): p.get("messages") or [] for p in conquest.prompts}
    examples = []
    for response in conquest.responses:
        answer = response.get("content")
        messages = prompts.get(response.get("custom_id", ""))
        if not isinstance(answer, str) or not messages:
            continue
        chat = [
            {"role": str(m.get("role", "user")), "content": _text_of(m.get("content"))}
            for m in messages
            if isinstance(m, Mapping)
        ]
        examples.append([*chat, {"role": "assistant", "content": answer}])
    return examples


def _type(schema_id: str, conquest_type: str) -> ConquestType | None:
    by_schema = type_of_schema(schema_id) if schema_id else None
    by_option = parse(ConquestType, conquest_type, "conquest_type") if conquest_type else None
    if by_schema and by_option and by_schema is not by_option:
        raise InvalidArgument(
            f"schema_id {schema_id!r} is conquest type {by_schema.value}, "
            f"but conquest_type is {by_option.value}",
            param="conquest_type",
        )
    return by_schema or by_option


def export_dataset(request: ExportRequest, context: CurationContext) -> Iterator[list[Message]]:
    """The training examples of the request's project (filtered by its schema and options)."""
    if request.limit < 0:
        raise InvalidArgument("limit must not be negative", param="limit")
    options = request.options
    flt = ExampleFilter(
        type=_type(request.schema_id, options.get("conquest_type", "")),
        philosopher=text(options.get("user_email", ""), "user_email"),
        domain=text(options.get("domain", ""), "domain"),
    )
    count = 0
    for conquest in ConquestStore(context.database).victories(request.project, flt, "training"):
        for example in chat_examples(conquest):
            yield example
            count += 1
            if request.limit and count >= request.limit:
                return


ARISTOTLE_EXPORTER = Exporter(
    name=f"{PLUGIN}.aristotle",
    export=export_dataset,
    description="Fine-tuning examples from VICTORY conquests (prompt messages + the answer), "
    "by user_email, domain and conquest_type.",
    options=EXPORTER_OPTIONS,
)


# ---- Eidos ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IclExample:
    """One in-context-learning example: `messages` or `text`, as the format asks."""

    conquest_id: str
    type: ConquestType
    philosopher: str
    domain: str
    messages: list[Message]
    text: str


def as_text(messages: list[Message]) -> str:
    """An example as prompt text: the inputs, then the answer (system messages left out: the
    prompt that holds the examples has its own)."""
    parts = []
    for message in messages:
        if message["role"] == "system":
            continue
        label = "Output" if message["role"] == "assistant" else "Input"
        parts.append(f"{label}:\n{message['content']}")
    return "\n\n".join(parts)


def icl_format(value: str) -> IclFormat:
    """`messages` (default) or `text`; InvalidArgument naming `format` otherwise."""
    name = value.strip().lower() or "messages"
    for fmt in ICL_FORMATS:
        if fmt == name:
            return fmt
    raise InvalidArgument(
        f"format {value!r} is not valid (valid: {', '.join(ICL_FORMATS)})", param="format"
    )


def icl_examples(
    store: ConquestStore,
    project: str | None,
    *,
    philosopher: str = "",
    domain: str = "",
    conquest_type: str = "",
    limit: int = 0,
    fmt: str = "messages",
) -> list[IclExample]:
    """The hand-picked examples of a user, domain and conquest type, newest first."""
    if limit < 0:
        raise InvalidArgument("limit must not be negative", param="limit")
    wanted = min(limit or DEFAULT_ICL_LIMIT, MAX_ICL_LIMIT)
    form = icl_format(fmt)
    flt = ExampleFilter(
        type=parse(ConquestType, conquest_type, "conquest_type") if conquest_type else None,
        philosopher=philosopher,
        domain=domain,
    )
    found: list[IclExample] = []
    for conquest in store.victories(project, flt, "icl"):
        for messages in chat_examples(conquest):
            found.append(
                IclExample(
                    conquest_id=conquest.id,
                    type=conquest.type,
                    philosopher=conquest.philosopher,
                    domain=conquest.domain,
                    messages=messages if form == "messages" else [],
                    text=as_text(messages) if form == "text" else "",
                )
            )
            if len(found) >= wanted:
                return found
    return found
