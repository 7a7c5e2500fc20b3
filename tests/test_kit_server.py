"""The kit's gRPC server stop: readiness NOT_SERVING stays visible to new health checks for the
drain time, the shutdown hooks run in it, and only then does the server refuse new RPCs."""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from loomstack_kit.server import READINESS, GrpcServer
from loomstack_kit.settings import ServiceSettings

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def readiness(address: str) -> str:
    """The readiness status a fresh client gets, or UNREACHABLE."""
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=READINESS), timeout=1
            )
        except grpc.aio.AioRpcError:
            return "UNREACHABLE"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


async def test_stop_drains_with_not_serving_before_closing() -> None:
    hook_ran = asyncio.Event()

    async def hook() -> None:
        hook_ran.set()

    settings = ServiceSettings(host="127.0.0.1", port=0, drain_seconds=1.5, grace_seconds=1)
    server = GrpcServer(settings, [], on_shutdown=[hook])
    await server.start()
    await server.set_started()
    await server.set_ready(True)
    address = f"127.0.0.1:{server.port}"
    assert await readiness(address) == "SERVING"

    stopping = asyncio.create_task(server.stop())
    await hook_ran.wait()
    # The hook has returned at once; the server keeps answering new checks for the drain time.
    assert await readiness(address) == "NOT_SERVING"
    assert not stopping.done()
    seen = []
    while not stopping.done():
        seen.append(await readiness(address))
    await stopping
    assert await readiness(address) == "UNREACHABLE"
    assert seen[0] == "NOT_SERVING"
    assert set(seen) <= {"NOT_SERVING", "UNREACHABLE"}


async def test_no_drain_stops_at_once() -> None:
    settings = ServiceSettings(host="127.0.0.1", port=0, drain_seconds=0, grace_seconds=1)
    server = GrpcServer(settings, [])
    await server.start()
    await server.set_ready(True)
    await asyncio.wait_for(server.stop(), timeout=1)
    assert await readiness(f"127.0.0.1:{server.port}") == "UNREACHABLE"
