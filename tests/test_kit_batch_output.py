"""The kit's one reader of batch output lines, and the line splitter of streamed files."""

from __future__ import annotations

import random

import orjson
import pytest

from loomstack_kit.batch_output import NO_COMPLETION, OutputLine, parse_output_line, read_output
from loomstack_kit.service_client import split_lines


def line(**row: object) -> bytes:
    return orjson.dumps(row)


def completion(content: object) -> dict[str, object]:
    return {"status_code": 200, "body": {"choices": [{"message": {"content": content}}]}}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (line(custom_id="a", response=completion("hi"), error=None), OutputLine("a", "hi")),
        (line(custom_id="a", response=completion(None), error=None), OutputLine("a", "")),
        (
            line(
                custom_id="b",
                response={"status_code": 400, "body": {"error": {"message": "bad"}}},
                error={"code": "invalid_request", "message": "too long"},
            ),
            OutputLine("b", "", "too long"),
        ),
        (line(custom_id="c", error={"code": "expired"}), OutputLine("c", "", "expired")),
        (
            line(custom_id="d", response={"status_code": 500, "body": {}}),
            OutputLine("d", "", "the request ended with status 500"),
        ),
        (
            line(custom_id="e", response={"status_code": 200, "body": {"choices": []}}),
            OutputLine("e", "", NO_COMPLETION),
        ),
        (line(custom_id=7, response=completion("x")), OutputLine("7", "x")),
        (b"[1, 2]", OutputLine("None", "", "the result line is not a JSON object")),
    ],
)
def test_each_kind_of_result_line(raw: bytes, expected: OutputLine) -> None:
    assert parse_output_line(raw) == expected
    assert parse_output_line(raw).ok is (expected.error is None)


def test_read_output_skips_blank_lines_and_refuses_what_is_not_json() -> None:
    rows = list(read_output([line(custom_id="a", response=completion("x")), b"", b"  "]))
    assert rows == [OutputLine("a", "x")]
    with pytest.raises(orjson.JSONDecodeError):
        list(read_output([b"{not json"]))


def test_split_lines_matches_splitlines_wherever_the_chunks_break() -> None:
    data = b'{"a": 1}\n\n{"b": 2}\r\n{"c": 3}\r{"d": 4}\n   \n{"e": 5}'
    expected = [x for x in data.splitlines() if x.strip()]
    rng = random.Random(7)
    for _ in range(300):
        cuts = sorted(rng.sample(range(len(data) + 1), rng.randint(0, 8)))
        parts = [data[i:j] for i, j in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        assert list(split_lines(parts)) == expected, parts
