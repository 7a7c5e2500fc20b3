"""The kit's identity check, in front of every servicer: a call is served only when the caller
identity it carries is signed with the installation's secret; health and reflection stay open.
Mutual TLS, when configured, refuses a client without a certificate of the installation's CA,
and health alone is served in plaintext on its own port for Kubernetes' probes."""

from __future__ import annotations

import datetime
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from support import signed

from loomstack.inference.v1 import files_pb2, files_pb2_grpc, models_pb2, models_pb2_grpc
from loomstack_kit.identity import (
    PROJECT_KEY,
    SERVICE_KEY,
    SIGNATURE_KEY,
    TIME_KEY,
    IdentitySigner,
    IdentityVerifier,
    calling_service,
    load_service_secret,
    project_of,
)
from loomstack_kit.server import GrpcServer, Registration
from loomstack_kit.settings import ServiceSettings


class Echo(models_pb2_grpc.ModelServiceServicer, files_pb2_grpc.FileServiceServicer):
    """Answers with the identity the servicer sees."""

    async def GetModel(self, request: Any, context: Any) -> models_pb2.Model:
        project = project_of(context)
        return models_pb2.Model(
            id=project if project is not None else "<admin>",
            owned_by=calling_service(context) or "<gateway>",
        )

    async def UploadFile(self, request_iterator: AsyncIterator[Any], context: Any) -> Any:
        size = 0
        async for message in request_iterator:
            size += len(message.chunk)
        return files_pb2.File(id=str(project_of(context)), bytes=size)


def _registrations() -> list[Registration]:
    echo = Echo()
    return [
        Registration(
            models_pb2_grpc.add_ModelServiceServicer_to_server,
            echo,
            "loomstack.inference.v1.ModelService",
        ),
        Registration(
            files_pb2_grpc.add_FileServiceServicer_to_server,
            echo,
            "loomstack.inference.v1.FileService",
        ),
    ]


async def _get(channel: grpc.aio.Channel, metadata: Any) -> models_pb2.Model:
    stub = models_pb2_grpc.ModelServiceStub(channel)
    reply: models_pb2.Model = await stub.GetModel(
        models_pb2.GetModelRequest(model_id="x"), metadata=metadata, timeout=5
    )
    return reply


async def _code(call: Any) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def _forged(project: str = "*") -> list[tuple[str, Any]]:
    """What a process without the secret can send: each a different way to be wrong."""
    good = dict(signed("team-a"))
    stale = dict(
        IdentitySigner(b"test-only-secret-0123456789", "gateway").metadata("team-a")
    )  # right shape, another installation's secret
    return [
        [(PROJECT_KEY, project)],  # the old unsigned header, as admin
        [(PROJECT_KEY, project), (SERVICE_KEY, "gateway")],
        [*((k, v) for k, v in good.items() if k != PROJECT_KEY), (PROJECT_KEY, project)],
        list(stale.items()),
        [(k, "0" if k == TIME_KEY else v) for k, v in good.items()],  # 1970
        [
            (k, v[:-1] + ("0" if v[-1] != "0" else "1") if k == SIGNATURE_KEY else v)
            for k, v in good.items()
        ],
        [(k, "soon" if k == TIME_KEY else v) for k, v in good.items()],
    ]  # type: ignore[return-value]


@pytest.fixture
async def server() -> AsyncIterator[str]:
    grpc_server = GrpcServer(ServiceSettings(host="127.0.0.1", port=0), _registrations())
    await grpc_server.start()
    await grpc_server.set_ready(True)
    try:
        yield f"127.0.0.1:{grpc_server.port}"
    finally:
        await grpc_server.stop()


async def test_signed_identities_are_served_and_name_the_caller(server: str) -> None:
    async with grpc.aio.insecure_channel(server) as channel:
        assert (await _get(channel, signed("team-a"))).id == "team-a"
        admin = await _get(channel, signed(None))
        assert (admin.id, admin.owned_by) == ("<admin>", "<gateway>")
        assert (await _get(channel, signed("team-b", "training"))).owned_by == "training"


