"""Where keys come from: the key list (environment and/or file), `LOOMSTACK_API_KEY`, and the
development key, which is only a development key; a list that cannot be parsed stops the
gateway from starting, naming the entry, never the key."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from gateway_stack import clean_env, free_port, start_gateway, stop
from loomstack_gateway.auth import DEV_API_KEY, ApiKeys, KeyListError
from loomstack_gateway.settings import GatewaySettings
from loomstack_kit.identity import GATEWAY, IdentitySigner

SIGNER = IdentitySigner(b"unit-test-secret-0123", GATEWAY)
UNSET = object()


def keys(api_keys: str = "", api_key: str = "", api_keys_file: Path | None = None) -> ApiKeys:
    settings = GatewaySettings(api_keys=api_keys, api_key=api_key, api_keys_file=api_keys_file)
    return ApiKeys.from_settings(settings, SIGNER)


def project_of(keys: ApiKeys, key: str) -> object:
    """The key's project (None = admin), or UNSET when the key is refused."""
    caller = keys.authenticate(key.encode())
    return UNSET if caller is None else caller.project


def test_without_any_key_configured_the_dev_key_works() -> None:
    assert project_of(keys(), DEV_API_KEY) == "default"
    assert project_of(keys(api_key=DEV_API_KEY), DEV_API_KEY) == "default"


def test_a_key_list_turns_the_dev_key_off(caplog: pytest.LogCaptureFixture) -> None:
    listed = keys(api_keys="sk-a:team-a,sk-root:*")
    assert project_of(listed, DEV_API_KEY) is UNSET
    assert (project_of(listed, "sk-a"), project_of(listed, "sk-root")) == ("team-a", None)

    # `make up` passes LOOMSTACK_API_KEY=sk-loomstack-dev unless told otherwise: not a way in.
    with caplog.at_level(logging.WARNING):
        up = keys(api_keys="sk-a:team-a", api_key=DEV_API_KEY)
    assert project_of(up, DEV_API_KEY) is UNSET
    assert "development key" in caplog.text and "not accepted" in caplog.text


def test_a_list_that_names_the_dev_key_keeps_it() -> None:
    assert project_of(keys(api_keys=f"{DEV_API_KEY}:team-d"), DEV_API_KEY) == "team-d"
    both = keys(api_keys=f"{DEV_API_KEY}:team-d", api_key=DEV_API_KEY)
    assert project_of(both, DEV_API_KEY) == "team-d"


def test_loomstack_api_key_never_overrides_the_lists_project() -> None:
    # The CLI's key set to a listed admin key stays an admin key (it was the default project's).
    assert project_of(keys(api_keys="sk-root:*", api_key="sk-root"), "sk-root") is None
    # Another key of its own still joins the default project, as documented.
    other = keys(api_keys="sk-a:team-a", api_key="sk-mine")
    assert project_of(other, "sk-mine") == "default"


def test_keys_from_a_file(tmp_path: Path) -> None:
    file = tmp_path / "api-keys"
    file.write_text("sk-f1:team-f\nsk-f2:*,\n\n sk-f3:team-g \n")
    from_file = keys(api_keys_file=file)
    assert [project_of(from_file, k) for k in ("sk-f1", "sk-f2", "sk-f3")] == [
        "team-f",
        None,
        "team-g",
    ]
    assert project_of(from_file, DEV_API_KEY) is UNSET
    both = keys(api_keys="sk-e:team-e", api_keys_file=file)
    assert (project_of(both, "sk-e"), project_of(both, "sk-f1")) == ("team-e", "team-f")


