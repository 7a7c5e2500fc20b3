"""The Label Studio process wrapper's failure paths (the happy path is the session fixture)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from loomstack_curation.labelstudio_server import (
    LabelStudioNotInstalled,
    LabelStudioServer,
    LabelStudioStartError,
    executable_in,
    free_port,
    health,
    main,
)


def test_missing_installation_says_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(LabelStudioNotInstalled, match="make labelstudio-install"):
        executable_in(tmp_path / "no-venv")


def test_a_port_in_use_is_refused_before_starting(tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        server = LabelStudioServer(Path("/bin/true"), tmp_path / "data", port=port)
        with pytest.raises(LabelStudioStartError, match=f"port {port} on 127.0.0.1 is in use"):
            server.start(timeout=5)
    assert server.process is None


def test_a_server_that_exits_during_start_is_reported(tmp_path: Path) -> None:
    server = LabelStudioServer(Path("/bin/false"), tmp_path / "data", port=free_port())
    with pytest.raises(LabelStudioStartError, match="exited with status 1 during start"):
        server.start(timeout=30)
    assert server.process is None
    assert not health(server.url, timeout=0.5)


def test_token_must_be_40_hex_and_stop_without_server_is_harmless(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["stop", "--data-dir", str(tmp_path)]) == 0
    assert "not running" in capsys.readouterr().out
    code = main(["start", "--data-dir", str(tmp_path), "--token", "secret", "--venv", "x"])
    assert code == 2
    assert "40 lowercase hex digits" in capsys.readouterr().err
