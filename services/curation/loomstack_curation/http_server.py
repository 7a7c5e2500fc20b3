"""The HTTP endpoints Label Studio calls (its webhook, the ML backend), served by uvicorn inside
the curation process's own event loop.

uvicorn is embedded (its `Server`, started and stopped here) rather than run (`uvicorn.run`)
because one process serves both the gRPC API and these endpoints and shares their state (the
database, the Label Studio client, the project map): `uvicorn.run` would own the event loop and
the signals, which the kit's gRPC server handles. A port taken is logged and leaves gRPC serving;
the port bound (port 0 picks one) is written to `http_port_file` for tests and `loomstack up`.
"""

from __future__ import annotations

import logging

import uvicorn

from .settings import CurationSettings

log = logging.getLogger("loomstack_curation")


async def serve_http(http: uvicorn.Server, settings: CurationSettings) -> None:
    config = http.config
    if not config.loaded:
        config.load()
    http.lifespan = config.lifespan_class(config)
    try:
        await http.startup()
    except SystemExit:  # uvicorn exits the process when the port is taken; we keep serving gRPC
        http.should_exit = True
    if http.should_exit:
        log.error("HTTP endpoints not started", extra={"port": settings.http_port})
        return
    port = http.servers[0].sockets[0].getsockname()[1]
    if settings.http_port_file:
        settings.http_port_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = settings.http_port_file.with_suffix(".tmp")
        tmp.write_text(str(port))
        tmp.replace(settings.http_port_file)
    log.info("HTTP endpoints listening", extra={"port": port})
    try:
        await http.main_loop()
    finally:
        await http.shutdown()