@pytest.mark.parametrize(
    ("api_keys", "file_text", "expected"),
    [
        ("sk-ok:team-a,sk-SECRET-1:", None, "LOOMSTACK_GATEWAY_API_KEYS: entry 2 is not"),
        (":team-a", None, "LOOMSTACK_GATEWAY_API_KEYS: entry 1 is not"),
        ("sk-ok:team-a, sk-SECRET 2:team-b", None, "entry 2: the key contains whitespace"),
        ("sk-SECRET-3:not a project", None, "entry 1: the project is not a project name"),
        ("sk-SECRET-4:team-a,sk-SECRET-4:team-b", None, "entry 2 names the same key as"),
        (" , ", None, "LOOMSTACK_GATEWAY_API_KEYS is set but names no key"),
        ("", "", "names no key"),
        ("", "sk-ok:team-a\nsk-SECRET-5:", "LOOMSTACK_GATEWAY_API_KEYS_FILE"),
        ("sk-SECRET-6:team-a", "sk-SECRET-6:*", "names the same key as"),
    ],
)
def test_an_unusable_list_is_refused_by_entry(
    tmp_path: Path, api_keys: str, file_text: str | None, expected: str
) -> None:
    file = None
    if file_text is not None:
        file = tmp_path / "api-keys"
        file.write_text(file_text)
    with pytest.raises(KeyListError) as exc:
        keys(api_keys=api_keys, api_keys_file=file)
    message = str(exc.value)
    assert expected in message
    assert "SECRET" not in message


def test_an_unreadable_key_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(KeyListError) as exc:
        keys(api_keys_file=tmp_path / "missing")
    assert "cannot read" in str(exc.value)


def _start_failing(tmp_path: Path, **env: str) -> tuple[int, str, Path]:
    """Runs the gateway with `env`; (exit code, log, port file) once it has exited."""
    port_file = tmp_path / "gateway.port"
    proc = subprocess.run(
        [sys.executable, "-m", "loomstack_gateway"],
        env=clean_env(
            LOOMSTACK_GATEWAY_INFERENCE_ADDRESS=f"127.0.0.1:{free_port()}",
            LOOMSTACK_GATEWAY_PORT="0",
            LOOMSTACK_GATEWAY_PORT_FILE=str(port_file),
            **env,
        ),
        capture_output=True,
        timeout=60,
    )
    return proc.returncode, (proc.stdout + proc.stderr).decode(), port_file


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"LOOMSTACK_GATEWAY_API_KEYS": "sk-ok:team-a,sk-TOPSECRET:"}, "entry 2"),
        ({"LOOMSTACK_GATEWAY_RATE_LIMIT_STORAGE": "memcached://10.0.0.9:11211"}, "'memcached'"),
    ],
)
def test_the_gateway_refuses_to_start_with_an_unusable_configuration(
    tmp_path: Path, env: dict[str, str], named: str
) -> None:
    code, log, port_file = _start_failing(tmp_path, **env)
    assert code == 2, log
    assert "cannot start the gateway" in log and named in log
    assert "TOPSECRET" not in log and "10.0.0.9" not in log
    assert "Traceback" not in log
    assert not port_file.exists()  # it never listened


def test_make_up_with_a_key_file_accepts_only_the_listed_keys(
    tmp_path: Path, inference_address: str
) -> None:
    file = tmp_path / "api-keys"
    file.write_text("sk-from-file:team-f\n")
    # What `loomstack up` passes when LOOMSTACK_API_KEY is not set: the dev key.
    gw = start_gateway(
        tmp_path,
        inference_address,
        "key-file",
        LOOMSTACK_GATEWAY_API_KEYS="",
        LOOMSTACK_GATEWAY_API_KEYS_FILE=str(file),
        LOOMSTACK_API_KEY=DEV_API_KEY,
    )
    try:
        with httpx.Client(base_url=gw.url, timeout=30) as http:
            auth = {"Authorization": "Bearer sk-from-file"}
            assert http.get("/v1/models", headers=auth).status_code == 200
            dev = http.get("/v1/models", headers={"Authorization": f"Bearer {DEV_API_KEY}"})
            assert dev.status_code == 401
    finally:
        stop(gw.proc)
    assert "development key" in gw.log.read_text()
