"""The caller of a request, as authentication established it."""

from __future__ import annotations

from dataclasses import dataclass, field

from callqos.wire import ANONYMOUS_PRINCIPAL, DEFAULT_TENANT

__all__ = ["ANONYMOUS_PRINCIPAL", "DEFAULT_TENANT", "Caller"]


@dataclass(frozen=True)
class Caller:
    """Who is calling: a principal within a tenant, with the permissions its roles grant.

    `authenticated_by` names the authenticator that vouched for it ("mtls", "jwt", "header"), or
    "none" in development mode; `on_behalf_of` is the trusted proxy that asserted it (header);
    `peer` is the transport address, for the audit log."""

    principal: str
    tenant: str = DEFAULT_TENANT
    roles: frozenset[str] = frozenset()
    permissions: frozenset[str] = frozenset()
    authenticated_by: str = "none"
    peer: str = ""
    on_behalf_of: str = ""
    # How the caller's credential can be told apart in logs (a token's jti, a certificate's
    # fingerprint); never the credential itself.
    credential_id: str = field(default="", compare=False)

    def can(self, permission: str) -> bool:
        return permission in self.permissions

    @property
    def subject(self) -> str:
        """`{tenant}/{principal}`: a principal is unique only within its tenant."""
        return f"{self.tenant}/{self.principal}"
