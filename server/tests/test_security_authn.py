"""Authentication against a live server: bearer JWTs (and every way a token can be bad), client
certificates (mTLS principals), the trusted-header authenticator and header impersonation, and
the refusal to serve unauthenticated beyond loopback. Certificates, keys and tokens are made and
signed in the test."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from security_testkit import (
    COUNTING,
    PROVIDER_CALLS,
    AuditLines,
    bearer,
    jwt_settings,
    tls_channel,
    tls_settings,
)
from server_testkit import details, make_request, reason, rpc_error

from callqos.server import cli
from callqos.server.security.authn import certificate_principal
from callqos.server.testing import InProcessServer
from callqos.server.testpki import TestIssuer, TestPki
from callqos.v1 import callqos_service_pb2 as svc
from callqos.v1 import callqos_service_pb2_grpc as svc_grpc

UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hmac_token(claims: dict[str, Any], secret: bytes, kid: str) -> str:
    """HS256 signed with `secret`: the key-confusion attack when the secret is a public key."""
    head = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    body = _b64(json.dumps(claims).encode())
    signature = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64(signature)}"


def tampered(token: str) -> str:
    """The same signature over claims changed to another subject."""
    head, body, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims["sub"] = "mallory"
    return f"{head}.{_b64(json.dumps(claims).encode())}.{signature}"


def bad_tokens(issuer: TestIssuer, tmp_path: Path) -> dict[str, str]:
    now = time.time()
    stranger = TestIssuer(tmp_path / "stranger")  # another key, same issuer name and audience
    public_jwk = json.dumps(issuer.jwks()["keys"][0]).encode()
    return {
        "expired beyond the leeway": issuer.token("alice", tenant="acme", lifetime=-120),
        "not yet valid beyond the leeway": issuer.token("alice", tenant="acme", nbf=int(now) + 600),
        "for another audience": issuer.token("alice", tenant="acme", aud="someone-else"),
        "from another issuer": issuer.token("alice", tenant="acme", iss="https://evil.example"),
        "tampered claims": tampered(issuer.token("alice", tenant="acme")),
        "alg none": TestIssuer.unsigned(issuer.claims("alice", tenant="acme"), {"kid": issuer.kid}),
        "HS256 with the public key as secret": hmac_token(
            issuer.claims("alice", tenant="acme"), issuer.public_pem(), issuer.kid
        ),
        "HS256 with the public JWK as secret": hmac_token(
            issuer.claims("alice", tenant="acme"), public_jwk, issuer.kid
        ),
        "signed by another key under the same kid": stranger.token("alice", tenant="acme", headers={"kid": issuer.kid}),
        "a key the issuer never published": stranger.token("alice", tenant="acme"),
        "without exp": issuer.token("alice", tenant="acme", exp=None),
        "without the tenant claim": issuer.token("alice"),
        "not a JWT": "not.a.jwt",
    }


async def test_a_valid_token_names_the_caller_and_its_tenant(tmp_path: Path, issuer: TestIssuer) -> None:
    async with (
        InProcessServer(tmp_path, **jwt_settings(issuer)) as server,
        grpc.aio.insecure_channel(server.target) as channel,
    ):
        stub = svc_grpc.CallQosServiceStub(channel)
        token = issuer.token("alice", tenant="acme", roles=["caller"])
        call = await stub.CreateCall(make_request(), metadata=bearer(token))
        assert (call.owner, call.tenant) == ("alice", "acme")
        # A token within the leeway (30 s) of its expiry is still good: clocks differ.
        late = issuer.token("alice", tenant="acme", roles=["caller"], lifetime=-10)
        again = await stub.GetCall(svc.GetCallRequest(name=call.name), metadata=bearer(late))
        assert again.owner == "alice"


async def test_bad_tokens_are_unauthenticated_before_any_provider_is_asked(
    tmp_path: Path, issuer: TestIssuer, audit_lines: AuditLines
) -> None:
    """Every kind of bad token: UNAUTHENTICATED with ErrorInfo UNAUTHENTICATED, nothing created,
    the provider never asked, and an audit line for each denial."""
    tokens = bad_tokens(issuer, tmp_path)
    tokens["without exp"] = issuer.token("alice", tenant="acme")
    # PyJWT cannot leave exp out through its own API: sign the claims without it ourselves.
    import jwt as pyjwt

    no_exp = issuer.claims("alice", tenant="acme")
    del no_exp["exp"]
    tokens["without exp"] = pyjwt.encode(no_exp, issuer.private_key, algorithm="ES256", headers={"kid": issuer.kid})
    async with (
        InProcessServer(tmp_path, providers=COUNTING, **jwt_settings(issuer)) as server,
        grpc.aio.insecure_channel(server.target) as channel,
    ):
        stub = svc_grpc.CallQosServiceStub(channel)
        PROVIDER_CALLS.clear()
        for what, token in tokens.items():
            error = await rpc_error(stub.CreateCall(make_request(call_id="stolen"), metadata=bearer(token)))
            assert error.code() == UNAUTHENTICATED, (what, error.details())
            assert reason(error) == "UNAUTHENTICATED", what
            assert details(error)["ErrorInfo"].metadata["authenticator"] == "jwt", what
        for metadata in ((), (("authorization", "Basic YWxpY2U6c2VjcmV0"),)):
            error = await rpc_error(stub.CreateCall(make_request(call_id="stolen"), metadata=metadata))
            assert error.code() == UNAUTHENTICATED, metadata
        assert PROVIDER_CALLS == []
        good = issuer.token("bob", tenant="acme")
        missing = await rpc_error(stub.GetCall(svc.GetCallRequest(name="calls/stolen"), metadata=bearer(good)))
        assert missing.code() == grpc.StatusCode.NOT_FOUND
    denied = audit_lines.where(method="CreateCall", outcome="denied", reason="UNAUTHENTICATED")
    assert len(denied) == len(tokens) + 2
    assert all(line["peer"].startswith("ipv4:127.0.0.1:") and line["trace_id"] for line in denied)
    assert {line["detail"] for line in denied} >= {
        "token expired",
        "token not yet valid",
        "token is for another audience",
        "token from another issuer",
        "token signature does not verify",
        "token algorithm 'none' is not allowed",
        "token algorithm 'HS256' is not allowed",
        "no credentials",
    }
    assert not any("eyJ" in json.dumps(line) for line in audit_lines.records), "a token reached the audit log"


async def test_an_rs256_issuer_cannot_be_confused_with_hmac(tmp_path: Path) -> None:
    """The classic key confusion: an RS256 issuer's public key used as an HS256 secret."""
    rsa = TestIssuer(tmp_path / "rsa", algorithm="RS256")
    async with (
        InProcessServer(tmp_path, **jwt_settings(rsa)) as server,
        grpc.aio.insecure_channel(server.target) as channel,
    ):
        stub = svc_grpc.CallQosServiceStub(channel)
        assert (await stub.CreateCall(make_request(), metadata=bearer(rsa.token("a", tenant="t")))).owner == "a"
        forged = hmac_token(rsa.claims("root", tenant="t"), rsa.public_pem(), rsa.kid)
        error = await rpc_error(stub.CreateCall(make_request(), metadata=bearer(forged)))
        assert error.code() == UNAUTHENTICATED


