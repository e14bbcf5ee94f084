"""Authentication: what a request presents (`Credentials`) and the authenticators that vouch for it.

Each authenticator answers one of three ways: an `Identity` (it vouches for the caller), None (the
request carries no credential of its kind), or it raises UNAUTHENTICATED (it carries one, and it is
bad). Shipped:

- `MtlsAuthenticator`: the verified client certificate of the TLS connection. The principal is its
  SPIFFE ID (its one URI SAN, `spiffe://…`), else its first DNS SAN, else its subject CN.
- `JwtAuthenticator`: `authorization: Bearer <JWT>`, verified against a JWKS (`jwks`): signature
  with the key the token names and only that key's algorithm, issuer, audience, exp/nbf/iat with
  a bounded leeway; principal, tenant and roles from configured claims.
- `HeaderAuthenticator`: `x-callqos-principal` (and `-tenant`, `-roles`) — believed only from a
  trusted peer: the proxy unix socket, or a connection whose mTLS principal is a trusted proxy.
- `DevelopmentAuthenticator`: no authenticator configured — the principal header from anyone.

`Guard` (guard.py) runs them in the order header, jwt, mtls: an assertion by a trusted proxy first,
then a bearer token, then the connection's own certificate.
"""

from __future__ import annotations

import abc
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from callqos.server import validation
from callqos.server.errors import Reason, ServiceError
from callqos.server.security.jwks import JwksKeys
from callqos.wire import (
    ANONYMOUS_PRINCIPAL,
    AUTHORIZATION_HEADER,
    BEARER_PREFIX,
    PRINCIPAL_HEADER,
    ROLES_HEADER,
    TENANT_HEADER,
)

log = logging.getLogger("callqos.server.security")

TLS_TRANSPORTS = (b"ssl", b"tls")  # grpc names TLS "ssl" today, "tls" after grpc#43080
UNIX_PEER = "unix:"
_CACHED_CERTIFICATES = 1024
_CACHED_TOKENS = 10_000

AuthContext = Mapping[str, Sequence[bytes]]


@dataclass
class Credentials:
    """What one request presents: its metadata, its peer address, and (read only when asked,
    since it costs a trip into gRPC core) the TLS connection's auth context."""

    metadata: Mapping[str, str]
    peer: str
    read_auth_context: Callable[[], AuthContext] = dict
    _auth_context: AuthContext | None = field(default=None, repr=False)

    @classmethod
    def of(
        cls, metadata: Sequence[tuple[str, str | bytes]] | None, peer: str, auth: Callable[[], AuthContext]
    ) -> Credentials:
        # The first value of each text key (a repeated x-callqos-principal gets no second chance).
        first: dict[str, str] = {}
        for key, value in metadata or ():
            if isinstance(value, str):
                first.setdefault(key, value)
        return cls(first, peer, auth)

    @property
    def auth_context(self) -> AuthContext:
        if self._auth_context is None:
            self._auth_context = self.read_auth_context() or {}
        return self._auth_context


@dataclass(frozen=True)
class Identity:
    """What an authenticator vouches for. A tenant or roles of None: the credential says nothing
    about them (the `principals` setting and the defaults fill them in)."""

    authenticator: str
    principal: str
    tenant: str | None = None
    roles: frozenset[str] | None = None
    on_behalf_of: str = ""
    credential_id: str = ""


def unauthenticated(authenticator: str, cause: str) -> ServiceError:
    """UNAUTHENTICATED, saying which authenticator refused and why (never the credential)."""
    return ServiceError(
        Reason.ERROR_REASON_UNAUTHENTICATED,
        f"not authenticated: {cause}",
        metadata={"authenticator": authenticator, "cause": cause},
        denial=cause,
    )


class Authenticator(abc.ABC):
    name: str

    @abc.abstractmethod
    async def authenticate(self, credentials: Credentials) -> Identity | None:
        """The identity the request's credential proves; None when it carries no credential of
        this kind; raises UNAUTHENTICATED (`unauthenticated`) when it carries a bad one."""


