"""GRPC_EXPERIMENTS: set before grpc is imported, and never silently too late (grpc_core.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from loomstack_kit import grpc_core

SERVICES = ["loomstack_inference", "loomstack_gateway", "loomstack_curation", "loomstack_training"]


def run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "GRPC_EXPERIMENTS"} | env
    return subprocess.run(
        [sys.executable, "-c", code], env=environ, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("package", SERVICES)
def test_a_service_package_sets_it_before_grpc_loads(package: str) -> None:
    done = run(
        f"import os, sys; import {package}; assert 'grpc' not in sys.modules; "
        "import grpc; print(os.environ['GRPC_EXPERIMENTS'])"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == grpc_core.GRPC_EXPERIMENTS
    assert "imported before" not in done.stderr


@pytest.mark.parametrize("package", SERVICES)
def test_a_service_whose_grpc_loaded_first_refuses_to_start(package: str) -> None:
    done = run(f"import grpc; from {package}.__main__ import main; main()")
    assert done.returncode == 1
    assert "grpc was imported before Loomstack set GRPC_EXPERIMENTS" in done.stderr
    assert "cannot start:" in done.stderr


def test_the_environments_own_value_wins_even_after_grpc() -> None:
    environ: dict[str, str] = {"GRPC_EXPERIMENTS": "-something"}
    grpc_core.apply_defaults(environ, {"grpc": object()})
    assert environ == {"GRPC_EXPERIMENTS": "-something"}
    grpc_core.require_defaults()  # nothing was too late: the value was the environment's
    done = run("import grpc, loomstack_gateway; print('ok')", GRPC_EXPERIMENTS="-x")
    assert done.returncode == 0 and done.stdout.strip() == "ok"
    assert "imported before" not in done.stderr


def test_too_late_in_process_warns(caplog: pytest.LogCaptureFixture) -> None:
    environ: dict[str, str] = {}
    saved = grpc_core._too_late
    try:
        grpc_core.apply_defaults(environ, {"grpc": object()})
        assert environ["GRPC_EXPERIMENTS"] == grpc_core.GRPC_EXPERIMENTS
        assert "grpc was imported before" in caplog.text
        with pytest.raises(SystemExit, match="cannot start: grpc was imported before"):
            grpc_core.require_defaults()
    finally:
        grpc_core._too_late = saved
