"""Hosting the configured providers: load them, start them with the calls they held, look them
up by name, and call them under a deadline so a slow or hung provider fails one request instead
of hanging the server.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any, TypeVar

from callqos.server import names
from callqos.server.errors import Reason, ServiceError
from callqos.server.providers import registry
from callqos.server.providers.base import AdmissionRequest, ProviderChange, ProviderHost, ProviderInfo, Restored
from callqos.server.telemetry.instruments import CHANGES_LINKS, Instruments
from callqos.v1 import provider_pb2

log = logging.getLogger(__name__)
T = TypeVar("T")

# The caller's gRPC deadline (time.monotonic()), set by the servicer for the request being
# served. Python gRPC does not propagate deadlines by itself; a provider call never outlives
# the caller who is waiting for it.
CALLER_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("caller_deadline", default=None)
CALLER_BOUND = frozenset({"admit", "renegotiate"})


class ProviderSet:
    # Replaced by the server with the instruments of its telemetry (tracer/meter providers).
    telemetry: Instruments = Instruments()

    def __init__(self, configured: Mapping[str, Mapping[str, Any]], default: str, timeout: float) -> None:
        self.timeout = timeout
        self._by_id: dict[str, ProviderInfo] = {}
        for provider_id, settings in configured.items():
            if not names.is_provider_id(provider_id):
                raise registry.ProviderLoadError(f"provider id {provider_id!r} must be a resource id ([a-z][a-z0-9-]*)")
            plugin_settings = dict(settings)
            plugin = str(plugin_settings.pop("plugin", provider_id))
            provider, target = registry.instantiate(plugin, plugin_settings)
            provider.id = provider_id
            self._by_id[provider_id] = ProviderInfo(
                id=provider_id,
                provider=provider,
                implementation=target,
                default=provider_id == default,
                capabilities=provider.capabilities(),
            )
        self.default_id = default

    async def start(self, host: ProviderHost, connected: Mapping[str, Sequence[Restored]]) -> list[ProviderChange]:
        """Start every provider with the connected calls it held; the changes they report for
        calls that no longer fit are returned for the host to apply."""
        changes: list[ProviderChange] = []
        for info in self._by_id.values():
            changes.extend(await info.provider.start(host, list(connected.get(info.id, ()))))
        return changes

    async def stop(self) -> None:
        for info in self._by_id.values():
            try:
                await asyncio.wait_for(info.provider.stop(), self.timeout)
            except Exception:  # one provider's failure must not stop the others' shutdown
                log.exception("provider %s failed to stop", info.id)

    def all(self) -> list[ProviderInfo]:
        return sorted(self._by_id.values(), key=lambda info: info.id)

    def find(self, provider_name: str) -> ProviderInfo | None:
        """`providers/{id}` → the hosted provider; '' → the default one."""
        if not provider_name:
            return self._by_id[self.default_id]
        provider_id = names.parse_provider(provider_name)
        return self._by_id.get(provider_id) if provider_id else None

    def get(self, provider_name: str) -> ProviderInfo:
        info = self.find(provider_name)
        if info is None:
            raise ServiceError(
                Reason.ERROR_REASON_PROVIDER_NOT_FOUND,
                f"no provider {provider_name!r} on this server",
                metadata={"provider": provider_name},
            )
        return info

    async def call(
        self,
        info: ProviderInfo,
        operation: str,
        work: Awaitable[T],
        *,
        request: AdmissionRequest | None = None,
        call: str = "",
    ) -> T:
        """Await a provider operation under the provider deadline, in a child span (with the
        request's rates and the decision as attributes). Any failure of the provider becomes
        PROVIDER_UNAVAILABLE for the caller (and is logged with its traceback)."""
        if not self.telemetry.observes_provider_calls():  # no span, no metric to feed
            return await self._call(info, operation, work)
        with self.telemetry.provider_call(info, operation, request, call) as span:
            result = await self._call(info, operation, work)
            span.decided(result)
        if operation in CHANGES_LINKS:
            await self.telemetry.refresh_links(info, self.timeout)
        return result

    def budget(self, operation: str) -> float:
        """Seconds a provider call may take: the provider deadline, cut to the caller's for a
        decision the caller waits for. Never for a release: that is cleanup, and must finish
        even when the caller has given up (or capacity would leak)."""
        deadline = CALLER_DEADLINE.get()
        if deadline is None or operation not in CALLER_BOUND:
            return self.timeout
        return max(0.0, min(self.timeout, deadline - time.monotonic()))

    async def _call(self, info: ProviderInfo, operation: str, work: Awaitable[T]) -> T:
        budget = self.budget(operation)
        try:
            return await asyncio.wait_for(work, budget)
        except ServiceError:
            raise
        except TimeoutError as exc:
            raise ServiceError(
                Reason.ERROR_REASON_PROVIDER_UNAVAILABLE,
                f"provider {info.id} did not answer {operation} within {budget:.3g}s",
                metadata={"provider": names.provider_name(info.id), "operation": operation, "cause": "timeout"},
            ) from exc
        except Exception as exc:
            log.exception("provider %s failed in %s", info.id, operation)
            raise ServiceError(
                Reason.ERROR_REASON_PROVIDER_UNAVAILABLE,
                f"provider {info.id} failed in {operation}: {type(exc).__name__}",
                metadata={"provider": names.provider_name(info.id), "operation": operation, "cause": "error"},
            ) from exc


def provider_proto(info: ProviderInfo) -> provider_pb2.Provider:
    return provider_pb2.Provider(
        name=names.provider_name(info.id),
        display_name=info.provider.display_name or info.id,
        description=info.provider.description,
        capabilities=info.capabilities,
        default=info.default,
        implementation=info.implementation,
    )
