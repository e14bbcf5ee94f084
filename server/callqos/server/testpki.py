"""Test certificates and tokens, made on the spot: a CA, server and client certificates, a JWKS
and signed JWTs — for tests, benchmarks and the other clients' test servers. Nothing here is for
production: keys are written unencrypted, and the CA signs whatever it is asked to.

    pki = TestPki(tmp_path)                      # a CA (ca.pem) in tmp_path
    server = pki.server_certificate("server")    # server.pem / server.key: localhost, 127.0.0.1
    alice = pki.client_certificate("alice", uri="spiffe://example.test/alice")
    issuer = TestIssuer(tmp_path)                # an ES256 key, its JWKS in jwks.json
    token = issuer.token("alice", tenant="acme", roles=["caller"])

`python -m callqos.server.testpki DIR` writes a complete set (CA, server and client certificates,
a JWKS, tokens and a server configuration using them) and prints the paths as JSON, for the Go,
TypeScript and Java clients' tests, which start `callqos serve --config DIR/server.toml`.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import ipaddress
import json
import sys
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["AUDIENCE", "ISSUER", "CertificateFiles", "TestIssuer", "TestPki"]

ISSUER = "https://issuer.callqos.test"
AUDIENCE = "callqos"
_ONE_DAY = datetime.timedelta(days=1)

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True)
class CertificateFiles:
    """A certificate (PEM, with no chain: the test CA signs leaves directly) and its key."""

    cert: Path
    key: Path


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)  # readers (a reloading server) never see half a file
    return path


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


class TestPki:
    """A certificate authority in `directory` (ca.pem, ca.key) that issues leaf certificates."""

    __test__ = False  # not a pytest test class

    def __init__(self, directory: Path, name: str = "ca") -> None:
        self.directory = directory
        self.name = name
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"callqos test {name}")])
        now = datetime.datetime.now(datetime.UTC)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + 30 * _ONE_DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )
        self.ca_path = _write(directory / f"{name}.pem", self.certificate.public_bytes(serialization.Encoding.PEM))

    @property
    def ca_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def issue(
        self,
        stem: str,
        *,
        common_name: str | None = None,
        dns: Sequence[str] = (),
        ips: Sequence[str] = (),
        uris: Sequence[str] = (),
        server: bool = False,
        client: bool = False,
        valid_for: datetime.timedelta = _ONE_DAY,
        not_before: datetime.datetime | None = None,
    ) -> CertificateFiles:
        """A leaf certificate `stem`.pem with key `stem`.key in the directory (rewritten if they
        exist, atomically, so a server watching them sees either the old pair or the new)."""
        key = ec.generate_private_key(ec.SECP256R1())
        start = not_before or datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
        names = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)] if common_name else []
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(names))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + valid_for)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        alternative: list[x509.GeneralName] = [x509.DNSName(name) for name in dns]
        alternative += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        alternative += [x509.UniformResourceIdentifier(uri) for uri in uris]
        if alternative:
            builder = builder.add_extension(x509.SubjectAlternativeName(alternative), critical=not names)
        usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + (
            [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
        )
        if usages:
            builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        certificate = builder.sign(self.key, hashes.SHA256())
        return CertificateFiles(
            cert=_write(self.directory / f"{stem}.pem", certificate.public_bytes(serialization.Encoding.PEM)),
            key=_write(self.directory / f"{stem}.key", _key_pem(key)),
        )

    def server_certificate(self, stem: str = "server", common_name: str = "callqos test server") -> CertificateFiles:
        """For a server on loopback: DNS localhost, IP 127.0.0.1 and ::1."""
        return self.issue(stem, common_name=common_name, dns=["localhost"], ips=["127.0.0.1", "::1"], server=True)

    def client_certificate(
        self, stem: str, *, common_name: str | None = None, dns: Sequence[str] = (), uris: Sequence[str] = ()
    ) -> CertificateFiles:
        return self.issue(stem, common_name=common_name or stem, dns=dns, uris=uris, client=True)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TestIssuer:
    """A token issuer: a signing key (ES256 by default, or RS256), its public JWKS written to
    `directory`/`name`.json, and tokens signed with it. `rotate()` adds a new key (new kid) to the
    JWKS file, as an identity provider rotating its keys does."""

    __test__ = False

    def __init__(
        self,
        directory: Path,
        *,
        algorithm: str = "ES256",
        issuer: str = ISSUER,
        audience: str = AUDIENCE,
        name: str = "jwks",
    ) -> None:
        self.algorithm = algorithm
        self.issuer = issuer
        self.audience = audience
        self.jwks_path = directory / f"{name}.json"
        self._keys: list[tuple[str, PrivateKey]] = []
        self.rotate()

    def _new_key(self) -> PrivateKey:
        if self.algorithm.startswith("ES"):
            return ec.generate_private_key(ec.SECP256R1())
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def rotate(self, *, keep_old: bool = True) -> str:
        """A new signing key (the kid returned); the JWKS file lists it (and the old ones, unless
        `keep_old` is False)."""
        kid = uuid.uuid4().hex[:16]
        self._keys = [*(self._keys if keep_old else []), (kid, self._new_key())]
        self.write_jwks()
        return kid

    @property
    def kid(self) -> str:
        return self._keys[-1][0]

    @property
    def private_key(self) -> PrivateKey:
        return self._keys[-1][1]

    def public_pem(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def jwks(self) -> dict[str, Any]:
        keys = []
        for kid, key in self._keys:
            algorithm = jwt.get_algorithm_by_name(self.algorithm)
            jwk = json.loads(algorithm.to_jwk(key.public_key()))
            jwk.update(kid=kid, alg=self.algorithm, use="sig")
            keys.append(jwk)
        return {"keys": keys}

    def write_jwks(self) -> Path:
        return _write(self.jwks_path, json.dumps(self.jwks(), indent=2).encode())

    def claims(
        self,
        subject: str,
        *,
        tenant: str | None = None,
        roles: Iterable[str] | None = None,
        lifetime: float = 3600.0,
        not_before: float | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": subject,
            "iat": now,
            "exp": now + int(lifetime),
        }
        if not_before is not None:
            claims["nbf"] = int(not_before)
        if tenant is not None:
            claims["tenant"] = tenant
        if roles is not None:
            claims["roles"] = list(roles)
        claims.update(extra)
        return claims

    def token(
        self,
        subject: str,
        *,
        tenant: str | None = None,
        roles: Iterable[str] | None = None,
        lifetime: float = 3600.0,
        headers: Mapping[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        """A token for `subject`, signed with the newest key (its kid in the header). `claims`
        add or replace claims (e.g. aud=..., iss=..., nbf=...)."""
        body = self.claims(subject, tenant=tenant, roles=roles, lifetime=lifetime, **claims)
        return jwt.encode(
            body, self.private_key, algorithm=self.algorithm, headers={"kid": self.kid, **(headers or {})}
        )

    @staticmethod
    def unsigned(claims: Mapping[str, Any], header: Mapping[str, Any] | None = None) -> str:
        """A token with `alg: none` and an empty signature (what an attacker sends)."""
        head = {"alg": "none", "typ": "JWT", **(header or {})}
        return f"{_b64(json.dumps(head).encode())}.{_b64(json.dumps(dict(claims)).encode())}."


def write_client_test_kit(directory: Path) -> dict[str, str]:
    """Everything a client test needs against a TLS + JWT server, as files in `directory`:
    the CA, a server certificate for 127.0.0.1, a client certificate (principal
    spiffe://callqos.test/client), a JWKS, two tokens (alice, bob: tenant `acme`, role caller)
    and server.toml, which serves with mTLS (every client presents a certificate) and the mtls and jwt
    authenticators. Returns the paths by name."""
    directory.mkdir(parents=True, exist_ok=True)
    pki = TestPki(directory)
    server = pki.server_certificate()
    client = pki.client_certificate("client", uris=["spiffe://callqos.test/client"])
    issuer = TestIssuer(directory)
    files = {
        "ca": str(pki.ca_path),
        "server_cert": str(server.cert),
        "server_key": str(server.key),
        "client_cert": str(client.cert),
        "client_key": str(client.key),
        "jwks": str(issuer.jwks_path),
    }
    for who in ("alice", "bob"):
        path = _write(directory / f"{who}.token", issuer.token(who, tenant="acme", roles=["caller"]).encode())
        files[f"{who}_token"] = str(path)
    config = directory / "server.toml"
    config.write_text(
        "\n".join(
            [
                'storage = "memory"',
                f"tls_cert = {json.dumps(files['server_cert'])}",
                f"tls_key = {json.dumps(files['server_key'])}",
                f"tls_client_ca = {json.dumps(files['ca'])}",
                'authenticators = ["mtls", "jwt"]',
                f"jwt_issuer = {json.dumps(ISSUER)}",
                f"jwt_audience = {json.dumps(AUDIENCE)}",
                f"jwt_jwks_file = {json.dumps(files['jwks'])}",
                'jwt_tenant_claim = "tenant"',
                "",
                '[principals."spiffe://callqos.test/client"]',
                'tenant = "acme"',
                'roles = ["caller", "operator"]',
                "",
            ]
        )
    )
    files["config"] = str(config)
    return files


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m callqos.server.testpki", description=write_client_test_kit.__doc__)
    parser.add_argument("directory", type=Path)
    args = parser.parse_args(argv)
    json.dump(write_client_test_kit(args.directory), sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
