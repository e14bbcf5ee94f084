"""Quotas: per tenant, its connected calls and the bytes/s they reserve in each direction; per
principal, its open WatchEvents streams (enforced with the other watch limits, in
`callqos.server.watchers`). 0 is unlimited.

A quota is never exceeded, not even by concurrent requests: admission checks it before the
provider is asked (so a request that cannot fit costs the provider nothing), and the store checks
it again in the very transaction that records a grant (`Store.commit(limits=...)`), which is what
makes it hold — the check and the write cannot be separated by another request, in this process or
in another replica sharing the database. Over quota is RESOURCE_EXHAUSTED / QUOTA_EXCEEDED with a
google.rpc.QuotaFailure naming the quota.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from google.rpc import error_details_pb2

from callqos.server.config import Config, ConfigError
from callqos.server.errors import Reason, ServiceError
from callqos.server.store.base import QuotaExceededError, Usage, UsageLimits


@dataclass(frozen=True)
class TenantQuota:
    active_calls: int = 0
    reserved_bytes_per_second: int = 0  # each direction
    watchers_per_principal: int = 0

    @property
    def limits_calls(self) -> bool:
        return bool(self.active_calls or self.reserved_bytes_per_second)


QUOTA_NAMES = frozenset(f.name for f in fields(TenantQuota))


def quota_failure(subject: str, quota: str, limit: int, message: str) -> ServiceError:
    """RESOURCE_EXHAUSTED / QUOTA_EXCEEDED with the QuotaFailure violation."""
    violation = error_details_pb2.QuotaFailure.Violation(subject=subject, description=message)
    return ServiceError(
        Reason.ERROR_REASON_QUOTA_EXCEEDED,
        message,
        metadata={"subject": subject, "quota": quota, "limit": str(limit)},
        details=(error_details_pb2.QuotaFailure(violations=[violation]),),
        denial=f"quota {quota} of {subject}",
    )


def usage_exceeded(error: QuotaExceededError) -> ServiceError:
    """The store refused a commit over `error.limits`."""
    quota = error.quotas[0]
    limit = getattr(error.limits, quota)
    return quota_failure(
        f"tenant:{error.limits.tenant}",
        quota,
        limit,
        f"tenant {error.limits.tenant} would exceed its {quota} quota of {limit}",
    )


class Quotas:
    """The quotas in force: `quota_*` for every tenant, `tenant_quotas` overriding per tenant."""

    def __init__(self, config: Config) -> None:
        self.default = TenantQuota(
            config.quota_active_calls, config.quota_reserved_bytes_per_second, config.quota_watchers_per_principal
        )
        self._tenants = {tenant: self._override(tenant, table) for tenant, table in config.tenant_quotas.items()}

    def _override(self, tenant: str, table: Mapping[str, Any]) -> TenantQuota:
        unknown = sorted(set(table) - QUOTA_NAMES)
        if unknown:
            raise ConfigError(f"tenant_quotas.{tenant}: unknown quota(s) {', '.join(unknown)}")
        values = {name: table.get(name, getattr(self.default, name)) for name in QUOTA_NAMES}
        if any(not isinstance(value, int) or value < 0 for value in values.values()):
            raise ConfigError(f"tenant_quotas.{tenant}: quotas are whole numbers, 0 = unlimited")
        return TenantQuota(**values)

    def of(self, tenant: str) -> TenantQuota:
        return self._tenants.get(tenant, self.default)

    def limits(self, tenant: str) -> UsageLimits | None:
        """What the store must hold the tenant to, or None when its calls are unlimited."""
        quota = self.of(tenant)
        if not quota.limits_calls:
            return None
        return UsageLimits(tenant, quota.active_calls, quota.reserved_bytes_per_second)

    @staticmethod
    def check(limits: UsageLimits, now: Usage, adding: Usage) -> None:
        """Before the provider is asked: would `adding` (the least the request will hold) on top
        of `now` exceed the limits? Raises QUOTA_EXCEEDED."""
        after = Usage(
            now.active_calls + adding.active_calls, now.sending + adding.sending, now.receiving + adding.receiving
        )
        over = limits.exceeded(after, now)
        if over:
            raise usage_exceeded(QuotaExceededError(limits, over, after))
