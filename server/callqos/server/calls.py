"""The life of a call: make, renegotiate, drop, and provider-initiated change.

Every operation follows one path: validate → (idempotency) → lock the call → ask the provider →
check its answer → commit the call's new state and its events in one transaction → wake the
watchers. Provider-initiated changes enter through the same path (`report_change`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from google.protobuf import timestamp_pb2
from google.rpc import status_pb2

from callqos.server import names, validation
from callqos.server.errors import (
    FieldViolation,
    Reason,
    ReplayedStatus,
    ServiceError,
    invalid,
    reason_name,
    refused,
)
from callqos.server.events import EventHub
from callqos.server.hosting import ProviderSet
from callqos.server.locks import KeyedLocks, to_completion
from callqos.server.providers.base import (
    AdmissionRequest,
    Grant,
    ProviderChange,
    ProviderInfo,
    Refusal,
    RefusalKind,
    Restored,
)
from callqos.server.qos import best_effort_qos, qos_shortfalls, reserved_rate, resolve_no_change
from callqos.server.store.base import IdempotencyRecord, Store
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
    """A strong etag (AIP-154): changes whenever any field of the call changes."""
    unsigned = Call()
    unsigned.CopyFrom(call)
    unsigned.ClearField("etag")
    return hashlib.sha256(unsigned.SerializeToString(deterministic=True)).hexdigest()[:16]


def _fingerprint(method: str, request: svc.CreateCallRequest | svc.RenegotiateCallRequest) -> str:
    body = type(request).FromString(request.SerializeToString())
    body.ClearField("request_id")
    return hashlib.sha256(method.encode() + body.SerializeToString(deterministic=True)).hexdigest()


@dataclass(frozen=True)
class _RequestKey:
    """One request_id's identity: who sent it, to which method, with what body."""

    request_id: str
    principal: str
    method: str
    fingerprint: str

    def record(self, call: str, error: ServiceError | None) -> IdempotencyRecord:
        status = error.to_status().SerializeToString() if error else b""
        return IdempotencyRecord(self.request_id, self.principal, self.method, self.fingerprint, call, status)


def _now() -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(time.time_ns())
    return stamp


def _refusal_event_type(kind: RefusalKind) -> event_pb2.QosEventType:
    return (
        EventType.QOS_EVENT_TYPE_POLICY_FAILURE
        if kind is RefusalKind.POLICY
        else EventType.QOS_EVENT_TYPE_ADMISSION_FAILURE
    )


def _refusal_reason(kind: RefusalKind) -> int:
    return Reason.ERROR_REASON_QOS_POLICY_FAILURE if kind is RefusalKind.POLICY else Reason.ERROR_REASON_QOS_UNAVAILABLE


