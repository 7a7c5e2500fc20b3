"""`loomstack up` never prints the development key as the key to use when the gateway it starts
refuses it (a key list that does not name it is configured)."""

from __future__ import annotations

from pathlib import Path

import pytest

from loomstack_cli.app import _dev_key_refused

DEV = "sk-loomstack-dev"


@pytest.mark.parametrize(
    ("listed", "refused"),
    [
        ("", False),
        ("sk-a:team-a,sk-admin:*", True),
        ("sk-a:team-a,sk-loomstack-dev:default", False),
        ("sk-a:team-a\nsk-loomstack-dev", False),
    ],
)
def test_the_dev_key_is_printed_only_where_the_gateway_takes_it(
    listed: str, refused: bool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("LOOMSTACK_GATEWAY_API_KEYS_FILE", raising=False)
    monkeypatch.setenv("LOOMSTACK_GATEWAY_API_KEYS", listed)
    assert _dev_key_refused(DEV) is refused
    assert _dev_key_refused("sk-a") is False
    # The same list in the key file the chart mounts.
    monkeypatch.delenv("LOOMSTACK_GATEWAY_API_KEYS")
    keys = tmp_path / "keys"
    keys.write_text(listed)
    monkeypatch.setenv("LOOMSTACK_GATEWAY_API_KEYS_FILE", str(keys))
    assert _dev_key_refused(DEV) is refused
