"""Incoming calls: offered on a line, answered (negotiating QoS), rejected or rung out, and the
two legs of a call between two applications living and ending together.

The `Switchboard` is the call manager of a server with lines (`lines.LineManager`). It adds to
`calls.CallManager`:

- **Offer.** A CreateCall whose destination is the address of an open line of the caller's
  tenant is not admitted: it becomes two legs of that tenant, committed together — the caller's
  (OUTGOING, RINGBACK) and the callee's (INCOMING, OFFERING, owned by the line's owner, its
  requested QoS the caller's mirrored). Another tenant's lines are never rung (such a call goes
  out to its provider). A provider advertising `incoming_calls` offers a call from its network
  the same way, as one INCOMING leg (`offer`), on a line of the tenant its settings name
  (`incoming_tenant`). Nothing is reserved yet, and an offer counts nothing toward quotas.
- **Answer.** The line's owner answers with the offer or less (validated against the offer).
  At NEEDED an answer below the request fails the call without asking the provider; otherwise
  the provider admits the call ONCE for both legs, under the caller's leg, in the caller's
  terms (a network call: under its own name, `AdmissionRequest.incoming`). A refusal fails
  both legs as a refused CreateCall fails its call; a grant connects both, each with the grant
  in its own terms. The connected pair counts once toward its tenant's quotas (checked before
  the provider is asked and again in the commit); an answer over quota changes nothing.
- **Reject, no answer.** RejectCall (or DropCall of the offered leg) ends both legs REJECTED;
  an offer that rings for its line's no_answer_timeout, or whose line closes, ends NO_ANSWER.
  The ring timer is the call's `offer_expire_time`, stored with it, so it survives restarts:
  at start an offer whose time has passed (or whose line is closed) is ended before serving.
- **Both legs together.** Renegotiation from either leg changes both (a refusal neither);
  dropping either disconnects both (the dropper NORMAL, the other PEER_DROPPED) and frees the
  one reservation; a provider-initiated change to the pair (reported under the caller's leg)
  reaches both.

Every outcome is settled through `CallManager._settle`, with the other leg among the outcome's
`peers`: both legs, their events and the request_id's record in one store transaction. All the
operations on a pair take the lock of the leg the reservation is held under (the caller's), and
an offer takes its line's lock while it checks the line is open, so a close and an offer are
decided one after the other. Answering, rejecting and ringing out continue the trace of the
offer (`Call.offer_traceparent`), linked to the RPC that caused them: a call's set-up is one
trace.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from google.protobuf import timestamp_pb2

from callqos.server import names, validation
from callqos.server.calls import (
    CallManager,
    Decided,
    Outcome,
    Release,
    Restore,
    _least_reserved,
    _refusal_event_type,
    _refusal_reason,
    etag_of,
)
from callqos.server.errors import Reason, ServiceError, refused
from callqos.server.events import EventHub
from callqos.server.hosting import HostedProvider, HostedProviders
from callqos.server.idempotency import RequestKey
from callqos.server.leases import Clock, LeasePolicy
from callqos.server.lines import LineManager
from callqos.server.locks import to_completion
from callqos.server.providers.base import AdmissionRequest, Grant, IncomingOffer, ProviderChange, Refusal
from callqos.server.qos import best_effort_qos, mirror, qos_shortfalls, resolve_no_change
from callqos.server.security.authz import Permission
from callqos.server.security.identity import Caller
from callqos.server.security.quotas import Quotas
from callqos.server.store.base import Store, Usage, UsageLimits, holds_reservation
from callqos.server.telemetry import Instruments, current_traceparent
from callqos.v1 import call_pb2, event_pb2, flowspec_pb2, line_pb2
from callqos.v1 import callqos_service_pb2 as svc

log = logging.getLogger(__name__)

Call = call_pb2.Call
State = call_pb2.Call.State
Direction = call_pb2.Call.Direction
Level = call_pb2.ServiceLevel
Disconnect = call_pb2.DisconnectReason
EventType = event_pb2.QosEventType
Cause = event_pb2.QosChangeCause
QosSpec = flowspec_pb2.QosSpec
QosEvent = event_pb2.QosEvent
_SWEEP_PAGE = 100


def holder_of(call: Call) -> str:
    """The name the provider holds `call`'s reservation under, and the lock of every operation on
    it: the caller's leg for both legs of a pair, the call itself otherwise."""
    return call.name if holds_reservation(call) else call.peer


def _now() -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(time.time_ns())
    return stamp


def _copy(qos: QosSpec) -> QosSpec:
    copied = QosSpec()
    copied.CopyFrom(qos)
    return copied


