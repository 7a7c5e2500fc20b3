"""`loomstack up` and `down` stop the vLLM engine processes an inference process of their home
left running when it was killed (the processes record themselves under `run/engines/`).

The survivor here is a stand-in: a plain process recorded exactly as an engine process records
itself, whose owner is gone, and that has no parent-death signal (as an engine of a run before
engine_processes.py, or on a kernel without PR_SET_PDEATHSIG). The real EngineCore and Worker
dying with their inference process is checked with vLLM in tests/inference/test_reliability.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from loomstack_inference.engine_processes import (
    engine_processes,
    records_dir,
    stray_engine_processes,
    wait_gone,
)
from support import MODEL_PATH, SERVICE_SECRET


def _record(home: Path, proc: psutil.Process, owner: int) -> None:
    where = records_dir(home)
    where.mkdir(parents=True, exist_ok=True)
    record = {"pid": proc.pid, "owner": owner, "started": proc.create_time()}
    (where / f"{proc.pid}.json").write_text(json.dumps(record))


def _dead_pid() -> int:
    """The pid of a process that has exited (the owner a killed run left behind)."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


@pytest.fixture()
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def _loomstack(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOMSTACK_")}
    env |= {
        "LOOMSTACK_SERVICE_SECRET": SERVICE_SECRET,
        "LOOMSTACK_INFERENCE_MODEL_PATH": MODEL_PATH,
        "LOOMSTACK_API_KEY": "sk-strays",
        "COLUMNS": "200",
    }
    return subprocess.run(
        [sys.executable, "-m", "loomstack_cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_only_engines_whose_owner_is_gone_are_strays(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    home = tmp_path / ".loomstack"
    proc = psutil.Process(sleeper.pid)
    # Its owner (this test process) is its parent: a live engine, not a stray.
    _record(home, proc, os.getpid())
    assert [e.pid for e in engine_processes(home)] == [sleeper.pid]
    assert stray_engine_processes(home) == []
    # Another home's engines are not this home's.
    assert engine_processes(tmp_path / "elsewhere") == []
    # A record whose pid now runs another program (another start time) is forgotten.
    stale = records_dir(home) / "1.json"
    stale.write_text(json.dumps({"pid": 1, "owner": 1, "started": 0.0}))
    assert [e.pid for e in engine_processes(home)] == [sleeper.pid]
    assert not stale.exists()


def test_up_and_down_stop_the_engines_a_killed_inference_process_left(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    home = tmp_path / ".loomstack"
    _record(home, psutil.Process(sleeper.pid), _dead_pid())
    assert [e.pid for e in stray_engine_processes(home)] == [sleeper.pid]
    up = _loomstack("up", "--roles", "api", "--port", "0", "--timeout", "60", cwd=tmp_path)
    try:
        assert up.returncode == 0, up.stderr + up.stdout
        assert (
            f"stopped 1 engine process(es) a killed inference process left running "
            f"(pids {sleeper.pid})" in up.stdout
        )
        assert sleeper.wait(10) == -9
        assert not (records_dir(home) / f"{sleeper.pid}.json").exists()
    finally:
        down = _loomstack("down", cwd=tmp_path)
    assert down.returncode == 0, down.stderr
    assert "engine process" not in down.stdout  # nothing was left to stop


def test_down_stops_them_too(tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    home = tmp_path / ".loomstack"
    engine = psutil.Process(sleeper.pid)
    _record(home, engine, _dead_pid())
    down = _loomstack("down", cwd=tmp_path)
    assert down.returncode == 0, down.stderr
    assert f"(pids {sleeper.pid})" in down.stdout
    assert sleeper.wait(10) == -9
    assert wait_gone(engine_processes(home), 1) == []


@pytest.mark.parametrize("reaped", [True, False])
def test_an_engine_process_dies_within_a_second_of_its_owner_without_the_parent_signal(
    reaped: bool,
) -> None:
    """The owner watch (engine_processes._watch_owner), the guard beside the parent-death
    signal: a process watching an owner that is not its parent kills itself once the owner
    has exited, whether or not the owner's parent reaped it yet (a zombie is dead too)."""
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    watcher = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from loomstack_inference.engine_processes import _watch_owner\n"
            f"_watch_owner({owner.pid}, 0.1)\n"
            "print('watching', flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert watcher.stdout is not None and watcher.stdout.readline() == b"watching\n"
        assert watcher.poll() is None  # the owner lives: so does the watcher
        owner.kill()
        if reaped:
            owner.wait(10)
        assert watcher.wait(10) == -9
    finally:
        for proc in (owner, watcher):
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
