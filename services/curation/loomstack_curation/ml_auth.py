"""The ML backend's credentials: Label Studio's basic auth for ML backends.

A Label Studio ML backend connection (1.23: `MLBackend.auth_method = "BASIC_AUTH"` with
`basic_auth_user` / `basic_auth_pass`, the "Use authentication" fields of the Model settings)
makes Label Studio send `Authorization: Basic ...` on every call it makes to the backend:
`/health`, `/setup`, `/predict` (its `MLApi` adds the pair to each request). Every route of the
backend requires it; without configured credentials they are all refused, never open (fail
closed). Both parts are compared in constant time. (Label Studio also registers a plain
webhook to `<backend>/webhook` for training events, without the credentials: it is refused,
and Loomstack needs nothing from it.)
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from pathlib import Path

from fastapi.security import HTTPBasicCredentials

from loomstack_kit.errors import Unauthenticated

REALM = "Loomstack ML backend"


@dataclass(frozen=True)
class Credentials:
    """The user and password Label Studio must send."""

    username: str
    password: str = field(repr=False)


def load_credentials(
    username: str, password: str = "", password_file: Path | None = None
) -> Credentials | None:
    """The configured credentials (the password, else the file's first line); None unless
    both a user and a password are set."""
    if not password and password_file is not None:
        lines = password_file.read_text(encoding="utf-8").splitlines()
        password = lines[0].strip() if lines else ""
    if not username or not password:
        return None
    return Credentials(username, password)


def check(expected: Credentials | None, given: HTTPBasicCredentials | None) -> None:
    """Unauthenticated unless `given` is the configured pair."""
    if expected is None:
        raise Unauthenticated(
            "the ML backend is disabled: no credentials are configured (set "
            "LOOMSTACK_CURATION_ML_BACKEND_USERNAME and _PASSWORD or _PASSWORD_FILE)",
            code="ml_backend_disabled",
        )
    if given is None:
        raise Unauthenticated("the ML backend needs its basic auth credentials")
    # Both compared, whichever differs: the time says nothing about which one was wrong.
    user = hmac.compare_digest(expected.username.encode(), given.username.encode())
    password = hmac.compare_digest(expected.password.encode(), given.password.encode())
    if not (user and password):
        raise Unauthenticated("wrong ML backend credentials")
