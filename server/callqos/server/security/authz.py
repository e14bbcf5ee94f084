"""Authorisation: the permissions, the roles that grant them, and the permission each method needs.

Roles are additive (a principal with several has every permission of each) and there are no deny
rules; a method missing from `METHOD_PERMISSIONS` cannot be called by anyone. Whether a caller may
act on one particular call — it must be of the caller's tenant, and owned by the caller unless a
role says otherwise — is checked by the call manager against the call itself (`calls`), after this
method-level check and before any provider is called.

To add a method: give it a permission here, grant the permission to the roles that should have it
in `BUILTIN_ROLES`, and check resource ownership in the call (or line) manager the way DropCall
and AnswerCall do. A deployment can redefine roles, or add its own, with the `roles` setting.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType

from callqos.server.config import ConfigError


class Permission:
    """Every permission there is; a role grants some of them."""

    CREATE_CALL = "calls.create"
    GET_CALL = "calls.get"  # any call of the caller's tenant
    LIST_CALLS = "calls.list"  # the caller's tenant's calls
    RENEGOTIATE_CALL = "calls.renegotiate"  # the caller's own calls
    DROP_CALL = "calls.drop"  # the caller's own calls
    DROP_ANY_CALL = "calls.drop.any"  # any call of the caller's tenant
    EXTEND_CALL = "calls.extend"  # the lease of the caller's own calls
    ANSWER_CALL = "calls.answer"  # the caller's own offered calls (those offered on its lines)
    REJECT_CALL = "calls.reject"  # the caller's own offered calls
    CREATE_LINE = "lines.create"  # the line is the caller's, in its tenant
    GET_LINE = "lines.get"  # any line of the caller's tenant
    LIST_LINES = "lines.list"  # the caller's tenant's lines
    CLOSE_LINE = "lines.close"  # the caller's own lines
    WATCH_EVENTS = "events.watch"  # the caller's tenant's events
    READ_PROVIDERS = "providers.read"
    READ_LINKS = "links.read"  # links are platform-wide: capacity is visible to every role
    UPDATE_LINK = "links.update"  # changes capacity: may shed other tenants' calls

    @classmethod
    def all(cls) -> frozenset[str]:
        return frozenset(value for key, value in vars(cls).items() if key.isupper())


P = Permission
READ_PLATFORM = (P.READ_PROVIDERS, P.READ_LINKS)
# Reading a tenant's calls and lines, and watching their events (a monitor, LINECALLPRIVILEGE_MONITOR).
READ_TENANT = (P.GET_CALL, P.LIST_CALLS, P.GET_LINE, P.LIST_LINES, P.WATCH_EVENTS)

#: The built-in roles. caller: makes calls, opens lines and answers or rejects the calls offered on
#: them, changes (and extends the lease of) its own calls and lines, reads and watches its tenant's; monitor: reads and
#: watches its tenant's calls and lines; operator: changes link capacity (platform-wide); admin: a
#: monitor who may also drop any call of its tenant.
BUILTIN_ROLES: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "caller": frozenset(
            {
                P.CREATE_CALL,
                P.RENEGOTIATE_CALL,
                P.DROP_CALL,
                P.EXTEND_CALL,
                P.ANSWER_CALL,
                P.REJECT_CALL,
                P.CREATE_LINE,
                P.CLOSE_LINE,
                *READ_TENANT,
                *READ_PLATFORM,
            }
        ),
        "monitor": frozenset({*READ_TENANT, *READ_PLATFORM}),
        "operator": frozenset({P.UPDATE_LINK, *READ_PLATFORM}),
        "admin": frozenset({P.DROP_CALL, P.DROP_ANY_CALL, *READ_TENANT, *READ_PLATFORM}),
    }
)

#: What each CallQosService method needs. Mutations are the methods the audit log records always.
METHOD_PERMISSIONS: Mapping[str, str] = MappingProxyType(
    {
        "CreateCall": P.CREATE_CALL,
        "GetCall": P.GET_CALL,
        "ListCalls": P.LIST_CALLS,
        "RenegotiateCall": P.RENEGOTIATE_CALL,
        "DropCall": P.DROP_CALL,
        "ExtendCall": P.EXTEND_CALL,
        "WatchEvents": P.WATCH_EVENTS,
        "GetProvider": P.READ_PROVIDERS,
        "ListProviders": P.READ_PROVIDERS,
        "ListLinks": P.READ_LINKS,
        "UpdateLink": P.UPDATE_LINK,
        "CreateLine": P.CREATE_LINE,
        "GetLine": P.GET_LINE,
        "ListLines": P.LIST_LINES,
        "CloseLine": P.CLOSE_LINE,
        "AnswerCall": P.ANSWER_CALL,
        "RejectCall": P.REJECT_CALL,
    }
)
MUTATIONS = frozenset(
    {
        *("CreateCall", "RenegotiateCall", "DropCall", "ExtendCall", "UpdateLink"),
        *("CreateLine", "CloseLine", "AnswerCall", "RejectCall"),
    }
)


_GRANTED_CACHE = 1024


class Roles:
    """The roles in force: the built-in ones, with the `roles` setting's replacing or adding."""

    def __init__(self, configured: Mapping[str, Iterable[str]] | None = None) -> None:
        known = Permission.all()
        table = dict(BUILTIN_ROLES)
        for role, permissions in (configured or {}).items():
            granted = frozenset(permissions)
            unknown = sorted(granted - known)
            if unknown:
                raise ConfigError(f"roles.{role}: unknown permission(s) {', '.join(unknown)}")
            table[role] = granted
        self._table: Mapping[str, frozenset[str]] = MappingProxyType(table)
        # The permissions of each set of roles asked about, worked out once: every request asks,
        # almost always for one of a handful of sets (bounded, so a token carrying ever new role
        # names cannot grow it without limit).
        self._granted: dict[frozenset[str], frozenset[str]] = {}

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self._table)

    def check(self, roles: Iterable[str], where: str) -> frozenset[str]:
        """`roles` from configuration: every one must exist."""
        named = frozenset(roles)
        unknown = sorted(named - self.names)
        if unknown:
            raise ConfigError(f"{where}: unknown role(s) {', '.join(unknown)} (known: {', '.join(sorted(self.names))})")
        return named

    def permissions(self, roles: Iterable[str]) -> frozenset[str]:
        """Everything the roles grant together. Unknown role names (a token may carry roles for
        other services) grant nothing."""
        key = roles if isinstance(roles, frozenset) else frozenset(roles)
        cached = self._granted.get(key)
        if cached is not None:
            return cached
        granted: set[str] = set()
        for role in key:
            granted |= self._table.get(role, frozenset())
        if len(self._granted) >= _GRANTED_CACHE:
            self._granted.clear()
        cached = self._granted[key] = frozenset(granted)
        return cached
