"""TaskSchema: the one definition of a curation task, from which everything else is derived.

A schema names the data a task shows (text, structured JSON, files), the questions a person
answers (choice, rating, boolean, text, structured JSON), how a model's answer becomes the
pre-filled answers (`prediction`) and how an annotated task becomes an OpenAI chat training
example (`training`). Label Studio configs, prompts, predictions and training examples are
all built from it by the sibling modules; nothing else describes a task.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal

import jsonschema
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

QUESTION_TYPES = ("choice", "rating", "boolean", "text", "structured")
DATA_TYPES = ("text", "structured", "file")
# The built-in gold-star control's name, unless `training.gold` names a boolean question.
GOLD = "gold"
GOLD_CHOICE = "Gold"
MAX_RATING = 10
# `{field}` in training.user_template; other braces (JSON examples) stay as they are.
PLACEHOLDER = r"\{([A-Za-z_][A-Za-z0-9_]*)\}"

Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=64)]
SchemaId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_.-]*$", max_length=64)]
Text = Annotated[str, StringConstraints(min_length=1)]
# A plugin's contribution: `<plugin>.<name>` (a rating scale, a parser).
PluginName = Annotated[
    str, StringConstraints(pattern=r"^[a-z][a-z0-9_]*\.[a-z0-9][a-z0-9_.-]*$", max_length=96)
]
# A model's answer text → raw answers by question name (a plugin's parser).
AnswerParser = Callable[[str], Mapping[str, Any]]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# ---- data sources: what a task shows ----------------------------------------------------------


class _DataSource(_Model):
    name: Name
    title: str | None = Field(None, description="Header shown above the data; default: name.")
    source: Literal["data", "prompt", "answer"] = Field(
        "data",
        description="Where an imported batch result fills it from: the caller's task data under "
        "`name`, the request's last user message, or the model's answer.",
    )

    @property
    def header(self) -> str:
        return self.title or self.name


class TextSource(_DataSource):
    """Plain text, shown as is."""

    type: Literal["text"]


class StructuredSource(_DataSource):
    """A JSON value, shown pretty-printed."""

    type: Literal["structured"]


class FileSource(_DataSource):
    """A file by URL: an image, an audio clip, or a text file Label Studio loads."""

    type: Literal["file"]
    media: Literal["image", "audio", "text"] = "text"


DataSource = Annotated[TextSource | StructuredSource | FileSource, Field(discriminator="type")]


# ---- questions: what a person answers ---------------------------------------------------------


class _Question(_Model):
    name: Name
    prompt: Text
    required: bool = False
    about: Name | None = Field(
        None, description="The data source the question is about; default: the first one."
    )


class ChoiceQuestion(_Question):
    """Pick one (or, with `multiple`, several) of fixed options."""

    type: Literal["choice"]
    options: list[Text] = Field(min_length=1)
    multiple: bool = False
    scale: PluginName | None = Field(
        None,
        description="A named rating scale (a plugin's `ratings`) whose labels are the options; "
        "the registry fills `options` from it.",
    )

    @field_validator("options")
    @classmethod
    def _unique(cls, options: list[str]) -> list[str]:
        if len(set(options)) != len(options):
            raise ValueError("options must be unique")
        return options


class RatingQuestion(_Question):
    """A rating from 1 to `max` stars."""

    type: Literal["rating"]
    max: int = Field(5, ge=1, le=MAX_RATING)


class BooleanQuestion(_Question):
    """Yes or no, shown as two choices."""

    type: Literal["boolean"]
    true_label: Text = "Yes"
    false_label: Text = "No"

    @model_validator(mode="after")
    def _distinct(self) -> BooleanQuestion:
        if self.true_label == self.false_label:
            raise ValueError("true_label and false_label must differ")
        return self


class TextQuestion(_Question):
    """Free text, e.g. a corrected answer."""

    type: Literal["text"]
    max_length: int | None = Field(None, ge=1)
    rows: int = Field(4, ge=1, le=50)
    placeholder: str = ""


class StructuredQuestion(_Question):
    """A JSON value that must match a JSON schema (edited as JSON text)."""

    type: Literal["structured"]
    json_schema: dict[str, Any] = Field(alias="schema")
    rows: int = Field(8, ge=1, le=50)

    @field_validator("json_schema")
    @classmethod
    def _valid_schema(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            jsonschema.Draft202012Validator.check_schema(value)
        except jsonschema.SchemaError as exc:
            raise ValueError(f"not a valid JSON schema: {exc.message}") from None
        return value


AnyQuestion = ChoiceQuestion | RatingQuestion | BooleanQuestion | TextQuestion | StructuredQuestion
Question = Annotated[AnyQuestion, Field(discriminator="type")]


# ---- mappings ---------------------------------------------------------------------------------


class PredictionMapping(_Model):
    """How the model's answer (the assistant message content) becomes pre-filled answers."""

    format: Literal["json", "text"] = Field(
        "json",
        description="json: the answer is a JSON object, `keys` map its keys to questions. "
        "text: the whole answer fills the one question named by `question`.",
    )
    keys: dict[Name, Text] | None = Field(
        None, description="Question name → key in the JSON answer; default: every question by name."
    )
    question: Name | None = None
    parser: PluginName | None = Field(
        None,
        description="A plugin's parser that turns the answer text into values by key (format "
        "json only), instead of reading the answer as a JSON object.",
    )