async def test_rotated_issuer_keys_are_fetched_on_an_unknown_kid_at_a_bounded_rate(
    tmp_path: Path, issuer: TestIssuer
) -> None:
    settings = jwt_settings(issuer, jwks_min_refresh_seconds=0.0)
    async with InProcessServer(tmp_path, **settings) as server, grpc.aio.insecure_channel(server.target) as channel:
        stub = svc_grpc.CallQosServiceStub(channel)
        await stub.CreateCall(make_request(), metadata=bearer(issuer.token("alice", tenant="acme")))
        issuer.rotate()  # the identity provider publishes a new key and signs with it
        fresh = issuer.token("alice", tenant="acme")
        call = await stub.CreateCall(make_request(), metadata=bearer(fresh))
        assert call.owner == "alice"
    async with InProcessServer(tmp_path / "limited", **jwt_settings(issuer, jwks_min_refresh_seconds=60.0)) as server:
        guard = server.running.guard
        assert guard is not None and guard.jwt is not None
        reads_at_start = guard.jwt.keys.reads
        stranger = TestIssuer(tmp_path / "stranger")
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = svc_grpc.CallQosServiceStub(channel)
            for _ in range(20):
                stranger.rotate()  # a new made-up kid every time
                token = stranger.token("mallory", tenant="acme")
                assert (
                    await rpc_error(stub.CreateCall(make_request(), metadata=bearer(token)))
                ).code() == UNAUTHENTICATED
        assert guard.jwt.keys.reads - reads_at_start <= 1, "unknown kids made the server re-read its keys each time"