# -- mTLS ----------------------------------------------------------------------------------------
def certificate_principal(certificate: x509.Certificate, trust_domain: str = "") -> str:
    """The principal a client certificate names: its SPIFFE ID, else first DNS SAN, else CN.

    A SPIFFE X.509-SVID has exactly one URI SAN; a certificate with a spiffe:// URI among several
    is refused rather than guessed at. With `trust_domain`, a SPIFFE ID of another domain is refused."""
    try:
        sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        sans = x509.SubjectAlternativeName([])
    uris = sans.get_values_for_type(x509.UniformResourceIdentifier)
    spiffe = [uri for uri in uris if uri.lower().startswith("spiffe://")]
    if spiffe:
        if len(uris) != 1:
            raise ValueError("a SPIFFE certificate must have exactly one URI SAN")
        domain = spiffe[0][len("spiffe://") :].split("/", 1)[0]
        if trust_domain and domain != trust_domain:
            raise ValueError(f"SPIFFE ID of trust domain {domain!r}, not {trust_domain!r}")
        return spiffe[0]
    dns = sans.get_values_for_type(x509.DNSName)
    if dns:
        return str(dns[0])
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if names and isinstance(names[0].value, str) and names[0].value:
        return names[0].value
    raise ValueError("the certificate has no SPIFFE ID, DNS name or common name")


class MtlsAuthenticator(Authenticator):
    name = "mtls"

    def __init__(self, trust_domain: str = "") -> None:
        self._trust_domain = trust_domain
        # PEM → (principal, fingerprint) or the refusal: a connection's certificate is parsed
        # once, not on every request.
        self._seen: OrderedDict[bytes, tuple[str, str] | str] = OrderedDict()

    def peer_principal(self, credentials: Credentials) -> tuple[str, str] | None:
        """(principal, SHA-256 fingerprint) of the connection's verified client certificate, None
        when there is none; raises UNAUTHENTICATED for a certificate naming no usable principal."""
        context = credentials.auth_context
        if not any(kind in TLS_TRANSPORTS for kind in context.get("transport_security_type", ())):
            return None
        pems = context.get("x509_pem_cert")
        if not pems:
            return None  # gRPC verified no client certificate
        pem = pems[0]
        known = self._seen.get(pem)
        if known is None:
            try:
                certificate = x509.load_pem_x509_certificate(pem)
                known = (
                    certificate_principal(certificate, self._trust_domain),
                    certificate.fingerprint(hashes.SHA256()).hex(),
                )
            except ValueError as exc:
                known = f"client certificate refused: {exc}"
            self._seen[pem] = known
            if len(self._seen) > _CACHED_CERTIFICATES:
                self._seen.popitem(last=False)
        if isinstance(known, str):
            raise unauthenticated(self.name, known)
        return known

    async def authenticate(self, credentials: Credentials) -> Identity | None:
        found = self.peer_principal(credentials)
        if found is None:
            return None
        principal, fingerprint = found
        return Identity(self.name, principal, credential_id=f"sha256:{fingerprint}")


# -- bearer JWT ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class JwtRules:
    issuer: str
    audience: str
    algorithms: frozenset[str]
    leeway_seconds: float
    principal_claim: str
    tenant_claim: str
    roles_claim: str
    cache_seconds: float


