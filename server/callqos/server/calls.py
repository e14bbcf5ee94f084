"""The life of a call: make, renegotiate, drop, and provider-initiated change — and how each ends.

Every operation follows one path: (idempotency) → lock the call → ask the provider → check its
answer → settle. A call's lease (`leases`) is renewed here (`extend`) and ended here
(`expire_lease`, which the lease timer calls), like any other outcome. Requests arrive validated
(`validation`, called by the service); nothing here re-checks their content. What is decided here
is everything about the call itself: whether it exists and who owns it, its etag and state, what
the provider is asked, whether its answer keeps the contract, the call's new state and the events
that announce it. Provider-initiated changes (`report_change`, the `ProviderHost` side) enter the
same way.

Every outcome — a grant, a refusal, a provider error, a drop, a change the provider made — takes
effect through one step, `_settle`, which owns for all of them: the telemetry of a provider
decision; what becomes of the provider's reservation (`Release`); the commit of the call (with
the other leg of a call between two lines, `incoming`), its events and the request_id's first
outcome in one store transaction, then the watchers woken;
and the answer (the call, or the failure, raised once recorded). An `Outcome` names each of
those, so a new kind of outcome cannot leave one out.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from google.protobuf import duration_pb2, timestamp_pb2

from callqos.server import names
from callqos.server.errors import Reason, ServiceError, reason_name, refused
from callqos.server.events import EventHub
from callqos.server.hosting import HostedProvider, HostedProviders
from callqos.server.idempotency import Idempotency, RequestKey
from callqos.server.leases import Clock, LeasePolicy, LeaseTimer, expiry
from callqos.server.locks import KeyedLocks, to_completion
from callqos.server.providers.base import (
    AdmissionRequest,
    Grant,
    IncomingOffer,
    ProviderChange,
    Refusal,
    RefusalKind,
    Restored,
)
from callqos.server.qos import best_effort_qos, qos_shortfalls, reserved_rate, resolve_no_change
from callqos.server.security.authz import Permission
from callqos.server.security.identity import Caller
from callqos.server.security.quotas import Quotas, usage_exceeded
from callqos.server.store.base import (
    CallPage,
    IdempotencyRecord,
    QuotaExceededError,
    Store,
    Usage,
    UsageLimits,
    holds_reservation,
    lease_deadline_us,
)
from callqos.server.telemetry import Instruments, current_trace_id
from callqos.v1 import call_pb2, event_pb2, flowspec_pb2
from callqos.v1 import callqos_service_pb2 as svc

log = logging.getLogger(__name__)

Call = call_pb2.Call
State = call_pb2.Call.State
Level = call_pb2.ServiceLevel
Disconnect = call_pb2.DisconnectReason
EventType = event_pb2.QosEventType
QosSpec = flowspec_pb2.QosSpec
QosEvent = event_pb2.QosEvent
ST = flowspec_pb2.ServiceType


def etag_of(call: Call) -> str:
    """A strong etag (AIP-154): changes whenever any field of the call changes — but its lease,
    which renewing moves without changing the call (so a keep-alive renewing in the background
    never makes its owner's conditional change fail)."""
    unsigned = Call()
    unsigned.CopyFrom(call)
    for field in ("etag", "lease_duration", "lease_expire_time"):
        unsigned.ClearField(field)
    return hashlib.sha256(unsigned.SerializeToString(deterministic=True)).hexdigest()[:16]


def _now() -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(time.time_ns())
    return stamp


def _least_reserved(level: int, qos: QosSpec) -> tuple[int, int]:
    """The least a call at `level` asking for `qos` will hold once granted, (sending, receiving):
    a NEEDED grant satisfies the request, so holds at least its reserved rates; any other level
    may be granted nothing."""
    if level != Level.SERVICE_LEVEL_NEEDED:
        return 0, 0
    return reserved_rate(qos.sending), reserved_rate(qos.receiving)


def _refusal_event_type(kind: RefusalKind) -> event_pb2.QosEventType:
    return (
        EventType.QOS_EVENT_TYPE_POLICY_FAILURE
        if kind is RefusalKind.POLICY
        else EventType.QOS_EVENT_TYPE_ADMISSION_FAILURE
    )


def _refusal_reason(kind: RefusalKind) -> int:
    return Reason.ERROR_REASON_QOS_POLICY_FAILURE if kind is RefusalKind.POLICY else Reason.ERROR_REASON_QOS_UNAVAILABLE


@dataclass(frozen=True)
class Decided:
    """A provider decision being settled (admit or renegotiate): counted by outcome — granted,
    refused or error — and put on the RPC's span."""

    operation: str  # "admit" | "renegotiate"
    offered: QosSpec  # what the provider was asked for


@dataclass(frozen=True)
class Release:
    """A reservation `provider` holds for the call, which the outcome frees: before it is
    recorded (a drop; an admission the provider failed part-way through, which may hold part
    of one), or only if recording fails (a fresh grant: without the call, nothing would ever
    release it). `holder` names the call the provider holds it under when that is not the
    settled call (the caller's leg of a call between two lines)."""

    provider: HostedProvider
    before_commit: bool
    holder: str = ""

    @classmethod
    def first(cls, provider: HostedProvider, holder: str = "") -> Release:
        return cls(provider, before_commit=True, holder=holder)

    @classmethod
    def if_commit_fails(cls, provider: HostedProvider, holder: str = "") -> Release:
        return cls(provider, before_commit=False, holder=holder)


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """How one operation on a call ends. Every field is required, so that each outcome says
    what it does about each; `CallManager._settle` makes it take effect."""

    call: Call  # the call as it is to be stored
    peers: Sequence[Call]  # other calls stored in the same transaction: the other leg of a pair, or none
    events: Sequence[QosEvent]  # the events announcing it, stored with it
    failure: ServiceError | None  # what the caller gets instead of the call (None: the call)
    key: RequestKey | None  # the request_id this is the first outcome of (None: no request_id)
    decided: Decided | None  # the provider decision to count (None: no decision was asked for)
    release: Release | None  # the reservation this outcome frees (None: the provider keeps or holds none)


class CallManager:
    def __init__(
        self,
        store: Store,
        hub: EventHub,
        providers: HostedProviders,
        telemetry: Instruments,
        quotas: Quotas | None = None,
        leases: LeasePolicy | None = None,
        lease_clock: Clock | None = None,
    ) -> None:
        self.store = store
        self.hub = hub
        self.providers = providers
        self.telemetry = telemetry
        self.quotas = quotas  # None: no tenant has quotas
        self.lease_policy = leases or LeasePolicy()
        self.leases = LeaseTimer(store, self.expire_lease, *(() if lease_clock is None else (lease_clock,)))
        self._requests = Idempotency(store)
        self._locks = KeyedLocks()

    # -- start-up and shutdown ----------------------------------------------------------------
    async def start(self) -> None:
        """Hand every connected call back to its provider; apply what no longer fits; end the
        calls whose lease ran out while no server ran (released to their provider, which has just
        re-taken them), then start the lease timer."""
        await self._restore()
        await self.leases.expire_overdue()
        self.leases.start()

    async def stop(self) -> None:
        """Stop the lease timer (leases stay stored; the next start honours them)."""
        await self.leases.stop()

    async def _restore(self) -> None:
        """Hand every connected call back to its provider; apply what no longer fits."""
        held: dict[str, list[Restored]] = {}
        for call in await self.store.connected_calls():
            if not holds_reservation(call):
                continue  # its pair's reservation is restored with the caller's leg
            provider_id = names.parse_provider(call.provider) or ""
            held.setdefault(provider_id, []).append(
                Restored(call.name, call.destination, call.service_level, call.granted_qos)
            )
        # A trace for the restore (its events carry its id); none for an empty start-up.
        restoring = (
            self.telemetry.background("callqos.restore", {"callqos.calls": sum(map(len, held.values()))})
            if held
            else contextlib.nullcontext()
        )
        with restoring:
            for change in await self.providers.start(self, held):
                await self.report_change(change)

    # -- reads ------------------------------------------------------------------------------
    async def get(self, name: str, caller: Caller) -> Call:
        """The call `name` (a valid call name) of the caller's tenant, or CALL_NOT_FOUND. Another
        tenant's call is not found either, with the same answer: its existence is not told."""
        call = await self.store.get_call(name)
        if call is None or call.tenant != caller.tenant:
            raise ServiceError(
                Reason.ERROR_REASON_CALL_NOT_FOUND,
                f"no call {name}",
                metadata={"call": name},
                denial="" if call is None else f"{name} belongs to tenant {call.tenant}",
            )
        return call

    async def _stored(self, name: str) -> Call:
        """The call `name`, whatever its tenant, or CALL_NOT_FOUND: for the server's own reads
        (the other leg of a pair, a ring-out, a provider's change), never to answer a caller."""
        call = await self.store.get_call(name)
        if call is None:
            raise ServiceError(Reason.ERROR_REASON_CALL_NOT_FOUND, f"no call {name}", metadata={"call": name})
        return call

    async def list_calls(
        self,
        caller: Caller,
        *,
        state: int | None,
        provider: str | None,
        limit: int,
        before: int,
        line: str | None = None,
    ) -> CallPage:
        """The caller's tenant's calls newest first, `limit` of them from cursor `before` (0: the newest)."""
        return await self.store.list_calls(
            tenant=caller.tenant, state=state, provider=provider, limit=limit, before=before, line=line
        )

    async def provider_of(self, name: str, caller: Caller) -> HostedProvider:
        """The hosted provider of the call `name`: CALL_NOT_FOUND, or PROVIDER_NOT_FOUND when the
        server no longer hosts it."""
        call = await self.get(name, caller)
        return self.providers.get(call.provider)

    # -- make -------------------------------------------------------------------------------
    async def create(self, request: svc.CreateCallRequest, caller: Caller, info: HostedProvider) -> Call:
        """Make the call `request` describes (validated) on the provider `info`."""
        return await to_completion(
            self._requests.once(
                "CreateCall",
                request,
                caller.principal,
                lambda key: self._create(request, caller, info, key),
                lambda name: self.get(name, caller),
                tenant=caller.tenant,
            )
        )

    async def _create(
        self, request: svc.CreateCallRequest, caller: Caller, info: HostedProvider, key: RequestKey | None
    ) -> Call:
        principal = caller.principal
        call_id = request.call_id or names.new_call_id()
        name = names.call_name(call_id)
        async with self._locks.hold(name):
            existing = await self.store.get_call(name)
            if existing is not None:
                # Call names are platform-wide: a call_id another tenant holds is taken too (the
                # one thing a tenant can learn of another's calls; conformance/SPEC.md SEC-4),
                # and the attempt is audited.
                raise ServiceError(
                    Reason.ERROR_REASON_CALL_ALREADY_EXISTS,
                    f"{name} already exists",
                    metadata={"call": name},
                    denial="" if existing.tenant == caller.tenant else f"{name} is held by tenant {existing.tenant}",
                )
            level = request.call.service_level or Level.SERVICE_LEVEL_NEEDED
            asked = request.call.requested_qos
            offered = best_effort_qos(asked.provider_specific) if level == Level.SERVICE_LEVEL_BEST_EFFORT else asked
            limits = self._limits(caller.tenant)
            if limits is not None:
                await self._check_quota(limits, Usage(1, *_least_reserved(level, offered)))
            now = _now()
            call = Call(
                name=name,
                direction=Call.Direction.DIRECTION_OUTGOING,
                destination=request.call.destination,
                provider=info.name,
                service_level=level,
                requested_qos=asked,
                owner=principal,
                tenant=caller.tenant,
                create_time=now,
                update_time=now,
            )
            admission = AdmissionRequest(name, call.destination, level, offered, principal)
            decided = Decided("admit", offered)
            try:
                decision = await self.providers.call(
                    info, "admit", lambda: info.provider.admit(admission), request=admission
                )
                if isinstance(decision, Grant):
                    self._check_grant(info, level, offered, decision.qos)
            except ServiceError as error:
                # The provider failed: whatever it may have reserved is released, and the call
                # is recorded as failed so watchers learn of it too.
                self._disconnect(call, Disconnect.DISCONNECT_REASON_PROVIDER_ERROR, now)
                events = [
                    self._event(
                        call,
                        EventType.QOS_EVENT_TYPE_GENERIC_ERROR,
                        request.request_id,
                        reason=error.reason_name,
                        message=error.message,
                    ),
                    self._event(
                        call,
                        EventType.QOS_EVENT_TYPE_CALL_DISCONNECTED,
                        request.request_id,
                        disconnect=Disconnect.DISCONNECT_REASON_PROVIDER_ERROR,
                    ),
                ]
                return await self._settle(
                    Outcome(
                        call=call,
                        peers=(),
                        events=events,
                        failure=error,
                        key=key,
                        decided=decided,
                        release=Release.first(info),
                    )
                )
            if isinstance(decision, Refusal):
                # A refusal reserves nothing (the provider contract): there is nothing to release.
                refusal = refused(
                    _refusal_reason(decision.kind),
                    name,
                    decision.message,
                    decision.counter_offer,
                    {"provider": call.provider},
                )
                self._disconnect(call, Disconnect.DISCONNECT_REASON_QOS_UNAVAILABLE, now)
                events = [
                    self._event(
                        call,
                        _refusal_event_type(decision.kind),
                        request.request_id,
                        reason=refusal.reason_name,
                        message=decision.message,
                        counter_offer=decision.counter_offer,
                    ),
                    self._event(
                        call,
                        EventType.QOS_EVENT_TYPE_CALL_DISCONNECTED,
                        request.request_id,
                        disconnect=Disconnect.DISCONNECT_REASON_QOS_UNAVAILABLE,
                        reason=refusal.reason_name,
                    ),
                ]
                return await self._settle(
                    Outcome(call=call, peers=(), events=events, failure=refusal, key=key, decided=decided, release=None)
                )
            call.state = State.STATE_CONNECTED
            call.granted_qos.CopyFrom(decision.qos)
            call.features.set_qos = info.capabilities.renegotiation
            self._lease(call, self._asked_lease(request))
            call.etag = etag_of(call)
            granted = self._event(call, EventType.QOS_EVENT_TYPE_QOS_GRANTED, request.request_id, current=decision.qos)
            # Over quota after all (a concurrent admission of the tenant committed first): the
            # store refuses the commit and the grant is released, as for any failed commit.
            return await self._settle(
                Outcome(
                    call=call,
                    peers=(),
                    events=[granted],
                    failure=None,
                    key=key,
                    decided=decided,
                    release=Release.if_commit_fails(info),
                ),
                limits,
            )

    def _check_grant(self, info: HostedProvider, level: int, requested: QosSpec, granted: QosSpec) -> None:
        """A grant that breaks the contract is the provider's bug, reported as one."""
        problems: list[str] = []
        if level == Level.SERVICE_LEVEL_NEEDED:
            problems = qos_shortfalls(granted, requested)
        elif level == Level.SERVICE_LEVEL_BEST_EFFORT and (
            reserved_rate(granted.sending) or reserved_rate(granted.receiving)
        ):
            problems = ["a reservation was granted at service level BEST_EFFORT"]
        if problems:
            raise ServiceError(
                Reason.ERROR_REASON_PROVIDER_CONTRACT_VIOLATION,
                f"provider {info.id} granted QoS that does not satisfy the request: " + "; ".join(problems),
                metadata={"provider": info.name},
            )

    # -- renegotiate ------------------------------------------------------------------------
    async def renegotiate(self, request: svc.RenegotiateCallRequest, caller: Caller, info: HostedProvider) -> Call:
        """Renegotiate the call `request` names (validated, also against `info`, its provider)."""
        return await to_completion(
            self._requests.once(
                "RenegotiateCall",
                request,
                caller.principal,
                lambda key: self._renegotiate(request, caller, info, key),
                lambda name: self.get(name, caller),
                tenant=caller.tenant,
            )
        )

    async def _renegotiate(
        self, request: svc.RenegotiateCallRequest, caller: Caller, info: HostedProvider, key: RequestKey | None
    ) -> Call:
        principal = caller.principal
        async with self._locks.hold(request.name):
            call = await self.get(request.name, caller)
            self._check_mutable(call, principal, request.etag)
            if not info.capabilities.renegotiation:
                raise ServiceError(
                    Reason.ERROR_REASON_RENEGOTIATION_UNSUPPORTED,
                    f"provider {info.id} cannot renegotiate QoS",
                    metadata={"provider": call.provider, "call": call.name},
                )
            level = request.service_level or call.service_level
            desired = resolve_no_change(request.qos, call.requested_qos)
            if self._unchanged(call, level, desired):
                # Nothing to change (SPEC.md SETQOS-8): the call as it is, no provider call, no
                # event; recorded, so that a repeat of this request_id answers the same.
                return await self._settle(
                    Outcome(call=call, peers=(), events=[], failure=None, key=key, decided=None, release=None)
                )
            asked = resolve_no_change(request.qos, call.granted_qos)
            offered = best_effort_qos(asked.provider_specific) if level == Level.SERVICE_LEVEL_BEST_EFFORT else asked
            limits = self._limits(call.tenant)
            if limits is not None:
                least = _least_reserved(level, offered)
                held = _least_reserved(Level.SERVICE_LEVEL_NEEDED, call.granted_qos)
                await self._check_quota(limits, Usage(0, *(max(0, a - b) for a, b in zip(least, held, strict=True))))
            admission = AdmissionRequest(
                call.name, call.destination, level, offered, principal, current=call.granted_qos
            )
            decided = Decided("renegotiate", offered)
            # On a failure or a refusal "the call continues with the previous QOS": the call
            # itself is not touched, and the provider keeps the reservation it had.
            try:
                decision = await self.providers.call(
                    info, "renegotiate", lambda: info.provider.renegotiate(admission), request=admission
                )
                if isinstance(decision, Grant):
                    self._check_grant(info, level, offered, decision.qos)
            except ServiceError as error:
                failed = self._event(
                    call,
                    EventType.QOS_EVENT_TYPE_RENEGOTIATION_FAILED,
                    request.request_id,
                    previous=call.granted_qos,
                    current=call.granted_qos,
                    reason=error.reason_name,
                    message=error.message,
                )
                return await self._settle(
                    Outcome(call=call, peers=(), events=[failed], failure=error, key=key, decided=decided, release=None)
                )
            if isinstance(decision, Refusal):
                refusal = refused(
                    _refusal_reason(decision.kind),
                    call.name,
                    decision.message,
                    decision.counter_offer,
                    {"provider": call.provider},
                )
                failed = self._event(
                    call,
                    EventType.QOS_EVENT_TYPE_RENEGOTIATION_FAILED,
                    request.request_id,
                    previous=call.granted_qos,
                    current=call.granted_qos,
                    reason=refusal.reason_name,
                    message=decision.message,
                    counter_offer=decision.counter_offer,
                )
                return await self._settle(
                    Outcome(
                        call=call, peers=(), events=[failed], failure=refusal, key=key, decided=decided, release=None
                    )
                )
            previous = QosSpec()
            previous.CopyFrom(call.granted_qos)
            previous_level = call.service_level
            call.service_level = level
            call.requested_qos.CopyFrom(desired)
            call.granted_qos.CopyFrom(decision.qos)
            call.update_time.CopyFrom(_now())
            call.etag = etag_of(call)
            changed = self._event(
                call,
                EventType.QOS_EVENT_TYPE_QOS_CHANGED,
                request.request_id,
                previous=previous,
                current=decision.qos,
                cause=event_pb2.QosChangeCause.QOS_CHANGE_CAUSE_RENEGOTIATED,
            )
            try:
                return await self._settle(
                    Outcome(
                        call=call, peers=(), events=[changed], failure=None, key=key, decided=decided, release=None
                    ),
                    limits,
                )
            except ServiceError as error:
                if error.reason == Reason.ERROR_REASON_QUOTA_EXCEEDED:
                    # The store refused the new grant (the tenant filled its quota meanwhile): the
                    # call keeps its previous QoS, so the provider must go back to it too.
                    back = AdmissionRequest(
                        call.name, call.destination, previous_level, previous, principal, current=decision.qos
                    )
                    await self._quietly(info, "renegotiate", lambda: info.provider.renegotiate(back), back)
                raise

    @staticmethod
    def _unchanged(call: Call, level: int, desired: QosSpec) -> bool:
        """A renegotiation that asks for what the call already asked for, at the same level — except
        an IF_AVAILABLE call granted less than it asked, for which asking again may get more."""
        if level != call.service_level or desired != call.requested_qos:
            return False
        return level != Level.SERVICE_LEVEL_IF_AVAILABLE or not qos_shortfalls(call.granted_qos, call.requested_qos)

    # -- drop -------------------------------------------------------------------------------
    async def drop(self, request: svc.DropCallRequest, caller: Caller) -> Call:
        """Drop the call `request` names (validated). Dropping twice is harmless. The owner may,
        and a caller whose roles grant calls.drop.any (admin) may drop any call of its tenant."""
        return await to_completion(self._drop(request, caller))

    async def _drop(self, request: svc.DropCallRequest, caller: Caller) -> Call:
        async with self._locks.hold(request.name):
            call = await self.get(request.name, caller)
            if call.owner != caller.principal and not caller.can(Permission.DROP_ANY_CALL):
                raise self._not_owner(call)
            if call.state != State.STATE_CONNECTED:
                return call  # dropping twice is harmless
            self._check_etag(call, request.etag)
            info = self.providers.get(call.provider)
            previous = QosSpec()
            previous.CopyFrom(call.granted_qos)
            self._disconnect(call, Disconnect.DISCONNECT_REASON_NORMAL, _now())
            event = self._event(
                call,
                EventType.QOS_EVENT_TYPE_CALL_DISCONNECTED,
                "",
                previous=previous,
                disconnect=Disconnect.DISCONNECT_REASON_NORMAL,
            )
            return await self._settle(
                Outcome(
                    call=call,
                    peers=(),
                    events=[event],
                    failure=None,
                    key=None,
                    decided=None,
                    release=Release.first(info),
                )
            )

    # -- leases -----------------------------------------------------------------------------
    def _asked_lease(self, request: svc.CreateCallRequest) -> duration_pb2.Duration | None:
        """The lease a CreateCall gets: the one it asked for (validated), else the server's."""
        return self.lease_policy.lease_for(
            request.call.lease_duration if request.call.HasField("lease_duration") else None
        )

    def _lease(self, call: Call, duration: duration_pb2.Duration | None) -> None:
        """Give `call` a lease of `duration` from now (none: no lease)."""
        if duration is not None:
            call.lease_duration.CopyFrom(duration)
            call.lease_expire_time.CopyFrom(expiry(self.leases.clock(), duration))

    @staticmethod
    def _copy_lease(source: Call, target: Call) -> None:
        target.lease_duration.CopyFrom(source.lease_duration)
        target.lease_expire_time.CopyFrom(source.lease_expire_time)

    async def extend(self, request: svc.ExtendCallRequest, caller: Caller) -> Call:
        """Renew the lease of the call `request` names (validated), to end lease_duration after now."""
        return await to_completion(
            self._requests.once(
                "ExtendCall",
                request,
                caller.principal,
                lambda key: self._extend(request, caller, key),
                lambda name: self.get(name, caller),
                tenant=caller.tenant,
            )
        )

    async def _extend(self, request: svc.ExtendCallRequest, caller: Caller, key: RequestKey | None) -> Call:
        async with self._locks.hold(request.name):
            call = await self.get(request.name, caller)
            if call.owner != caller.principal:
                raise self._not_owner(call)
            self._check_etag(call, request.etag)
            if not holds_reservation(call) or not call.HasField("lease_duration"):
                raise ServiceError(
                    Reason.ERROR_REASON_CALL_NOT_LEASED,
                    f"{call.name} has no lease"
                    + (f"; the lease of the pair is its caller's, {call.peer}" if call.peer else ""),
                    metadata={"call": call.name, **({"peer": call.peer} if call.peer else {})},
                )
            if call.disconnect_reason == Disconnect.DISCONNECT_REASON_LEASE_EXPIRED:
                raise self._lease_expired(call)
            if call.state not in (State.STATE_CONNECTED, State.STATE_RINGBACK):
                raise ServiceError(
                    Reason.ERROR_REASON_CALL_NOT_CONNECTED,
                    f"{call.name} is {State.Name(call.state).removeprefix('STATE_')}; only a live call's lease "
                    "can be extended",
                    metadata={"call": call.name, "state": State.Name(call.state)},
                )
            if lease_deadline_us(call) <= self.leases.now_us():
                # Too late, though the timer has not got to it yet: the lease has ended, and the
                # call ends now, recorded with this request_id's outcome.
                return await self._end_lease(call, self._lease_expired(call), key)
            peer = await self._stored(call.peer) if call.peer else None
            duration = request.lease_duration if request.HasField("lease_duration") else call.lease_duration
            self._lease(call, duration)
            if peer is not None:  # the answering leg shows its caller's lease
                self._copy_lease(call, peer)
            # No event and no etag change: the call itself did not change.
            return await self._settle(
                Outcome(
                    call=call,
                    peers=[peer] if peer else (),
                    events=[],
                    failure=None,
                    key=key,
                    decided=None,
                    release=None,
                )
            )

    async def expire_lease(self, name: str) -> bool:
        """End the call `name` if its lease has ended (the lease timer asks); whether it did. A
        lease extended meanwhile, or a call that ended otherwise, is left alone."""
        async with self._locks.hold(name):
            call = await self.store.get_call(name)
            if call is None or not 0 < lease_deadline_us(call) <= self.leases.now_us():
                return False
            with self.telemetry.background("callqos.lease.expire", {"callqos.call": name}):
                await self._end_lease(call, None, None)
            return True

    async def _end_lease(self, call: Call, failure: ServiceError | None, key: RequestKey | None) -> Call:
        """Disconnect `call` (and its peer) LEASE_EXPIRED, its reservation released to its provider
        first, each leg announced to its owner and monitors."""
        log.info("a call's lease ran out", extra={"call": call.name, "provider": call.provider})
        peer = await self._stored(call.peer) if call.peer else None
        connected = call.state == State.STATE_CONNECTED
        info = self.providers.get(call.provider)
        now = _now()
        expired = reason_name(Reason.ERROR_REASON_LEASE_EXPIRED)
        events: list[QosEvent] = []
        for each in (call, peer):
            if each is None:
                continue
            previous = QosSpec()
            previous.CopyFrom(each.granted_qos)
            self._end(each, Disconnect.DISCONNECT_REASON_LEASE_EXPIRED, now)
            events.append(
                self._event(
                    each,
                    EventType.QOS_EVENT_TYPE_CALL_DISCONNECTED,
                    "",
                    previous=previous if connected else None,
                    disconnect=Disconnect.DISCONNECT_REASON_LEASE_EXPIRED,
                    reason=expired,
                    message=f"its lease ended at {call.lease_expire_time.ToJsonString()} without being extended",
                )
            )
        outcome = Outcome(
            call=call,
            peers=[peer] if peer else (),
            events=events,
            failure=failure,
            key=key,
            decided=None,
            release=Release.first(info) if connected else None,
        )
        try:
            ended = await self._settle(outcome)
        except ServiceError as raised:
            if raised is failure:  # recorded: the call did end
                self.telemetry.lease_expired(call.provider)
            raise
        self.telemetry.lease_expired(call.provider)
        return ended

    @staticmethod
    def _lease_expired(call: Call) -> ServiceError:
        return ServiceError(
            Reason.ERROR_REASON_LEASE_EXPIRED,
            f"the lease of {call.name} ended at {call.lease_expire_time.ToJsonString()}; the call is disconnected",
            metadata={"call": call.name, "lease_expire_time": call.lease_expire_time.ToJsonString()},
        )

    # -- provider-initiated change and offers (ProviderHost) ---------------------------------
    async def offer(self, provider: str, offer: IncomingOffer) -> str | None:
        """A call arriving from a provider's network is offered on a line; this manager has no
        lines (`incoming.Switchboard` has), so no line is open for any address."""
        return None

    async def report_change(self, change: ProviderChange) -> None:
        with self.telemetry.background("callqos.provider.change", {"callqos.call": change.call}):
            await self._apply_change(change)

    async def _apply_change(self, change: ProviderChange) -> None:
        async with self._locks.hold(change.call):
            call = await self.store.get_call(change.call)
            if call is None or call.state != State.STATE_CONNECTED:
                log.info("ignoring provider change for %s: not a connected call", change.call)
                return
            previous = QosSpec()
            previous.CopyFrom(call.granted_qos)
            if change.qos is None:
                log.warning(
                    "provider shed a call",
                    extra={"call": call.name, "provider": call.provider, "why": change.message},
                )
                self._disconnect(call, Disconnect.DISCONNECT_REASON_QOS_UNAVAILABLE, _now())
                events = [
                    self._event(
                        call,
                        change.event,
                        "",
                        previous=previous,
                        message=change.message,
                        reason=reason_name(Reason.ERROR_REASON_QOS_UNAVAILABLE),
                    ),
                    self._event(
                        call,
                        EventType.QOS_EVENT_TYPE_CALL_DISCONNECTED,
                        "",
                        previous=previous,
                        disconnect=Disconnect.DISCONNECT_REASON_QOS_UNAVAILABLE,
                        reason=reason_name(Reason.ERROR_REASON_QOS_UNAVAILABLE),
                        message=change.message,
                    ),
                ]
            else:
                log.info(
                    "provider changed a call's QoS",
                    extra={"call": call.name, "provider": call.provider, "why": change.message},
                )
                call.granted_qos.CopyFrom(change.qos)
                call.update_time.CopyFrom(_now())
                call.etag = etag_of(call)
                events = [
                    self._event(
                        call,
                        EventType.QOS_EVENT_TYPE_QOS_CHANGED,
                        "",
                        previous=previous,
                        current=change.qos,
                        message=change.message,
                        cause=event_pb2.QosChangeCause.QOS_CHANGE_CAUSE_PROVIDER_INITIATED,
                    )
                ]
            # The provider made the change itself: it already holds what it reports (or nothing).
            await self._settle(
                Outcome(call=call, peers=(), events=events, failure=None, key=None, decided=None, release=None)
            )

    # -- settling an outcome ----------------------------------------------------------------
    async def _settle(self, outcome: Outcome, limits: UsageLimits | None = None) -> Call:
        """Make `outcome` take effect, in this order: count a failed decision; free a reservation
        that ends now; commit the call, its events and the request_id's first outcome in one
        transaction and wake the watchers (freeing a fresh grant's reservation if that fails);
        then raise the failure, or count the grant and return the call.

        A failed decision is counted before the commit and a grant only after it: a grant the
        store could not record never connected anything."""
        call, failure, decided, release = outcome.call, outcome.failure, outcome.decided, outcome.release
        if decided is not None and failure is not None:
            # A refusal carries the QosRefusal (with the counter-offer); any other failure is an error.
            verdict = "refused" if failure.refusal is not None else "error"
            self.telemetry.decision(decided.operation, call.provider, decided.offered, verdict, failure.reason_name)
        if release is not None and release.before_commit:
            await self._release_quietly(release.provider, release.holder or call.name)
        record: IdempotencyRecord | None = outcome.key.record(call.name, failure) if outcome.key else None
        try:
            await self._commit([call, *outcome.peers], outcome.events, record, limits)
        except BaseException:
            if release is not None and not release.before_commit:
                await self._release_quietly(release.provider, release.holder or call.name)
            raise
        if failure is not None:
            raise failure
        if decided is not None:
            self.telemetry.decision(decided.operation, call.provider, decided.offered, "granted")
        return call

    async def _commit(
        self,
        calls: Sequence[Call],
        events: Sequence[QosEvent],
        record: IdempotencyRecord | None,
        limits: UsageLimits | None,
    ) -> None:
        with self.telemetry.store_commit(calls[0].name, len(events)):
            try:
                numbered = await self.store.commit(calls, events, record, limits=limits)
            except QuotaExceededError as exceeded:
                raise usage_exceeded(exceeded) from None
        for call in calls:
            self.telemetry.call_committed(call)
            deadline = lease_deadline_us(call)
            if deadline:
                self.leases.scheduled(deadline)
        await self.hub.publish(numbered)

    async def _release_quietly(self, info: HostedProvider, name: str) -> None:
        try:
            await self.providers.call(info, "release", lambda: info.provider.release(name), call=name)
        except ServiceError:
            log.error("provider %s could not release %s; its reservation may leak", info.id, name)

    async def _quietly(
        self, info: HostedProvider, operation: str, work: Callable[[], Awaitable[object]], request: AdmissionRequest
    ) -> None:
        """A provider call that takes back what a failed commit left it holding: contained like
        any other (`work` starts it), and only logged when it fails."""
        try:
            await self.providers.call(info, operation, work, request=request)
        except ServiceError:
            log.error("provider %s could not take back %s of %s; it may hold more", info.id, operation, request.call)

    # -- quotas -----------------------------------------------------------------------------
    def _limits(self, tenant: str) -> UsageLimits | None:
        return self.quotas.limits(tenant) if self.quotas is not None else None

    async def _check_quota(self, limits: UsageLimits, adding: Usage) -> None:
        """Before the provider is asked: QUOTA_EXCEEDED if even the least the request will hold
        does not fit. (The store checks the real grant again when it is committed.)"""
        if self.quotas is not None:
            self.quotas.check(limits, await self.store.usage(limits.tenant), adding)

    # -- helpers ----------------------------------------------------------------------------
    def _check_mutable(self, call: Call, principal: str, etag: str) -> None:
        if call.owner != principal:
            raise self._not_owner(call)
        self._check_etag(call, etag)
        if call.state != State.STATE_CONNECTED:
            raise ServiceError(
                Reason.ERROR_REASON_CALL_NOT_CONNECTED,
                f"{call.name} is {State.Name(call.state).removeprefix('STATE_')}; only a connected call can change",
                metadata={"call": call.name, "state": State.Name(call.state)},
            )

    @staticmethod
    def _not_owner(call: Call) -> ServiceError:
        return ServiceError(
            Reason.ERROR_REASON_NOT_OWNER,
            f"only the owner of {call.name} may change it",
            metadata={"call": call.name},
        )

    @staticmethod
    def _check_etag(call: Call, etag: str) -> None:
        if etag and etag != call.etag:
            raise ServiceError(
                Reason.ERROR_REASON_ETAG_MISMATCH,
                f"{call.name} changed since etag {etag}; read it again",
                metadata={"call": call.name, "etag": call.etag},
            )

    def _end(self, call: Call, reason: call_pb2.DisconnectReason, when: timestamp_pb2.Timestamp) -> None:
        """`call` DISCONNECTED with `reason`: nothing may be done with it any more (an offered
        leg can no longer be answered, and rings no more)."""
        call.features.answer = False
        call.ClearField("offer_expire_time")
        self._disconnect(call, reason, when)

    @staticmethod
    def _disconnect(call: Call, reason: call_pb2.DisconnectReason, when: timestamp_pb2.Timestamp) -> None:
        call.state = State.STATE_DISCONNECTED
        call.disconnect_reason = reason
        call.features.set_qos = False
        call.update_time.CopyFrom(when)
        call.etag = etag_of(call)

    @staticmethod
    def _event(
        call: Call,
        kind: event_pb2.QosEventType,
        request_id: str,
        *,
        previous: QosSpec | None = None,
        current: QosSpec | None = None,
        cause: event_pb2.QosChangeCause = event_pb2.QosChangeCause.QOS_CHANGE_CAUSE_UNSPECIFIED,
        disconnect: call_pb2.DisconnectReason = call_pb2.DisconnectReason.DISCONNECT_REASON_UNSPECIFIED,
        reason: str = "",
        message: str = "",
        counter_offer: QosSpec | None = None,
    ) -> QosEvent:
        event = QosEvent(
            call=call.name,
            tenant=call.tenant,
            line=call.line,
            type=kind,
            provider=call.provider,
            cause=cause,
            disconnect_reason=disconnect,
            reason=reason,
            message=message,
            request_id=request_id,
            trace_id=current_trace_id(),
            create_time=_now(),
        )
        if previous is not None and previous.ByteSize():
            event.previous_qos.CopyFrom(previous)
        if current is not None:
            event.current_qos.CopyFrom(current)
        if counter_offer is not None:
            event.counter_offer.CopyFrom(counter_offer)
        return event
