"""Entry point: settings → app → uvicorn. `python -m loomstack_gateway` or `loomstack-gateway`.

The socket is bound here rather than by uvicorn so that port 0 works: the port actually bound
is written to `port_file` (tests, `loomstack up`) before the first request can arrive.
"""

from __future__ import annotations

import logging
import socket

import uvicorn

from loomstack_kit.grpc_core import require_defaults
from loomstack_kit.json_logging import configure_logging
from loomstack_kit.plugins import PluginError

from .app import create_app
from .direct_routes import DirectRouteError
from .settings import GatewaySettings

log = logging.getLogger("loomstack_gateway")


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(settings: GatewaySettings) -> None:
    """Serves until SIGTERM/SIGINT (uvicorn drains in-flight requests first)."""
    try:
        app = create_app(settings)
    except (ValueError, DirectRouteError, PluginError) as exc:
        # A configuration the gateway cannot run with (an unusable key list, a bad limit store,
        # a route marked @direct that the direct layer cannot serve, a required plugin that
        # cannot load): say what is wrong and stop, before listening.
        log.error("cannot start the gateway: %s", exc)
        raise SystemExit(2) from None
    try:
        sock = bind(settings.host, settings.port)
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s", settings.host, settings.port, exc)
        raise SystemExit(1) from exc
    port = sock.getsockname()[1]
    if settings.port_file:
        settings.port_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = settings.port_file.with_suffix(".tmp")
        tmp.write_text(str(port))
        tmp.replace(settings.port_file)
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=settings.access_log,
        timeout_graceful_shutdown=int(settings.grace_seconds),
        server_header=False,
    )
    log.info(
        "gateway listening",
        extra={"url": f"http://{settings.host}:{port}", "inference": settings.inference_address},
    )
    # Server.run sets up uvloop and httptools when they are installed.
    uvicorn.Server(config).run(sockets=[sock])


def main() -> None:
    """Console entry point."""
    require_defaults()  # GRPC_EXPERIMENTS took effect (grpc_core.py)
    settings = GatewaySettings()
    configure_logging("gateway", settings.log_level, settings.log_json)
    serve(settings)


if __name__ == "__main__":
    main()
