"""The gateway as the CLI sees it: the official openai client, and errors as one clear line.

`LOOMSTACK_BASE_URL` (default `http://127.0.0.1:8080/v1`) and `LOOMSTACK_API_KEY` (default the
development key) say where and who.
"""

from __future__ import annotations

import os
from typing import Any

import httpx
import openai

DEFAULT_BASE_URL = "http://127.0.0.1:8080/v1"
DEV_API_KEY = "sk-loomstack-dev"


class CliError(Exception):
    """A failure to report as `error: <message>` with exit code 2."""


def base_url() -> str:
    """The gateway's OpenAI base URL."""
    return os.environ.get("LOOMSTACK_BASE_URL", DEFAULT_BASE_URL).rstrip("/")


def api_key() -> str:
    """The API key the CLI sends (and that `loomstack up` configures)."""
    return os.environ.get("LOOMSTACK_API_KEY") or DEV_API_KEY


def root_url(url: str | None = None) -> str:
    """The gateway's root (where /healthz and /readyz live) for an OpenAI base URL."""
    url = (url or base_url()).rstrip("/")
    return url.removesuffix("/v1")


def client() -> openai.OpenAI:
    """An openai client for the gateway."""
    return openai.OpenAI(base_url=base_url(), api_key=api_key())


def send(method: str, path: str, **kwargs: Any) -> httpx.Response:
    """One call to a gateway route that is not the openai client's (`path` after `/v1`)."""
    try:
        return httpx.request(
            method,
            f"{base_url()}{path}",
            headers={"Authorization": f"Bearer {api_key()}"},
            timeout=300,
            **kwargs,
        )
    except httpx.TransportError:
        raise CliError(
            f"cannot reach the gateway at {base_url()} (is `loomstack up` running?)"
        ) from None


def error_message(response: httpx.Response) -> str:
    """An error response's OpenAI error as one line."""
    try:
        error = response.json().get("error", {})
    except ValueError:
        error = {"message": response.text or f"HTTP {response.status_code}"}
    param = f" (param: {error['param']})" if error.get("param") else ""
    return f"{error.get('message')}{param}"


def call(method: str, path: str, **kwargs: Any) -> httpx.Response:
    """`send`, with an error response as a CliError naming the service's message."""
    response = send(method, path, **kwargs)
    if response.status_code >= 400:
        raise CliError(error_message(response))
    return response


def describe(exc: Exception) -> str:
    """One line for an API failure: `<message> (param: ..., line: ...)`."""
    if isinstance(exc, openai.APIStatusError):
        error = _error_object(exc)
        message = str(error.get("message") or exc.message)
        details = [
            f"{key}: {error[key]}" for key in ("param", "line") if error.get(key) not in (None, "")
        ]
        suffix = f" ({', '.join(details)})" if details else ""
        return f"{message}{suffix}"
    if isinstance(exc, openai.APIConnectionError):
        return f"cannot reach the gateway at {base_url()} (is `loomstack up` running?)"
    return str(exc)


def _error_object(exc: openai.APIStatusError) -> dict[str, Any]:
    # The openai client stores the `error` object of the body (or the whole body).
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            return inner
    return {}
