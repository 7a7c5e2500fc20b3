"""A property-based fuzz of every operation of the gateway's own `/openapi.json` (schemathesis
over Hypothesis), against the real gateway in front of the real inference, curation and
training services on PostgreSQL (fuzz_stack.py).

Each operation gets the cases of schemathesis' coverage phase (boundary values of every
parameter: the documented bounds and one past them, empty and long strings, wrong types,
missing required fields) and EXAMPLES generated requests, valid and invalid by the schema.
Hooks widen what the generator sends: in half the requests a path parameter or body field that
names an object (`file_id`, `comparison_id`, `input_file_id`, `model`, …) names one of the
fuzzing project's, so that requests get past "not found"; a quarter of the JSON bodies carry a
lone UTF-16 surrogate in a string or key. Admin operations are sent with an admin key (a
project key gets 403 before anything else is looked at), every other one with a project key.

Every answer must be:
- not a server error: no 5xx, except 503 with `engine_not_ready` (chat: no vLLM engine runs
  here) and `label_studio_unavailable` (curation: no Label Studio runs here): answers about a
  component's availability, which the same request gets right while that component is down;
- for a 4xx or 5xx, OpenAI's error JSON `{"error": {"message", "type", "param", "code"}}`
  (and `line` for an input file's line);
- what the document says: a documented status, content type and headers, a body that fits
  the documented schema, the methods in `Allow`, and a 4xx for a request the schema says is
  invalid (schemathesis' checks; the reverse, "a valid request is accepted", is left out: see
  the test).

Generation is derandomized from a fixed seed (each operation's seed is derived from it and the
operation's name), so CI sends the same requests every run; a changed document changes them.
The line the module prints at the end counts the operations, requests and statuses and times
the run.
"""

from __future__ import annotations

import copy
import json
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from fuzz.fuzz_stack import KEY_FUZZ, KEY_FUZZ_ADMIN, MODEL_NAME, PLUGINS, FuzzStack, fuzz_stack
from hypothesis import strategies as st
from schemathesis import Case
from schemathesis.checks import CheckContext, not_a_server_error
from schemathesis.core.failures import Failure
from schemathesis.specs.openapi.checks import positive_data_acceptance

from loomstack_gateway.app import create_app
from loomstack_gateway.settings import GatewaySettings

# Generated requests per operation, on top of the coverage phase's cases. Measured on the
# 2-core machine: 5,816 requests in 119 s, the module (with the stack's start) 2 min 17 s; 150
# took 3 to 3.6 min while other work shared the cores.
EXAMPLES = 120
SEED = 20261202
# 503 codes that report a component which is not running here (see the module docstring),
# with the paths that may answer them.
AVAILABILITY = {
    "engine_not_ready": ("/v1/chat/completions",),
    "label_studio_unavailable": ("/v1/curation/",),
}
ERROR_FIELDS = {"message", "type", "param", "code"}
# An error about an input file's line also names the line (OpenAI's batch errors do).
OPTIONAL_ERROR_FIELDS = {"line"}


class ErrorShape(Failure):
    """A 4xx/5xx body that is not OpenAI's error JSON."""

    def __init__(self, *, operation: str, message: str) -> None:
        super().__init__(operation=operation, title="Not OpenAI's error shape", message=message)

    def _unique_key(self) -> str:
        return self.message


class ServerError(Failure):
    """A 5xx that is not an availability answer."""

    def __init__(self, *, operation: str, message: str) -> None:
        super().__init__(operation=operation, title="Server error", message=message)

    def _unique_key(self) -> str:
        return self.message


def _error_of(response: schemathesis.Response) -> dict[str, Any] | None:
    try:
        body = response.json()
    except ValueError:
        return None
    if not isinstance(body, dict) or set(body) != {"error"}:
        return None
    error = body["error"]
    if not isinstance(error, dict) or not ERROR_FIELDS <= set(error) <= (
        ERROR_FIELDS | OPTIONAL_ERROR_FIELDS
    ):
        return None
    if "line" in error and not isinstance(error["line"], int):
        return None
    if not all(isinstance(error[k], str) for k in ("message", "type")):
        return None
    if not all(error[k] is None or isinstance(error[k], str) for k in ("param", "code")):
        return None
    return error


def openai_error_shape(ctx: CheckContext, response: schemathesis.Response, case: Case) -> bool:
    """Every 4xx and 5xx body is `{"error": {"message", "type", "param", "code"}}`."""
    if response.status_code < 400 or _error_of(response) is not None:
        return True
    raise ErrorShape(
        operation=case.operation.label,
        message=f"{response.status_code} with body {response.text[:300]!r}",
    )