async def test_forged_or_missing_identities_are_unauthenticated(server: str) -> None:
    async with grpc.aio.insecure_channel(server) as channel:
        stub = models_pb2_grpc.ModelServiceStub(channel)
        request = models_pb2.GetModelRequest(model_id="x")
        assert await _code(stub.GetModel(request, timeout=5)) == grpc.StatusCode.UNAUTHENTICATED
        for metadata in _forged():
            code = await _code(stub.GetModel(request, metadata=metadata, timeout=5))
            assert code == grpc.StatusCode.UNAUTHENTICATED, metadata


async def test_a_forged_upload_stream_is_unauthenticated_and_a_signed_one_served(
    server: str,
) -> None:
    def messages() -> Any:
        yield files_pb2.UploadFileRequest(
            metadata=files_pb2.UploadFileMetadata(filename="x", purpose="batch")
        )
        for _ in range(8):
            yield files_pb2.UploadFileRequest(chunk=b"x" * 65536)

    async with grpc.aio.insecure_channel(server) as channel:
        stub = files_pb2_grpc.FileServiceStub(channel)
        forged = stub.UploadFile(messages(), metadata=[(PROJECT_KEY, "*")], timeout=5)
        assert await _code(forged) == grpc.StatusCode.UNAUTHENTICATED
        reply = await stub.UploadFile(messages(), metadata=signed("team-a"), timeout=5)
        assert (reply.id, reply.bytes) == ("team-a", 8 * 65536)


async def test_health_and_reflection_need_no_identity(server: str) -> None:
    async with grpc.aio.insecure_channel(server) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="readiness"), timeout=5
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        call = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        services = [s.name async for r in call for s in r.list_services_response.service]
        assert "loomstack.inference.v1.ModelService" in services


def test_verifier_accepts_only_fresh_signatures_of_its_secret() -> None:
    secret = b"0123456789abcdef0123456789abcdef"
    signer, verifier = IdentitySigner(secret, "curation"), IdentityVerifier(secret, 60)
    identity = verifier.verify(signer.metadata("team-a"))
    assert (identity.project, identity.service) == ("team-a", "curation")
    assert verifier.verify(signer.metadata(None)).project is None
    old = str(int(time.time()) - 120)
    from loomstack_kit.identity import _signature

    stale = [
        (PROJECT_KEY, "team-a"),
        (SERVICE_KEY, "curation"),
        (TIME_KEY, old),
        (SIGNATURE_KEY, _signature(secret, "team-a", "curation", old)),
    ]
    with pytest.raises(Exception, match="stale"):
        verifier.verify(stale)
    with pytest.raises(ValueError, match="16 bytes"):
        IdentitySigner(b"short", "gateway")


def test_the_secret_comes_from_the_value_the_file_or_a_generated_home_file(
    tmp_path: Path,
) -> None:
    assert load_service_secret("v" * 20, tmp_path / "ignored") == b"v" * 20
    path = tmp_path / "secret"
    path.write_text("f" * 30 + "\n")
    assert load_service_secret("", path) == b"f" * 30
    first = load_service_secret(home=tmp_path / "home")
    assert len(first) >= 32 and load_service_secret(home=tmp_path / "home") == first
    assert (tmp_path / "home" / "service-secret").stat().st_mode & 0o077 == 0
    path.write_text("short")
    with pytest.raises(ValueError, match="16 bytes"):
        load_service_secret("", path)


# -- mutual TLS ----------------------------------------------------------------------------------


