"""Client channels to Loomstack services: one place for the options, mutual TLS and tracing.

Every service (and the gateway) opens its channels here, so a channel to a service always uses
the installation's TLS settings and propagates the current trace.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from .settings import ServiceSettings
from .tracing import client_interceptors, trace_channel

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
Options = Sequence[tuple[str, int | str]]


def _options(max_message_bytes: int, extra: Options) -> list[tuple[str, int | str]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        *extra,
    ]


def _credentials(settings: ServiceSettings) -> grpc.ChannelCredentials | None:
    tls = settings.tls()
    if tls is None:
        return None
    cert, key, ca = tls
    return grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert
    )


def open_aio_channel(
    address: str,
    settings: ServiceSettings,
    *,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    options: Options = (),
    server_name: str = "",
) -> grpc.aio.Channel:
    """A grpc.aio channel (call from the event loop that will use it). With mutual TLS,
    `server_name` is the name the server's certificate must carry when it is not the dialed
    host (an engine dialed at its pod IP)."""
    credentials = _credentials(settings)
    opts = _options(max_message_bytes, options)
    if credentials is not None and server_name:
        opts.append(("grpc.ssl_target_name_override", server_name))
    if credentials is None:
        return grpc.aio.insecure_channel(address, options=opts, interceptors=client_interceptors())
    return grpc.aio.secure_channel(
        address, credentials, options=opts, interceptors=client_interceptors()
    )


def open_channel(
    address: str,
    settings: ServiceSettings,
    *,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    options: Options = (),
) -> grpc.Channel:
    """A blocking channel (for code running in worker threads)."""
    credentials = _credentials(settings)
    opts = _options(max_message_bytes, options)
    if credentials is None:
        channel = grpc.insecure_channel(address, options=opts)
    else:
        channel = grpc.secure_channel(address, credentials, options=opts)
    return trace_channel(channel)