def no_server_error(ctx: CheckContext, response: schemathesis.Response, case: Case) -> bool:
    """No 5xx but the availability answers of AVAILABILITY on their own paths."""
    if response.status_code < 500:
        return True
    error = _error_of(response) or {}
    paths = AVAILABILITY.get(str(error.get("code")), ())
    if response.status_code == 503 and any(case.operation.path.startswith(p) for p in paths):
        return True
    raise ServerError(
        operation=case.operation.label,
        message=f"{response.status_code} with body {response.text[:300]!r}",
    )


def _is_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(key)
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


class Tally:
    """Requests sent, by operation and status, since the first test of the module."""

    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()
        self.statuses: Counter[tuple[str, int]] = Counter()
        self.surrogates = 0
        self.started = time.monotonic()

    def record(self, case: Case, status: int) -> None:
        self.requests[case.operation.label] += 1
        self.statuses[(case.operation.label, status)] += 1
        if isinstance(case.body, dict | list) and any(
            not _is_text(text) for text in _strings(case.body)
        ):
            self.surrogates += 1


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzStack]:
    with fuzz_stack(tmp_path_factory.mktemp("fuzz")) as stack:
        SEEDED.update(stack.seeded.ids)
        yield stack


@pytest.fixture(scope="module")
def tally(request: pytest.FixtureRequest) -> Iterator[Tally]:
    t = Tally()
    yield t
    elapsed = time.monotonic() - t.started
    by_status: Counter[int] = Counter()
    for (_, status), n in t.statuses.items():
        by_status[status] += n
    counts = t.requests.values()
    line = (
        f"gateway fuzz: {len(t.requests)} operations, {sum(counts)} requests "
        f"({min(counts, default=0)}-{max(counts, default=0)} an operation: {EXAMPLES} "
        f"generated + the coverage cases), {t.surrogates} with a lone surrogate, statuses "
        f"{dict(sorted(by_status.items()))}, {elapsed:.0f} s"
    )
    # Printed past pytest's capture: the run's figures belong in the CI log.
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if capture is not None and reporter is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(line)


def _fuzzed_document() -> dict[str, Any]:
    """The gateway's OpenAPI document, built by the gateway's own code at collection time (the
    test that follows checks the running gateway serves exactly this document)."""
    settings = GatewaySettings(
        service_secret="openapi-document-only",
        api_keys=f"{KEY_FUZZ}:fuzz",
        admin_backend="none",
        plugins=PLUGINS,
    )
    document: dict[str, Any] = create_app(settings).openapi()
    return document


DOCUMENT = _fuzzed_document()
# Filled by the `fuzz` fixture: ids of the objects it seeded, by path parameter name.
SEEDED: dict[str, list[str]] = {}
schema = schemathesis.openapi.from_dict(
    DOCUMENT,
    config=schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "generation": {
                "max-examples": EXAMPLES,
                "deterministic": True,
                "database": "none",
                # Requests without a key or with a wrong one are tests/gateway/
                # test_gateway_fail_closed.py's; here every request carries a valid key.
                "with-security-parameters": False,
            },
            "phases": {"examples": {"enabled": True}, "coverage": {"enabled": True}},
            "suppress-health-check": ["all"],
        }
    ),
)


@schema.hook
def flatmap_path_parameters(context: Any, path_parameters: dict[str, Any] | None) -> Any:
    # Half the requests name one of the project's objects, so that they get past 404. Deleting
    # requests keep their generated ids, so the other operations still find the objects.
    operation = context.operation
    if operation is None or operation.method.upper() == "DELETE":
        return st.just(path_parameters)
    if not path_parameters or not any(name in SEEDED for name in path_parameters):
        return st.just(path_parameters)
    return st.one_of(
        st.just(path_parameters),
        st.fixed_dictionaries(
            {
                name: st.sampled_from(SEEDED[name]) if name in SEEDED else st.just(value)
                for name, value in path_parameters.items()
            }
        ),
    )


# Schemathesis never generates a lone UTF-16 surrogate (its strings must encode for the wire),
# yet JSON can spell one (`"\\ud800"`) and Python's JSON parser keeps it.
LONE_SURROGATES = ("\ud800", "\udbff", "\udc00", "\udfff")
# Where a string sits in a body: the path of its container, the key or index, and whether it
# is the key itself.
Slot = tuple[tuple[Any, ...], Any, bool]


def _string_slots(value: Any, path: tuple[Any, ...] = ()) -> Iterator[Slot]:
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for key, item in items:
        if isinstance(value, dict):
            yield path, key, True
        if isinstance(item, str):
            yield path, key, False
        elif isinstance(item, dict | list):
            yield from _string_slots(item, (*path, key))