def _pem(tmp: Path, name: str, key: Any, cert: x509.Certificate) -> tuple[Path, Path]:
    key_path, cert_path = tmp / f"{name}.key", tmp / f"{name}.crt"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def _certificate(
    subject: str, key: Any, issuer_key: Any, issuer: x509.Name | None, *, ca: bool
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _pki(tmp: Path) -> dict[str, Path]:
    """A CA, a service certificate it signs, and a certificate of another CA."""
    ca_key, other_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    ca = _certificate("loomstack-test-ca", ca_key, ca_key, None, ca=True)
    other_ca = _certificate("someone-else", other_key, other_key, None, ca=True)
    svc_key, rogue_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    svc = _certificate("localhost", svc_key, ca_key, ca.subject, ca=False)
    rogue = _certificate("localhost", rogue_key, other_key, other_ca.subject, ca=False)
    ca_path, _ = _pem(tmp, "ca", ca_key, ca)
    svc_cert, svc_key_path = _pem(tmp, "svc", svc_key, svc)
    rogue_cert, rogue_key_path = _pem(tmp, "rogue", rogue_key, rogue)
    return {
        "ca": ca_path,
        "cert": svc_cert,
        "key": svc_key_path,
        "rogue_cert": rogue_cert,
        "rogue_key": rogue_key_path,
    }


async def test_mutual_tls_refuses_clients_without_the_installations_certificate(
    tmp_path: Path,
) -> None:
    from loomstack_kit.channels import open_aio_channel

    pki = _pki(tmp_path)
    settings = ServiceSettings(
        host="127.0.0.1",
        port=0,
        grpc_tls_cert_file=pki["cert"],
        grpc_tls_key_file=pki["key"],
        grpc_tls_ca_file=pki["ca"],
        health_port=_free_port(),
    )
    health_port = settings.health_port
    grpc_server = GrpcServer(settings, _registrations())
    await grpc_server.start()
    await grpc_server.set_ready(True)
    target = f"localhost:{grpc_server.port}"
    try:
        # The installation's client: TLS with its certificate, identity signed.
        async with open_aio_channel(target, settings) as channel:
            assert (await _get(channel, signed("team-a"))).id == "team-a"
        # Dialed at an address its certificate does not name (an engine's pod IP): refused,
        # unless the channel is told the name the certificate carries.
        by_ip = f"127.0.0.1:{grpc_server.port}"
        async with open_aio_channel(by_ip, settings) as channel:
            assert await _code(_get(channel, signed("team-a"))) == grpc.StatusCode.UNAVAILABLE
        async with open_aio_channel(by_ip, settings, server_name="localhost") as channel:
            assert (await _get(channel, signed("team-a"))).id == "team-a"
        # Plaintext is refused on the service port, health included.
        async with grpc.aio.insecure_channel(target) as channel:
            code = await _code(_get(channel, signed("team-a")))
            assert code == grpc.StatusCode.UNAVAILABLE
        # TLS without a client certificate, or one from another CA: refused in the handshake.
        ca = pki["ca"].read_bytes()
        for credentials in (
            grpc.ssl_channel_credentials(root_certificates=ca),
            grpc.ssl_channel_credentials(
                root_certificates=ca,
                private_key=pki["rogue_key"].read_bytes(),
                certificate_chain=pki["rogue_cert"].read_bytes(),
            ),
        ):
            async with grpc.aio.secure_channel(target, credentials) as channel:
                code = await _code(_get(channel, signed("team-a")))
                assert code == grpc.StatusCode.UNAVAILABLE
        # Kubernetes' probes: plaintext health on the health port, and nothing else there.
        async with grpc.aio.insecure_channel(f"127.0.0.1:{health_port}") as channel:
            health = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="readiness"), timeout=5
            )
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            code = await _code(_get(channel, signed("team-a")))
            assert code == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await grpc_server.stop()


def test_a_partial_tls_configuration_is_refused(tmp_path: Path) -> None:
    pki = _pki(tmp_path)
    settings = ServiceSettings(grpc_tls_cert_file=pki["cert"], grpc_tls_key_file=pki["key"])
    with pytest.raises(ValueError, match="together"):
        settings.tls()


async def test_a_message_protobuf_cannot_parse_is_invalid_argument(server: str) -> None:
    """Invalid UTF-8 in a string field, or bytes that are no message: INVALID_ARGUMENT, never
    gRPC's UNKNOWN from a parse failure inside its own code."""
    not_utf8 = b"\x0a\x02\xff\xfe"  # field 1 (model_id), two bytes that are not UTF-8
    truncated = b"\x0a\x10abc"  # a length past the end
    async with grpc.aio.insecure_channel(server) as channel:
        get = channel.unary_unary("/loomstack.inference.v1.ModelService/GetModel")
        for raw in (not_utf8, truncated):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await get(raw, metadata=signed("team-a"), timeout=5)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "not a valid message" in (caught.value.details() or "")
        upload = channel.stream_unary("/loomstack.inference.v1.FileService/UploadFile")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await upload(iter([b"", not_utf8]), metadata=signed("team-a"), timeout=5)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # A well-formed call on the same server still works.
        assert (await _get(channel, signed("team-a"))).id == "team-a"
