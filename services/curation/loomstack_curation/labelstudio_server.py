"""Run a real Label Studio server as a local process: for `make labelstudio` and the test fixture.

Label Studio lives in its own virtual environment (it pins Django), so this module only starts
its `label-studio` executable with a data directory, a known user and API token, waits until
`GET /health` answers `{"status": "UP"}` and stops the whole process group again.

    python -m loomstack_curation.labelstudio_server start --venv .cache/labelstudio-venv \
        --data-dir .loomstack/labelstudio --port 8089
    python -m loomstack_curation.labelstudio_server stop --data-dir .loomstack/labelstudio
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO

DEFAULT_USERNAME = "admin@loomstack.local"
DEFAULT_PASSWORD = "loomstack-admin"
PID_FILE = "server.pid"
LOG_FILE = "server.log"
CONNECTION_FILE = "connection.env"


class LabelStudioNotInstalled(RuntimeError):
    """The Label Studio virtual environment has no `label-studio` executable."""


class LabelStudioStartError(RuntimeError):
    """The server exited or did not become healthy before the deadline."""


def new_token() -> str:
    """A 40-hex API token, the shape of Label Studio's own legacy tokens."""
    return secrets.token_hex(20)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (Label Studio cannot bind port 0 and report it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(host: str, port: int) -> bool:
    """Whether `port` can be bound on `host` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the server will: a port in TIME_WAIT is free, one with a listener is not.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def executable_in(venv: Path) -> Path:
    """The `label-studio` executable of a virtual environment, or LabelStudioNotInstalled."""
    exe = venv.absolute() / "bin" / "label-studio"
    if not exe.is_file():
        raise LabelStudioNotInstalled(
            f"Label Studio is not installed: {exe} does not exist (run `make labelstudio-install`)"
        )
    return exe


# Loopback needs no proxy, whatever the environment says.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def health(url: str, timeout: float = 2.0) -> bool:
    """Whether the server at `url` answers `GET /health` with `{"status": "UP"}`."""
    try:
        with _DIRECT.open(f"{url}/health", timeout=timeout) as response:
            body = json.loads(response.read() or b"{}")
    except (OSError, ValueError):
        return False
    return isinstance(body, dict) and body.get("status") == "UP"


@dataclass
class LabelStudioServer:
    """One Label Studio process with its own data directory, user and API token."""

    executable: Path
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8089
    username: str = DEFAULT_USERNAME
    password: str = DEFAULT_PASSWORD
    token: str = field(default_factory=new_token)
    log_path: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _log: IO[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def log_file(self) -> Path:
        """Where the server's output goes."""
        return self.log_path or self.data_dir.parent / LOG_FILE

    @property
    def url(self) -> str:
        """Base URL of the server (no trailing slash)."""
        return f"http://{self.host}:{self.port}"

    def argv(self) -> list[str]:
        """The command line; the rest of the configuration goes through the environment."""
        return [
            str(self.executable),
            "start",
            "--no-browser",
            # `--host` only sets the URL prefix of generated links; this is the bind address.
            "--internal-host",
            self.host,
            "--port",
            str(self.port),
        ]

    def environment(self) -> dict[str, str]:
        """The server's environment: ours, minus stray Label Studio settings, plus its own."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("LABEL_STUDIO_")}
        env.update(
            {
                "LABEL_STUDIO_BASE_DATA_DIR": str(self.data_dir),
                "LABEL_STUDIO_USERNAME": self.username,
                "LABEL_STUDIO_PASSWORD": self.password,
                "LABEL_STUDIO_USER_TOKEN": self.token,
                # Without it every API call with the token above is refused.
                "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
                # These machines have no internet: skip the update check and telemetry.
                "LATEST_VERSION_CHECK": "false",
                "COLLECT_ANALYTICS": "false",
                "SENTRY_DSN": "",
                "FRONTEND_SENTRY_DSN": "",
                "PYTHONUNBUFFERED": "1",
                # This server and the curation service share the loopback interface: let its
                # webhooks and ML backend calls reach 127.0.0.1 (blocked by default as SSRF;
                # an ML backend's URL has its own switch).
                "SSRF_PROTECTION_ENABLED": "false",
                "ML_BLOCK_LOCAL_IP": "false",
            }
        )
        return env

    def start(self, timeout: float = 240.0) -> None:
        """Starts the server and returns once it is healthy; raises LabelStudioStartError."""
        if self.process is not None:
            raise RuntimeError("the server is running already")
        if not port_is_free(self.host, self.port):
            # Label Studio would silently move to another free port.
            raise LabelStudioStartError(f"port {self.port} on {self.host} is in use")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._log = self.log_file.open("ab")
        self.process = subprocess.Popen(
            self.argv(),
            env=self.environment(),
            cwd=self.data_dir,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            # Its own process group: the server outlives `make` and stop() reaches its workers.
            start_new_session=True,
        )
        try:
            self.wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise

    def wait_healthy(self, timeout: float) -> None:
        """Polls `/health` until it is UP, the process exits, or the deadline passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise LabelStudioStartError(
                    f"Label Studio exited with status {self.process.returncode} during start; "
                    f"see {self.log_file}"
                )
            if health(self.url):
                return
            time.sleep(0.5)
        raise LabelStudioStartError(
            f"Label Studio did not answer {self.url}/health within {timeout:.0f} s"
        )

    def stop(self, grace: float = 20.0) -> None:
        """Stops the process group: SIGTERM, then SIGKILL after `grace` seconds."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            stop_group(process.pid, grace, process)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> LabelStudioServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def stop_group(pid: int, grace: float, process: subprocess.Popen[bytes] | None = None) -> None:
    """SIGTERM to the process group led by `pid`, SIGKILL if it is still there after `grace`."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if process is not None:
            try:
                process.wait(timeout=0.2)
                return
            except subprocess.TimeoutExpired:
                continue
        if not _alive(pid):
            return
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    if process is not None:
        process.wait()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _running_pid(pid_file: Path) -> int | None:
    """The pid in `pid_file` if that process is still a Label Studio server (not a reused pid)."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    if pid <= 0 or not _alive(pid):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return pid  # no /proc (macOS): trust the pid file
    return pid if b"label-studio" in cmdline else None


def _start_command(args: argparse.Namespace) -> int:
    root = Path(args.data_dir).resolve()
    pid_file = root / PID_FILE
    running = _running_pid(pid_file)
    if running is not None:
        print(f"Label Studio runs already (pid {running}); stop it first (make labelstudio-stop)")
        return 1
    if args.token and not re.fullmatch(r"[0-9a-f]{40}", args.token):
        print("error: the token must be 40 lowercase hex digits", file=sys.stderr)
        return 2
    executable = executable_in(Path(args.venv))
    data_dir = root / "data"
    prepare_data_dir(data_dir, fresh=args.fresh)
    # The token only applies when the user is created: a kept data dir keeps its old token, and
    # a fresh one gets it again, so a running stack stays connected.
    token = args.token or _saved_token(root / CONNECTION_FILE)
    server = LabelStudioServer(
        executable=executable,
        data_dir=data_dir,
        host=args.host,
        port=args.port,
        username=args.username,
        password=args.password,
        token=token or new_token(),
        log_path=root / LOG_FILE,
    )
    started = time.monotonic()
    server.start(timeout=args.timeout)
    assert server.process is not None
    pid_file.write_text(f"{server.process.pid}\n")
    connection = root / CONNECTION_FILE
    connection.write_text(f"LABEL_STUDIO_URL={server.url}\nLABEL_STUDIO_API_KEY={server.token}\n")
    connection.chmod(0o600)
    print(f"Label Studio is up after {time.monotonic() - started:.0f} s")
    print(f"  URL:      {server.url}")
    print(f"  user:     {server.username} / {server.password}")
    print(f"  token:    {server.token}")
    print(f"  log:      {root / LOG_FILE}")
    print(f"  settings: {connection}")
    # The server must outlive this command: forget the process instead of stopping it.
    server.process = None
    return 0


def prepare_data_dir(data_dir: Path, *, fresh: bool) -> None:
    """Keeps the data of the last run (projects, tasks, annotations) unless `fresh` asks to
    wipe it. Loomstack's curation database maps its batches to these projects: after a wipe it
    imports them again into new ones (lost_projects.py), without the annotations."""
    if fresh and data_dir.exists():
        shutil.rmtree(data_dir)
        print(
            f"wiped {data_dir}: curation imports its batches again into new Label Studio "
            "projects (the annotations made here are gone)"
        )


def _saved_token(connection: Path) -> str:
    if not connection.exists():
        return ""
    for line in connection.read_text().splitlines():
        key, _, value = line.partition("=")
        if key == "LABEL_STUDIO_API_KEY":
            return value.strip()
    return ""


def _stop_command(args: argparse.Namespace) -> int:
    pid_file = Path(args.data_dir).resolve() / PID_FILE
    if not pid_file.exists():
        print("Label Studio is not running (no pid file)")
        return 0
    pid = _running_pid(pid_file)
    if pid is not None:
        stop_group(pid, args.grace)
        print(f"Label Studio (pid {pid}) stopped")
    else:
        print("Label Studio was not running")
    pid_file.unlink()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command line for the Makefile: `start` (in the background) and `stop`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("start", help="start in the background and wait until healthy")
    start.add_argument("--venv", default=".cache/labelstudio-venv")
    start.add_argument("--data-dir", default=".loomstack/labelstudio")
    start.add_argument("--host", default="127.0.0.1")
    start.add_argument("--port", type=int, default=8089)
    start.add_argument("--username", default=DEFAULT_USERNAME)
    start.add_argument("--password", default=DEFAULT_PASSWORD)
    start.add_argument("--token", default=os.environ.get("LABEL_STUDIO_TOKEN", ""))
    start.add_argument("--timeout", type=float, default=300.0)
    start.add_argument(
        "--fresh", action="store_true", help="wipe the data of the last run (kept by default)"
    )
    # Kept for older callers: keeping the data is the default now.
    start.add_argument("--keep-data", action="store_true", help=argparse.SUPPRESS)
    stop = commands.add_parser("stop", help="stop the server `start` left running")
    stop.add_argument("--data-dir", default=".loomstack/labelstudio")
    stop.add_argument("--grace", type=float, default=20.0)
    args = parser.parse_args(argv)
    try:
        return _start_command(args) if args.command == "start" else _stop_command(args)
    except (LabelStudioNotInstalled, LabelStudioStartError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