def _with_surrogate(body: Any, slot: Slot, surrogate: str) -> Any:
    body = copy.deepcopy(body)
    path, key, is_key = slot
    container = body
    for step in path:
        container = container[step]
    # Neither change may turn a request the generator made invalid into a valid one (the
    # negative-data check expects its rejection): a key gets a twin, a string stays a string.
    if is_key:
        container[f"{key}{surrogate}"] = container[key]
    else:
        text = container[key]
        container[key] = text[: len(text) // 2] + surrogate + text[len(text) // 2 :]
    return body


# Body fields that name an object, and the seeded ids (by path parameter name) they may take.
BODY_IDS = {
    "input_file_id": "file_id",
    "training_file": "file_id",
    "validation_file": "file_id",
    "model": "model_id",
    "model_a": "model_id",
    "model_b": "model_id",
}


def _with_seeded_ids(body: dict[str, Any]) -> Any:
    """Strategy: `body` with each string field that names an object set to one of the seeded
    ids (a field of another type stays: it may be what makes a negative case invalid)."""
    named = {
        k: st.sampled_from(SEEDED[BODY_IDS[k]])
        for k, v in body.items()
        if k in BODY_IDS and isinstance(v, str)
    }
    return st.fixed_dictionaries(named).map(lambda ids: {**body, **ids})


@schema.hook
def flatmap_body(context: Any, body: Any) -> Any:
    # Half the JSON bodies that name objects name the project's own (so they get past 404),
    # and a quarter of the JSON bodies get a lone surrogate in one of their strings or keys.
    operation = context.operation
    if operation is None or operation.get_request_payload_content_types() != ["application/json"]:
        return st.just(body)
    bodies = st.just(body)
    if isinstance(body, dict) and SEEDED and any(isinstance(body.get(k), str) for k in BODY_IDS):
        bodies = st.one_of(bodies, _with_seeded_ids(body))
    return bodies.flatmap(_maybe_with_surrogate)


def _maybe_with_surrogate(body: Any) -> Any:
    slots = list(_string_slots(body)) if isinstance(body, dict | list) else []
    if not slots:
        return st.just(body)
    mutated = st.builds(
        _with_surrogate, st.just(body), st.sampled_from(slots), st.sampled_from(LONE_SURROGATES)
    )
    return st.integers(0, 3).flatmap(lambda n: mutated if n == 0 else st.just(body))


def test_the_gateway_serves_the_fuzzed_document(fuzz: FuzzStack) -> None:
    served = httpx.get(f"{fuzz.gateway.url}/openapi.json", timeout=30)
    assert served.status_code == 200
    assert served.json() == DOCUMENT


def _no_long_poll(case: Case) -> None:
    """A valid `wait_seconds` becomes 0: the fuzzing project has no curation events, so each
    such request would be held for the whole wait (up to 30 s) to answer the same empty page.
    Invalid values stay as generated, so their 400 is still checked; the wait itself is tested
    with events (tests/curation/test_curation_events.py)."""
    query = case.query or {}
    wait = query.get("wait_seconds")
    if isinstance(wait, str) and wait.isascii() and wait.isdigit():
        wait = int(wait)
    if isinstance(wait, int) and not isinstance(wait, bool) and 0 < wait <= 30:
        case.query = {**query, "wait_seconds": 0}


@schema.parametrize()
def test_every_operation_answers_bad_input_with_a_4xx(
    case: Case, fuzz: FuzzStack, tally: Tally
) -> None:
    admin = "admin" in (case.operation.tags or [])
    key = KEY_FUZZ_ADMIN if admin else KEY_FUZZ
    _no_long_poll(case)
    response = case.call(
        base_url=fuzz.gateway.url, headers={"Authorization": f"Bearer {key}"}, timeout=60
    )
    tally.record(case, response.status_code)
    case.validate_response(
        response,
        additional_checks=[no_server_error, openai_error_shape],
        excluded_checks=[
            # Fails every 5xx; no_server_error admits the availability answers.
            not_a_server_error,
            # Fails a 400 to a request the schema allows. The services refuse, with a 400 the
            # error shape checks, what no schema of ours can express: a cancel of a job that
            # is cancelled already, a snapshot name that is not a name, an empty model. And
            # the generator rounds int64 bounds through floats (it sends 2**63 + 191 as
            # "valid").
            positive_data_acceptance,
        ],
        headers={"Authorization": f"Bearer {key}"},
    )


def test_a_batch_line_whose_custom_id_holds_nul_is_refused(fuzz: FuzzStack) -> None:
    # The generator sends no file content of this kind; PostgreSQL refuses NUL in the text
    # column the custom_id goes to, which made this a 500.
    line = {
        "custom_id": "line-\x00",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": MODEL_NAME, "messages": [{"role": "user", "content": "Hi"}]},
    }
    with fuzz.gateway.http(KEY_FUZZ) as http:
        uploaded = http.post(
            "/v1/files",
            files={"file": ("in.jsonl", json.dumps(line).encode() + b"\n")},
            data={"purpose": "batch"},
        )
        assert uploaded.status_code == 200, uploaded.text
        reply = http.post(
            "/v1/batches",
            json={
                "input_file_id": uploaded.json()["id"],
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
            },
        )
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert (error["code"], error["param"], error["line"]) == ("invalid_custom_id", "custom_id", 1)
