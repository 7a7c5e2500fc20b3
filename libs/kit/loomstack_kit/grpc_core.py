"""gRPC C-core defaults for Loomstack's processes; `apply_defaults()` must run before `import grpc`.

C-core reads `GRPC_EXPERIMENTS` once, when the `grpc` module is first imported, so each service
package calls `apply_defaults()` in its `__init__`, before any of its modules import `grpc`. A
value already in the environment wins.

Setting it cannot fail silently: when `grpc` was imported first and the environment had no value
of its own, the default cannot take effect. `apply_defaults()` then logs a warning (a test or a
tool that imported grpc first still works, only without the setting), and a service's entry
point calls `require_defaults()`, which stops the process with what to do instead of serving
with a setting it believes it has.

`-event_engine_client`: client channels use C-core's polling I/O instead of the EventEngine.
Since grpcio 1.6x the EventEngine reads a response on one of its own threads, which then wakes
the thread waiting on the completion queue (grpc.aio's poller, or a blocking caller): one more
thread hop per call. Measured on the bench machine (2 vCPUs), a unary call to a trivial server
took 0.25-0.3 ms less with the polling client, in grpc.aio and in the blocking API alike
(the gateway's `GET /v1/batches/{id}`: see the closing notes and `bench/run_all.py`).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, MutableMapping

log = logging.getLogger(__name__)

GRPC_EXPERIMENTS = "-event_engine_client"

# Set by apply_defaults() when grpc was imported before it and no value was in the environment.
_too_late: str | None = None


def apply_defaults(
    environ: MutableMapping[str, str] = os.environ, modules: Mapping[str, object] = sys.modules
) -> None:
    """Sets Loomstack's `GRPC_EXPERIMENTS` unless the environment sets it already; warns when
    `grpc` was imported first, so the value it sets cannot take effect."""
    global _too_late
    if "GRPC_EXPERIMENTS" in environ:
        return
    environ["GRPC_EXPERIMENTS"] = GRPC_EXPERIMENTS
    if "grpc" in modules:
        _too_late = (
            f"grpc was imported before Loomstack set GRPC_EXPERIMENTS={GRPC_EXPERIMENTS} "
            "(C-core reads it at import): import the service package before grpc, or set "
            "GRPC_EXPERIMENTS in the environment"
        )
        log.warning(_too_late)


def require_defaults() -> None:
    """For a service's entry point: stops the process when apply_defaults() came too late."""
    if _too_late is not None:
        raise SystemExit(f"cannot start: {_too_late}")
