"""The local stack: the inference, curation, training and gateway services as background
processes.

The curation service always starts; it talks to Label Studio only when one is configured
(`LOOMSTACK_CURATION_LABEL_STUDIO_URL`/`_TOKEN`, or the connection file `make labelstudio`
writes under `.loomstack/labelstudio/`). Without it, batches with `metadata.schema_type` wait
in the curation import queue.

Plugins: `LOOMSTACK_PLUGINS` (names, comma-separated; `make up` enables the repository's own)
enables them in curation and the gateway alike, unless `LOOMSTACK_CURATION_PLUGINS` or
`LOOMSTACK_GATEWAY_PLUGINS` says otherwise.

State lives under `.loomstack/` of the current directory: the inference service's database and
blobs, `logs/<name>.log`, and `run/<name>.pid` (+ the bound ports). Each process is started in
a session of its own, so stopping it also reaches its children (vLLM's engine-core process).
Engine processes that outlived an inference process killed earlier (recorded under
`run/engines/`, see loomstack_inference.engine_processes) are stopped by `up` and `down`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from loomstack_inference.engine_processes import stop_strays

INFERENCE, CURATION, TRAINING, GATEWAY = "inference", "curation", "training", "gateway"
MODULES = {
    INFERENCE: "loomstack_inference",
    CURATION: "loomstack_curation",
    TRAINING: "loomstack_training",
    GATEWAY: "loomstack_gateway",
}
NAMES = (INFERENCE, CURATION, TRAINING, GATEWAY)
CURATION_HTTP_PORT = "8091"  # Label Studio's webhook and ML backend URL
DEFAULT_MODEL_PATH = Path(".cache/models/SmolLM2-135M-Instruct")
# The Unsloth environment `make training-install` builds (the trainer's python).
TRAINER_PYTHON = Path(".cache/training-venv/bin/python")
# LoRA rank the local engine serves adapters up to (fine-tuned models, the eval gate).
LOCAL_MAX_LORA_RANK = "16"
# The file the services also read when no secret is configured (loomstack_kit.identity).
SERVICE_SECRET_FILE = "service-secret"
ML_BACKEND_PASSWORD_FILE = "curation-ml-backend.password"


class StackError(Exception):
    """The stack could not be started or stopped; `log_tail` says what the processes said."""

    def __init__(self, message: str, log_tail: str = "") -> None:
        super().__init__(message)
        self.log_tail = log_tail


@dataclass(frozen=True)
class ProcessState:
    """One of the stack's processes as its pid file describes it."""

    name: str
    pid: int | None
    running: bool


