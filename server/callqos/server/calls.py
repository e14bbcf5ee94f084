"""The life of a call: make, renegotiate, drop, and provider-initiated change — and how each ends.

Every operation follows one path: (idempotency) → lock the call → ask the provider → check its
answer → settle. A call's lease (`leases`) is renewed here (`extend`) and ended here
(`expire_lease`, which the lease timer calls), like any other outcome. Requests arrive validated
(`validation`, called by the service); nothing here re-checks their content. What is decided here
is everything about the call itself: whether it exists and who owns it, its etag and state, what
the provider is asked, whether its answer keeps the contract, the call's new state and the events
that announce it. Provider-initiated changes (`report_change`, the `ProviderHost` side) enter the
same way.

Every outcome — a grant, a refusal, a provider error, a drop, a lease that ends, a change the
provider made — takes effect through one step, `_settle`, which owns for all of them: the
telemetry of a provider decision; the commit of the call (with the other leg of a call between two
lines, `incoming`), its events and the request_id's first outcome in one store transaction, then
the watchers woken; what becomes of the provider's reservation (`Release`); what is undone when
the commit fails (`Release`, `Restore`); and the answer (the call, or the failure, raised once
recorded). An `Outcome` names each of those, so a new kind of outcome cannot leave one out.

The store and the provider agree under every failure (conformance/SPEC.md CALL-5, CALL-6):
- the provider decides first and the store records after; when the record fails — the storage
  cannot take it, or a tenant's quota refuses it in the same transaction — the decision is undone
  (a fresh grant released, a renegotiation put back to the previous QoS) and the caller gets
  UNAVAILABLE / STORAGE_UNAVAILABLE (or QUOTA_EXCEEDED), with nothing changed;
- a reservation that ends is released only AFTER the end is recorded, and the release is owed (a
  row written in the same transaction) until the provider confirms it; a release that fails is
  announced (RELEASE_PENDING) and retried by the ledger (`ledger.py`) until it succeeds;
- what cannot be undone at once is left to reconciliation (`reconcile_call`), which makes the
  provider hold what the store says, or records what it does hold, or disconnects the call.
A call between two applications is one reservation, held under its caller's leg (its holder):
everything above is done under the holder's name, and changes both legs.
"""

from __future__ import annotations

import contextlib
import contextvars
import enum
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from google.protobuf import duration_pb2, timestamp_pb2

