"""One way for every test to run a real Loomstack service as a process: `ServiceProcess` starts
`python -m <package>` in its own process group with a temporary home, waits for the ports it
writes (port 0 picks free ones), then for its health; it stops it with SIGTERM (SIGKILL to the
group past the timeout) and kills whatever the group left. The four services' process classes
(support.InferenceProcess, training_support.TrainingProcess and GatewayProcess,
curation_support.CurationProcess) and gateway_stack's starters are built on it.

This module is the bottom of the tests' support modules: it imports none of them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from contextlib import suppress
from pathlib import Path
from typing import Any, TypeVar

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

P = TypeVar("P", bound="ServiceProcess")


def wait_until(predicate, timeout: float, interval: float = 0.2, what: str = "condition"):  # type: ignore[no-untyped-def]
    """Polls `predicate` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def health_status(address: str, service: str, timeout: float = 2.0) -> str:
    """grpc.health.v1 status name of `service`, or UNREACHABLE."""
    try:
        with grpc.insecure_channel(address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
            return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    except grpc.RpcError:
        return "UNREACHABLE"


def http_healthy(url: str) -> bool:
    """Whether `url` answers 200 (a gateway's /healthz)."""
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


class ServiceProcess:
    """A real `python -m <package>` process; `ports` names the port files it writes."""

    package = ""

    def __init__(
        self,
        home: Path,
        name: str,
        env: Mapping[str, str],
        ports: Mapping[str, Path],
        *,
        log_path: Path | None = None,
        log_mode: str = "ab",
    ) -> None:
        self.home = home
        self.name = name
        self.env = dict(env)
        self.port_files = dict(ports)
        self.log_path = log_path or home / f"{name}.log"
        self.log_mode = log_mode
        self.proc: subprocess.Popen[bytes] | None = None
        self.ports: dict[str, int] = {}

    def start(self: P, timeout: float = 60) -> P:
        """Starts the process and waits until it has written every port file."""
        self.home.mkdir(parents=True, exist_ok=True)
        for path in self.port_files.values():
            path.unlink(missing_ok=True)
        log = open(self.log_path, self.log_mode)  # noqa: SIM115 — kept open for the child's lifetime
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.package],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()  # the child holds its own copy

        def written() -> bool:
            return all(_text(p) for p in self.port_files.values())

        try:
            wait_until(lambda: written() or self.died(), timeout, 0.05, f"{self.name} ports")
            self.died(raise_=True)
        except BaseException:
            self.terminate(15)
            raise
        self.ports = {key: int(_text(path)) for key, path in self.port_files.items()}
        return self

    @property
    def port(self) -> int:
        return next(iter(self.ports.values()), 0)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def died(self, raise_: bool = False) -> bool:
        """Whether the process has exited (with `raise_`, RuntimeError with its log's tail)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            return False
        if raise_:
            raise RuntimeError(
                f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}"
            )
        return True

    def wait_healthy(
        self: P, check: Callable[[], bool], timeout: float, interval: float = 0.5, what: str = ""
    ) -> P:
        """Waits for `check`; the process dying first is a RuntimeError with its log."""
        wait_until(
            lambda: self.died(raise_=True) or check(),
            timeout,
            interval,
            what or f"{self.name} health",
        )
        return self

    def wait_ready(self: P, timeout: float = 300) -> P:
        """Waits until its gRPC readiness check says SERVING."""
        return self.wait_healthy(
            lambda: health_status(self.address, "readiness") == "SERVING",
            timeout,
            what=f"{self.name} readiness",
        )

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def kill9(self, *, group: bool = False) -> None:
        """SIGKILL the process alone (as `kill -9 <pid>` does) or its whole process group."""
        assert self.proc is not None
        if group:
            os.killpg(self.proc.pid, signal.SIGKILL)
        else:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM and wait for a graceful exit (SIGKILL to the group past `timeout`); then
        whatever its process group left (vLLM's engine processes) is killed too."""
        return 0 if self.proc is None else stop_process(self.proc, timeout)

    def __enter__(self: P) -> P:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.terminate()


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15) -> int:
    """Stops a service process: SIGTERM and a wait for its graceful exit, SIGKILL to its
    process group past `timeout`, then whatever the group left is killed; its exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode


def _text(path: Path) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return ""