class TrainingMapping(_Model):
    """How an annotated task becomes an OpenAI chat training example."""

    system_prompt: str | None = None
    use_schema_prompt: bool = Field(
        False,
        description="The system message is the schema's rendered prompt: the fine-tuned model "
        "is trained on the same instructions it gets at inference.",
    )
    user: list[Name] = Field(min_length=1, description="Data fields forming the user message.")
    user_template: str | None = Field(
        None, description="Template of the user message; `{field}` inserts a data field."
    )
    assistant: list[Name] = Field(
        min_length=1, description="Questions whose answers form the assistant message."
    )
    fallback: dict[Name, Name] = Field(
        default_factory=dict,
        description="Question → data field used when the annotation leaves the question empty.",
    )
    gold: Name = Field(
        GOLD,
        description="The control marking a gold example: a boolean question of this schema, or "
        "the built-in gold-star checkbox when no question has this name.",
    )


# ---- the schema -------------------------------------------------------------------------------


class TaskSchema(_Model):
    """A versioned curation task definition."""

    id: SchemaId
    version: int = Field(ge=1)
    name: Text
    description: str = ""
    data: list[DataSource] = Field(min_length=1)
    questions: list[Question] = Field(min_length=1)
    prediction: PredictionMapping = PredictionMapping()
    training: TrainingMapping
    # The callable `prediction.parser` names, set by the registry that loaded the schema.
    _parser: AnswerParser | None = PrivateAttr(None)

    @property
    def parser(self) -> AnswerParser | None:
        """The parser of `prediction.parser`, once a registry resolved it."""
        return self._parser

    def with_parser(self, parser: AnswerParser) -> TaskSchema:
        """This schema with its named parser resolved."""
        self._parser = parser
        return self

    @property
    def key(self) -> str:
        """`id@version`, unique in a registry."""
        return f"{self.id}@{self.version}"

    def question(self, name: str) -> AnyQuestion:
        """The question called `name` (KeyError if none is)."""
        for question in self.questions:
            if question.name == name:
                return question
        raise KeyError(name)

    def data_source(self, name: str) -> TextSource | StructuredSource | FileSource:
        """The data source called `name` (KeyError if none is)."""
        for source in self.data:
            if source.name == name:
                return source
        raise KeyError(name)

    @property
    def prediction_keys(self) -> dict[str, str]:
        """Question name → JSON key, for schemas whose model answer is JSON."""
        if self.prediction.format != "json":
            return {}
        if self.prediction.keys is None:
            # The gold flag is a person's judgement, never the model's.
            return {q.name: q.name for q in self.questions if q.name != self.training.gold}
        return dict(self.prediction.keys)

    @property
    def gold_question(self) -> BooleanQuestion | None:
        """The boolean question marking gold, or None when the built-in gold star does."""
        for question in self.questions:
            if question.name == self.training.gold and isinstance(question, BooleanQuestion):
                return question
        return None

    @model_validator(mode="after")
    def _references(self) -> TaskSchema:
        problem = _first_reference_problem(self)
        if problem is not None:
            path, message = problem
            raise PydanticCustomError(
                "schema_reference", "{path}: {message}", {"path": path, "message": message}
            )
        return self


