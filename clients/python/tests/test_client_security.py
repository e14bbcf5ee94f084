"""The Python clients (sync and async) and the CLI over TLS with a client certificate (mTLS) and
bearer tokens, against a real server that requires both kinds of credential to be good.
Certificates, keys and tokens are made and signed here (callqos.server.testpki)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from callqos import wire
from callqos.client import (
    AsyncClient,
    Client,
    CredentialsRefusedError,
    FileToken,
    NotOwnerError,
    UnavailableError,
    controlled_load,
    tls_credentials,
)

testpki = pytest.importorskip("callqos.server.testpki", reason="callqos.server is not installed")
testing = pytest.importorskip("callqos.server.testing", reason="callqos.server is not installed")


class Kit:
    def __init__(self, directory: Path) -> None:
        self.pki = testpki.TestPki(directory)
        self.server_cert = self.pki.server_certificate()
        self.client = self.pki.client_certificate("client", uris=["spiffe://callqos.test/client"])
        self.issuer = testpki.TestIssuer(directory)

    def credentials(self, *, with_certificate: bool = True) -> grpc.ChannelCredentials:
        if with_certificate:
            return tls_credentials(self.pki.ca_path, self.client.cert, self.client.key)
        return tls_credentials(self.pki.ca_path)

    def token(self, who: str) -> str:
        return str(self.issuer.token(who, tenant="acme", roles=["caller"]))


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Kit:
    return Kit(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def secure_server(kit: Kit, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    settings = {
        "tls_cert": kit.server_cert.cert,
        "tls_key": kit.server_cert.key,
        "tls_client_ca": kit.pki.ca_path,
        "authenticators": ["jwt", "mtls"],
        "jwt_issuer": testpki.ISSUER,
        "jwt_audience": testpki.AUDIENCE,
        "jwt_jwks_file": kit.issuer.jwks_path,
        "jwt_algorithms": ["ES256"],
        "jwt_tenant_claim": "tenant",
        "principals": {"spiffe://callqos.test/client": {"tenant": "acme", "roles": ["caller"]}},
    }
    with testing.ServerProcess(
        tmp_path_factory.mktemp("tls-server"), credentials=kit.credentials(), **settings
    ) as proc:
        yield proc


def test_sync_client_with_mtls_and_a_refreshing_token(kit: Kit, secure_server: Any, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(kit.token("alice") + "\n")
    with Client(secure_server.target, credentials=kit.credentials(), token=FileToken(token_file)) as client:
        call = client.make_call("sip:bob@example.test", sending=controlled_load(1_000))
        assert (call.owner, call.tenant) == ("alice", "acme")
        token_file.write_text(kit.token("bob"))  # the token is renewed: the next RPC carries the new one
        bobs = client.make_call("sip:bob@example.test", sending=controlled_load(1_000))
        assert bobs.owner == "bob"
        with pytest.raises(NotOwnerError):
            client.drop(call.name)
        token_file.write_text(kit.token("alice"))
        client.drop(call.name)
        stream = client.watch(after_sequence=0, call=call.name)
        assert next(stream).call == call.name
        stream.close()
    # The certificate alone identifies the workload; without any good credential: refused.
    with Client(secure_server.target, credentials=kit.credentials()) as client:
        assert client.make_call("sip:x@example.test").owner == "spiffe://callqos.test/client"
    with (
        Client(secure_server.target, credentials=kit.credentials(), token="not-a-token") as client,
        pytest.raises(CredentialsRefusedError),
    ):
        client.get_call(call.name)


async def test_async_client_with_a_callable_token_source(kit: Kit, secure_server: Any) -> None:
    issued: list[str] = []

    def source() -> str:  # e.g. an OAuth2 client-credentials refresh
        issued.append(kit.token(f"svc{len(issued)}"))
        return issued[-1]

    async with AsyncClient(secure_server.target, credentials=kit.credentials(), token=source) as client:
        first = await client.make_call("sip:a@example.test", sending=controlled_load(1_000))
        second = await client.make_call("sip:b@example.test", sending=controlled_load(1_000))
        assert (first.owner, second.owner) == ("svc0", "svc1")
        assert [c.name async for c in client.list_calls()]


def test_no_tls_or_a_missing_client_certificate_does_not_connect(kit: Kit, secure_server: Any) -> None:
    with (
        Client(secure_server.target, credentials=kit.credentials(with_certificate=False), timeout=3) as client,
        pytest.raises(UnavailableError),
    ):
        next(client.list_calls())


def test_a_token_never_goes_in_the_clear_off_loopback() -> None:
    with pytest.raises(ValueError, match="in the clear"):
        Client("callqos.example.com:50051", token="t")
    Client("127.0.0.1:1", token="t").close()  # loopback is fine
    with pytest.raises(ValueError, match="its key"):
        tls_credentials(cert=b"x")


def test_cli_over_mtls_with_a_token(kit: Kit, secure_server: Any) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLQOS_")}
    flags = ["--target", secure_server.target, "--tls-ca", str(kit.pki.ca_path)]
    flags += ["--tls-cert", str(kit.client.cert), "--tls-key", str(kit.client.key), "--json"]

    def run(*args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "callqos.cli", *args],
            capture_output=True,
            text=True,
            timeout=60,
            env={**env, **extra_env},
        )

    made = run(*flags, "--token", kit.token("carol"), "make", "sip:c@example.test", "--send-type", "best-effort")
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["owner"] == "carol"
    from_env = run(
        *flags, "make", "sip:d@example.test", "--send-type", "best-effort", **{wire.TOKEN_ENV: kit.token("dan")}
    )
    assert json.loads(from_env.stdout)["owner"] == "dan"
    bad = run(*flags, "--token", "garbage", "list")
    assert bad.returncode == 10 + grpc.StatusCode.UNAUTHENTICATED.value[0], bad.stderr
    assert "UNAUTHENTICATED" in bad.stderr
