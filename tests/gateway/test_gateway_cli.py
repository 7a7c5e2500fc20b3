"""The `loomstack` CLI as a user runs it: the local stack (api role, so no engine is needed) and
the batch commands against the test gateway, with their exit codes and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from openai import OpenAI

from gateway_stack import (
    KEY_A,
    MODEL_PATH,
    Gateway,
    clean_env,
    jsonl,
    poll,
    request_line,
)


def loomstack(
    *args: str, env: dict[str, str], cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Runs `loomstack ARGS` to its end."""
    return subprocess.run(
        [sys.executable, "-m", "loomstack_cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture()
def cli_env(gateway: Gateway) -> dict[str, str]:
    return clean_env(LOOMSTACK_BASE_URL=gateway.base_url, LOOMSTACK_API_KEY=KEY_A, COLUMNS="200")


@pytest.fixture()
def input_file(tmp_path: Path) -> Path:
    path = tmp_path / "input.jsonl"
    path.write_bytes(jsonl([request_line(f"cli-{i}") for i in range(3)]))
    return path


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), stderr
    return lines[0]


def test_submit_get_list_cancel(cli_env: dict[str, str], input_file: Path) -> None:
    submitted = loomstack(
        "batch", "submit", str(input_file), "--metadata", "team=cli", "--priority", "1",
        env=cli_env,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    batch_id = submitted.stdout.split()[0]
    assert batch_id.startswith("batch_")

    got = loomstack("batch", "get", batch_id, "--json", env=cli_env)
    assert got.returncode == 0, got.stderr
    doc = json.loads(got.stdout)
    assert (doc["id"], doc["status"], doc["priority"]) == (batch_id, "in_progress", 1)
    assert doc["metadata"] == {"team": "cli"}

    table = loomstack("batch", "get", batch_id, env=cli_env)
    assert table.returncode == 0 and "in_progress" in table.stdout

    listed = loomstack("batch", "list", "--limit", "5", env=cli_env)
    assert listed.returncode == 0 and batch_id in listed.stdout

    cancelled = loomstack("batch", "cancel", batch_id, env=cli_env)
    assert cancelled.returncode == 0
    assert cancelled.stdout.strip() in (f"{batch_id}: cancelling", f"{batch_id}: cancelled")

    no_output = loomstack("batch", "results", batch_id, env=cli_env)
    assert no_output.returncode == 2
    assert "has no output file" in _one_error_line(no_output.stderr)


def test_submit_checks_the_model(cli_env: dict[str, str], input_file: Path) -> None:
    result = loomstack("batch", "submit", str(input_file), "--model", "other", env=cli_env)
    assert result.returncode == 2
    line = _one_error_line(result.stderr)
    assert "(param: body.model, line: 1)" in line


def test_api_errors_are_one_line_with_param_and_line(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(jsonl([request_line("a"), request_line("b")]) + b"{oops\n")
    result = loomstack("batch", "submit", str(bad), env=cli_env)
    assert result.returncode == 2
    line = _one_error_line(result.stderr)
    assert "line 3" in line and line.endswith("(line: 3)")

    missing = loomstack("batch", "get", "batch_nope", env=cli_env)
    assert missing.returncode == 2
    assert _one_error_line(missing.stderr).endswith("(param: batch_id)")

    unreachable = loomstack(
        "batch", "list", env={**cli_env, "LOOMSTACK_BASE_URL": "http://127.0.0.1:9/v1"}
    )
    assert unreachable.returncode == 2
    assert "cannot reach the gateway" in _one_error_line(unreachable.stderr)

    usage = loomstack("batch", "submit", str(bad), "--metadata", "novalue", env=cli_env)
    assert usage.returncode == 2


def test_wait_ends_with_exit_1_when_cancelled(
    cli_env: dict[str, str], input_file: Path, client: OpenAI, tmp_path: Path
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "loomstack_cli", "batch", "submit", str(input_file), "--wait",
         "--download", str(tmp_path / "out"), "--interval", "0.2"],
        env={**cli_env, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        batch_id = proc.stdout.readline().strip()
        assert batch_id.startswith("batch_")
        client.batches.cancel(batch_id)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err
    assert f"{batch_id}: cancelled" in out
    assert "requests ok" in out and "output tokens/s" in out


def test_up_status_down(tmp_path: Path) -> None:
    env = clean_env(
        LOOMSTACK_INFERENCE_MODEL_PATH=MODEL_PATH, LOOMSTACK_API_KEY="sk-cli-test", COLUMNS="200"
    )
    up = loomstack("up", "--roles", "api", "--port", "0", "--timeout", "60", env=env, cwd=tmp_path)
    run = tmp_path / ".loomstack" / "run"
    try:
        assert up.returncode == 0, up.stderr + up.stdout
        assert "sk-cli-test" in up.stdout
        url = (run / "gateway.url").read_text().strip()
        assert f"{url}/v1" in up.stdout
        pids = [int((run / f"{name}.pid").read_text()) for name in ("inference", "gateway")]
        assert all(psutil.pid_exists(pid) for pid in pids)
        assert (tmp_path / ".loomstack" / "logs" / "gateway.log").exists()

        again = loomstack("up", "--roles", "api", "--port", "0", env=env, cwd=tmp_path)
        assert again.returncode == 0 and "already running" in again.stdout

        status = loomstack("status", env=env, cwd=tmp_path)
        assert status.returncode == 0, status.stderr
        assert "ready" in status.stdout and "SmolLM2-135M-Instruct" in status.stdout
    finally:
        down = loomstack("down", env=env, cwd=tmp_path)
    assert down.returncode == 0, down.stderr
    assert "stopped gateway" in down.stdout and "stopped inference" in down.stdout
    poll(lambda: [_alive(pid) for pid in pids], lambda alive: not any(alive), timeout=10)
    assert not list(run.glob("*.pid"))
    assert loomstack("down", env=env, cwd=tmp_path).stdout.strip() == "not running"
    assert (tmp_path / ".loomstack" / "inference.db").exists()


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
