"""Helpers for the security tests: a PKI and a token issuer made in the test, the server settings
that use them, channels that present them, and the audit lines a server wrote.

Certificates and keys come from `callqos.server.testpki` (made on the spot with `cryptography`);
tokens are signed in the test with the issuer's own key."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import grpc

from callqos.server.providers.reference import ReferenceProvider
from callqos.server.testpki import AUDIENCE, ISSUER, CertificateFiles, TestIssuer, TestPki

PROVIDER_CALLS: list[str] = []  # what CountingProvider was asked, in order


class CountingProvider(ReferenceProvider):
    """The reference provider, remembering every admit / renegotiate / release it is asked for,
    so a test can tell that a refused request never reached a provider."""

    async def admit(self, request):  # type: ignore[no-untyped-def]
        PROVIDER_CALLS.append(f"admit {request.call}")
        decision = await super().admit(request)
        # With `delay_seconds`, the decision is taken at once but answered late, so a burst of
        # admissions is all decided before the first is committed.
        await asyncio.sleep(float(self.settings.get("delay_seconds", 0.0)))
        return decision

    async def renegotiate(self, request):  # type: ignore[no-untyped-def]
        PROVIDER_CALLS.append(f"renegotiate {request.call}")
        decision = await super().renegotiate(request)
        await asyncio.sleep(float(self.settings.get("renegotiate_delay_seconds", 0.0)))
        return decision

    async def release(self, call):  # type: ignore[no-untyped-def]
        PROVIDER_CALLS.append(f"release {call}")
        return await super().release(call)

    async def update_link(self, link_id, capacity):  # type: ignore[no-untyped-def]
        PROVIDER_CALLS.append(f"update_link {link_id}")
        return await super().update_link(link_id, capacity)


COUNTING = {"reference": {"plugin": "security_testkit:CountingProvider"}}


def jwt_settings(issuer: TestIssuer, **more: Any) -> dict[str, Any]:
    """Server settings: the jwt authenticator trusting `issuer` (tenant from the `tenant` claim)."""
    return {
        "authenticators": ["jwt"],
        "jwt_issuer": ISSUER,
        "jwt_audience": AUDIENCE,
        "jwt_jwks_file": issuer.jwks_path,
        "jwt_algorithms": [issuer.algorithm],
        "jwt_tenant_claim": "tenant",
        **more,
    }


def tls_settings(server: CertificateFiles, client_ca: Path | None = None) -> dict[str, Any]:
    settings: dict[str, Any] = {"tls_cert": server.cert, "tls_key": server.key}
    if client_ca is not None:
        settings["tls_client_ca"] = client_ca
    return settings


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def tls_channel(target: str, pki: TestPki, client: CertificateFiles | None = None) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(
        pki.ca_pem,
        client.key.read_bytes() if client else None,
        client.cert.read_bytes() if client else None,
    )
    return grpc.aio.secure_channel(target, credentials)


class AuditLines(logging.Handler):
    """The records of the `callqos.audit` logger, as the dicts the JSON log line is made of."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        standard = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message"}
        self.records.append({k: v for k, v in vars(record).items() if k not in standard})

    def where(self, **fields: Any) -> list[dict[str, Any]]:
        return [r for r in self.records if all(r.get(k) == v for k, v in fields.items())]


def json_lines(text: str) -> list[dict[str, Any]]:
    lines = []
    for line in text.splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            continue
    return lines