class LocalStack:
    """Starts, inspects and stops the stack rooted at `home`."""

    def __init__(self, home: Path) -> None:
        self.home = home.resolve()
        self.logs = self.home / "logs"
        self.run = self.home / "run"
        self._started: dict[str, subprocess.Popen[bytes]] = {}

    # -- paths ---------------------------------------------------------------------------------

    def pid_file(self, name: str) -> Path:
        return self.run / f"{name}.pid"

    def port_file(self, name: str) -> Path:
        return self.run / f"{name}.port"

    def log_file(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    @property
    def url_file(self) -> Path:
        return self.run / "gateway.url"

    # -- state ---------------------------------------------------------------------------------

    def state(self, name: str) -> ProcessState:
        """Whether the process named in the pid file runs (and is ours, not a reused pid)."""
        try:
            pid = int(self.pid_file(name).read_text().strip())
        except (FileNotFoundError, ValueError):
            return ProcessState(name, None, False)
        return ProcessState(name, pid, _is_ours(pid, MODULES[name]))

    def states(self) -> list[ProcessState]:
        return [self.state(name) for name in NAMES]

    def url(self) -> str | None:
        """The gateway's root URL recorded by `up`."""
        with contextlib.suppress(FileNotFoundError):
            return self.url_file.read_text().strip() or None
        return None

    # -- start ---------------------------------------------------------------------------------

    def start(
        self,
        *,
        host: str,
        port: int,
        roles: str,
        model_path: Path,
        api_key: str,
        timeout: float,
        on_wait: Callable[[str], None] = lambda _: None,
    ) -> str:
        """Starts both processes and waits until the gateway's /readyz answers 200; its URL."""
        self.logs.mkdir(parents=True, exist_ok=True)
        self.run.mkdir(parents=True, exist_ok=True)
        self._started = {}
        for name in NAMES:
            self.port_file(name).unlink(missing_ok=True)
        deadline = time.monotonic() + timeout
        try:
            inference_port = self._start_inference(roles, model_path, deadline, on_wait)
            curation_port = self._start_curation(inference_port, deadline, on_wait)
            training_port = self._start_training(inference_port, deadline, on_wait)
            upstreams = {
                "LOOMSTACK_GATEWAY_INFERENCE_ADDRESS": f"127.0.0.1:{inference_port}",
                "LOOMSTACK_GATEWAY_CURATION_ADDRESS": f"127.0.0.1:{curation_port}",
                "LOOMSTACK_GATEWAY_TRAINING_ADDRESS": f"127.0.0.1:{training_port}",
            }
            url = self._start_gateway(host, port, upstreams, api_key, deadline, on_wait)
            self.url_file.write_text(url)
            on_wait("loading the model" if "engine" in roles else "waiting for readiness")
            self._wait_ready(url, deadline)
        except BaseException:
            self.stop(grace=10)
            raise
        return url

    def _spawn(self, name: str, env: dict[str, str]) -> None:
        if not env.get("LOOMSTACK_SERVICE_SECRET"):
            # The services sign the identities they forward to each other with it.
            self._kept_secret(SERVICE_SECRET_FILE)
            env.setdefault("LOOMSTACK_SERVICE_SECRET_FILE", str(self.home / SERVICE_SECRET_FILE))
        with self.log_file(name).open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", MODULES[name]],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pid_file(name).write_text(str(proc.pid))
        self._started[name] = proc

    def _start_inference(
        self, roles: str, model_path: Path, deadline: float, on_wait: Callable[[str], None]
    ) -> int:
        env = dict(os.environ)
        env.update(
            LOOMSTACK_HOME=str(self.home),
            LOOMSTACK_INFERENCE_ROLES=roles,
            LOOMSTACK_INFERENCE_MODEL_PATH=str(model_path.resolve()),
            LOOMSTACK_INFERENCE_PORT="0",
            LOOMSTACK_INFERENCE_PORT_FILE=str(self.port_file(INFERENCE)),
        )
        # Queue depth, lines and tokens processed, throughput: http://127.0.0.1:9464/metrics
        env.setdefault("LOOMSTACK_INFERENCE_METRICS_PORT", "9464")
        env.setdefault("LOOMSTACK_INFERENCE_MAX_LORA_RANK", LOCAL_MAX_LORA_RANK)
        self._spawn(INFERENCE, env)
        on_wait("starting the inference service")
        return int(self._wait_for_port(INFERENCE, deadline))

    def _label_studio(self) -> dict[str, str]:
        """Label Studio's URL and token from the connection file `make labelstudio` writes."""
        found: dict[str, str] = {}
        connection = self.home / "labelstudio" / "connection.env"
        with contextlib.suppress(OSError):
            for line in connection.read_text().splitlines():
                key, _, value = line.partition("=")
                found[key.strip()] = value.strip()
        if not found.get("LABEL_STUDIO_URL") or not found.get("LABEL_STUDIO_API_KEY"):
            return {}
        return {
            "LOOMSTACK_CURATION_LABEL_STUDIO_URL": found["LABEL_STUDIO_URL"],
            "LOOMSTACK_CURATION_LABEL_STUDIO_TOKEN": found["LABEL_STUDIO_API_KEY"],
        }

    def _kept_secret(self, name: str) -> str:
        """A random secret under the home, generated once and kept across restarts (mode 0600)."""
        path = self.home / name
        with contextlib.suppress(OSError):
            if secret := path.read_text().strip():
                return secret
        secret = secrets.token_hex(32)
        self.home.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secret)
        return secret

    def _webhook_secret(self) -> str:
        """The curation webhook's secret (Label Studio's webhooks were registered with it)."""
        return self._kept_secret("curation-webhook.secret")

    def _start_curation(
        self, inference_port: int, deadline: float, on_wait: Callable[[str], None]
    ) -> int:
        env = dict(os.environ)
        for key, value in self._label_studio().items():
            env.setdefault(key, value)
        env.setdefault("LOOMSTACK_CURATION_HTTP_PORT", CURATION_HTTP_PORT)
        env.setdefault(
            "LOOMSTACK_CURATION_PUBLIC_URL",
            f"http://127.0.0.1:{env['LOOMSTACK_CURATION_HTTP_PORT']}",
        )
        env.setdefault("LOOMSTACK_CURATION_WEBHOOK_SECRET", self._webhook_secret())
        # The credentials to enter in Label Studio's ML backend connection ("Use authentication"):
        # user `label-studio`, the password in .loomstack/curation-ml-backend.password.
        env.setdefault("LOOMSTACK_CURATION_ML_BACKEND_USERNAME", "label-studio")
        if not env.get("LOOMSTACK_CURATION_ML_BACKEND_PASSWORD"):
            self._kept_secret(ML_BACKEND_PASSWORD_FILE)
            env.setdefault(
                "LOOMSTACK_CURATION_ML_BACKEND_PASSWORD_FILE",
                str(self.home / ML_BACKEND_PASSWORD_FILE),
            )
        env.setdefault("LOOMSTACK_CURATION_PLUGINS", os.environ.get("LOOMSTACK_PLUGINS", ""))
        schemas = Path("schemas")
        if schemas.is_dir():
            env.setdefault("LOOMSTACK_CURATION_SCHEMAS_DIR", str(schemas.resolve()))
        env.update(
            LOOMSTACK_HOME=str(self.home),
            LOOMSTACK_CURATION_INFERENCE_ADDRESS=f"127.0.0.1:{inference_port}",
            LOOMSTACK_CURATION_PORT="0",
            LOOMSTACK_CURATION_PORT_FILE=str(self.port_file(CURATION)),
        )
        self._spawn(CURATION, env)
        on_wait("starting the curation service")
        return int(self._wait_for_port(CURATION, deadline))

    def _start_training(
        self, inference_port: int, deadline: float, on_wait: Callable[[str], None]
    ) -> int:
        env = dict(os.environ)
        if TRAINER_PYTHON.exists():
            env.setdefault("LOOMSTACK_TRAINING_TRAINER_PYTHON", str(TRAINER_PYTHON.absolute()))
        env.update(
            LOOMSTACK_HOME=str(self.home),
            LOOMSTACK_TRAINING_INFERENCE_ADDRESS=f"127.0.0.1:{inference_port}",
            LOOMSTACK_TRAINING_PORT="0",
            LOOMSTACK_TRAINING_PORT_FILE=str(self.port_file(TRAINING)),
        )
        self._spawn(TRAINING, env)
        on_wait("starting the training service")
        return int(self._wait_for_port(TRAINING, deadline))

    def _start_gateway(
        self,
        host: str,
        port: int,
        upstreams: dict[str, str],
        api_key: str,
        deadline: float,
        on_wait: Callable[[str], None],
    ) -> str:
        env = dict(os.environ)
        env.setdefault("LOOMSTACK_GATEWAY_PLUGINS", os.environ.get("LOOMSTACK_PLUGINS", ""))
        env.update(
            LOOMSTACK_HOME=str(self.home),
            LOOMSTACK_GATEWAY_HOST=host,
            LOOMSTACK_GATEWAY_PORT=str(port),
            LOOMSTACK_GATEWAY_PORT_FILE=str(self.port_file(GATEWAY)),
            LOOMSTACK_API_KEY=api_key,
            **upstreams,
        )
        self._spawn(GATEWAY, env)
        on_wait("starting the gateway")
        bound = self._wait_for_port(GATEWAY, deadline)
        shown_host = f"[{host}]" if ":" in host else host
        return f"http://{shown_host}:{bound}"

    def _wait_for_port(self, name: str, deadline: float) -> str:
        path = self.port_file(name)
        while time.monotonic() < deadline:
            if path.exists() and (text := path.read_text().strip()):
                return text
            self._check_alive()
            time.sleep(0.1)
        raise StackError(f"the {name} did not start listening in time", self.log_tail())

    def _wait_ready(self, url: str, deadline: float) -> None:
        with httpx.Client(timeout=5) as http:
            while time.monotonic() < deadline:
                with contextlib.suppress(httpx.TransportError):
                    if http.get(f"{url}/readyz").status_code == 200:
                        return
                self._check_alive()
                time.sleep(0.5)
        raise StackError("the stack did not become ready in time", self.log_tail())

    def _check_alive(self) -> None:
        for name, proc in self._started.items():
            if proc.poll() is not None:
                raise StackError(
                    f"the {name} process exited with code {proc.returncode}", self.log_tail()
                )

    def log_tail(self, lines: int = 25) -> str:
        """The last lines of each log."""
        parts = []
        for name in NAMES:
            path = self.log_file(name)
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"==> {path} <==\n" + "\n".join(tail))
        return "\n\n".join(parts)

    @staticmethod
    def trainer_missing() -> str | None:
        """The trainer environment's python the training service will lack, if it will (its
        jobs then fail, saying how to install it)."""
        configured = os.environ.get("LOOMSTACK_TRAINING_TRAINER_PYTHON")
        if configured:
            return None if Path(configured).is_file() else configured
        return None if TRAINER_PYTHON.exists() else str(TRAINER_PYTHON)

    # -- stop ----------------------------------------------------------------------------------

    def stop_stray_engines(self) -> list[int]:
        """Stops the vLLM engine processes an inference process of this home left running when
        it was killed (they hold the model's memory); their pids."""
        return stop_strays(self.home)

    def stop(self, grace: float = 60.0) -> list[ProcessState]:
        """SIGTERM each running process, wait up to `grace` s, then SIGKILL its process group."""
        running = [s for s in map(self.state, reversed(NAMES)) if s.running]
        for state in running:
            assert state.pid is not None
            with contextlib.suppress(ProcessLookupError):
                os.kill(state.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for state in running:
            assert state.pid is not None
            _wait_gone(state.pid, deadline)
            # The whole group, graceful exit or not: children such as vLLM's engine core may
            # outlive their parent.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(state.pid, signal.SIGKILL)
        for name in NAMES:
            self.pid_file(name).unlink(missing_ok=True)
            self.port_file(name).unlink(missing_ok=True)
        self.url_file.unlink(missing_ok=True)
        return running


def _is_ours(pid: int, module: str) -> bool:
    """Whether `pid` runs `module` (and is not a later process that got the pid)."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        cmdline = proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    # A process that has just been started can show an empty command line for a moment.
    return not cmdline or module in " ".join(cmdline)


def _wait_gone(pid: int, deadline: float) -> None:
    try:
        proc = psutil.Process(pid)
        proc.wait(max(0.0, deadline - time.monotonic()))
    except (psutil.NoSuchProcess, psutil.TimeoutExpired):
        pass
