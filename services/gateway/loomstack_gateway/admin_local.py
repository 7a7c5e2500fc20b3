"""/admin/services on the embedded default: the local stack's processes, from its pid files.

`loomstack up` (cli/loomstack_cli/local_stack.py) starts each service as a background process
and records `run/<name>.pid` and `run/<name>.port` under the stack's home (`LOOMSTACK_HOME`,
which it also gives the gateway). This backend reads those files, asks each gRPC service its
grpc.health.v1 `readiness`, and restarts a service by stopping it (SIGTERM, then SIGKILL of its
process group after the grace period, as `loomstack down` does) and starting the same command
line again with the same environment and the same port, so the gateway's address for it stays
valid. No shell and no service manager: the process is re-executed directly.

The gateway cannot restart itself this way (it would kill the request asking for it), and a
local stack has one process per service, so scaling is refused with a clear message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import time
from datetime import UTC, datetime
from typing import Any

import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc

from loomstack_kit.errors import FailedPrecondition, NotFound, Unavailable

from .settings import GatewaySettings

log = logging.getLogger(__name__)

Json = dict[str, Any]
GATEWAY = "gateway"
# The pid file name → the module the process must run (a reused pid is not ours).
MODULES = {
    "inference": "loomstack_inference",
    "curation": "loomstack_curation",
    "training": "loomstack_training",
    GATEWAY: "loomstack_gateway",
}
# Environment variable that fixes each gRPC service's port when it is started again.
PORT_ENV = {
    "inference": "LOOMSTACK_INFERENCE_PORT",
    "curation": "LOOMSTACK_CURATION_PORT",
    "training": "LOOMSTACK_TRAINING_PORT",
}
STOP_GRACE_SECONDS = 60.0
START_TIMEOUT_SECONDS = 120.0
HEALTH_TIMEOUT_SECONDS = 1.0


class LocalAdmin:
    """Reports and restarts the processes of the local stack rooted at `settings.home`."""

    backend = "local"

    def __init__(self, settings: GatewaySettings) -> None:
        self.home = settings.home
        self.run_dir = self.home / "run"
        self.log_dir = self.home / "logs"

    def _names(self) -> list[str]:
        found = {p.stem for p in self.run_dir.glob("*.pid")} if self.run_dir.is_dir() else set()
        return sorted(found & set(MODULES))

    def _pid(self, name: str) -> int | None:
        try:
            return int((self.run_dir / f"{name}.pid").read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def _port(self, name: str) -> int | None:
        try:
            return int((self.run_dir / f"{name}.port").read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def _process(self, name: str) -> psutil.Process | None:
        """The running process of `name`, or None (gone, a zombie, or a pid reused by another)."""
        pid = self._pid(name)
        if pid is None:
            return None
        try:
            proc = psutil.Process(pid)
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
            if MODULES[name] not in " ".join(proc.cmdline()):
                return None
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None
        return proc

    async def _ready(self, name: str, running: bool) -> bool:
        if not running:
            return False
        if name == GATEWAY:
            return True  # it is answering this request
        port = self._port(name)
        if port is None:
            return False
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            try:
                reply = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service="readiness"),
                    timeout=HEALTH_TIMEOUT_SECONDS,
                )
            except grpc.RpcError:
                return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    async def _service(self, name: str) -> Json:
        proc = self._process(name)
        ready = await self._ready(name, proc is not None)
        process: Json = {
            "name": name,
            "pid": self._pid(name),
            "running": proc is not None,
            "ready": ready,
            "port": self._port(name),
            "log": str(self.log_dir / f"{name}.log"),
            "started_at": None,
            "gpus": None,
        }
        if proc is not None:
            with contextlib.suppress(psutil.Error):
                started = datetime.fromtimestamp(proc.create_time(), UTC)
                process["started_at"] = started.strftime("%Y-%m-%dT%H:%M:%SZ")
                visible = proc.environ().get("CUDA_VISIBLE_DEVICES")
                process["gpus"] = {"CUDA_VISIBLE_DEVICES": visible} if visible else None
        return {
            "name": name,
            "component": name,
            "model": None,
            "replicas": {
                "desired": 1,
                "ready": int(ready),
                "updated": int(proc is not None),
                "available": int(ready),
            },
            "restarts": self._restarts(name),
            "gpus": process["gpus"],
            "pods": [process],
            "events": None,
        }

    def _restarts(self, name: str) -> int:
        """Restarts through /admin since `loomstack up` started the service.

        The file holds `<count> <pid>`; a pid other than the running one means the stack was
        started afresh since, so the count starts again at 0.
        """
        try:
            count, pid = (self.run_dir / f"{name}.restarts").read_text().split()
            return int(count) if int(pid) == self._pid(name) else 0
        except (FileNotFoundError, ValueError):
            return 0

    async def list_services(self) -> Json:
        services = [await self._service(name) for name in self._names()]
        return {"object": "list", "backend": self.backend, "home": str(self.home), "data": services}

    async def restart(self, name: str) -> Json:
        if name not in self._names():
            raise NotFound(
                f"no local service named {name!r} (known: {', '.join(self._names()) or 'none'})",
                code="service_not_found",
                param="name",
            )
        if name == GATEWAY:
            raise FailedPrecondition(
                "the gateway cannot restart itself on the embedded default: "
                "run `loomstack down` and `loomstack up`",
                code="cannot_restart_gateway",
            )
        proc = self._process(name)
        if proc is None:
            raise FailedPrecondition(
                f"the local {name} process is not running, so there is no command line to "
                "start again: run `loomstack up`",
                code="service_not_running",
            )
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        await asyncio.to_thread(self._restart, name, proc)
        return {"name": name, "restarted_at": now, "service": await self._service(name)}

    def _restart(self, name: str, proc: psutil.Process) -> None:
        try:
            argv, env, cwd = proc.cmdline(), proc.environ(), proc.cwd()
        except psutil.Error as exc:
            log.warning("cannot read a local process", extra={"name": name, "error": repr(exc)})
            raise Unavailable(f"cannot read the {name} process") from exc
        port = self._port(name)
        if port is not None and name in PORT_ENV:
            env[PORT_ENV[name]] = str(port)  # the gateway keeps reaching it at the same address
        self._stop(proc)
        (self.run_dir / f"{name}.port").unlink(missing_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with (self.log_dir / f"{name}.log").open("ab") as log_file:
            started = subprocess.Popen(
                argv,
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        restarts = self._restarts(name) + 1
        (self.run_dir / f"{name}.pid").write_text(str(started.pid))
        (self.run_dir / f"{name}.restarts").write_text(f"{restarts} {started.pid}")
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if started.poll() is not None:
                raise Unavailable(
                    f"the restarted {name} process exited with code {started.returncode}; "
                    f"see its log, logs/{name}.log in the stack's home"
                )
            if self._port(name) is not None:
                return
            time.sleep(0.1)
        raise Unavailable(f"the restarted {name} process did not start listening in time")

    @staticmethod
    def _stop(proc: psutil.Process) -> None:
        """SIGTERM, wait for the graceful stop, then SIGKILL the process group (vLLM's children)."""
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        while time.monotonic() < deadline and _alive(proc):
            # A child of ours is reaped here; another's exited process stays a zombie until its
            # parent reaps it, which counts as stopped.
            with contextlib.suppress(psutil.NoSuchProcess, psutil.TimeoutExpired):
                proc.wait(0.1)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    async def scale(self, name: str, replicas: int) -> Json:
        raise FailedPrecondition(
            "the embedded default runs one process per service; scaling needs Kubernetes "
            "(helm/loomstack)",
            code="cannot_scale_locally",
        )


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
