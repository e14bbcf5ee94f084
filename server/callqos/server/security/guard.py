"""The Guard: the one door of every CallQosService request — who is calling (authentication), may
they call this method (authorisation), and the audit record of what came of it.

The service's handler wrapper asks `authenticate(context)` and then `authorize(caller, method)`
before it decodes anything else of the request, and hands the resulting `Caller` on. Health and
reflection do not pass here: they answer anyone (health tells only "serving"; reflection only the
public schema).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from callqos.server import validation
from callqos.server.config import Config, ConfigError
from callqos.server.errors import Reason, ReplayedStatus, ServiceError
from callqos.server.security import audit
from callqos.server.security.authn import (
    Authenticator,
    Credentials,
    DevelopmentAuthenticator,
    HeaderAuthenticator,
    Identity,
    JwtAuthenticator,
    JwtRules,
    MtlsAuthenticator,
    unauthenticated,
)
from callqos.server.security.authz import METHOD_PERMISSIONS, MUTATIONS, Roles
from callqos.server.security.identity import DEFAULT_TENANT, Caller
from callqos.server.security.jwks import JwksError, JwksKeys
from callqos.server.security.quotas import Quotas
from callqos.wire import PRINCIPAL_HEADER

log = logging.getLogger("callqos.server.security")

# Development mode's callers kept for reuse (see `_development_key`): a few per connection.
DEVELOPMENT_CALLERS = 4096

# Reasons that are access-control decisions: audited on every method, not only on mutations.
DENIALS = frozenset(
    {
        Reason.ERROR_REASON_UNAUTHENTICATED,
        Reason.ERROR_REASON_PERMISSION_DENIED,
        Reason.ERROR_REASON_NOT_OWNER,
        Reason.ERROR_REASON_QUOTA_EXCEEDED,
    }
)


@dataclass(frozen=True)
class Binding:
    """A `principals` entry: the tenant and roles of one principal."""

    tenant: str | None
    roles: frozenset[str]


def _development_key(context: grpc.aio.ServicerContext) -> tuple[str | None, str]:
    """What a caller depends on in development mode (no authenticator configured): the principal
    the request asserts (the first value, as `Credentials.of` reads it) and its peer. The Guard
    keeps each such caller for reuse (a Caller is immutable), a bounded number of them: a peer is
    a connection, and connections come and go. A malformed principal is refused, never kept."""
    asserted = None
    for key, value in context.invocation_metadata() or ():
        if key == PRINCIPAL_HEADER and isinstance(value, str):
            asserted = value
            break
    return asserted, context.peer() or ""


def _bindings(table: Mapping[str, Mapping[str, Any]], roles: Roles) -> dict[str, Binding]:
    bindings = {}
    for principal, entry in table.items():
        unknown = sorted(set(entry) - {"tenant", "roles"})
        if unknown:
            raise ConfigError(f"principals.{principal}: unknown key(s) {', '.join(unknown)} (tenant, roles)")
        tenant = entry.get("tenant")
        if tenant is not None and (not isinstance(tenant, str) or not validation.is_principal(tenant)):
            raise ConfigError(f"principals.{principal}.tenant: 1-128 printable ASCII characters")
        bindings[principal] = Binding(tenant, roles.check(entry.get("roles", ()), f"principals.{principal}.roles"))
    return bindings


class Guard:
    def __init__(self, config: Config) -> None:
        self.roles = Roles(config.roles)
        self.quotas = Quotas(config)
        self._default_roles = self.roles.check(config.default_roles, "default_roles")
        self._development_roles = self.roles.check(config.unauthenticated_roles, "unauthenticated_roles")
        self._bindings = _bindings(config.principals, self.roles)
        on = set(config.authenticators)
        mtls = MtlsAuthenticator(config.mtls_trust_domain) if "mtls" in on else None
        self.jwt: JwtAuthenticator | None = None
        chain: list[Authenticator] = []
        if "header" in on:
            chain.append(HeaderAuthenticator(config.trusted_proxies, mtls, proxy_socket=bool(config.proxy_listen)))
        if "jwt" in on:
            keys = JwksKeys(
                file=config.jwt_jwks_file,
                url=config.jwt_jwks_url,
                algorithms=config.jwt_algorithms,
                cache_seconds=config.jwks_cache_seconds,
                min_refresh_seconds=config.jwks_min_refresh_seconds,
            )
            rules = JwtRules(
                issuer=config.jwt_issuer,
                audience=config.jwt_audience,
                algorithms=frozenset(config.jwt_algorithms),
                leeway_seconds=config.jwt_leeway_seconds,
                principal_claim=config.jwt_principal_claim,
                tenant_claim=config.jwt_tenant_claim,
                roles_claim=config.jwt_roles_claim,
                cache_seconds=config.jwks_cache_seconds,
            )
            self.jwt = JwtAuthenticator(rules, keys)
            chain.append(self.jwt)
        if mtls is not None:
            chain.append(mtls)
        self._chain = chain or [DevelopmentAuthenticator()]
        self.development = not chain
        self._reads_auth_context = mtls is not None
        self._development_callers: dict[tuple[str | None, str], Caller] = {}

    async def start(self) -> None:
        """Read what authentication needs before the first request (the JWKS)."""
        if self.jwt is not None:
            try:
                await self.jwt.start()
            except JwksError as exc:
                raise ConfigError(f"jwt_jwks_file: {exc}") from exc

    # -- authentication ------------------------------------------------------------------------
    def credentials(self, context: grpc.aio.ServicerContext) -> Credentials:
        auth = context.auth_context if self._reads_auth_context else dict
        return Credentials.of(context.invocation_metadata(), context.peer() or "", auth)

    async def authenticate(self, context: grpc.aio.ServicerContext) -> Caller:
        """The caller, from the first authenticator that vouches for the request; UNAUTHENTICATED
        when none does (a request with no credentials is never anonymous once one is configured)."""
        key = _development_key(context) if self.development else None
        if key is not None and (known := self._development_callers.get(key)) is not None:
            return known
        credentials = self.credentials(context)
        for authenticator in self._chain:
            identity = await authenticator.authenticate(credentials)
            if identity is not None:
                caller = self._caller(identity, credentials.peer)
                if key is not None:
                    if len(self._development_callers) >= DEVELOPMENT_CALLERS:
                        self._development_callers.clear()
                    self._development_callers[key] = caller
                return caller
        raise unauthenticated(",".join(a.name for a in self._chain), "no credentials")

    def _caller(self, identity: Identity, peer: str) -> Caller:
        if self.development:
            roles = self._development_roles
            tenant = DEFAULT_TENANT
        else:
            binding = self._bindings.get(identity.principal)
            tenant = identity.tenant or (binding.tenant if binding else None) or DEFAULT_TENANT
            roles = (identity.roles or frozenset()) | (binding.roles if binding else frozenset())
            if identity.roles is None and not roles:
                roles = self._default_roles
        return Caller(
            principal=identity.principal,
            tenant=tenant,
            roles=roles,
            permissions=self.roles.permissions(roles),
            authenticated_by=identity.authenticator,
            peer=peer,
            on_behalf_of=identity.on_behalf_of,
            credential_id=identity.credential_id,
        )

    # -- authorisation -------------------------------------------------------------------------
    @staticmethod
    def authorize(caller: Caller, method: str) -> None:
        """PERMISSION_DENIED unless one of the caller's roles grants what `method` needs."""
        permission = METHOD_PERMISSIONS.get(method)
        if permission is None or not caller.can(permission):
            needed = permission or "(no permission grants it)"
            raise ServiceError(
                Reason.ERROR_REASON_PERMISSION_DENIED,
                f"{caller.principal} may not call {method}: it needs permission {needed}, which none of its roles "
                f"({', '.join(sorted(caller.roles)) or 'none'}) grants",
                metadata={"permission": needed, "principal": caller.principal, "tenant": caller.tenant},
                denial=f"missing permission {needed}",
            )

    # -- audit ---------------------------------------------------------------------------------
    @staticmethod
    def audits_success() -> bool:
        """Whether the record of a mutation that succeeded would be kept now (see `audit.kept`)."""
        return audit.kept(audit.OK)

    @staticmethod
    def audit(
        method: str,
        caller: Caller | None,
        peer: str,
        resource: str,
        error: ServiceError | ReplayedStatus | None,
    ) -> None:
        """Record the outcome of `method` if it was a mutation or a denial."""
        if isinstance(error, ServiceError):
            denied = error.reason in DENIALS or bool(error.denial)
            reason, detail = error.reason_name, error.denial
        elif isinstance(error, ReplayedStatus):
            denied, reason, detail = False, "", "replayed the first outcome of its request_id"
        else:
            denied, reason, detail = False, "", ""
        if not denied and method not in MUTATIONS:
            return
        outcome = audit.DENIED if denied else audit.FAILED if error is not None else audit.OK
        if not audit.kept(outcome):
            return
        audit.record(
            audit.AuditRecord(
                method=method,
                outcome=outcome,
                principal=caller.principal if caller else "",
                tenant=caller.tenant if caller else "",
                resource=resource,
                reason=reason,
                detail=detail,
                authenticated_by=caller.authenticated_by if caller else "",
                on_behalf_of=caller.on_behalf_of if caller else "",
                credential=caller.credential_id if caller else "",
                peer=peer,
            )
        )