def _first_reference_problem(schema: TaskSchema) -> tuple[str, str] | None:
    """The first name that points nowhere (or twice), as (field path, message)."""
    data_names = [d.name for d in schema.data]
    question_names = [q.name for q in schema.questions]
    seen: dict[str, str] = {}
    for kind, names in (("data", data_names), ("questions", question_names)):
        for index, name in enumerate(names):
            if name in seen:
                return f"{kind}.{index}.name", f"name {name!r} is used twice ({seen[name]})"
            seen[name] = f"{kind}.{index}"
    known_data = ", ".join(data_names)
    known_questions = ", ".join(question_names)

    for index, question in enumerate(schema.questions):
        if question.about is not None and question.about not in data_names:
            return (
                f"questions.{index}.about",
                f"unknown data field {question.about!r} (data fields: {known_data})",
            )

    prediction = schema.prediction
    if prediction.format == "json":
        if prediction.question is not None:
            return "prediction.question", "only for format 'text'; use `keys` for 'json'"
        keys = prediction.keys or {}
        for name in keys:
            if name not in question_names:
                return (
                    f"prediction.keys.{name}",
                    f"unknown question {name!r} (questions: {known_questions})",
                )
        if schema.training.gold in keys:
            return f"prediction.keys.{schema.training.gold}", "the gold flag is not predicted"
        if len(set(keys.values())) != len(keys):
            return "prediction.keys", "two questions map to the same JSON key"
        if prediction.keys is not None and not keys:
            return "prediction.keys", "maps no question; leave it out to map every question"
    else:
        if prediction.parser is not None:
            return "prediction.parser", "only for format 'json'"
        if prediction.keys is not None:
            return "prediction.keys", "only for format 'json'; use `question` for 'text'"
        if prediction.question is None:
            return "prediction.question", "format 'text' needs the question the answer fills"
        if prediction.question not in question_names:
            return (
                "prediction.question",
                f"unknown question {prediction.question!r} (questions: {known_questions})",
            )
        if schema.question(prediction.question).type not in ("text", "structured"):
            return "prediction.question", "must be a text or structured question"

    training = schema.training
    if training.use_schema_prompt and training.system_prompt is not None:
        return "training.system_prompt", "set either system_prompt or use_schema_prompt"
    if training.use_schema_prompt and prediction.format != "json":
        return "training.use_schema_prompt", "needs prediction format 'json'"
    for index, name in enumerate(training.user):
        if name not in data_names:
            return f"training.user.{index}", f"unknown data field {name!r} (data: {known_data})"
    if training.user_template is not None:
        for placeholder in re.findall(PLACEHOLDER, training.user_template):
            if placeholder not in training.user:
                return (
                    "training.user_template",
                    f"placeholder {{{placeholder}}} is not in training.user",
                )
    for index, name in enumerate(training.assistant):
        if name not in question_names:
            return (
                f"training.assistant.{index}",
                f"unknown question {name!r} (questions: {known_questions})",
            )
        if name == training.gold:
            return f"training.assistant.{index}", "the gold flag cannot be part of the answer"
    if prediction.format == "text" and len(training.assistant) != 1:
        return "training.assistant", "format 'text' trains on exactly one question"
    for question_name, data_name in training.fallback.items():
        if question_name not in training.assistant:
            return f"training.fallback.{question_name}", "not a question in training.assistant"
        if data_name not in data_names:
            return (
                f"training.fallback.{question_name}",
                f"unknown data field {data_name!r} (data: {known_data})",
            )
    if training.gold in data_names:
        return "training.gold", f"{training.gold!r} is a data field, not a question"
    if training.gold in question_names and schema.gold_question is None:
        return "training.gold", f"question {training.gold!r} must be a boolean question"
    return None


# ---- readable errors --------------------------------------------------------------------------


def describe_errors(exc: ValidationError) -> list[str]:
    """Pydantic's errors as `field.path: message` lines a person can act on."""
    lines = []
    for error in exc.errors():
        loc = error["loc"]
        ctx = error.get("ctx") or {}
        kind = error["type"]
        path = _path(loc)
        if kind == "schema_reference":
            lines.append(f"{ctx['path']}: {ctx['message']}")
        elif kind in ("union_tag_invalid", "union_tag_not_found"):
            what, tags = (
                ("question", QUESTION_TYPES) if "questions" in loc[:1] else ("data", DATA_TYPES)
            )
            choices = ", ".join(tags)
            if kind == "union_tag_invalid":
                lines.append(f"{path}.type: unknown {what} type {ctx.get('tag')!r} (use {choices})")
            else:
                lines.append(f"{path}.type: missing {what} type (use {choices})")
        elif kind == "missing":
            lines.append(f"{path}: required field is missing")
        elif kind == "extra_forbidden":
            lines.append(f"{path}: unknown field")
        elif kind == "too_short":
            lines.append(f"{path}: needs at least {ctx.get('min_length', 1)} item(s)")
        else:
            message = error["msg"].removeprefix("Value error, ")
            lines.append(f"{path}: {message}" if path else message)
    return lines


def _path(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for index, part in enumerate(loc):
        # Discriminated unions add the tag to the location (`questions.2.rating.max`); a person
        # wrote `questions.2.max`.
        if index > 0 and isinstance(loc[index - 1], int) and part in (*QUESTION_TYPES, *DATA_TYPES):
            continue
        parts.append(str(part))
    return ".".join(parts)
