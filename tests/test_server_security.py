"""Bearer-token auth and TLS (server-only and mutual), with a throwaway CA made in the test."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gamjeong.clients import AsyncEmotionClient
from gamjeong.predictor import Predictor, load_predictor
from gamjeong.server.app import GamjeongServer
from gamjeong.server.settings import load_settings

TOKEN = "s3cret-token_0123456789"


@pytest.fixture(scope="module")
def predictor(tiny_int8_dir: Path) -> Predictor:
    return load_predictor(tiny_int8_dir)


@pytest.fixture
def make_server(start_server, predictor: Predictor) -> Callable[..., object]:
    async def start(**overrides: object) -> GamjeongServer:
        return await start_server(lambda: predictor, **overrides)

    return start


async def refused(call, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == code, caught.value.details()
    return caught.value.details() or ""


# --- bearer token ------------------------------------------------------------------------------------------------
async def test_token_auth_accepts_the_right_token_and_refuses_others(make_server) -> None:
    server = await make_server(auth_token=TOKEN)
    target = f"127.0.0.1:{server.port}"
    async with AsyncEmotionClient(target, token=TOKEN, max_attempts=1) as client:
        assert len(await client.classify(["오늘 정말 행복해요"])) == 1
        assert [r.ok async for r in client.chat(["안녕"])] == [True]
        assert (await client.model_info()).labels
    for token in (None, "wrong", TOKEN + "x"):
        async with AsyncEmotionClient(target, token=token, max_attempts=1) as client:
            details = await refused(client.classify(["안녕"]), grpc.StatusCode.UNAUTHENTICATED)
            assert "Bearer" in details
            await refused(client.model_info(), grpc.StatusCode.UNAUTHENTICATED)

            async def stream_all(stream) -> list[object]:
                return [r async for r in stream]

            await refused(stream_all(client.classify_stream(["안녕"])), grpc.StatusCode.UNAUTHENTICATED)
            await refused(stream_all(client.chat(["안녕"])), grpc.StatusCode.UNAUTHENTICATED)
            # Health probes need no token.
            health = health_pb2_grpc.HealthStub(client.channel)
            status = await health.Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert status.status == health_pb2.HealthCheckResponse.SERVING
    assert server.metrics.value("gamjeong_requests_total", {"method": "Classify", "code": "UNAUTHENTICATED"}) == 3
    assert server.metrics.value("gamjeong_texts_classified_total") == 2  # refused calls never reached the model


# --- TLS -----------------------------------------------------------------------------------------------------------
def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(
    subject: str, key, issuer_name: x509.Name, issuer_key, *, ca: bool = False, server: bool = False
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    elif not ca:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


class Authority:
    """A throwaway CA that writes PEM files of the certificates it issues."""

    def __init__(self, directory: Path, name: str) -> None:
        self.directory = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.certificate = _certificate(name, self.key, _name(name), self.key, ca=True)
        self.ca_file = self._write(f"{name}-ca.pem", self.certificate.public_bytes(serialization.Encoding.PEM))

    def _write(self, filename: str, data: bytes) -> Path:
        path = self.directory / filename
        path.write_bytes(data)
        return path

    def issue(self, subject: str, *, server: bool) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = _certificate(subject, key, self.certificate.subject, self.key, server=server)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return (
            self._write(f"{subject}.pem", certificate.public_bytes(serialization.Encoding.PEM)),
            self._write(f"{subject}-key.pem", key_pem),
        )


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("pki")
    trusted, stranger = Authority(directory, "trusted"), Authority(directory, "stranger")
    server_cert, server_key = trusted.issue("localhost", server=True)
    client_cert, client_key = trusted.issue("good-client", server=False)
    rogue_cert, rogue_key = stranger.issue("rogue-client", server=False)
    return {
        "ca": trusted.ca_file,
        "other_ca": stranger.ca_file,
        "server_cert": server_cert,
        "server_key": server_key,
        "client_cert": client_cert,
        "client_key": client_key,
        "rogue_cert": rogue_cert,
        "rogue_key": rogue_key,
    }


async def classify_once(target: str, **options: object) -> int:
    async with AsyncEmotionClient(target, max_attempts=1, timeout=10, **options) as client:
        return len(await client.classify(["오늘 정말 행복해요"]))


async def test_tls_serves_clients_that_trust_its_ca_only(make_server, pki) -> None:
    server = await make_server(tls_cert=pki["server_cert"], tls_key=pki["server_key"])
    target = f"localhost:{server.port}"
    assert await classify_once(target, root_certificates=pki["ca"]) == 1
    await refused(classify_once(target, root_certificates=pki["other_ca"]), grpc.StatusCode.UNAVAILABLE)
    await refused(classify_once(target), grpc.StatusCode.UNAVAILABLE)  # plaintext client, TLS server


async def test_mutual_tls_needs_a_client_certificate_from_the_client_ca(make_server, pki) -> None:
    server = await make_server(
        tls_cert=pki["server_cert"], tls_key=pki["server_key"], tls_client_ca=pki["ca"], auth_token=TOKEN
    )
    target = f"localhost:{server.port}"
    good = {"root_certificates": pki["ca"], "client_certificate": pki["client_cert"], "client_key": pki["client_key"]}
    assert await classify_once(target, token=TOKEN, **good) == 1
    await refused(classify_once(target, token="wrong", **good), grpc.StatusCode.UNAUTHENTICATED)
    await refused(classify_once(target, token=TOKEN, root_certificates=pki["ca"]), grpc.StatusCode.UNAVAILABLE)
    rogue = {"root_certificates": pki["ca"], "client_certificate": pki["rogue_cert"], "client_key": pki["rogue_key"]}
    await refused(classify_once(target, token=TOKEN, **rogue), grpc.StatusCode.UNAVAILABLE)


def test_tokens_must_be_printable_ascii(tiny_int8_dir: Path) -> None:
    from gamjeong.errors import GamjeongError

    with pytest.raises(GamjeongError, match="printable ASCII"):
        load_settings(model=tiny_int8_dir, auth_token="비밀")
    with pytest.raises(ValueError, match="printable ASCII"):
        AsyncEmotionClient("localhost:1", token="비밀")


async def test_unreadable_tls_files_are_one_sentence(tiny_int8_dir: Path, tmp_path: Path) -> None:
    from gamjeong.errors import GamjeongError

    settings = load_settings(
        model=tiny_int8_dir, port=0, metrics_port=-1, tls_cert=tmp_path / "missing.pem", tls_key=tmp_path / "k.pem"
    )
    with pytest.raises(GamjeongError, match="Cannot read TLS file"):
        await GamjeongServer(settings, predictor_factory=lambda: None).listen()  # type: ignore[arg-type,return-value]
