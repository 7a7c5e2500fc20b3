"""The curation service's plain modules without any server: webhook authentication and
payloads, reading batch results, the schema_type syntax, snapshot formats and the split,
project titles and agreement."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from curation_support import input_line, jsonl, output_line

from loomstack_curation.annotations import agreement
from loomstack_curation.batch_results import read_results
from loomstack_curation.catalog import SchemaCatalog, parse_schema_type
from loomstack_curation.predictions import regions
from loomstack_curation.projects import MAX_TITLE, project_marker, project_title
from loomstack_curation.registry import TaskRegistry
from loomstack_curation.snapshots import FORMATS, convert, example_key, is_validation
from loomstack_curation.webhook import handle_event, verify_secret
from loomstack_kit.errors import InvalidArgument, NotFound, Unauthenticated

MESSAGES = [
    {"role": "system", "content": "Classify."},
    {"role": "user", "content": "My invoice is wrong"},
    {"role": "assistant", "content": '{"category": "Billing"}'},
]


def test_webhook_secret_is_required_and_compared() -> None:
    verify_secret("s3cret", "s3cret")
    for given in (None, "", "s3cre", "s3cret "):
        with pytest.raises(Unauthenticated):
            verify_secret("s3cret", given)
    with pytest.raises(Unauthenticated, match="no secret is configured"):
        verify_secret("", "anything")


def test_malformed_webhook_payloads_are_invalid_arguments() -> None:
    for payload in (None, [], {"annotation": {}}, {"action": 3}):
        with pytest.raises(InvalidArgument):
            handle_event(None, payload)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="malformed annotation"):
        handle_event(None, {"action": "ANNOTATION_CREATED", "annotation": {"result": []}})  # type: ignore[arg-type]
    # Other events are acknowledged and ignored.
    assert handle_event(None, {"action": "PROJECT_UPDATED"}).recorded == 0  # type: ignore[arg-type]


def test_only_successful_result_lines_are_read() -> None:
    inputs = [
        input_line("a", "first"),
        {
            **input_line("b", "second"),
            "body": {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "part one"},
                            {"type": "text", "text": "two"},
                        ],
                    }
                ],
                "metadata": {"ticket_id": "T-1"},
            },
        },
        input_line("c", "third"),
    ]
    outputs = [output_line("a", "A"), output_line("b", "B"), output_line("c", None)]
    results = read_results(jsonl(inputs), [*jsonl(outputs), b"", b"  "])
    assert [(r.custom_id, r.prompt, r.answer) for r in results.lines] == [
        ("a", "first", "A"),
        ("b", "part one\ntwo", "B"),
    ]
    assert results.lines[1].data == {"ticket_id": "T-1"}
    assert results.skipped == 1


def test_schema_type_names_an_id_and_optionally_a_version(tmp_path: Path) -> None:
    assert parse_schema_type("classify_ticket") == ("classify_ticket", None)
    assert parse_schema_type(" classify_ticket@2 ") == ("classify_ticket", 2)
    with pytest.raises(NotFound, match="must be a number"):
        parse_schema_type("classify_ticket@latest")
    catalog = SchemaCatalog(Path(__file__).resolve().parents[2] / "schemas")
    assert catalog.resolve("classify_ticket@1").key == "classify_ticket@1"
    with pytest.raises(NotFound, match="no version 9"):
        catalog.resolve("classify_ticket@9")
    missing = SchemaCatalog(tmp_path / "nowhere")
    assert missing.registry.problems and not missing.refresh()


def test_every_format_keeps_every_message() -> None:
    assert convert(MESSAGES, "openai_chat") == {"messages": MESSAGES}
    assert convert(MESSAGES, "alpaca") == {
        "instruction": "My invoice is wrong",
        "input": "",
        "output": '{"category": "Billing"}',
        "system": "Classify.",
    }
    assert convert(MESSAGES, "sharegpt")["conversations"] == [
        {"from": "system", "value": "Classify."},
        {"from": "human", "value": "My invoice is wrong"},
        {"from": "gpt", "value": '{"category": "Billing"}'},
    ]
    text = convert(MESSAGES, "chatml")["text"]
    assert text.count("<|im_start|>") == 3 and text.endswith("<|im_end|>\n")
    assert set(FORMATS) == {"openai_chat", "alpaca", "sharegpt", "chatml"}
    with pytest.raises(InvalidArgument):
        convert(MESSAGES, "csv")


def test_split_is_deterministic_and_near_the_fraction() -> None:
    keys = [example_key([{"role": "user", "content": f"q{i}"}]) for i in range(2000)]
    first = [is_validation(k, 0.2) for k in keys]
    assert first == [is_validation(k, 0.2) for k in keys]
    assert 0.17 < sum(first) / len(first) < 0.23
    assert not any(is_validation(k, 0.0) for k in keys)
    assert example_key(MESSAGES) == example_key(json.loads(json.dumps(MESSAGES)))


def test_project_titles_name_the_project_fit_label_studio_and_stay_unique() -> None:
    schema = TaskRegistry.load(Path(__file__).resolve().parents[2] / "schemas").get("rate_answer")
    short = project_title("team-a", schema)
    assert short.startswith("team-a/rate_answer@1 ") and len(short) <= MAX_TITLE
    assert project_title("team-b", schema) != short
    long_a = project_title("x" * 45 + "a", schema)
    long_b = project_title("x" * 45 + "b", schema)
    assert len(long_a) == len(long_b) == MAX_TITLE and long_a != long_b
    assert "/rate_answer@1~" in long_a  # the schema key stays readable
    # A prefix and a project can make the same title; the owner line tells them apart.
    assert project_title("b", schema, "a/") == project_title("a/b", schema)
    assert project_marker("b", schema, "a/") != project_marker("a/b", schema)
    long_prefix = project_title("p", schema, "y" * 60)
    assert len(long_prefix) == MAX_TITLE and long_prefix != project_title("q", schema, "y" * 60)


def test_agreement_is_the_mean_share_of_equal_answers() -> None:
    schema = TaskRegistry.load(Path(__file__).resolve().parents[2] / "schemas").get(
        "classify_ticket"
    )
    a = regions(schema, {"category": "Billing", "urgency": "Low"}, gold=True)
    b = regions(schema, {"category": "Billing", "urgency": "High"})
    assert agreement(schema, [a]) is None
    assert agreement(schema, [a, a]) == 1.0
    assert agreement(schema, [a, b]) == 0.5  # the gold star is not an answer
    assert agreement(schema, [a, a, b]) == pytest.approx((1 + 0.5 + 0.5) / 3)