async def test_the_principal_header_does_not_impersonate_when_an_authenticator_is_on(
    tmp_path: Path, issuer: TestIssuer, audit_lines: AuditLines
) -> None:
    """The attack of issue #13: `x-callqos-principal: alice` from anyone. With an authenticator on,
    the header alone is UNAUTHENTICATED, and beside a token it changes nothing."""
    async with (
        InProcessServer(tmp_path, providers=COUNTING, **jwt_settings(issuer)) as server,
        grpc.aio.insecure_channel(server.target) as channel,
    ):
        stub = svc_grpc.CallQosServiceStub(channel)
        alice = bearer(issuer.token("alice", tenant="acme"))
        call = await stub.CreateCall(make_request(), metadata=alice)
        impostor = (("x-callqos-principal", "alice"), ("x-callqos-tenant", "acme"), ("x-callqos-roles", "admin"))
        error = await rpc_error(stub.DropCall(svc.DropCallRequest(name=call.name), metadata=impostor))
        assert error.code() == UNAUTHENTICATED
        mallory = bearer(issuer.token("mallory", tenant="acme"))
        PROVIDER_CALLS.clear()
        error = await rpc_error(stub.DropCall(svc.DropCallRequest(name=call.name), metadata=impostor + mallory))
        assert (error.code(), reason(error)) == (grpc.StatusCode.PERMISSION_DENIED, "NOT_OWNER")
        assert PROVIDER_CALLS == []
        assert (await stub.GetCall(svc.GetCallRequest(name=call.name), metadata=alice)).state == call.state
    assert audit_lines.where(method="DropCall", outcome="denied", principal="mallory", reason="NOT_OWNER")


async def test_the_trusted_header_is_believed_only_on_the_proxy_socket(
    tmp_path: Path, issuer: TestIssuer, audit_lines: AuditLines
) -> None:
    socket = tmp_path / "proxy.sock"
    settings = jwt_settings(issuer, authenticators=["header", "jwt"], proxy_listen=f"unix:{socket}")
    asserted = (("x-callqos-principal", "carol"), ("x-callqos-tenant", "globex"), ("x-callqos-roles", "caller"))
    async with InProcessServer(tmp_path, **settings) as server:
        async with grpc.aio.insecure_channel(f"unix:{socket}") as proxy:
            call = await svc_grpc.CallQosServiceStub(proxy).CreateCall(make_request(), metadata=asserted)
            assert (call.owner, call.tenant) == ("carol", "globex")
        async with grpc.aio.insecure_channel(server.target) as direct:
            error = await rpc_error(svc_grpc.CallQosServiceStub(direct).CreateCall(make_request(), metadata=asserted))
            assert error.code() == UNAUTHENTICATED
    [created] = audit_lines.where(method="CreateCall", outcome="ok")
    assert created["authenticated_by"] == "header" and created["on_behalf_of"].startswith("unix:")


