"""The provider host: which providers this server hosts, and how each is called.

It loads the configured providers (through `providers.registry`), starts them with the calls
they held, finds them by name, and calls them — always contained (`containment`: under a
deadline, in a task of their own, abandoned if they ignore cancellation, every BaseException
caught, optionally on a thread of their own), so a slow, hung, blocking or raising provider fails
one request instead of the server, and inside a provider span with the decision's metrics. Any
failure of a provider becomes PROVIDER_UNAVAILABLE here, and an answer of the wrong kind
PROVIDER_CONTRACT_VIOLATION. It also owns link administration (ListLinks, UpdateLink): which
provider has links, their configured capacities, and the provider call that changes one; and what
the ledger's reconciliation asks of a provider: the reservations it holds (`holdings`). What a
provider implements is in `providers`; the host's bookkeeping of a hosted provider
(`HostedProvider`) is kept here, out of the plugin's public face.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from callqos.server import names
from callqos.server.containment import Containment, HostOnLoop, ProviderRaised, ProviderThread, Wedged, Work
from callqos.server.errors import Reason, ServiceError
from callqos.server.locks import to_completion
from callqos.server.providers import registry
from callqos.server.providers.base import (
    AdmissionRequest,
    Grant,
    Holding,
    IncomingOffer,
    Provider,
    ProviderChange,
    ProviderHost,
    Refusal,
    Restored,
    SharedLedger,
)
from callqos.server.telemetry.instruments import Instruments
from callqos.v1 import flowspec_pb2, provider_pb2
from callqos.wire import DEFAULT_TENANT

log = logging.getLogger(__name__)
T = TypeVar("T")

# The caller's gRPC deadline (time.monotonic()), set by the servicer for the request being
# served. Python gRPC does not propagate deadlines by itself; a provider call never outlives
# the caller who is waiting for it.
CALLER_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("caller_deadline", default=None)
CALLER_BOUND = frozenset({"admit", "renegotiate"})
# The deadline (time.monotonic()) of the provider call now running: its budget, set by the host
# around each call, so that a provider that calls further (the remote host passes it on as the
# gRPC deadline of its own RPC) knows when its answer stops mattering.
PROVIDER_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("provider_deadline", default=None)
# Provider operations after which a link's reservations may have changed (the link gauges are
# refreshed after each).
CHANGES_LINKS = frozenset({"admit", "renegotiate", "release", "update_link", "restore"})


class ProviderStartError(Exception):
    """A provider could not start even without calls: the server does not serve without it (its
    capabilities, and what it holds, are unknown). Nothing stored is changed, so the next start
    restores its calls. A stored value cannot cause this (CALL-7): `start` with calls that fails
    is retried without them."""


class Host(Protocol):
    """What the server does for its providers (the call manager): each provider sees it through
    a `ProviderHostView` of its own, so the server knows which provider offers a call."""

    async def report_change(self, change: ProviderChange) -> None: ...

    async def offer(self, provider: str, offer: IncomingOffer) -> str | None: ...

    def reconcile_soon(self, call: str) -> None: ...


@dataclass
class ProviderHostView:
    """The `ProviderHost` one provider is given: the server's host, with its offers its own, and
    the ledger the server's replicas share (None when this process owns its store)."""

    host: Host
    provider: str  # `providers/{provider}`
    ledger: SharedLedger | None = None

    async def report_change(self, change: ProviderChange) -> None:
        await self.host.report_change(change)

    async def offer_call(self, offer: IncomingOffer) -> str | None:
        return await self.host.offer(self.provider, offer)

    def reconcile_soon(self, call: str) -> None:
        """Not part of `ProviderHost`: the provider changed `call`'s reservation in a way the host
        did not record (a renegotiation granted after the host gave up on it: `HostedProviders`
        for a provider in process, the remote provider for one in another process), for the
        ledger to put right at its next pass."""
        self.host.reconcile_soon(call)


