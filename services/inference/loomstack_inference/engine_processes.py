"""vLLM's engine processes die with the inference process that started them.

vLLM runs an engine in processes of its own, started with multiprocessing's `spawn`: the
`EngineCore` (scheduler, KV cache) and, on the CPU backend and with tensor parallelism, a
`Worker` per device under it. Killed with SIGKILL (or by the OOM killer), the inference process
cannot stop them: they ran on as orphans (parent 1) holding the model's memory, on a GPU node
its GPU memory, so the replacement engine could not start. Two guards:

- `mark_owner()` (the inference process, before vLLM starts an engine) names the process and
  its home in the environment its engine processes inherit. `die_with_parent()` is a vLLM
  *general plugin* (entry point group `vllm.general_plugins`, which vLLM itself loads in each
  engine-core and worker process it spawns): in a marked process other than the owner it asks
  the kernel for SIGKILL when the parent dies (`prctl(PR_SET_PDEATHSIG)`), so an `EngineCore`
  dies with the inference process and a `Worker` with its `EngineCore`. vLLM's own death pipe
  only covers the workers, and only while the engine core is alive to notice.
- Each such process also records itself in `<home>/run/engines/<pid>.json` (its owner and start
  time). `stray_engine_processes(home)` finds the recorded processes that still run although
  their owner is no longer their ancestor (a run before this mechanism, a kernel without it);
  `loomstack up` and `loomstack down` stop them. A record is the only reliable mark: vLLM
  renames its processes (`VLLM::EngineCore`), which overwrites what /proc shows of their
  command line and environment.

Unmarked processes (a plain `vllm.LLM` in a benchmark, vLLM's own servers) are left alone.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from loomstack_kit.settings import default_home

log = logging.getLogger(__name__)

# The pid of the inference process whose engine this process belongs to (inherited).
OWNER_ENV = "LOOMSTACK_ENGINE_OWNER_PID"
# Where the engine processes of that owner record themselves (inherited).
RECORDS_ENV = "LOOMSTACK_ENGINE_RECORDS"
# Our vLLM general plugin (pyproject.toml: entry point group "vllm.general_plugins").
PLUGIN_NAME = "loomstack_die_with_parent"
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


@dataclass(frozen=True)
class EngineProcess:
    """A recorded engine process that still runs, and the inference process it belongs to."""

    process: psutil.Process
    owner: int

    @property
    def pid(self) -> int:
        return self.process.pid


def records_dir(home: Path) -> Path:
    """Where the engine processes of the inference services of `home` record themselves."""
    return home.resolve() / "run" / "engines"


def mark_owner(home: Path | None = None) -> None:
    """Marks this process as the owner of the engine processes it is about to start (`home`:
    the service's state directory, by default the one its settings use)."""
    home = home or default_home()
    os.environ[OWNER_ENV] = str(os.getpid())
    os.environ[RECORDS_ENV] = str(records_dir(home))
    engine_processes(home)  # forgets the records of engines that have exited since
    # VLLM_PLUGINS, when set, is an allow-list: keep ours in it.
    allowed = os.environ.get("VLLM_PLUGINS")
    if allowed is not None and PLUGIN_NAME not in allowed.split(","):
        os.environ["VLLM_PLUGINS"] = ",".join(p for p in (allowed, PLUGIN_NAME) if p)


def die_with_parent() -> None:
    """The vLLM general plugin: in an engine process of a marked owner, die with the parent.

    vLLM loads general plugins in every process it runs, the owner included (there this does
    nothing) and more than once per process (setting the signal again is harmless).
    """
    owner = os.environ.get(OWNER_ENV, "")
    if not owner.isdigit() or int(owner) == os.getpid() or not sys.platform.startswith("linux"):
        return
    _record(int(owner))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        log.warning(
            "engine process not tied to its parent",
            extra={"error": os.strerror(ctypes.get_errno())},
        )
        return
    # The parent may have died before the signal was set: then it will never come.
    parent = multiprocessing.parent_process()
    if parent is not None and parent.pid != os.getppid():
        os.kill(os.getpid(), signal.SIGKILL)
    _watch_owner(int(owner))


_watching = False


def _watch_owner(owner: int, interval: float = 1.0) -> None:
    """A second guard beside the parent-death signal (which the kernel ties to the thread that
    spawned a process, and a worker's to its engine core alone): a daemon thread that kills
    this process within `interval` once the owning inference process is gone (its pid exited
    or was reused, or it is a zombie). Started once per process."""
    global _watching
    if _watching:
        return
    try:
        owner_process = psutil.Process(owner)
    except psutil.Error:
        os.kill(os.getpid(), signal.SIGKILL)
        return
    _watching = True

    def gone() -> bool:
        try:  # a zombie is dead too: its parent may not have reaped it yet
            return not owner_process.is_running() or owner_process.status() == psutil.STATUS_ZOMBIE
        except psutil.Error:
            return True

    def watch() -> None:
        while not gone():
            time.sleep(interval)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="loomstack-owner-watch", daemon=True).start()


def _record(owner: int) -> None:
    """`<records>/<pid>.json`: this process, its owner and its start time (a reused pid has
    another start time)."""
    where = os.environ.get(RECORDS_ENV)
    if not where:
        return
    me = psutil.Process()
    path = Path(where) / f"{me.pid}.json"
    with contextlib.suppress(OSError, psutil.Error):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": me.pid, "owner": owner, "started": me.create_time()}))
        tmp.replace(path)


def engine_processes(home: Path) -> list[EngineProcess]:
    """The recorded engine processes of `home` that still run; forgets the other records."""
    found = []
    for path in sorted(records_dir(home).glob("*.json")):
        alive = None
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError, psutil.Error):
            record = json.loads(path.read_text())
            proc = psutil.Process(int(record["pid"]))
            same = abs(proc.create_time() - float(record["started"])) < 1.0
            if same and _running(proc):
                alive = EngineProcess(proc, int(record["owner"]))
        if alive is None:
            path.unlink(missing_ok=True)
        else:
            found.append(alive)
    return found


def stray_engine_processes(home: Path) -> list[EngineProcess]:
    """Engine processes of `home` whose inference process is gone: their owner is not among
    their ancestors any more (they were re-parented, whether or not the pid was reused)."""
    strays = []
    for engine in engine_processes(home):
        with contextlib.suppress(psutil.Error):
            if engine.owner not in {p.pid for p in engine.process.parents()}:
                strays.append(engine)
    return strays


def stop_strays(home: Path, timeout: float = 10.0) -> list[int]:
    """SIGKILLs the stray engine processes of `home` and waits for them; their pids."""
    strays = stray_engine_processes(home)
    for engine in strays:
        with contextlib.suppress(psutil.Error):
            engine.process.kill()
    alive = {e.pid for e in wait_gone(strays, timeout)}
    if alive:
        # Not ours to wait for longer (another user's, or stuck in the kernel): say so.
        log.warning("stray engine processes did not exit", extra={"pids": sorted(alive)})
    for engine in strays:
        if engine.pid not in alive:
            (records_dir(home) / f"{engine.pid}.json").unlink(missing_ok=True)
    return [e.pid for e in strays]


def wait_gone(engines: Sequence[EngineProcess], timeout: float) -> list[EngineProcess]:
    """Waits until the processes have exited (zombies count as exited); the ones left."""
    deadline = time.monotonic() + timeout
    left = [e for e in engines if _running(e.process)]
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = [e for e in left if _running(e.process)]
    return left


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