async def test_mtls_principals_and_trusted_proxies(tmp_path: Path, pki: TestPki, audit_lines: AuditLines) -> None:
    server_cert = pki.server_certificate()
    workload = pki.client_certificate("workload", uris=["spiffe://callqos.test/ns/acme/app"])
    by_dns = pki.client_certificate("dns", dns=["billing.acme.test"])
    by_cn = pki.client_certificate("cn", common_name="legacy-client")
    two_uris = pki.client_certificate("two", uris=["spiffe://callqos.test/a", "https://acme.test/b"])
    foreign = pki.client_certificate("foreign", uris=["spiffe://elsewhere.test/app"])
    proxy = pki.client_certificate("proxy", uris=["spiffe://callqos.test/proxy"])
    settings = {
        **tls_settings(server_cert, client_ca=pki.ca_path),
        "authenticators": ["header", "mtls"],
        "mtls_trust_domain": "callqos.test",
        "trusted_proxies": ["spiffe://callqos.test/proxy"],
        "principals": {"spiffe://callqos.test/ns/acme/app": {"tenant": "acme", "roles": ["caller"]}},
    }
    async with InProcessServer(tmp_path, **settings) as server:

        async def create(client: Any, metadata: Any = ()) -> Any:
            async with tls_channel(server.target, pki, client) as channel:
                return await svc_grpc.CallQosServiceStub(channel).CreateCall(make_request(), metadata=metadata)

        call = await create(workload)
        assert (call.owner, call.tenant) == ("spiffe://callqos.test/ns/acme/app", "acme")
        assert (await create(by_dns)).owner == "billing.acme.test"
        assert (await create(by_cn)).owner == "legacy-client"
        for refused in (two_uris, foreign):
            assert (await rpc_error(create(refused))).code() == UNAUTHENTICATED
        # The proxy's headers count; anyone else's are ignored (the request is the sender's own).
        asserted = (("x-callqos-principal", "dave"), ("x-callqos-tenant", "acme"))
        assert (await create(proxy, asserted)).owner == "dave"
        assert (await create(by_dns, asserted)).owner == "billing.acme.test"
        # No certificate: the TLS handshake itself fails.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await create(None)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    [line] = audit_lines.where(method="CreateCall", principal="dave")
    assert line["on_behalf_of"] == "spiffe://callqos.test/proxy"
    assert all(r["credential"].startswith("sha256:") for r in audit_lines.where(authenticated_by="mtls"))


def test_certificate_principal_rules(tmp_path: Path, pki: TestPki) -> None:
    from cryptography import x509

    def principal(files: Any, trust_domain: str = "") -> str:
        return certificate_principal(x509.load_pem_x509_certificate(files.cert.read_bytes()), trust_domain)

    assert principal(pki.client_certificate("a", uris=["spiffe://td/x"], dns=["a.test"])) == "spiffe://td/x"
    assert principal(pki.client_certificate("b", uris=["https://not-spiffe.test/"], dns=["b.test"])) == "b.test"
    assert principal(pki.client_certificate("c", dns=["c1.test", "c2.test"])) == "c1.test"
    assert principal(pki.client_certificate("d", common_name="only-cn")) == "only-cn"
    with pytest.raises(ValueError, match="exactly one URI"):
        principal(pki.client_certificate("e", uris=["spiffe://td/x", "spiffe://td/y"]))
    with pytest.raises(ValueError, match="trust domain"):
        principal(pki.client_certificate("f", uris=["spiffe://other/x"]), "td")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--listen", "0.0.0.0:0"], "no authenticator is configured"),
        (["--listen", "192.0.2.1:0"], "no authenticator is configured"),
    ],
)
def test_a_non_loopback_listener_without_authentication_refuses_to_start(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Refused before anything is bound: the configuration is checked first."""
    assert cli.main([*flags, "--storage", "memory"]) == 2
    assert message in capsys.readouterr().err


def test_the_insecure_opt_outs_are_logged_loudly(caplog: pytest.LogCaptureFixture) -> None:
    from callqos.server import app
    from callqos.server.config import Config

    unauthenticated = Config(listen="0.0.0.0:50051", insecure_allow_unauthenticated=True)
    unauthenticated.validate()
    with caplog.at_level("WARNING", logger="callqos.server"):
        app._warn_if_exposed(unauthenticated)
    assert "INSECURE" in caplog.text and "no authenticator" in caplog.text