@dataclass
class HostedProvider:
    """A provider as the host keeps it: its id, the instance, the `module:Class` it was loaded
    from, whether it is the default, its capabilities (read once: they must not change), and the
    tenant whose lines the calls from its network ring (its `incoming_tenant` setting)."""

    id: str
    provider: Provider
    implementation: str
    default: bool = False
    capabilities: provider_pb2.ProviderCapabilities = field(default_factory=provider_pb2.ProviderCapabilities)
    incoming_tenant: str = DEFAULT_TENANT
    # The provider's own event loop thread, when its settings say `threaded = true`.
    thread: ProviderThread | None = None
    # The host it was started with (`HostedProviders.start`): where what it did behind the host's
    # back (a late renegotiation) is reported.
    host: ProviderHostView | None = None

    @property
    def name(self) -> str:
        """`providers/{provider}`."""
        return names.provider_name(self.id)


class HostedProviders:
    """Every provider this server hosts, by id; the one way the rest of the server calls them."""

    def __init__(
        self,
        configured: Mapping[str, Mapping[str, Any]],
        default: str,
        timeout: float,
        telemetry: Instruments,
        containment: Containment | None = None,
        ledger: SharedLedger | None = None,
        start_timeout: float | None = None,
    ) -> None:
        self.timeout = timeout
        # A start re-takes every call the provider held, and a remote provider launches or dials a
        # process first: it gets a deadline of its own (`provider_start_timeout_seconds`).
        self.start_timeout = timeout if start_timeout is None else start_timeout
        self.telemetry = telemetry
        self.containment = containment or Containment(cancel_grace=1.0, warn_after=0.25)
        self.ledger = ledger  # offered to every provider (ProviderHost.ledger)
        self._by_id: dict[str, HostedProvider] = {}
        for provider_id, settings in configured.items():
            if not names.is_resource_id(provider_id):
                raise registry.ProviderLoadError(f"provider id {provider_id!r} must be a resource id ([a-z][a-z0-9-]*)")
            plugin_settings = dict(settings)
            plugin = str(plugin_settings.pop("plugin", provider_id))
            # Host-level, like `plugin`: providers are platform-wide, so the tenant a call from the
            # provider's network belongs to is the operator's to say.
            incoming_tenant = plugin_settings.pop("incoming_tenant", DEFAULT_TENANT)
            if not isinstance(incoming_tenant, str) or not incoming_tenant.strip():
                raise registry.ProviderLoadError(f"providers.{provider_id}.incoming_tenant must be a tenant name")
            threaded = plugin_settings.pop("threaded", False)
            if not isinstance(threaded, bool):
                raise registry.ProviderLoadError(f"provider {provider_id}: threaded must be true or false")
            provider, target = registry.instantiate(plugin, plugin_settings)
            provider.id = provider_id
            self._by_id[provider_id] = HostedProvider(
                id=provider_id,
                provider=provider,
                implementation=target,
                default=provider_id == default,
                capabilities=provider.capabilities(),
                incoming_tenant=incoming_tenant,
                thread=ProviderThread(provider_id) if threaded else None,
            )
        self.default_id = default
        # Each administered link's capacity as configured (`providers/{p}/links/{l}` → B/s), read
        # before any capacity set with UpdateLink is put back (`read_configured_links`).
        self.configured_capacity: dict[str, int] = {}

    async def prepare(self) -> None:
        """Let every provider reach what it needs before its links are read (`Provider.prepare`),
        contained and under the start deadline; then read its capabilities again (a remote
        provider learns them from its process). One that fails stops the server's start
        (ProviderStartError): its capabilities and links are unknown."""
        for info in self.all():
            try:
                await self._call(info, "prepare", info.provider.prepare)
            except ServiceError as error:
                log.error("provider %s could not prepare: %s", info.id, why_start_failed(error))
                raise ProviderStartError(f"provider {info.id} could not start: {why_start_failed(error)}") from error
            info.capabilities = info.provider.capabilities()

    async def read_configured_links(self) -> set[str]:
        """Remember every administered link's configured capacity (before start-up applies the
        capacities kept from UpdateLink: LINK-5 compares against these). Returns the providers
        (`providers/{p}`) whose links could be read; one that fails is logged, not fatal."""
        read: set[str] = set()
        for info in self.all():
            if not info.capabilities.link_admin:
                continue
            try:
                links = await self.list_links(info)
            except ServiceError as error:
                log.error("could not read the links of provider %s at start-up: %s", info.id, error.message)
                continue
            for link in links:
                self.configured_capacity[link.name] = link.capacity_bytes_per_second
            read.add(info.name)
        return read

    async def start(self, info: HostedProvider, host: Host, restored: Sequence[Restored]) -> list[ProviderChange]:
        """Start one provider with the connected calls it held, contained like any provider call,
        under the start deadline (`budget`); the changes it reports for calls that no longer fit
        are returned for the host to apply. A provider that fails to start is PROVIDER_UNAVAILABLE
        (or PROVIDER_CONTRACT_VIOLATION), logged with why; the host then restores its calls one by
        one (conformance/SPEC.md CALL-7), or, when it fails without calls, does not start
        (`ProviderStartError`)."""
        view = info.host = ProviderHostView(host, info.name, self.ledger)
        held = list(restored)
        # A threaded provider reaches the server's loop through HostOnLoop, made here, on it.
        target: ProviderHost = HostOnLoop(view, asyncio.get_running_loop()) if info.thread is not None else view
        try:
            changes = await self._call(info, "start", lambda: info.provider.start(target, held))
        except ServiceError as error:
            log.error("provider %s failed to start with %d calls: %s", info.id, len(held), why_start_failed(error))
            raise
        # Read once more now that it has started: a remote provider learns its capabilities from
        # the provider process it connects to in start().
        info.capabilities = info.provider.capabilities()
        return changes

    async def holdings(self, info: HostedProvider) -> dict[str, tuple[int, int]] | None:
        """What the provider lists as held (call → (sending, receiving) B/s), contained and under
        the provider deadline; None when it does not advertise `reservation_listing` (PROV-19)."""
        if not info.capabilities.reservation_listing:
            return None
        listed = await self.call(info, "reservations", info.provider.reservations)
        return {held.call: (held.sending_bytes_per_second, held.receiving_bytes_per_second) for held in listed}

    async def holding(self, info: HostedProvider, call: str) -> tuple[int, int] | None:
        """What the provider holds for `call` now, or None when it lists nothing for it."""
        held = await self.holdings(info)
        return held.get(call) if held else None

    async def stop(self) -> None:
        """Stop every provider, each contained and under the provider deadline."""
        for info in self._by_id.values():
            try:
                await self.containment.run(
                    info.provider.stop, label=f"{info.id}.stop", budget=self.timeout, thread=info.thread
                )
            except Exception:  # one provider's failure must not stop the others' shutdown
                log.exception("provider %s failed to stop", info.id)
            if info.thread is not None:
                info.thread.close()
        if self.containment.abandoned:
            log.warning("stopping with %d abandoned provider calls still running", len(self.containment.abandoned))

    def all(self) -> list[HostedProvider]:
        return sorted(self._by_id.values(), key=lambda info: info.id)

    def find(self, provider_name: str) -> HostedProvider | None:
        """`providers/{id}` → the hosted provider; '' → the default one."""
        if not provider_name:
            return self._by_id[self.default_id]
        provider_id = names.parse_provider(provider_name)
        return self._by_id.get(provider_id) if provider_id else None

    def get(self, provider_name: str) -> HostedProvider:
        """As `find`, but a provider this server does not host is PROVIDER_NOT_FOUND."""
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
        info: HostedProvider,
        operation: str,
        work: Work[T],
        *,
        request: AdmissionRequest | None = None,
        call: str = "",
    ) -> T:
        """Run a provider operation — `work` starts it: `lambda: info.provider.admit(request)` —
        contained and under the provider deadline, in a child span (with the request's rates and
        the decision as attributes). Any failure of the provider becomes PROVIDER_UNAVAILABLE for
        the caller (and is logged with its traceback); an answer of the wrong type for the
        operation, PROVIDER_CONTRACT_VIOLATION."""
        if not self.telemetry.observes_provider_calls():  # no span, no metric to feed
            return await self._call(info, operation, work, request)
        with self.telemetry.provider_call(info.name, operation, request, call) as span:
            result = await self._call(info, operation, work, request)
            span.decided(result)
        if operation in CHANGES_LINKS:
            await self.refresh_link_metrics(info)
        return result

    def budget(self, operation: str) -> float:
        """Seconds a provider call may take: the provider deadline, cut to the caller's for a
        decision the caller waits for. Never for a release: that is cleanup, and must finish
        even when the caller has given up (or capacity would leak). A start has the start
        deadline: no caller waits for it, and it may launch a process and re-take every call."""
        if operation in ("prepare", "start"):
            return self.start_timeout
        deadline = CALLER_DEADLINE.get()
        if deadline is None or operation not in CALLER_BOUND:
            return self.timeout
        return max(0.0, min(self.timeout, deadline - time.monotonic()))

    async def _call(
        self, info: HostedProvider, operation: str, work: Work[T], request: AdmissionRequest | None = None
    ) -> T:
        budget = self.budget(operation)
        label = f"{info.id}.{operation}"
        deadline = PROVIDER_DEADLINE.set(time.monotonic() + budget)  # the contained task copies it
        try:
            result: T = await self.containment.run(
                work, label=label, budget=budget, thread=info.thread, late=self._late(info, operation, request)
            )
        except ServiceError:
            raise
        except TimeoutError as exc:
            raise ServiceError(
                Reason.ERROR_REASON_PROVIDER_UNAVAILABLE,
                f"provider {info.id} did not answer {operation} within {budget:.3g}s",
                metadata={"provider": info.name, "operation": operation, "cause": "timeout"},
            ) from exc
        except Wedged as exc:
            raise ServiceError(
                Reason.ERROR_REASON_PROVIDER_UNAVAILABLE,
                f"provider {info.id} did not answer {operation} within {budget:.3g}s and ignored its cancellation",
                metadata={"provider": info.name, "operation": operation, "cause": "wedged"},
            ) from exc
        except ProviderRaised as exc:
            if exc.original is None:  # its method is not a coroutine function
                raise ServiceError(
                    Reason.ERROR_REASON_PROVIDER_CONTRACT_VIOLATION,
                    f"provider {info.id}'s {operation} {exc}",
                    metadata={"provider": info.name, "operation": operation},
                ) from exc
            log.error("provider %s raised %r in %s", info.id, exc.original, operation)
            raise ServiceError(
                Reason.ERROR_REASON_PROVIDER_UNAVAILABLE,
                f"provider {info.id} failed in {operation}: {type(exc.original).__name__}",
                metadata={"provider": info.name, "operation": operation, "cause": "error"},
            ) from exc
        except Exception as exc:
            log.exception("provider %s failed in %s", info.id, operation)
            raise ServiceError(
                Reason.ERROR_REASON_PROVIDER_UNAVAILABLE,
                f"provider {info.id} failed in {operation}: {type(exc).__name__}",
                metadata={"provider": info.name, "operation": operation, "cause": "error"},
            ) from exc
        finally:
            PROVIDER_DEADLINE.reset(deadline)
        problem = _wrong_answer(operation, result)
        if problem:
            raise ServiceError(
                Reason.ERROR_REASON_PROVIDER_CONTRACT_VIOLATION,
                f"provider {info.id}'s {operation} {problem}",
                metadata={"provider": info.name, "operation": operation},
            )
        return result

    def _late(self, info: HostedProvider, operation: str, request: AdmissionRequest | None) -> Callable[[Any], None]:
        """What to do with the answer of an abandoned call that returns after all: the call has
        failed meanwhile, so a late grant of a new call is released, and a call renegotiated late
        is reconciled (the provider holds what the call, which kept its QoS, does not say)."""

        def late(result: Any) -> None:
            if operation == "admit" and request is not None and isinstance(result, Grant):
                log.warning("releasing the late grant of %s by provider %s", request.call, info.id)
                task = asyncio.ensure_future(
                    self.call(info, "release", lambda: info.provider.release(request.call), call=request.call)
                )
                task.add_done_callback(lambda done: done.cancelled() or done.exception())
            elif operation == "renegotiate" and request is not None and isinstance(result, Grant):
                log.error("provider %s renegotiated %s after it was abandoned: reconciling it", info.id, request.call)
                if info.host is not None:
                    info.host.reconcile_soon(request.call)

        return late

    async def refresh_link_metrics(self, info: HostedProvider) -> None:
        """Read a link-administering provider's links for the link gauges (after an operation
        that may have moved reservations, and at start-up). Never fails: a gauge must not fail
        the RPC that refreshed it."""
        if not (self.telemetry.metrics_enabled and info.capabilities.link_admin):
            return
        try:
            links = await self.containment.run(
                info.provider.list_links, label=f"{info.id}.list_links", budget=self.timeout, thread=info.thread
            )
            if _wrong_answer("list_links", links):
                raise TypeError(_wrong_answer("list_links", links))
        except Exception:
            log.warning("could not read the links of provider %s for metrics", info.id, exc_info=True)
            return
        self.telemetry.record_links(info.name, links)

    async def offer_ended(self, info: HostedProvider, call: str, reason: int) -> None:
        """Tell the provider that the call it offered ended unanswered. Never fails: the call has
        ended whatever the provider makes of it."""
        try:
            await self.call(info, "offer_ended", lambda: info.provider.offer_ended(call, reason), call=call)
        except ServiceError:
            log.warning("provider %s was not told that its offer %s ended", info.id, call)

    # -- link administration (ListLinks, UpdateLink) ----------------------------------------
    def link_admin(self, provider_name: str) -> HostedProvider:
        """The hosted provider `providers/{id}` if it administers links: PROVIDER_NOT_FOUND or
        LINK_ADMIN_UNSUPPORTED otherwise."""
        info = self.get(provider_name)
        if not info.capabilities.link_admin:
            raise ServiceError(
                Reason.ERROR_REASON_LINK_ADMIN_UNSUPPORTED,
                f"provider {info.id} has no links to administer",
                metadata={"provider": provider_name},
            )
        return info

    async def list_links(self, info: HostedProvider) -> list[provider_pb2.Link]:
        return await self.call(info, "list_links", info.provider.list_links)

    async def update_link(self, info: HostedProvider, link_id: str, capacity: int) -> provider_pb2.Link:
        """Set the capacity of the provider's link `link_id` (LINK_NOT_FOUND if it has none).
        The provider sheds what no longer fits and reports each change: that runs to the end
        even if the caller leaves, so the store and the provider agree."""
        link = names.link_name(info.id, link_id)
        if not any(known.name == link for known in await self.list_links(info)):
            raise ServiceError(Reason.ERROR_REASON_LINK_NOT_FOUND, f"no link {link}", metadata={"link": link})
        return await to_completion(self.call(info, "update_link", lambda: info.provider.update_link(link_id, capacity)))