from callqos.server import names
from callqos.server.errors import (
    FieldViolation,
    Reason,
    ServiceError,
    invalid,
    reason_name,
    refused,
    storage_unavailable,
)
from callqos.server.events import EventHub
from callqos.server.hosting import HostedProvider, HostedProviders, ProviderStartError, why_start_failed
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
from callqos.server.qos import best_effort_qos, mirror, qos_shortfalls, reserved_rate, resolve_no_change, shortfalls
from callqos.server.security.authz import Permission
from callqos.server.security.identity import Caller
from callqos.server.security.quotas import Quotas, usage_exceeded
from callqos.server.store.base import (
    CallPage,
    IdempotencyRecord,
    PendingRelease,
    QuotaExceededError,
    Store,
    StoreUnavailable,
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
# The values the make and drop paths compare with or set on every call, read once: each
# `Enum.NAME` is a Python-level __getattr__ of protobuf's enum wrapper.
_NEEDED = Level.SERVICE_LEVEL_NEEDED
_BEST_EFFORT = Level.SERVICE_LEVEL_BEST_EFFORT
_OUTGOING = Call.Direction.DIRECTION_OUTGOING
_CONNECTED = State.STATE_CONNECTED
_DISCONNECTED = State.STATE_DISCONNECTED
_GRANTED = EventType.QOS_EVENT_TYPE_QOS_GRANTED
_CALL_DISCONNECTED = EventType.QOS_EVENT_TYPE_CALL_DISCONNECTED
_NORMAL = Disconnect.DISCONNECT_REASON_NORMAL
Rates = tuple[int, int]  # (sending, receiving) bytes/s, as GRANT-1 counts them

# Where the changes a provider reports are gathered while an UpdateLink runs (the ledger sets a
# list here around the provider's update_link; `report_change` appends to it), for the response.
LINK_CHANGES: contextvars.ContextVar[list[svc.LinkChange] | None] = contextvars.ContextVar("link_changes", default=None)


def rates_of(qos: QosSpec) -> Rates:
    """What a QoS reserves, per direction (GRANT-1)."""
    return reserved_rate(qos.sending), reserved_rate(qos.receiving)


_UNHASHED_LEASE = ("lease_duration", "lease_expire_time")


def etag_of(call: Call) -> str:
    """A strong etag (AIP-154): changes whenever any field of the call changes — but its lease,
    which renewing moves without changing the call (so a keep-alive renewing in the background
    never makes its owner's conditional change fail). (Hashed with the etag and the lease left out
    for the moment, rather than from a copy without them: copying a call cost more than hashing it.)"""
    etag = call.etag
    lease = Call()  # the lease fields set aside, put back below
    for name in _UNHASHED_LEASE:
        if call.HasField(name):
            getattr(lease, name).CopyFrom(getattr(call, name))
            call.ClearField(name)
    call.ClearField("etag")
    try:
        return hashlib.sha256(call.SerializeToString(deterministic=True)).hexdigest()[:16]
    finally:
        call.etag = etag
        call.MergeFrom(lease)


def _now() -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(time.time_ns())
    return stamp


def _least_reserved(level: int, qos: QosSpec) -> tuple[int, int]:
    """The least a call at `level` asking for `qos` will hold once granted, (sending, receiving):
    a NEEDED grant satisfies the request, so holds at least its reserved rates; any other level
    may be granted nothing."""
    if level != _NEEDED:
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


class ReleaseWhen(enum.Enum):
    AFTER_COMMIT = "after commit"  # the reservation ends with this outcome (a drop)
    ALWAYS = "always"  # nothing should be held, recorded or not (an admission failed part-way)
    IF_COMMIT_FAILS = "if commit fails"  # a fresh grant, undone when nothing recorded it


@dataclass(frozen=True)
class Release:
    """A reservation `provider` holds for the call, which the outcome frees. Never before the
    outcome is recorded (a release that then failed to record would leave a connected call with
    nothing reserved); AFTER_COMMIT and ALWAYS releases are owed in the commit's own transaction
    and forgotten once the provider confirms them. IF_COMMIT_FAILS undoes a fresh grant that the
    store could not record: without the call, nothing would ever release it. `holder` names the
    call the provider holds it under when that is not the settled call (the caller's leg of a
    call between two lines)."""

    provider: HostedProvider
    when: ReleaseWhen
    holder: str = ""

    @classmethod
    def after_commit(cls, provider: HostedProvider, holder: str = "") -> Release:
        return cls(provider, ReleaseWhen.AFTER_COMMIT, holder)

    @classmethod
    def always(cls, provider: HostedProvider, holder: str = "") -> Release:
        return cls(provider, ReleaseWhen.ALWAYS, holder)

    @classmethod
    def if_commit_fails(cls, provider: HostedProvider, holder: str = "") -> Release:
        return cls(provider, ReleaseWhen.IF_COMMIT_FAILS, holder)


@dataclass(frozen=True)
class Restore:
    """A renegotiation's previous reservation, put back (by renegotiating to it) when the new one
    cannot be recorded — the storage failed, or the tenant's quota refused it: `request` asks for
    the previous QoS at the previous level, under the name the provider holds it."""

    provider: HostedProvider
    request: AdmissionRequest


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
    restore: Restore | None  # the reservation to put back if the commit fails (None: nothing to put back)


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
        self._locks = KeyedLocks(store.shared_locks(), "call")
        # Releases owed where the store could not record them (the call itself was never
        # recorded): the ledger retries them with the durable ones.
        self.owed: dict[str, PendingRelease] = {}
        # Calls whose provider may hold something other than what the store says (a change or a
        # compensation that could not be recorded or undone): the ledger reconciles them first.
        self.suspects: set[str] = set()

    def reconcile_soon(self, call: str) -> None:
        """`call`'s provider may hold something other than what the store says (it changed the
        reservation after the host gave up on the change): the ledger reconciles it at its next
        pass for suspects, within about a second (PROV-19)."""
        self.suspects.add(call)

    # -- start-up and shutdown ----------------------------------------------------------------
    async def start(self) -> None:
        """Hand every connected call back to its provider; apply what no longer fits; end the
        calls whose lease ran out while no server ran (released to their provider, which has just
        re-taken them, through the same owed release as a drop), then start the lease timer. A
        provider that cannot start even without calls raises ProviderStartError (`_restore_calls`)
        before any lease is ended or the timer started."""
        await self._restore_calls()
        await self.leases.expire_overdue()
        self.leases.start()

    async def stop(self) -> None:
        """Stop the lease timer (leases stay stored; the next start honours them)."""
        await self.leases.stop()

    async def _restore_calls(self) -> None:
        """Hand every connected call back to its provider; apply what no longer fits. No stored
        value stops the server (CALL-7): a call whose provider is no longer hosted, or that its
        provider cannot restore, is disconnected with its events and a reason, never a crash. A
        provider that cannot start even without calls raises ProviderStartError: the server does
        not serve without it, and its calls are kept for the next start."""
        held: dict[str, list[Restored]] = {}
        connected: dict[str, Call] = {}
        orphans: list[Call] = []
        for call in await self.store.connected_calls():
            if not holds_reservation(call):
                continue  # its pair's reservation is restored with the caller's leg
            info = self.providers.find(call.provider)
            if info is None:
                orphans.append(call)
                continue
            connected[call.name] = call
            held.setdefault(info.id, []).append(
                Restored(call.name, call.destination, call.service_level, call.granted_qos)
            )
        # A trace for the restore (its events carry its id); none for an empty start-up.
        restoring = (
            self.telemetry.background("callqos.restore", {"callqos.calls": len(connected) + len(orphans)})
            if connected or orphans
            else contextlib.nullcontext()
        )
        with restoring:
            for call in orphans:
                message = f"{call.provider} is not hosted by this server any more; the call cannot be restored"
                log.error("disconnecting %s: %s", call.name, message)
                await self._fail(call, message, None)
            for info in self.providers.all():
                restored = held.get(info.id, [])
                try:
                    changes = await self.providers.start(info, self, restored)
                except ServiceError as error:
                    if not restored:
                        raise self._cannot_start(info, error) from error
                    log.error(
                        "provider %s could not restore its %d calls (%s); restoring them one by one",
                        info.id,
                        len(restored),
                        error.message,
                    )
                    changes = await self._restore_one_by_one(info, [connected[item.call] for item in restored])
                for change in changes:
                    await self.report_change(change)

    async def _restore_one_by_one(self, info: HostedProvider, calls: Sequence[Call]) -> list[ProviderChange]:
        """After a provider's `start` failed with its calls: start it with none, then re-take each
        call (oldest first, so that the newest are the ones that no longer fit); a call it cannot
        re-take is disconnected with the reason. A provider that fails to start even without calls
        is not the data's doing: the server does not start, and the calls stay as stored."""
        try:
            changes = await self.providers.start(info, self, [])
        except ServiceError as error:
            raise self._cannot_start(info, error) from error
        for call in calls:
            async with self._locks.hold(call.name):
                try:
                    await self._retake(info, call, None, "restoring it after a restart")
                except ServiceError as error:  # not recorded: reconciled once the store takes it
                    log.error("could not record how %s was restored: %s", call.name, error.message)
                    self.suspects.add(call.name)
        return changes

    @staticmethod
    def _cannot_start(info: HostedProvider, error: ServiceError) -> ProviderStartError:
        return ProviderStartError(f"provider {info.id} could not start: {why_start_failed(error)}")

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
            level = request.call.service_level or _NEEDED
            asked = request.call.requested_qos
            offered = best_effort_qos(asked.provider_specific) if level == _BEST_EFFORT else asked
            limits = self._limits(caller.tenant)
            if limits is not None:
                await self._check_quota(limits, Usage(1, *_least_reserved(level, offered)))
            now = _now()
            call = Call(
                name=name,
                direction=_OUTGOING,
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
            decision = await self._decide(info, "admit", admission, level, "call.requested_qos")
            if isinstance(decision, ServiceError):
                error = decision
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
                        release=Release.always(info),
                        restore=None,
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
                    Outcome(
                        call=call,
                        peers=(),
                        events=events,
                        failure=refusal,
                        key=key,
                        decided=decided,
                        release=None,
                        restore=None,
                    )
                )
            call.state = _CONNECTED
            call.granted_qos.CopyFrom(decision.qos)
            call.features.set_qos = info.capabilities.renegotiation
            self._lease(call, self._asked_lease(request))
            call.etag = etag_of(call)
            granted = self._event(call, _GRANTED, request.request_id, current=decision.qos)
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
                    restore=None,
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
            desired = self._desired(request.qos, call, level)
            if self._unchanged(call, level, desired):
                # Nothing to change (SPEC.md SETQOS-8): the call as it is, no provider call, no
                # event; recorded, so that a repeat of this request_id answers the same.
                return await self._settle(
                    Outcome(
                        call=call, peers=(), events=[], failure=None, key=key, decided=None, release=None, restore=None
                    )
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
            decision = await self._ask_to_renegotiate(info, call, admission, level)
            if not isinstance(decision, Grant):
                return await self._renegotiation_failed(call, request.request_id, decision, key, decided)
            previous = QosSpec()
            previous.CopyFrom(call.granted_qos)
            # If the new grant cannot be recorded (the storage failed, or the tenant filled its
            # quota meanwhile), the provider is renegotiated back to this.
            restore = Restore(
                info,
                AdmissionRequest(
                    call.name, call.destination, call.service_level, previous, principal, current=decision.qos
                ),
            )
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
            return await self._settle(
                Outcome(
                    call=call,
                    peers=(),
                    events=[changed],
                    failure=None,
                    key=key,
                    decided=decided,
                    release=None,
                    restore=restore,
                ),
                limits,
            )

    async def _ask_to_renegotiate(
        self,
        info: HostedProvider,
        call: Call,
        admission: AdmissionRequest,
        level: int,
        in_calls_terms: Callable[[QosSpec], QosSpec] = lambda qos: qos,
    ) -> Grant | ServiceError:
        """The provider's answer to renegotiating `call`: its grant (checked against what was
        asked, GRANT-1), or why the call keeps its QoS — the provider's failure, or its refusal as
        QOS_UNAVAILABLE / QOS_POLICY_FAILURE with the counter-offer in the call's terms
        (`in_calls_terms` turns the provider's into them: a leg of a pair may not be the one that
        holds the reservation). Provider-specific bytes an out-of-process provider refuses are
        the caller's bad request, raised as such: nothing was renegotiated, nobody is told."""
        decision = await self._decide(info, "renegotiate", admission, level, "qos")
        if isinstance(decision, ServiceError):
            # The provider failed: the call keeps its QoS, but what the provider holds is not
            # known (one that missed its deadline may still be changing it), so the ledger looks
            # at the call at its next pass for suspects (PROV-19).
            self.reconcile_soon(admission.call)
            return decision
        if isinstance(decision, Grant):
            return decision
        counter = in_calls_terms(decision.counter_offer) if decision.counter_offer is not None else None
        return refused(
            _refusal_reason(decision.kind), call.name, decision.message, counter, {"provider": call.provider}
        )

    async def _decide(
        self,
        info: HostedProvider,
        operation: Literal["admit", "renegotiate"],
        admission: AdmissionRequest,
        level: int,
        qos_field: str,
    ) -> Grant | Refusal | ServiceError:
        """The provider's decision on `admission`, a grant checked against what was asked
        (GRANT-1), or how the provider failed. Provider-specific bytes an out-of-process provider
        refuses are not its failure but the caller's bad request: raised as such (INVALID_ARGUMENT,
        each violation named under `qos_field`, where the request that asked holds the QoS),
        nothing decided, nothing recorded, nobody told — whichever request asked (CreateCall,
        AnswerCall, RenegotiateCall)."""
        decide = info.provider.admit if operation == "admit" else info.provider.renegotiate
        try:
            decision = await self.providers.call(info, operation, lambda: decide(admission), request=admission)
            if isinstance(decision, Grant):
                self._check_grant(info, level, admission.qos, decision.qos)
        except ServiceError as error:
            if error.reason == Reason.ERROR_REASON_INVALID_REQUEST:
                raise invalid(
                    FieldViolation(f"{qos_field}.{v.field}", v.description) for v in error.violations
                ) from None
            return error
        return decision

    async def _renegotiation_failed(
        self, call: Call, request_id: str, failure: ServiceError, key: RequestKey | None, decided: Decided
    ) -> Call:
        """Settle a renegotiation of `call` that the provider failed or refused with `failure`:
        "the call continues with the previous QOS" — untouched, the provider keeping the
        reservation it had — its owners are told RENEGOTIATION_FAILED (with the counter-offer,
        if any), and the outcome is recorded for the request_id like any other."""
        refusal = failure.refusal
        failed = self._event(
            call,
            EventType.QOS_EVENT_TYPE_RENEGOTIATION_FAILED,
            request_id,
            previous=call.granted_qos,
            current=call.granted_qos,
            reason=failure.reason_name,
            message=failure.message,
            counter_offer=refusal.counter_offer if refusal is not None and refusal.HasField("counter_offer") else None,
        )
        return await self._settle(
            Outcome(
                call=call,
                peers=(),
                events=[failed],
                failure=failure,
                key=key,
                decided=decided,
                release=None,
                restore=None,
            )
        )

    @staticmethod
    def _desired(asked: QosSpec, call: Call, level: int) -> QosSpec:
        """The call's request after a renegotiation asking `asked` at `level`. A NO_CHANGE
        direction keeps what is in effect, and what the call asks for in it stays what it asked
        before, so that a shortfall stays visible (GRANT-5) — except at NEEDED, where a request
        the grant in effect falls short of (the call was IF_AVAILABLE or BEST_EFFORT and got less)
        becomes that grant: a NEEDED call is never connected below its request (LEVEL-1,
        EVENT-4)."""
        desired = resolve_no_change(asked, call.requested_qos)
        if level == Level.SERVICE_LEVEL_NEEDED:
            for direction in ("sending", "receiving"):
                kept: flowspec_pb2.FlowSpec = getattr(call.granted_qos, direction)
                if getattr(asked, direction).service_type == ST.SERVICE_TYPE_NO_CHANGE and shortfalls(
                    kept, getattr(desired, direction)
                ):
                    getattr(desired, direction).CopyFrom(kept)
        return desired

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
            if call.state != _CONNECTED:
                return call  # dropping twice is harmless
            self._check_etag(call, request.etag)
            info = self.providers.get(call.provider)
            previous = QosSpec()
            previous.CopyFrom(call.granted_qos)
            self._disconnect(call, _NORMAL, _now())
            event = self._event(call, _CALL_DISCONNECTED, "", previous=previous, disconnect=_NORMAL)
            return await self._settle(
                Outcome(
                    call=call,
                    peers=(),
                    events=[event],
                    failure=None,
                    key=None,
                    decided=None,
                    release=Release.after_commit(info),
                    restore=None,
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
                    restore=None,
                )
            )

    async def expire_lease(self, name: str) -> bool:
        """End the call `name` if its lease has ended (the lease timer asks); whether it did. A
        lease extended meanwhile, or a call that ended otherwise, is left alone. With several
        replicas, each replica's timer may ask for the same call: the call is re-read under its
        lock (held across the replicas), so only the first ends it; a call already ended is seen
        without taking the lock at all."""
        if not self._lease_ended(await self.store.get_call(name)):
            return False
        async with self._locks.hold(name):
            call = await self.store.get_call(name)
            if call is None or not self._lease_ended(call):
                return False
            with self.telemetry.background("callqos.lease.expire", {"callqos.call": name}):
                await self._end_lease(call, None, None)
            return True

    def _lease_ended(self, call: Call | None) -> bool:
        """Whether `call` has a live lease that has ended by now (the lease timer's clock)."""
        return call is not None and 0 < lease_deadline_us(call) <= self.leases.now_us()

    async def _end_lease(self, call: Call, failure: ServiceError | None, key: RequestKey | None) -> Call:
        """Disconnect `call` (and its peer) LEASE_EXPIRED, each leg announced to its owner and
        monitors; its reservation is released as a drop's is (`Release.after_commit`: owed in the
        same transaction, freed once recorded, retried by the ledger if the provider fails)."""
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
            release=Release.after_commit(info) if connected else None,
            restore=None,
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
        """Record a change the provider made. Never raises into the provider: a change the store
        cannot record is logged and its call reconciled later (the provider already holds what
        it reports)."""
        with self.telemetry.background("callqos.provider.change", {"callqos.call": change.call}):
            try:
                async with self._locks.hold(change.call):
                    previous = await self._apply_change(change)
            except Exception as exc:
                cause = exc.message if isinstance(exc, ServiceError) else repr(exc)
                log.error(
                    "could not record the provider's change of %s (%s); it will be reconciled", change.call, cause
                )
                self.suspects.add(change.call)
                self._collect(change, None, recorded=False)
            else:
                if previous is not None:
                    self._collect(change, previous, recorded=True)

    async def _apply_change(self, change: ProviderChange) -> QosSpec | None:
        """`report_change`, with the call's lock held: the change applied to the call (both legs of
        a call between two applications); returns the QoS the call had before, or None when the
        change was ignored (the call is not connected)."""
        call = await self.store.get_call(change.call)
        if call is None or call.state != State.STATE_CONNECTED:
            log.info("ignoring provider change for %s: not a connected call", change.call)
            return None
        previous = QosSpec()
        previous.CopyFrom(call.granted_qos)
        legs = await self._legs(call)
        if change.qos is None:
            log.warning(
                "provider shed a call",
                extra={"call": call.name, "provider": call.provider, "why": change.message},
            )
            events = self._lost(legs, change.event, change.message)
        else:
            log.info(
                "provider changed a call's QoS",
                extra={"call": call.name, "provider": call.provider, "why": change.message},
            )
            events = self._degraded(legs, change.qos, change.message)
        # The provider made the change itself: it already holds what it reports (or nothing).
        await self._record(legs, events)
        return previous

    @staticmethod
    def _collect(change: ProviderChange, previous: QosSpec | None, *, recorded: bool) -> None:
        """Add the change to the UpdateLink response being gathered, if one is."""
        gathered = LINK_CHANGES.get()
        if gathered is None:
            return
        item = svc.LinkChange(
            call=change.call,
            outcome=svc.LinkChange.OUTCOME_DISCONNECTED if change.qos is None else svc.LinkChange.OUTCOME_DEGRADED,
            message=change.message,
            recorded=recorded,
        )
        if previous is not None:
            item.previous_qos.CopyFrom(previous)
        if change.qos is not None:
            item.current_qos.CopyFrom(change.qos)
        gathered.append(item)

    async def _legs(self, call: Call) -> list[Call]:
        """`call`, and the other leg of a call between two applications (in the same state): what
        a change to the one reservation the provider holds for them changes. `call` first."""
        peer = await self.store.get_call(call.peer) if call.peer else None
        return [call, peer] if peer is not None and peer.state == call.state else [call]

    def _lost(self, legs: Sequence[Call], kind: event_pb2.QosEventType, message: str) -> list[QosEvent]:
        """Disconnect each leg (QOS_UNAVAILABLE): its loss event, then CALL_DISCONNECTED."""
        unavailable = reason_name(Reason.ERROR_REASON_QOS_UNAVAILABLE)
        now = _now()
        events: list[QosEvent] = []
        for call in legs:
            previous = QosSpec()
            previous.CopyFrom(call.granted_qos)
            self._disconnect(call, Disconnect.DISCONNECT_REASON_QOS_UNAVAILABLE, now)
            events.append(self._event(call, kind, "", previous=previous, message=message, reason=unavailable))
            events.append(
                self._event(
                    call,
                    EventType.QOS_EVENT_TYPE_CALL_DISCONNECTED,
                    "",
                    previous=previous,
                    disconnect=Disconnect.DISCONNECT_REASON_QOS_UNAVAILABLE,
                    reason=unavailable,
                    message=message,
                )
            )
        return events

    def _degraded(self, legs: Sequence[Call], qos: QosSpec, message: str) -> list[QosEvent]:
        """Give the first leg the QoS the provider now holds for it, and its peer the same QoS in
        its own terms (mirrored): QOS_CHANGED (provider-initiated) on each."""
        now = _now()
        events: list[QosEvent] = []
        for index, call in enumerate(legs):
            mine = qos if index == 0 else mirror(qos)
            previous = QosSpec()
            previous.CopyFrom(call.granted_qos)
            call.granted_qos.CopyFrom(mine)
            call.update_time.CopyFrom(now)
            call.etag = etag_of(call)
            events.append(
                self._event(
                    call,
                    EventType.QOS_EVENT_TYPE_QOS_CHANGED,
                    "",
                    previous=previous,
                    current=mine,
                    message=message,
                    cause=event_pb2.QosChangeCause.QOS_CHANGE_CAUSE_PROVIDER_INITIATED,
                )
            )
        return events

    async def _fail(self, call: Call, message: str, info: HostedProvider | None) -> None:
        """Disconnect a connected call its provider cannot hold (PROVIDER_ERROR), with its other
        leg if it has one: GENERIC_ERROR, then CALL_DISCONNECTED, on each; anything the provider
        `info` may hold for it (under `call`'s name) is released."""
        failed = reason_name(Reason.ERROR_REASON_PROVIDER_UNAVAILABLE)
        legs = await self._legs(call)
        now = _now()
        events: list[QosEvent] = []
        for leg in legs:
            previous = QosSpec()
            previous.CopyFrom(leg.granted_qos)
            self._disconnect(leg, Disconnect.DISCONNECT_REASON_PROVIDER_ERROR, now)
            events.append(
                self._event(
                    leg, EventType.QOS_EVENT_TYPE_GENERIC_ERROR, "", previous=previous, reason=failed, message=message
                )
            )
            events.append(
                self._event(
                    leg,
                    EventType.QOS_EVENT_TYPE_CALL_DISCONNECTED,
                    "",
                    previous=previous,
                    disconnect=Disconnect.DISCONNECT_REASON_PROVIDER_ERROR,
                    reason=failed,
                    message=message,
                )
            )
        release = Release.after_commit(info) if info is not None else None
        try:
            await self._settle(
                Outcome(
                    call=call,
                    peers=legs[1:],
                    events=events,
                    failure=None,
                    key=None,
                    decided=None,
                    release=release,
                    restore=None,
                )
            )
        except ServiceError as error:
            log.error("could not record that %s was disconnected (%s); it will be reconciled", call.name, error.message)
            self.suspects.add(call.name)

    # -- reconciliation (driven by the ledger) ----------------------------------------------
    async def reconcile_call(self, info: HostedProvider, name: str) -> str:
        """Make `info` and the store agree about the call `name` (PROV-19), and say what was done:
        "agreed" (nothing to do), "released" (the provider held a call the store does not have
        connected), "re-taken" (the provider holds the stored grant again), "changed" (the store
        now records what the provider holds), "disconnected" (nothing acceptable could be held),
        or "failed" (try again later). A call between two applications is reconciled under its
        holder (the caller's leg); its other leg holds nothing of its own."""
        async with self._locks.hold(name):
            try:
                held = await self.providers.holding(info, name)
                call = await self.store.get_call(name)
                connected = (
                    call is not None
                    and call.state == State.STATE_CONNECTED
                    and call.provider == info.name
                    and holds_reservation(call)
                )
                if not connected:
                    if held is None:
                        return "agreed"
                    released = await self._release(info, name, call, durable=False)
                    if released and call is not None:
                        event = self._event(
                            call,
                            EventType.QOS_EVENT_TYPE_RELEASE_COMPLETED,
                            "",
                            message=f"the provider still held {held[0]}/{held[1]} B/s for this call; released "
                            "by reconciliation",
                        )
                        await self._commit([call], [event], None, None, released=True)  # nothing owed any more
                    return "released" if released else "failed"
                assert call is not None
                if (held or (0, 0)) == rates_of(call.granted_qos):
                    return "agreed"
                return await self._retake(info, call, held, "reconciling the ledger")
            except ServiceError as error:
                log.warning("could not reconcile %s with provider %s: %s", name, info.id, error.message)
                return "failed"

    async def _retake(self, info: HostedProvider, call: Call, held: Rates | None, why: str) -> str:
        """Ask `info` to hold the call's stored grant again (admit when it holds nothing,
        renegotiate otherwise), at the call's level. A grant of the same rates is "re-taken"; one
        the call's level accepts is recorded ("changed": IF_AVAILABLE takes less, NEEDED only
        what satisfies its request); anything else is released and the call disconnected
        (QOS_UNAVAILABLE). The call's lock is held by the caller."""
        stored = rates_of(call.granted_qos)
        request = AdmissionRequest(
            call.name,
            call.destination,
            call.service_level,
            call.granted_qos,
            call.owner,
            current=call.granted_qos if held is not None else None,
            # A call the provider's network offered is connected again, not placed anew.
            incoming=held is None and call.direction == Call.Direction.DIRECTION_INCOMING,
        )
        decision: Grant | Refusal | None = None
        failure = ""
        if held is None or info.capabilities.renegotiation:
            operation = "admit" if held is None else "renegotiate"
            method = info.provider.admit if held is None else info.provider.renegotiate
            try:
                decision = await self.providers.call(info, operation, lambda: method(request), request=request)
            except ServiceError as error:
                failure = error.message
        granted = decision.qos if isinstance(decision, Grant) else None
        if granted is not None and rates_of(granted) == stored:
            if granted != call.granted_qos:
                legs = await self._legs(call)
                await self._record(legs, self._degraded(legs, granted, f"re-taken while {why}"))
            log.warning(
                "provider %s had lost %s (held %s, the call %s); re-taken while %s",
                info.id,
                call.name,
                held,
                stored,
                why,
            )
            return "re-taken"
        if granted is not None and self._acceptable(call, granted):
            message = f"the provider could hold only this while {why}"
            log.warning(
                "%s: provider %s holds %s instead of %s; recorded", call.name, info.id, rates_of(granted), stored
            )
            legs = await self._legs(call)
            await self._record(legs, self._degraded(legs, granted, message))
            return "changed"
        if failure:
            reason = failure
        elif isinstance(decision, Refusal):
            reason = decision.message
        elif decision is None:
            reason = "it holds something else and cannot renegotiate"
        else:
            reason = "it granted less than the call needs"
        message = (
            f"provider {info.id} no longer holds this call's QoS and could not take it again while {why}: {reason}"
        )
        log.error("disconnecting %s: %s", call.name, message)
        if failure:  # the provider failed: a provider error, as at creation (EVENT-5)
            await self._fail(call, message, info)
            return "disconnected"
        legs = await self._legs(call)
        await self._settle(
            Outcome(
                call=call,
                peers=legs[1:],
                events=self._lost(legs, EventType.QOS_EVENT_TYPE_NOQOS, message),
                failure=None,
                key=None,
                decided=None,
                release=Release.after_commit(info),
                restore=None,
            )
        )
        return "disconnected"

    @staticmethod
    def _acceptable(call: Call, granted: QosSpec) -> bool:
        """Whether the call's level lets it stay connected with `granted` (LEVEL-1 … LEVEL-3)."""
        if call.service_level == Level.SERVICE_LEVEL_IF_AVAILABLE:
            return True
        if call.service_level == Level.SERVICE_LEVEL_BEST_EFFORT:
            return rates_of(granted) == (0, 0)
        return not qos_shortfalls(granted, call.requested_qos)

    async def _record(self, legs: Sequence[Call], events: Sequence[QosEvent]) -> None:
        """Store a change the provider already holds (nothing to release or put back)."""
        await self._settle(
            Outcome(
                call=legs[0],
                peers=legs[1:],
                events=events,
                failure=None,
                key=None,
                decided=None,
                release=None,
                restore=None,
            )
        )

    async def retry_release(self, owed: PendingRelease) -> bool:
        """Try an owed release again (the ledger's retry loop): True once the provider confirmed
        it, and it is forgotten (announced RELEASE_COMPLETED if RELEASE_PENDING was)."""
        info = self.providers.find(owed.provider)
        if info is None:
            log.error("release of %s is owed to %s, which is not hosted any more; forgotten", owed.call, owed.provider)
            await self.store.forget_release(owed.call)
            return True
        async with self._locks.hold(owed.call):
            try:
                await self.providers.call(info, "release", lambda: info.provider.release(owed.call), call=owed.call)
            except ServiceError as error:
                log.warning("provider %s still cannot release %s: %s", info.id, owed.call, error.message)
                return False
            self.owed.pop(owed.call, None)
            call = await self.store.get_call(owed.call)
            if call is not None and owed.attempts > 0:
                done = self._event(
                    call,
                    EventType.QOS_EVENT_TYPE_RELEASE_COMPLETED,
                    "",
                    message=f"provider {info.id} released what this call held, after {owed.attempts} failed attempts",
                )
                await self._commit([call], [done], None, None, released=True)
            else:
                await self.store.forget_release(owed.call)
            log.info("provider %s released %s after %d failed attempts", info.id, owed.call, owed.attempts)
            return True

    # -- settling an outcome ----------------------------------------------------------------
    async def _settle(self, outcome: Outcome, limits: UsageLimits | None = None) -> Call:
        """Make `outcome` take effect, in this order: count a failed decision; commit the call (and
        its peers), its events, the request_id's first outcome and any release owed, in one
        transaction (refused over `limits`, the tenant's quotas), and wake the watchers; then
        free the reservation that ends (forgetting what was owed once the provider confirms);
        then raise the failure, or count the grant and return the call.

        If the commit fails, nothing was recorded, so what the provider did for this outcome is
        undone — a fresh grant released, a renegotiation put back — and the caller gets
        STORAGE_UNAVAILABLE (or QUOTA_EXCEEDED, or the error itself): the store and the provider
        agree, and the request changed nothing (CALL-5).

        A failed decision is counted before the commit and a grant only after it: a grant the
        store could not record never connected anything."""
        call, failure, decided, release = outcome.call, outcome.failure, outcome.decided, outcome.release
        if decided is not None and failure is not None:
            # A refusal carries the QosRefusal (with the counter-offer); any other failure is an error.
            verdict = "refused" if failure.refusal is not None else "error"
            self.telemetry.decision(decided.operation, call.provider, decided.offered, verdict, failure.reason_name)
        record: IdempotencyRecord | None = outcome.key.record(call.name, failure) if outcome.key else None
        stored = [call, *outcome.peers]
        holder = (release.holder or call.name) if release is not None else ""
        owe = None
        if release is not None and release.when is not ReleaseWhen.IF_COMMIT_FAILS:
            owe = PendingRelease(holder, release.provider.name)
        try:
            await self._commit(stored, outcome.events, record, limits, owe=owe)
        except BaseException as exc:
            if release is not None and release.when is not ReleaseWhen.AFTER_COMMIT:
                await self._release(release.provider, holder, None, durable=False)
            if outcome.restore is not None:
                await self._restore(outcome.restore)
            if isinstance(exc, StoreUnavailable):
                raise storage_unavailable(exc.cause, f"record {call.name}") from exc
            raise
        if owe is not None and release is not None:
            held_by = next((each for each in stored if each.name == holder), None)
            await self._release(release.provider, holder, held_by, durable=True)
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
        *,
        owe: PendingRelease | None = None,
        released: bool = False,
    ) -> None:
        # No span of its own: a commit decides nothing (its time is the RPC span's, less the
        # provider's), and a span per commit was a third of what tracing cost (README "Performance").
        try:
            numbered = await self.store.commit(calls, events, record, limits=limits, owe=owe, released=released)
        except QuotaExceededError as exceeded:
            raise usage_exceeded(exceeded) from None
        for call in calls:
            self.telemetry.call_committed(call)
            deadline = lease_deadline_us(call)
            if deadline:
                self.leases.scheduled(deadline)
        await self.hub.publish(numbered)

    async def _release(self, info: HostedProvider, name: str, call: Call | None, *, durable: bool) -> bool:
        """Release what `info` holds under `name`; True when the provider confirmed it. With
        `durable`, the release was owed in the store: it is forgotten once confirmed, and when it
        fails the failure is announced on the call (RELEASE_PENDING) for the ledger to retry. A
        release that is not durable and fails is owed in memory (the call was never recorded, so
        there is nothing to announce it on)."""
        try:
            await self.providers.call(info, "release", lambda: info.provider.release(name), call=name)
        except ServiceError as error:
            log.error("provider %s could not release %s (%s); retrying until it can", info.id, name, error.message)
            owed = PendingRelease(name, info.name, attempts=1, last_error=error.message)
            if not durable or call is None:
                self.owed[name] = owed
                return False
            pending = self._event(
                call,
                EventType.QOS_EVENT_TYPE_RELEASE_PENDING,
                "",
                reason=error.reason_name,
                message=f"provider {info.id} could not free what this call reserved: {error.message}; retrying",
            )
            try:
                await self._commit([call], [pending], None, None, owe=owed)
            except StoreUnavailable:
                self.owed[name] = owed  # the row from the call's own commit stays: it is retried anyway
            return False
        if durable:
            try:
                await self.store.forget_release(name)
            except StoreUnavailable:
                pass  # the row stays and the release is retried: harmless (PROV-5)
        return True

    async def _restore(self, restore: Restore) -> None:
        """Put a renegotiated call back to its previous reservation (its new one could not be
        recorded). If the provider cannot, the call is left to reconciliation."""
        info, request = restore.provider, restore.request
        try:
            decision = await self.providers.call(
                info, "restore", lambda: info.provider.renegotiate(request), request=request
            )
        except ServiceError as error:
            decision = Refusal(RefusalKind.ADMISSION, error.message)
        if isinstance(decision, Grant) and rates_of(decision.qos) == rates_of(request.qos):
            return
        log.error(
            "could not put %s back to its previous QoS after a failed commit; it will be reconciled", request.call
        )
        self.suspects.add(request.call)

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
        call.state = _DISCONNECTED
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