class JwtAuthenticator(Authenticator):
    """Bearer tokens. A token verified once is remembered (by its exact text, until it expires or
    `cache_seconds` pass, whichever is first), so a client reusing its token pays for the
    signature once; any change to the token is a different text, verified afresh."""

    name = "jwt"

    def __init__(self, rules: JwtRules, keys: JwksKeys, clock: Callable[[], float] = time.time) -> None:
        self._rules = rules
        self._keys = keys
        self._clock = clock
        self._verified: OrderedDict[str, tuple[Identity, float]] = OrderedDict()

    @property
    def keys(self) -> JwksKeys:
        return self._keys

    async def start(self) -> None:
        await self._keys.start()

    async def authenticate(self, credentials: Credentials) -> Identity | None:
        header = credentials.metadata.get(AUTHORIZATION_HEADER)
        if header is None:
            return None
        if not header.startswith(BEARER_PREFIX):
            raise unauthenticated(self.name, "the authorization header is not a Bearer token")
        token = header[len(BEARER_PREFIX) :].strip()
        cached = self._verified.get(token)
        if cached is not None:
            if self._clock() < cached[1]:
                self._verified.move_to_end(token)
                return cached[0]
            del self._verified[token]
        identity, expires = await self._verify(token)
        self._verified[token] = (identity, min(expires, self._clock() + self._rules.cache_seconds))
        if len(self._verified) > _CACHED_TOKENS:
            self._verified.popitem(last=False)
        return identity

    async def _verify(self, token: str) -> tuple[Identity, float]:
        rules = self._rules
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise unauthenticated(self.name, f"malformed token ({exc})") from exc
        algorithm = header.get("alg")
        if algorithm not in rules.algorithms:
            # "none", any HMAC, or an algorithm this server was not told to accept.
            raise unauthenticated(self.name, f"token algorithm {algorithm!r} is not allowed")
        kid = header.get("kid")
        key = await self._keys.key(kid if isinstance(kid, str) else None)
        if key is None:
            raise unauthenticated(self.name, f"no key {kid!r} in the issuer's key set")
        if key.algorithm_name != algorithm:
            raise unauthenticated(self.name, f"key {kid!r} is for {key.algorithm_name}, not {algorithm}")
        required = ["exp", "iss", "aud", rules.principal_claim]
        if rules.tenant_claim:
            required.append(rules.tenant_claim)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[key.algorithm_name],  # the key's one algorithm, never the token's choice
                audience=rules.audience,
                issuer=rules.issuer,
                leeway=rules.leeway_seconds,
                options={"require": required, "verify_signature": True},
            )
        except jwt.ExpiredSignatureError as exc:
            raise unauthenticated(self.name, "token expired") from exc
        except jwt.ImmatureSignatureError as exc:
            raise unauthenticated(self.name, "token not yet valid") from exc
        except jwt.InvalidAudienceError as exc:
            raise unauthenticated(self.name, "token is for another audience") from exc
        except jwt.InvalidIssuerError as exc:
            raise unauthenticated(self.name, "token from another issuer") from exc
        except jwt.InvalidSignatureError as exc:
            raise unauthenticated(self.name, "token signature does not verify") from exc
        except jwt.PyJWTError as exc:
            raise unauthenticated(self.name, f"token refused ({exc})") from exc
        principal = self._text_claim(claims, rules.principal_claim)
        tenant = self._text_claim(claims, rules.tenant_claim) if rules.tenant_claim else None
        identity = Identity(
            self.name,
            principal,
            tenant=tenant,
            roles=self._roles(claims.get(rules.roles_claim)),
            credential_id=f"jti:{claims['jti']}" if isinstance(claims.get("jti"), str) else "",
        )
        expires = float(claims["exp"]) + rules.leeway_seconds
        return identity, expires

    def _text_claim(self, claims: Mapping[str, Any], name: str) -> str:
        value = claims.get(name)
        if not isinstance(value, str) or not validation.is_principal(value):
            raise unauthenticated(self.name, f"claim {name!r} must be 1-128 printable ASCII characters")
        return value

    def _roles(self, value: Any) -> frozenset[str] | None:
        if value is None:
            return None
        if isinstance(value, str):
            return frozenset(value.split())
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return frozenset(value)
        raise unauthenticated(self.name, f"claim {self._rules.roles_claim!r} must be a list of role names")


# -- trusted header ------------------------------------------------------------------------------
class HeaderAuthenticator(Authenticator):
    """The identity a trusted authenticating proxy asserts in request headers."""

    name = "header"

    def __init__(self, trusted_proxies: Collection[str], mtls: MtlsAuthenticator | None, proxy_socket: bool) -> None:
        self._trusted = frozenset(trusted_proxies)
        self._mtls = mtls
        self._proxy_socket = proxy_socket

    def proxy_of(self, credentials: Credentials) -> str | None:
        """The trusted proxy this request comes through, or None."""
        if self._proxy_socket and credentials.peer.startswith(UNIX_PEER):
            return credentials.peer  # only proxy_listen is a unix socket
        if self._trusted and self._mtls is not None:
            found = self._mtls.peer_principal(credentials)
            if found is not None and found[0] in self._trusted:
                return found[0]
        return None

    async def authenticate(self, credentials: Credentials) -> Identity | None:
        asserted = credentials.metadata.get(PRINCIPAL_HEADER)
        if asserted is None:
            return None
        proxy = self.proxy_of(credentials)
        if proxy is None:
            # Anyone can send a header: from an untrusted peer it means nothing, and the request
            # is judged by the credentials it really has.
            return None
        tenant = credentials.metadata.get(TENANT_HEADER)
        roles = credentials.metadata.get(ROLES_HEADER)
        return Identity(
            self.name,
            validation.principal(asserted, PRINCIPAL_HEADER),
            tenant=None if tenant is None else validation.principal(tenant, TENANT_HEADER),
            roles=None if roles is None else frozenset(r.strip() for r in roles.split(",") if r.strip()),
            on_behalf_of=proxy,
        )


class DevelopmentAuthenticator(Authenticator):
    """No authenticator configured: whoever the x-callqos-principal header names (validated), or
    `anonymous`. Only on loopback, unless the operator insisted (config.insecure_allow_unauthenticated)."""

    name = "none"

    async def authenticate(self, credentials: Credentials) -> Identity:
        asserted = credentials.metadata.get(PRINCIPAL_HEADER)
        principal = ANONYMOUS_PRINCIPAL if asserted is None else validation.principal(asserted, PRINCIPAL_HEADER)
        return Identity(self.name, principal)
