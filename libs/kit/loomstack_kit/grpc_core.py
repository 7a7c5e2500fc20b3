"""gRPC C-core defaults for Loomstack's processes; `apply_defaults()` must run before `import grpc`.

C-core reads `GRPC_EXPERIMENTS` once, when the `grpc` module is first imported, so each service
package calls `apply_defaults()` in its `__init__`, before any of its modules import `grpc`. A
value already in the environment wins.

`-event_engine_client`: client channels use C-core's polling I/O instead of the EventEngine.
Since grpcio 1.6x the EventEngine reads a response on one of its own threads, which then wakes
the thread waiting on the completion queue (grpc.aio's poller, or a blocking caller): one more
thread hop per call. Measured on the bench machine (2 vCPUs), a unary call to a trivial server
took 0.25-0.3 ms less with the polling client, in grpc.aio and in the blocking API alike
(the gateway's `GET /v1/batches/{id}`: see the closing notes and `bench/run_all.py`).
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

GRPC_EXPERIMENTS = "-event_engine_client"


def apply_defaults(environ: MutableMapping[str, str] = os.environ) -> None:
    """Sets Loomstack's `GRPC_EXPERIMENTS` unless the environment sets it already."""
    environ.setdefault("GRPC_EXPERIMENTS", GRPC_EXPERIMENTS)
