"""TLS on a live server: clients must speak TLS to it, mTLS refuses clients without a certificate
from the client CA, and certificates (and the client CA) are replaced by rewriting their files,
without a restart: new connections get the new ones, open connections keep working, and a
half-finished rotation (new certificate, old key) keeps the old pair until it is complete."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import grpc
from security_testkit import bearer, jwt_settings, tls_channel, tls_settings
from server_testkit import make_request, rpc_error

from callqos.server.testing import InProcessServer, ServerProcess
from callqos.server.testpki import CertificateFiles, TestIssuer, TestPki
from callqos.v1 import callqos_service_pb2 as svc
from callqos.v1 import callqos_service_pb2_grpc as svc_grpc


def served_certificate(port: int, ca: Path, client: CertificateFiles | None = None) -> str:
    """The common name of the certificate a new TLS connection to the server is shown (a raw
    handshake with Python's ssl module, offering h2 as gRPC does)."""
    context = ssl.create_default_context(cafile=str(ca))
    context.set_alpn_protocols(["h2"])
    if client is not None:
        context.load_cert_chain(str(client.cert), str(client.key))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        certificate = tls.getpeercert()
    assert certificate is not None
    subject = dict(pair[0] for pair in certificate["subject"])
    return str(subject["commonName"])


async def test_tls_serves_tls_only(tmp_path: Path, pki: TestPki, issuer: TestIssuer) -> None:
    settings = {**tls_settings(pki.server_certificate()), **jwt_settings(issuer)}
    async with InProcessServer(tmp_path, **settings) as server:
        token = bearer(issuer.token("alice", tenant="acme"))
        async with tls_channel(server.target, pki) as channel:
            call = await svc_grpc.CallQosServiceStub(channel).CreateCall(make_request(), metadata=token)
            assert call.owner == "alice"
        async with grpc.aio.insecure_channel(server.target) as plaintext:
            error = await rpc_error(svc_grpc.CallQosServiceStub(plaintext).CreateCall(make_request(), timeout=3))
            assert error.code() == grpc.StatusCode.UNAVAILABLE
        # A client that does not trust the server's CA does not connect either.
        stranger = TestPki(tmp_path / "stranger")
        async with tls_channel(server.target, stranger) as untrusting:
            error = await rpc_error(svc_grpc.CallQosServiceStub(untrusting).CreateCall(make_request(), timeout=3))
            assert error.code() == grpc.StatusCode.UNAVAILABLE


async def test_certificates_rotate_without_a_restart(tmp_path: Path, pki: TestPki) -> None:
    first = pki.server_certificate("server", common_name="first")
    client = pki.client_certificate("client", uris=["spiffe://callqos.test/client"])
    settings = {**tls_settings(first, client_ca=pki.ca_path), "authenticators": ["mtls"]}
    async with InProcessServer(tmp_path, **settings) as server:
        port = server.port
        assert served_certificate(port, pki.ca_path, client) == "first"
        async with tls_channel(server.target, pki, client) as kept:
            stub = svc_grpc.CallQosServiceStub(kept)
            await stub.ListCalls(svc.ListCallsRequest())
            pki.server_certificate("server", common_name="second")  # rewrites server.pem and server.key
            assert served_certificate(port, pki.ca_path, client) == "second"
            await stub.ListCalls(svc.ListCallsRequest())  # the open connection keeps working
        # Half a rotation — a new certificate whose key is not written yet — keeps the old pair.
        old_key = first.key.read_bytes()
        pki.server_certificate("server", common_name="third")
        third_key = first.key.read_bytes()
        first.key.write_bytes(old_key)
        assert served_certificate(port, pki.ca_path, client) == "second"
        first.key.write_bytes(third_key)
        assert served_certificate(port, pki.ca_path, client) == "third"
        assert server.running.certificates is not None and server.running.certificates.reloads == 2
        # A new client CA (appended to the CA file) admits its clients from the next connection on.
        other_ca = TestPki(tmp_path / "other", name="other-ca")
        newcomer = other_ca.client_certificate("newcomer", dns=["newcomer.test"])
        async with tls_channel(server.target, pki, newcomer) as channel:  # refused while only the old CA counts
            refused = await rpc_error(svc_grpc.CallQosServiceStub(channel).CreateCall(make_request(), timeout=3))
            assert refused.code() == grpc.StatusCode.UNAVAILABLE
        pki.ca_path.write_bytes(pki.ca_pem + other_ca.ca_pem)
        async with tls_channel(server.target, pki, newcomer) as channel:
            call = await svc_grpc.CallQosServiceStub(channel).CreateCall(make_request())
            assert call.owner == "newcomer.test"


def test_a_tls_server_process_with_mtls_and_tokens(tmp_path: Path, pki: TestPki, issuer: TestIssuer) -> None:
    """The shipped command with TLS settings from its TOML file, health-checked over mTLS."""
    server_cert = pki.server_certificate()
    client = pki.client_certificate("client", uris=["spiffe://callqos.test/client"])
    credentials = grpc.ssl_channel_credentials(pki.ca_pem, client.key.read_bytes(), client.cert.read_bytes())
    settings = {
        **tls_settings(server_cert, client_ca=pki.ca_path),
        **jwt_settings(issuer, authenticators=["jwt", "mtls"]),
        "health_listen": "127.0.0.1:0",
    }
    with (
        ServerProcess(tmp_path, credentials=credentials, **settings) as server,
        grpc.secure_channel(server.target, credentials) as channel,
    ):
        stub = svc_grpc.CallQosServiceStub(channel)
        assert stub.CreateCall(make_request()).owner == "spiffe://callqos.test/client"
        token = bearer(issuer.token("alice", tenant="acme"))
        assert stub.CreateCall(make_request(), metadata=token).owner == "alice"
    assert '"tls": "mtls"' in server.log()
