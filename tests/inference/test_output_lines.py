"""Output lines stay one line for every reader: the separators JSON leaves raw are escaped."""

from __future__ import annotations

import json

import orjson

from loomstack_inference.engine import splittable


def test_line_separators_inside_an_answer_are_escaped() -> None:
    answer = "first\u2028second\u2029third\x85fourth — ok"
    raw = orjson.dumps({"custom_id": "a", "content": answer}).decode()
    assert len(raw.splitlines()) == 4  # what a str.splitlines() reader would see
    line = splittable(raw)
    assert line.splitlines() == [line]
    assert json.loads(line) == {"custom_id": "a", "content": answer}
    assert "\\u2028" in line and "\\u2029" in line and "\\u0085" in line


def test_an_ordinary_line_is_left_as_it_is() -> None:
    raw = orjson.dumps({"content": "plain text, ünïcödé, \\u2028 written out"}).decode()
    assert splittable(raw) is raw