class Switchboard(CallManager):
    """The call manager of a server with lines: offers calls to lines, answers, rejects and
    rings them out, and keeps the two legs of a call between two applications together."""

    def __init__(
        self,
        store: Store,
        hub: EventHub,
        providers: HostedProviders,
        telemetry: Instruments,
        lines: LineManager,
        quotas: Quotas | None = None,
        leases: LeasePolicy | None = None,
        lease_clock: Clock | None = None,
    ) -> None:
        super().__init__(store, hub, providers, telemetry, quotas, leases, lease_clock)
        self.lines = lines
        self._rings: dict[str, asyncio.TimerHandle] = {}  # offered call → its no-answer timer
        self._ringing_out: set[asyncio.Task[None]] = set()

    # -- start-up and shutdown --------------------------------------------------------------
    async def start(self) -> None:
        """Restore connected calls (one reservation per pair), then the offers: an offer whose
        ring time passed while the server was down, or whose line closed, is ended NO_ANSWER
        now; the others ring on until their offer_expire_time."""
        await super().start()
        for call in await self.store.calls_in_state(State.STATE_OFFERING):
            line = await self.store.get_line(call.line)
            if line is None or line.state != line_pb2.Line.State.STATE_OPEN:
                await self._ring_out(call.name, "its line was closed", force=True)
            elif self._expired(call):
                await self._ring_out(call.name, "it rang out while the server was down")
            else:
                self._ring(call)

    async def stop(self) -> None:
        """Stop the lease and ring timers (calls keep their lease_expire_time and
        offer_expire_time, which the next start honours) and let ring-outs already running finish."""
        await super().stop()
        for handle in self._rings.values():
            handle.cancel()
        self._rings.clear()
        if self._ringing_out:
            await asyncio.gather(*self._ringing_out, return_exceptions=True)

    # -- offer --------------------------------------------------------------------------------
    async def _create(
        self, request: svc.CreateCallRequest, caller: Caller, info: HostedProvider, key: RequestKey | None
    ) -> Call:
        """CreateCall: a call to the address of an open line of the caller's tenant is offered;
        any other goes out to its provider as before. Another tenant's lines are not looked at:
        a caller can neither ring nor learn of them (conformance/SPEC.md SEC-4)."""
        line = await self.lines.open_line(request.call.destination, caller.tenant)
        if line is None:
            return await super()._create(request, caller, info, key)
        async with self.lines.hold(line.name):
            line = await self.lines.stored(line.name)
            if line.state != line_pb2.Line.State.STATE_OPEN:  # closed in the meantime
                return await super()._create(request, caller, info, key)
            return await self._offer_pair(request, caller, info, key, line)

    async def _offer_pair(
        self,
        request: svc.CreateCallRequest,
        caller: Caller,
        info: HostedProvider,
        key: RequestKey | None,
        line: line_pb2.Line,
    ) -> Call:
        principal = caller.principal
        caller_name = names.call_name(request.call_id or names.new_call_id())
        callee_name = names.call_name(names.new_call_id())
        async with self._locks.hold(caller_name):
            existing = await self.store.get_call(caller_name)
            if existing is not None:
                raise ServiceError(
                    Reason.ERROR_REASON_CALL_ALREADY_EXISTS,
                    f"{caller_name} already exists",
                    metadata={"call": caller_name},
                    denial=""
                    if existing.tenant == caller.tenant
                    else f"{caller_name} is held by tenant {existing.tenant}",
                )
            now = _now()
            expires = self._expiry(now, line)
            level = request.call.service_level or Level.SERVICE_LEVEL_NEEDED
            traceparent = current_traceparent()
            calling = Call(
                name=caller_name,
                direction=Direction.DIRECTION_OUTGOING,
                destination=request.call.destination,
                provider=info.name,
                state=State.STATE_RINGBACK,
                service_level=level,
                requested_qos=request.call.requested_qos,
                owner=principal,
                tenant=caller.tenant,
                peer=callee_name,
                offer_expire_time=expires,
                offer_traceparent=traceparent,
                create_time=now,
                update_time=now,
            )
            callee = Call(
                name=callee_name,
                direction=Direction.DIRECTION_INCOMING,
                destination=line.address,
                line=line.name,
                provider=info.name,
                state=State.STATE_OFFERING,
                service_level=level,
                requested_qos=mirror(request.call.requested_qos),
                owner=line.owner,
                tenant=line.tenant,
                peer=caller_name,
                caller_id=principal,
                offer_expire_time=expires,
                offer_traceparent=traceparent,
                create_time=now,
                update_time=now,
            )
            callee.features.answer = True
            # The caller's lease governs the pair from now on; the answering leg shows it.
            self._lease(calling, self._asked_lease(request))
            if calling.HasField("lease_duration"):
                self._copy_lease(calling, callee)
            calling.etag, callee.etag = etag_of(calling), etag_of(callee)
            events = [
                self._event(callee, EventType.QOS_EVENT_TYPE_CALL_OFFERED, request.request_id),
                self._event(calling, EventType.QOS_EVENT_TYPE_CALL_RINGBACK, request.request_id),
            ]
            offered = await self._settle(
                Outcome(
                    call=calling,
                    peers=[callee],
                    events=events,
                    failure=None,
                    key=key,
                    decided=None,
                    release=None,
                    restore=None,
                )
            )
            self.telemetry.incoming_call("offered", info.name)
            self._ring(callee)
            return offered

    async def offer(self, provider: str, offer: IncomingOffer) -> str | None:
        """A provider offers a call from its network (`ProviderHost.offer_call`)."""
        info = self.providers.get(provider)
        if not info.capabilities.incoming_calls:
            raise ValueError(f"provider {info.id} does not advertise incoming_calls; it cannot offer calls")
        problems = validation.offer_violations(offer, info.capabilities)
        if problems:
            raise ValueError("invalid offer: " + "; ".join(f"{v.field}: {v.description}" for v in problems))
        with self.telemetry.background("callqos.provider.offer", {"callqos.provider": info.name}):
            return await to_completion(self._offer_from_network(info, offer))

    async def _offer_from_network(self, info: HostedProvider, offer: IncomingOffer) -> str | None:
        # The provider's network calls ring the lines of the tenant its settings name.
        line = await self.lines.open_line(offer.destination, info.incoming_tenant)
        if line is None:
            return None
        async with self.lines.hold(line.name):
            line = await self.lines.stored(line.name)
            if line.state != line_pb2.Line.State.STATE_OPEN:
                return None
            name = names.call_name(names.new_call_id())
            async with self._locks.hold(name):
                now = _now()
                callee = Call(
                    name=name,
                    direction=Direction.DIRECTION_INCOMING,
                    destination=line.address,
                    line=line.name,
                    provider=info.name,
                    state=State.STATE_OFFERING,
                    service_level=offer.level,  # type: ignore[arg-type]  # validated: a ServiceLevel
                    requested_qos=mirror(validation.offered_qos(offer)),
                    owner=line.owner,
                    tenant=line.tenant,
                    caller_id=offer.caller_id,
                    offer_expire_time=self._expiry(now, line),
                    offer_traceparent=current_traceparent(),
                    create_time=now,
                    update_time=now,
                )
                callee.features.answer = True
                callee.etag = etag_of(callee)
                event = self._event(callee, EventType.QOS_EVENT_TYPE_CALL_OFFERED, "")
                await self._settle(
                    Outcome(
                        call=callee,
                        peers=(),
                        events=[event],
                        failure=None,
                        key=None,
                        decided=None,
                        release=None,
                        restore=None,
                    )
                )
                self.telemetry.incoming_call("offered", info.name)
                self._ring(callee)
                return name

    # -- answer -------------------------------------------------------------------------------
    async def answer(self, request: svc.AnswerCallRequest, caller: Caller) -> Call:
        """Answer the offered call `request` names (validated, also against the offer)."""
        return await to_completion(
            self._requests.once(
                "AnswerCall",
                request,
                caller.principal,
                lambda key: self._answer(request, caller, key),
                lambda name: self.get(name, caller),
                tenant=caller.tenant,
            )
        )

    async def _answer(self, request: svc.AnswerCallRequest, caller: Caller, key: RequestKey | None) -> Call:
        async with self._locks.hold(holder_of(await self.get(request.name, caller))):
            leg = await self.get(request.name, caller)
            await self._check_offering(leg, caller.principal, request.etag, "answer")
            peer = await self._stored(leg.peer) if leg.peer else None
            info = self.providers.get(leg.provider)
            answered = (
                resolve_no_change(request.qos, leg.requested_qos) if request.HasField("qos") else leg.requested_qos
            )
            with self.telemetry.continued(leg.offer_traceparent, "callqos.answer", {"callqos.call": leg.name}):
                return await self._connect(leg, peer, _copy(answered), info, request.request_id, key)

    async def _connect(
        self,
        leg: Call,
        peer: Call | None,
        answered: QosSpec,
        info: HostedProvider,
        request_id: str,
        key: RequestKey | None,
    ) -> Call:
        """Negotiate `leg`'s answer: the level's rule first, then the provider, once for both."""
        level = leg.service_level
        now = _now()
        if level == Level.SERVICE_LEVEL_NEEDED:
            short = qos_shortfalls(answered, leg.requested_qos)
            if short:
                # The caller needs what it asked for: a lesser answer fails the call as a refused
                # CreateCall fails its call. The callee's counter-offer is the offer (what a
                # connecting answer needed); the caller's is the answer (what it could have).
                return await self._refuse(
                    leg,
                    peer,
                    info,
                    reason=Reason.ERROR_REASON_QOS_UNAVAILABLE,
                    kind=EventType.QOS_EVENT_TYPE_ADMISSION_FAILURE,
                    message="the answer falls short of the caller's NEEDED request: " + "; ".join(short),
                    leg_counter=leg.requested_qos,
                    peer_counter=mirror(answered),
                    request_id=request_id,
                    key=key,
                    decided=None,
                    now=now,
                )
        holder = peer if peer is not None else leg
        # The provider sees one call: the caller's, in the caller's terms (a network call: the
        # answering leg itself, which it offered).
        ours = (lambda qos: mirror(qos)) if peer is not None else _copy
        asked = best_effort_qos(answered.provider_specific) if level == Level.SERVICE_LEVEL_BEST_EFFORT else answered
        offered = ours(asked)
        # An offer counted nothing; connected, the pair counts once toward its tenant's quotas
        # (held under the holder, in its terms). Over quota, the answer fails and the call rings
        # on: nothing changed, and it may be answered once a call of the tenant ends.
        limits = self._limits(holder.tenant)
        if limits is not None:
            await self._check_quota(limits, Usage(1, *_least_reserved(level, offered)))
        admission = AdmissionRequest(
            holder.name, holder.destination, level, offered, holder.owner, incoming=peer is None
        )
        decided = Decided("admit", offered)
        decision = await self._decide(info, "admit", admission, level, "qos")  # AnswerCallRequest.qos
        if isinstance(decision, ServiceError):
            error = decision
            legs = [each for each in (leg, peer) if each is not None]
            events: list[QosEvent] = []
            for each in legs:
                self._end(each, Disconnect.DISCONNECT_REASON_PROVIDER_ERROR, now)
                events.append(
                    self._event(
                        each,
                        EventType.QOS_EVENT_TYPE_GENERIC_ERROR,
                        request_id,
                        reason=error.reason_name,
                        message=error.message,
                    )
                )
                events.append(
                    self._event(
                        each,
                        EventType.QOS_EVENT_TYPE_CALL_DISCONNECTED,
                        request_id,
                        disconnect=Disconnect.DISCONNECT_REASON_PROVIDER_ERROR,
                    )
                )
            outcome = Outcome(
                call=leg,
                peers=[peer] if peer else (),
                events=events,
                failure=error,
                key=key,
                decided=decided,
                release=Release.always(info, holder=holder.name),
                restore=None,
            )
            return await self._settled(outcome, lambda: self.telemetry.incoming_call("failed", info.name))
        if isinstance(decision, Refusal):
            counter = decision.counter_offer
            return await self._refuse(
                leg,
                peer,
                info,
                reason=_refusal_reason(decision.kind),
                kind=_refusal_event_type(decision.kind),
                message=decision.message,
                leg_counter=ours(counter) if counter is not None else None,
                peer_counter=counter,
                request_id=request_id,
                key=key,
                decided=decided,
                now=now,
                provider_refused=True,
            )
        granted = decision.qos
        grants: list[tuple[Call | None, QosSpec]] = [(leg, ours(granted)), (peer, granted)]
        for connected, mine in grants:
            if connected is None:
                continue
            connected.state = State.STATE_CONNECTED
            connected.granted_qos.CopyFrom(mine)
            connected.features.set_qos = info.capabilities.renegotiation
            connected.features.answer = False
            connected.ClearField("offer_expire_time")
            connected.update_time.CopyFrom(now)
            connected.etag = etag_of(connected)
        events = [self._event(leg, EventType.QOS_EVENT_TYPE_QOS_GRANTED, request_id, current=leg.granted_qos)]
        if peer is not None:
            events.append(self._event(peer, EventType.QOS_EVENT_TYPE_QOS_GRANTED, request_id, current=granted))
        outcome = Outcome(
            call=leg,
            peers=[peer] if peer else (),
            events=events,
            failure=None,
            key=key,
            decided=decided,
            release=Release.if_commit_fails(info, holder=holder.name),
            restore=None,
        )
        # Over quota after all (a concurrent admission of the tenant committed first): the store
        # refuses the commit, the grant is released, and the call rings on.
        return await self._settled(outcome, lambda: self.telemetry.incoming_call("answered", info.name), limits)

    async def _refuse(
        self,
        leg: Call,
        peer: Call | None,
        info: HostedProvider,
        *,
        reason: int,
        kind: event_pb2.QosEventType,
        message: str,
        leg_counter: QosSpec | None,
        peer_counter: QosSpec | None,
        request_id: str,
        key: RequestKey | None,
        decided: Decided | None,
        now: timestamp_pb2.Timestamp,
        provider_refused: bool = False,
    ) -> Call:
        """Both legs fail as a refused CreateCall fails its call (EVENT-2): the refusal event
        with each leg's counter-offer, then CALL_DISCONNECTED(QOS_UNAVAILABLE). A refusal holds
        nothing, so nothing is released; a network offer the provider was not asked about is told
        it ended."""
        refusal = refused(reason, leg.name, message, leg_counter, {"provider": leg.provider})
        events: list[QosEvent] = []
        for each, counter in ((leg, leg_counter), (peer, peer_counter)):
            if each is None:
                continue
            self._end(each, Disconnect.DISCONNECT_REASON_QOS_UNAVAILABLE, now)
            events.append(
                self._event(each, kind, request_id, reason=refusal.reason_name, message=message, counter_offer=counter)
            )
            events.append(
                self._event(
                    each,
                    EventType.QOS_EVENT_TYPE_CALL_DISCONNECTED,
                    request_id,
                    disconnect=Disconnect.DISCONNECT_REASON_QOS_UNAVAILABLE,
                    reason=refusal.reason_name,
                )
            )
        outcome = Outcome(
            call=leg,
            peers=[peer] if peer else (),
            events=events,
            failure=refusal,
            key=key,
            decided=decided,
            release=None,
            restore=None,
        )

        def after() -> None:
            self.telemetry.incoming_call("refused", info.name)
            if peer is None and not provider_refused:
                self._spawn(self.providers.offer_ended(info, leg.name, Disconnect.DISCONNECT_REASON_QOS_UNAVAILABLE))

        return await self._settled(outcome, after)

    # -- reject, ring out ---------------------------------------------------------------------
    async def reject(self, request: svc.RejectCallRequest, caller: Caller) -> Call:
        """Reject the offered call `request` names (validated)."""
        return await to_completion(
            self._requests.once(
                "RejectCall",
                request,
                caller.principal,
                lambda key: self._reject(request.name, request.etag, caller, request.request_id, key),
                lambda name: self.get(name, caller),
                tenant=caller.tenant,
            )
        )

    async def _reject(self, name: str, etag: str, caller: Caller, request_id: str, key: RequestKey | None) -> Call:
        async with self._locks.hold(holder_of(await self.get(name, caller))):
            leg = await self.get(name, caller)
            if leg.owner == caller.principal and leg.state == State.STATE_DISCONNECTED:
                return leg  # rejecting a call that has ended is harmless, like dropping it twice
            await self._check_offering(leg, caller.principal, etag, "reject")
            with self.telemetry.continued(leg.offer_traceparent, "callqos.reject", {"callqos.call": leg.name}):
                return await self._end_offer(leg, Disconnect.DISCONNECT_REASON_REJECTED, request_id, key, "rejected")

    async def _end_offer(
        self,
        leg: Call,
        reason: call_pb2.DisconnectReason,
        request_id: str,
        key: RequestKey | None,
        counted_as: str,
        message: str = "",
        peer_reason: call_pb2.DisconnectReason | None = None,
    ) -> Call:
        """End a call that was never answered (OFFERING leg, or the RINGBACK leg of its pair):
        both legs DISCONNECTED with `reason` (the other leg with `peer_reason`, if given).
        Nothing was reserved; the provider of a network offer is told it ended."""
        peer = await self._stored(leg.peer) if leg.peer else None
        info = self.providers.get(leg.provider)
        now = _now()
        events: list[QosEvent] = []
        for each, why in ((leg, reason), (peer, peer_reason or reason)):
            if each is None:
                continue
            self._end(each, why, now)
            events.append(
                self._event(
                    each, EventType.QOS_EVENT_TYPE_CALL_DISCONNECTED, request_id, disconnect=why, message=message
                )
            )
        outcome = Outcome(
            call=leg,
            peers=[peer] if peer else (),
            events=events,
            failure=None,
            key=key,
            decided=None,
            release=None,
            restore=None,
        )

        def after() -> None:
            self.telemetry.incoming_call(counted_as, info.name)
            if peer is None and counted_as != "canceled":
                self._spawn(self.providers.offer_ended(info, leg.name, reason))

        return await self._settled(outcome, after)

    def _ring(self, call: Call) -> None:
        """Ring `call` (OFFERING) until its offer_expire_time, then end it NO_ANSWER."""
        self._stop_ringing(call.name)
        delay = max(0.0, call.offer_expire_time.ToNanoseconds() / 1e9 - time.time())
        loop = asyncio.get_running_loop()
        self._rings[call.name] = loop.call_later(delay, self._rang, call.name)

    def _rang(self, name: str) -> None:
        self._rings.pop(name, None)
        self._spawn(self._ring_out(name, "nobody answered"))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` in the background; shutdown waits for it."""
        task = asyncio.ensure_future(work)
        self._ringing_out.add(task)
        task.add_done_callback(self._ringing_out.discard)

    def _stop_ringing(self, name: str) -> None:
        handle = self._rings.pop(name, None)
        if handle is not None:
            handle.cancel()

    async def ring_out(self, name: str, message: str) -> None:
        """End the offered call `name` NO_ANSWER if its time is up (the leading replica does this
        for the offers of a replica that died, whose timers died with it). Never raises."""
        await self._ring_out(name, message)

    async def _ring_out(self, name: str, message: str, *, force: bool = False) -> None:
        """End the offered call `name` NO_ANSWER, if it is still offering and its time is up (or
        `force`: its line closed). Never raises: it runs on its own."""
        try:
            first = await self.store.get_call(name)
            if first is None:
                return
            async with self._locks.hold(holder_of(first)):
                leg = await self._stored(name)
                if leg.state != State.STATE_OFFERING:
                    return
                if not force and not self._expired(leg):
                    self._ring(leg)  # the clock went back, or the timer fired early: ring on
                    return
                with self.telemetry.continued(leg.offer_traceparent, "callqos.no_answer", {"callqos.call": name}):
                    await self._end_offer(leg, Disconnect.DISCONNECT_REASON_NO_ANSWER, "", None, "no_answer", message)
        except Exception:
            log.exception("could not ring out %s; it will be ended at the next start", name)

    async def _end_offers_on(self, line: line_pb2.Line) -> None:
        """End every call still offered on the closed line `line` NO_ANSWER (its calls are of
        its tenant)."""
        before = 0
        while True:
            page = await self.store.list_calls(
                tenant=line.tenant,
                state=State.STATE_OFFERING,
                provider=None,
                line=line.name,
                limit=_SWEEP_PAGE,
                before=before,
            )
            for call in page.calls:
                await self._ring_out(call.name, f"{line.name} was closed", force=True)
            if not page.next_cursor:
                return
            before = page.next_cursor

    # -- lines --------------------------------------------------------------------------------
    async def close_line(self, request: svc.CloseLineRequest, caller: Caller) -> line_pb2.Line:
        """Close the line `request` names (validated), then end the calls still ringing on it.
        (A close interrupted between the two is finished at the next start.)"""
        return await to_completion(self._close_line(request, caller))

    async def _close_line(self, request: svc.CloseLineRequest, caller: Caller) -> line_pb2.Line:
        line = await self.lines.close(request, caller)
        await self._end_offers_on(line)
        return line

    # -- drop, renegotiate and provider changes of a pair --------------------------------------
    async def _drop(self, request: svc.DropCallRequest, caller: Caller) -> Call:
        first = await self.get(request.name, caller)
        if not first.peer and first.state != State.STATE_OFFERING:
            return await super()._drop(request, caller)  # a call with one leg
        async with self._locks.hold(holder_of(first)):
            leg = await self.get(request.name, caller)
            if leg.owner != caller.principal and not caller.can(Permission.DROP_ANY_CALL):
                raise self._not_owner(leg)
            if leg.state == State.STATE_DISCONNECTED:
                return leg  # dropping twice is harmless
            self._check_etag(leg, request.etag)
            if leg.state == State.STATE_OFFERING:
                # TAPI rejects an offered call with lineDrop.
                with self.telemetry.continued(leg.offer_traceparent, "callqos.reject", {"callqos.call": leg.name}):
                    return await self._end_offer(leg, Disconnect.DISCONNECT_REASON_REJECTED, "", None, "rejected")
            if leg.state == State.STATE_RINGBACK:
                # The caller gives up before an answer.
                with self.telemetry.continued(leg.offer_traceparent, "callqos.cancel", {"callqos.call": leg.name}):
                    return await self._end_offer(
                        leg,
                        Disconnect.DISCONNECT_REASON_NORMAL,
                        "",
                        None,
                        "canceled",
                        peer_reason=Disconnect.DISCONNECT_REASON_PEER_DROPPED,
                    )
            return await self._hang_up(leg)

    async def _hang_up(self, leg: Call) -> Call:
        """Drop a connected call with (or without) a peer: `leg` NORMAL, its peer PEER_DROPPED,
        each with its last grant as previous_qos; the one reservation released once that is
        recorded."""
        peer = await self._stored(leg.peer) if leg.peer else None
        info = self.providers.get(leg.provider)
        now = _now()
        events: list[QosEvent] = []
        for each, why in (
            (leg, Disconnect.DISCONNECT_REASON_NORMAL),
            (peer, Disconnect.DISCONNECT_REASON_PEER_DROPPED),
        ):
            if each is None:
                continue
            previous = _copy(each.granted_qos)
            self._end(each, why, now)
            events.append(
                self._event(each, EventType.QOS_EVENT_TYPE_CALL_DISCONNECTED, "", previous=previous, disconnect=why)
            )
        return await self._settle(
            Outcome(
                call=leg,
                peers=[peer] if peer else (),
                events=events,
                failure=None,
                key=None,
                decided=None,
                release=Release.after_commit(info, holder=holder_of(leg)),
                restore=None,
            )
        )

    async def _renegotiate(
        self, request: svc.RenegotiateCallRequest, caller: Caller, info: HostedProvider, key: RequestKey | None
    ) -> Call:
        first = await self.get(request.name, caller)
        if not first.peer:
            return await super()._renegotiate(request, caller, info, key)
        principal = caller.principal
        async with self._locks.hold(holder_of(first)):
            leg = await self.get(request.name, caller)
            self._check_mutable(leg, principal, request.etag)
            if not info.capabilities.renegotiation:
                raise ServiceError(
                    Reason.ERROR_REASON_RENEGOTIATION_UNSUPPORTED,
                    f"provider {info.id} cannot renegotiate QoS",
                    metadata={"provider": leg.provider, "call": leg.name},
                )
            peer = await self._stored(leg.peer)
            holder, other = (leg, peer) if holds_reservation(leg) else (peer, leg)
            # The request is in `leg`'s terms; the provider's reservation in the holder's.
            ours = _copy if holder is leg else mirror
            level = request.service_level or leg.service_level
            desired = self._desired(request.qos, leg, level)
            if self._unchanged(leg, level, desired):
                # Nothing to change (SPEC.md SETQOS-8), on either leg: both as they are, no
                # provider call, no event; recorded for the request_id like any outcome.
                return await self._settle(
                    Outcome(
                        call=leg, peers=(), events=[], failure=None, key=key, decided=None, release=None, restore=None
                    )
                )
            asked = resolve_no_change(request.qos, leg.granted_qos)
            if level == Level.SERVICE_LEVEL_BEST_EFFORT:
                asked = best_effort_qos(asked.provider_specific)
            offered = ours(asked)
            # The pair's one reservation counts toward its tenant's quotas, in the holder's terms.
            limits = self._limits(holder.tenant)
            if limits is not None:
                least = _least_reserved(level, offered)
                held = _least_reserved(Level.SERVICE_LEVEL_NEEDED, holder.granted_qos)
                await self._check_quota(limits, Usage(0, *(max(0, a - b) for a, b in zip(least, held, strict=True))))
            admission = AdmissionRequest(
                holder.name, holder.destination, level, offered, principal, current=holder.granted_qos
            )
            decided = Decided("renegotiate", offered)
            decision = await self._ask_to_renegotiate(info, leg, admission, level, ours)
            if not isinstance(decision, Grant):
                return await self._renegotiation_failed(leg, request.request_id, decision, key, decided)
            now = _now()
            holder_requested = ours(desired)
            # If the new grant cannot be recorded (the storage failed, or the tenant filled its
            # quota meanwhile), both legs keep their previous QoS: the provider is put back to it.
            back = AdmissionRequest(
                holder.name,
                holder.destination,
                holder.service_level,
                _copy(holder.granted_qos),
                principal,
                current=decision.qos,
            )
            events: list[QosEvent] = []
            for each, granted, requested in (
                (holder, decision.qos, holder_requested),
                (other, mirror(decision.qos), mirror(holder_requested)),
            ):
                previous = _copy(each.granted_qos)
                each.service_level = level
                each.requested_qos.CopyFrom(requested)
                each.granted_qos.CopyFrom(granted)
                each.update_time.CopyFrom(now)
                each.etag = etag_of(each)
                events.append(
                    self._event(
                        each,
                        EventType.QOS_EVENT_TYPE_QOS_CHANGED,
                        request.request_id,
                        previous=previous,
                        current=granted,
                        cause=Cause.QOS_CHANGE_CAUSE_RENEGOTIATED,
                    )
                )
            if holder is not leg:
                events.reverse()  # the renegotiating leg's event first
            return await self._settle(
                Outcome(
                    call=leg,
                    peers=[peer],
                    events=events,
                    failure=None,
                    key=key,
                    decided=decided,
                    release=None,
                    restore=Restore(info, back),
                ),
                limits,
            )

    async def _apply_change(self, change: ProviderChange) -> QosSpec | None:
        """A provider's change (the call's lock held): to a pair, under its caller's leg, it
        changes both legs (`CallManager._apply_change`); a call from the provider's network still
        offered whose caller gave up (`qos=None`) ends PEER_DROPPED."""
        call = await self.store.get_call(change.call)
        if call is not None and not holds_reservation(call):
            log.warning(
                "ignoring provider change for %s: its reservation is held under %s, the caller's leg",
                change.call,
                call.peer,
            )
            return None
        if call is not None and call.state == State.STATE_OFFERING and not call.peer:
            if change.qos is None:  # the caller on the provider's network gave up
                await self._end_offer(
                    call, Disconnect.DISCONNECT_REASON_PEER_DROPPED, "", None, "canceled", change.message
                )
            return None
        return await super()._apply_change(change)

    async def _end_lease(self, call: Call, failure: ServiceError | None, key: RequestKey | None) -> Call:
        """A lease that ends while its pair still rings ends the offer too: the answering leg rings
        no more, and the offer counts as canceled (its caller gave up)."""
        ringing = call.peer if call.state == State.STATE_RINGBACK else ""

        def after() -> None:
            if ringing:
                self._stop_ringing(ringing)
                self.telemetry.incoming_call("canceled", call.provider)

        try:
            ended = await super()._end_lease(call, failure, key)
        except ServiceError as raised:
            if raised is failure:
                after()
            raise
        after()
        return ended

    # -- helpers ------------------------------------------------------------------------------
    async def _check_offering(self, leg: Call, principal: str, etag: str, verb: str) -> None:
        """`leg` may be answered or rejected by `principal` now: its owner, the etag current, an
        incoming call still offering on an open line."""
        if leg.owner != principal:
            raise ServiceError(
                Reason.ERROR_REASON_NOT_OWNER,
                f"only the owner of {leg.name} may {verb} it",
                metadata={"call": leg.name},
            )
        self._check_etag(leg, etag)
        if leg.state != State.STATE_OFFERING or leg.direction != Direction.DIRECTION_INCOMING:
            raise ServiceError(
                Reason.ERROR_REASON_CALL_NOT_OFFERING,
                f"{leg.name} is {State.Name(leg.state).removeprefix('STATE_')}; only an offered incoming call "
                f"can be {'answered' if verb == 'answer' else 'rejected'}",
                metadata={"call": leg.name, "state": State.Name(leg.state)},
            )
        line = await self.store.get_line(leg.line)
        if line is None or line.state != line_pb2.Line.State.STATE_OPEN:
            raise ServiceError(
                Reason.ERROR_REASON_CALL_NOT_OFFERING,
                f"{leg.name} was offered on {leg.line}, which is closed; the call is being ended",
                metadata={"call": leg.name, "line": leg.line},
            )

    async def _settled(self, outcome: Outcome, after: Callable[[], None], limits: UsageLimits | None = None) -> Call:
        """`_settle(outcome, limits)`, then `after()` once the outcome is recorded — whether it
        answers with the call or raises the failure it recorded (not when recording itself
        failed, or the store refused it over a quota)."""
        try:
            call = await self._settle(outcome, limits)
        except ServiceError as raised:
            if raised is outcome.failure:
                self._rung(outcome)
                after()
            raise
        self._rung(outcome)
        after()
        return call

    def _rung(self, outcome: Outcome) -> None:
        """A call that is no longer offering rings no more."""
        for call in (outcome.call, *outcome.peers):
            if call.state != State.STATE_OFFERING:
                self._stop_ringing(call.name)

    def _expiry(self, now: timestamp_pb2.Timestamp, line: line_pb2.Line) -> timestamp_pb2.Timestamp:
        expires = timestamp_pb2.Timestamp()
        expires.FromNanoseconds(now.ToNanoseconds() + line.no_answer_timeout.ToNanoseconds())
        return expires

    @staticmethod
    def _expired(call: Call) -> bool:
        return time.time_ns() >= call.offer_expire_time.ToNanoseconds()