class CallManager:
    # Replaced by the server with the instruments of its telemetry (tracer/meter providers).
    telemetry: Instruments = Instruments()

    def __init__(self, store: Store, hub: EventHub, providers: ProviderSet) -> None:
        self.store = store
        self.hub = hub
        self.providers = providers
        self._locks = KeyedLocks()

    # -- start-up ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Hand every connected call back to its provider; apply what no longer fits."""
        held: dict[str, list[Restored]] = {}
        for call in await self.store.connected_calls():
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
    async def get(self, name: str) -> Call:
        violations = list(validation.call_name_violations(name))
        if violations:
            raise invalid(violations)
        call = await self.store.get_call(name)
        if call is None:
            raise ServiceError(Reason.ERROR_REASON_CALL_NOT_FOUND, f"no call {name}", metadata={"call": name})
        return call

    # -- make -------------------------------------------------------------------------------
    async def create(self, request: svc.CreateCallRequest, principal: str) -> Call:
        info = self.providers.find(request.call.provider)
        violations = validation.create_violations(
            request,
            info.capabilities if info else None,
            info.provider.validate_provider_specific if info else None,
        )
        if violations:
            raise invalid(violations)
        info = self.providers.get(request.call.provider)
        return await to_completion(
            self._once("CreateCall", request, principal, lambda key: self._create(request, principal, info, key))
        )

    async def _once(
        self,
        method: str,
        request: svc.CreateCallRequest | svc.RenegotiateCallRequest,
        principal: str,
        run: Callable[[_RequestKey | None], Awaitable[Call]],
    ) -> Call:
        """AIP-155: a request_id seen before returns the first outcome instead of running again.
        Repeats are serialized on the request_id so that concurrent ones also run only once."""
        if not request.request_id:
            return await run(None)
        async with self._locks.hold(("request", principal, request.request_id)):
            key = _RequestKey(request.request_id, principal, method, _fingerprint(method, request))
            record = await self.store.find_request(key.request_id, principal)
            if record is None:
                return await run(key)
            if record.method != method or record.fingerprint != key.fingerprint:
                raise ServiceError(
                    Reason.ERROR_REASON_REQUEST_ID_REUSED,
                    f"request_id {key.request_id!r} was already used for a different request",
                    metadata={"request_id": key.request_id, "call": record.call},
                    violations=(FieldViolation("request_id", "already used for a different request"),),
                )
            if record.status:
                raise ReplayedStatus(status_pb2.Status.FromString(record.status))
            return await self.get(record.call)

    async def _create(
        self, request: svc.CreateCallRequest, principal: str, info: ProviderInfo, key: _RequestKey | None
    ) -> Call:
        call_id = request.call_id or names.new_call_id()
        name = names.call_name(call_id)
        async with self._locks.hold(name):
            if await self.store.get_call(name) is not None:
                raise ServiceError(
                    Reason.ERROR_REASON_CALL_ALREADY_EXISTS, f"{name} already exists", metadata={"call": name}
                )
            level = request.call.service_level or Level.SERVICE_LEVEL_NEEDED
            asked = request.call.requested_qos
            offered = best_effort_qos(asked.provider_specific) if level == Level.SERVICE_LEVEL_BEST_EFFORT else asked
            now = _now()
            call = Call(
                name=name,
                destination=request.call.destination,
                provider=names.provider_name(info.id),
                service_level=level,
                requested_qos=asked,
                owner=principal,
                create_time=now,
                update_time=now,
            )
            admission = AdmissionRequest(name, call.destination, level, offered, principal)

            def record(error: ServiceError | None) -> IdempotencyRecord | None:
                return key.record(name, error) if key else None

            try:
                decision = await self.providers.call(info, "admit", info.provider.admit(admission), request=admission)
                if isinstance(decision, Grant):
                    self._check_grant(info, level, offered, decision.qos)
            except ServiceError as error:
                self.telemetry.decision("admit", call.provider, offered, "error", error.reason_name)
                # The provider failed: whatever it may have reserved is released, and the call
                # is recorded as failed so watchers learn of it too.
                await self._release_quietly(info, name)
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
                await self._commit(call, events, record(error))
                raise
            if isinstance(decision, Refusal):
                refusal = refused(
                    _refusal_reason(decision.kind),
                    name,
                    decision.message,
                    decision.counter_offer,
                    {"provider": call.provider},
                )
                self.telemetry.decision("admit", call.provider, offered, "refused", refusal.reason_name)
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
                await self._commit(call, events, record(refusal))
                raise refusal
            call.state = State.STATE_CONNECTED
            call.granted_qos.CopyFrom(decision.qos)
            call.features.set_qos = info.capabilities.renegotiation
            call.etag = etag_of(call)
            event = self._event(call, EventType.QOS_EVENT_TYPE_QOS_GRANTED, request.request_id, current=decision.qos)
            try:
                await self._commit(call, [event], record(None))
            except BaseException:
                await self._release_quietly(info, name)
                raise
            self.telemetry.decision("admit", call.provider, offered, "granted")
            return call

    def _check_grant(self, info: ProviderInfo, level: int, requested: QosSpec, granted: QosSpec) -> None:
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
                metadata={"provider": names.provider_name(info.id)},
            )

    # -- renegotiate ------------------------------------------------------------------------
    async def renegotiate(self, request: svc.RenegotiateCallRequest, principal: str) -> Call:
        violations = validation.renegotiate_violations(request, None)
        if violations:
            raise invalid(violations)
        call = await self.get(request.name)
        info = self.providers.get(call.provider)
        violations = validation.renegotiate_violations(
            request, info.capabilities, info.provider.validate_provider_specific
        )
        if violations:
            raise invalid(violations)
        return await to_completion(
            self._once(
                "RenegotiateCall", request, principal, lambda key: self._renegotiate(request, principal, info, key)
            )
        )

    async def _renegotiate(
        self, request: svc.RenegotiateCallRequest, principal: str, info: ProviderInfo, key: _RequestKey | None
    ) -> Call:
        async with self._locks.hold(request.name):
            call = await self.get(request.name)
            self._check_mutable(call, principal, request.etag)
            if not info.capabilities.renegotiation:
                raise ServiceError(
                    Reason.ERROR_REASON_RENEGOTIATION_UNSUPPORTED,
                    f"provider {info.id} cannot renegotiate QoS",
                    metadata={"provider": call.provider, "call": call.name},
                )
            level = request.service_level or call.service_level
            desired = resolve_no_change(request.qos, call.requested_qos)
            asked = resolve_no_change(request.qos, call.granted_qos)
            offered = best_effort_qos(asked.provider_specific) if level == Level.SERVICE_LEVEL_BEST_EFFORT else asked
            admission = AdmissionRequest(
                call.name, call.destination, level, offered, principal, current=call.granted_qos
            )

            def record(error: ServiceError | None) -> IdempotencyRecord | None:
                return key.record(call.name, error) if key else None

            try:
                decision = await self.providers.call(
                    info, "renegotiate", info.provider.renegotiate(admission), request=admission
                )
                if isinstance(decision, Grant):
                    self._check_grant(info, level, offered, decision.qos)
            except ServiceError as error:
                self.telemetry.decision("renegotiate", call.provider, offered, "error", error.reason_name)
                # "The call continues with the previous QOS": the call itself is not touched.
                failed = self._event(
                    call,
                    EventType.QOS_EVENT_TYPE_RENEGOTIATION_FAILED,
                    request.request_id,
                    previous=call.granted_qos,
                    current=call.granted_qos,
                    reason=error.reason_name,
                    message=error.message,
                )
                await self._commit(call, [failed], record(error))
                raise
            if isinstance(decision, Refusal):
                refusal = refused(
                    _refusal_reason(decision.kind),
                    call.name,
                    decision.message,
                    decision.counter_offer,
                    {"provider": call.provider},
                )
                self.telemetry.decision("renegotiate", call.provider, offered, "refused", refusal.reason_name)
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
                await self._commit(call, [failed], record(refusal))
                raise refusal
            previous = QosSpec()
            previous.CopyFrom(call.granted_qos)
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
            await self._commit(call, [changed], record(None))
            self.telemetry.decision("renegotiate", call.provider, offered, "granted")
            return call

    # -- drop -------------------------------------------------------------------------------
    async def drop(self, request: svc.DropCallRequest, principal: str) -> Call:
        violations = list(validation.call_name_violations(request.name))
        violations += validation.etag_violations(request.etag)
        if violations:
            raise invalid(violations)
        return await to_completion(self._drop(request, principal))

    async def _drop(self, request: svc.DropCallRequest, principal: str) -> Call:
        async with self._locks.hold(request.name):
            call = await self.get(request.name)
            if call.owner != principal:
                raise self._not_owner(call)
            if call.state != State.STATE_CONNECTED:
                return call  # dropping twice is harmless
            self._check_etag(call, request.etag)
            info = self.providers.get(call.provider)
            await self._release_quietly(info, call.name)
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
            await self._commit(call, [event], None)
            return call

    # -- provider-initiated change (ProviderHost) -------------------------------------------
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
            await self._commit(call, events, None)

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

    @staticmethod
    def _disconnect(call: Call, reason: call_pb2.DisconnectReason, when: timestamp_pb2.Timestamp) -> None:
        call.state = State.STATE_DISCONNECTED
        call.disconnect_reason = reason
        call.features.set_qos = False
        call.update_time.CopyFrom(when)
        call.etag = etag_of(call)

    async def _release_quietly(self, info: ProviderInfo, name: str) -> None:
        try:
            await self.providers.call(info, "release", info.provider.release(name), call=name)
        except ServiceError:
            log.error("provider %s could not release %s; its reservation may leak", info.id, name)

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

    async def _commit(self, call: Call, events: Sequence[QosEvent], record: IdempotencyRecord | None) -> None:
        with self.telemetry.store_commit(call.name, len(events)):
            numbered = await self.store.commit(call, events, record)
        self.telemetry.call_committed(call)
        await self.hub.publish(numbered)