def why_start_failed(error: ServiceError) -> str:
    """What an operator reads when a provider failed to start: the failure and, unlike what a
    client is told, the provider's own words (a remote provider's 'no handshake line within 10s')."""
    cause = error.__cause__
    original = cause.original if isinstance(cause, ProviderRaised) else cause
    if original is None or isinstance(original, (TimeoutError, Wedged)) or not str(original):
        return error.message
    return f"{error.message}: {original}"


def _wrong_answer(operation: str, result: object) -> str:
    """How `result` breaks the contract of `operation` ('' when it does not)."""
    if operation in ("admit", "renegotiate"):
        if isinstance(result, Grant):
            return "" if isinstance(result.qos, flowspec_pb2.QosSpec) else "returned a Grant without a QosSpec"
        if isinstance(result, Refusal):
            offer = result.counter_offer
            if offer is not None and not isinstance(offer, flowspec_pb2.QosSpec):
                return "returned a Refusal whose counter_offer is not a QosSpec"
            return ""
        return f"returned {type(result).__name__}, not a Grant or a Refusal"
    if operation == "list_links":
        if not isinstance(result, list) or not all(isinstance(link, provider_pb2.Link) for link in result):
            return f"returned {type(result).__name__}, not a list of Link"
    if operation == "update_link" and not isinstance(result, provider_pb2.Link):
        return f"returned {type(result).__name__}, not a Link"
    if operation == "start" and not (
        isinstance(result, list) and all(isinstance(change, ProviderChange) for change in result)
    ):
        return f"returned {type(result).__name__}, not a list of ProviderChange"
    if operation == "reservations" and not (
        isinstance(result, list) and all(isinstance(held, Holding) for held in result)
    ):
        return f"returned {type(result).__name__}, not a list of Holding"
    return ""


def provider_proto(info: HostedProvider) -> provider_pb2.Provider:
    return provider_pb2.Provider(
        name=info.name,
        display_name=info.provider.display_name or info.id,
        description=info.provider.description,
        capabilities=info.capabilities,
        default=info.default,
        implementation=info.implementation,
    )
