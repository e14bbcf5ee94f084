"""The provider end of `callqos.provider.v1` for Python: any in-process `Provider`, served over
the protocol, so that the same class runs inside the server or in a process of its own.

The wrapped provider sees exactly the contract it sees in-process (`start` once with the calls
to re-take, `admit`, `renegotiate`, `release`, links, `host.report_change`); what the protocol
adds is kept here, around it:

- a ledger of the calls the provider holds, by the host's requests and the provider's own
  changes: what ListReservations answers (with the rates of the provider's own books, when it
  lists its reservations) and what a repeated Restore is compared with;
- idempotency: a repeated Admit or Renegotiate (same call, same request_id) gets the first
  answer again and reaches the provider once; a Release cancels an Admit still being decided;
- the change journal: every change the provider reports is numbered and kept (the newest per
  call) until the host acknowledges it, and replayed to a host that reconnects;
- deadlines: each provider call is cut to the gRPC deadline of the request that caused it;
- the Decide stream: Admit, Renegotiate and Release arriving on one stream, each answered by the
  same method as its RPC, under its own deadline and in its caller's trace;
- calls from the provider's network (capability `incoming_calls`): each `host.offer_call` is an
  offer on WatchOffers, numbered, sent again to a host that reconnects until the host answers it;
  OfferEnded is the provider's `offer_ended`;
- containment, as in the server: whatever the provider raises fails that request only, and a
  provider whose settings say `threaded = true` runs on an event loop of its own in a thread of
  its own (its blocking delays its own calls, not the protocol, nor health checks).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import NoReturn, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from opentelemetry import propagate, trace

from callqos.provider.v1 import provider_service_pb2 as pb
from callqos.provider.v1 import provider_service_pb2_grpc as pb_grpc
from callqos.server import names
from callqos.server.containment import HostOnLoop, ProviderThread
from callqos.server.providers.base import (
    AdmissionRequest,
    Decision,
    Grant,
    IncomingOffer,
    Provider,
    ProviderChange,
    ProviderHost,
    Restored,
    SharedLedger,
)
from callqos.server.remote import protocol
from callqos.v1 import errors_pb2, flowspec_pb2

log = logging.getLogger("callqos.provider.kit")
T = TypeVar("T")
QosSpec = flowspec_pb2.QosSpec

# Answers remembered for repeats (by call and request_id). A host repeats a request only while
# it is deciding it, so a bounded memory of the latest is enough.
ANSWERS_REMEMBERED = 4096
# How long `offer_call` waits for the host's answer to an offer (a host away that long is not
# coming back soon): then the call is not offered, and the network is told the callee is not
# available.
OFFER_WAIT_SECONDS = 10.0
# How long a stopping provider gets to finish in-flight requests, and then to stop.
STOP_GRACE_SECONDS = 1.0


@dataclass
class Held:
    """A call the provider holds, as the ledger knows it."""

    destination: str
    level: int
    qos: QosSpec


class Journal:
    """The provider's own changes, numbered from 1, kept until the host acknowledges them. Only
    the newest change of a call is kept: it says all the host needs (the QoS now, or dropped),
    so a host away for long finds at most one change per call."""

    def __init__(self) -> None:
        self.sequence = 0
        self._entries: dict[int, pb.Change] = {}
        self._by_call: dict[str, int] = {}
        self._grew = asyncio.Event()

    def append(self, change: ProviderChange) -> pb.Change:
        self.sequence += 1
        replaced = self._by_call.pop(change.call, None)
        if replaced is not None:
            del self._entries[replaced]
        entry = protocol.change_message(change, self.sequence)
        self._entries[self.sequence] = entry
        self._by_call[change.call] = self.sequence
        self._grew.set()
        self._grew = asyncio.Event()
        return entry

    def after(self, sequence: int) -> list[pb.Change]:
        return [entry for number, entry in sorted(self._entries.items()) if number > sequence]

    def latest(self, call: str) -> pb.Change | None:
        number = self._by_call.get(call)
        return None if number is None else self._entries[number]

    def acknowledge(self, sequence: int) -> None:
        for number in [n for n in self._entries if n <= sequence]:
            entry = self._entries.pop(number)
            if self._by_call.get(entry.call) == number:
                del self._by_call[entry.call]

    @property
    def next_append(self) -> asyncio.Event:
        """Set by the next append (take it before reading, so that no append falls between)."""
        return self._grew


@dataclass
class Deciding:
    """An Admit or Renegotiate the provider is deciding, in the task of its request."""

    task: asyncio.Task[object]
    released: bool = False  # a Release cancelled it
    done: asyncio.Event = field(default_factory=asyncio.Event)


class ProviderServicer(pb_grpc.ProviderServiceServicer):
    """`callqos.provider.v1.ProviderService` over one in-process provider. It is also the
    provider's `ProviderHost`: what the provider reports goes into the journal."""

    # No ledger shared with other replicas: a provider in its own process keeps its books there.
    ledger: SharedLedger | None = None

    def __init__(
        self,
        provider: Provider,
        implementation: str,
        vendor_version: str = "",
        decide_stream: bool = True,
        threaded: bool = False,
    ) -> None:
        self.provider = provider
        # The provider's own event loop thread, when its settings say `threaded = true`.
        self.thread = ProviderThread(implementation) if threaded else None
        self.decide_stream = decide_stream  # serve Decide (and say so): the host's cheaper way to ask
        self.implementation = implementation
        self.vendor_version = vendor_version or implementation
        self.instance_id = str(uuid.uuid4())
        self.capabilities = provider.capabilities()  # read once: they must not change
        self.journal = Journal()
        self.held: dict[str, Held] = {}
        self.started = False
        self._answers: OrderedDict[tuple[str, str], pb.AdmitResponse | pb.RenegotiateResponse] = OrderedDict()
        self._deciding: dict[str, Deciding] = {}
        self._restoring = asyncio.Lock()
        # Set by the kit's server when this process records spans: a span per request on Decide.
        self.tracer: trace.Tracer | None = None
        # Offers waiting for the host's answer (offer_id → the offer, its answer), the last
        # offer_id given, the newest WatchOffers stream, and the offers told to have ended.
        self._offering: dict[int, tuple[pb.IncomingOffer, asyncio.Future[pb.WatchOffersRequest]]] = {}
        self._offer_sequence = 0
        self._offers_grew = asyncio.Event()
        self._offer_streams = 0
        self._ended: OrderedDict[str, None] = OrderedDict()

    # -- the provider's host ------------------------------------------------------------------
    async def report_change(self, change: ProviderChange) -> None:
        """The provider changed a call on its own: note it in the ledger, journal it for the host."""
        self._note(change)
        self.journal.append(change)

    def _note(self, change: ProviderChange) -> None:
        if change.qos is None:
            self.held.pop(change.call, None)
        elif change.call in self.held:
            self.held[change.call].qos = change.qos

    async def offer_call(self, offer: IncomingOffer) -> str | None:
        """The provider offers a call from its network: an offer on WatchOffers, answered as the
        host answers it — the offered call's name, None (no line is open for its destination), or
        ValueError (an invalid offer). None as well when no host answers within
        OFFER_WAIT_SECONDS (none is connected): tell the network the callee is not available."""
        if not self.capabilities.incoming_calls:
            raise ValueError("this provider does not advertise incoming_calls; it cannot offer calls")
        self._offer_sequence += 1
        offer_id = self._offer_sequence
        answered: asyncio.Future[pb.WatchOffersRequest] = asyncio.get_running_loop().create_future()
        self._offering[offer_id] = (protocol.offer_message(offer), answered)
        self._wake_offer_streams()
        try:
            reply = await asyncio.wait_for(asyncio.shield(answered), OFFER_WAIT_SECONDS)
        except TimeoutError:
            log.warning("no host answered the offer of a call to %s: not offered", offer.destination)
            return None
        finally:
            del self._offering[offer_id]
        outcome = reply.WhichOneof("outcome")
        if outcome == "call":
            return reply.call
        if outcome == "invalid":
            raise ValueError(reply.invalid)
        return None

    def _wake_offer_streams(self) -> None:
        self._offers_grew.set()
        self._offers_grew = asyncio.Event()

    async def stop_provider(self) -> None:
        """Stop the provider (within a grace period), and its thread."""
        try:
            stopping = self.provider.stop()
            if self.thread is not None:
                await asyncio.wait_for(self.thread.run(stopping, "stop"), STOP_GRACE_SECONDS)
            else:
                await asyncio.wait_for(stopping, STOP_GRACE_SECONDS)
        except Exception:
            log.warning("the provider did not stop cleanly", exc_info=True)
        finally:
            if self.thread is not None:
                self.thread.close()

    # -- who it is --------------------------------------------------------------------------
    async def GetProviderInfo(
        self, request: pb.GetProviderInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetProviderInfoResponse:
        provider_id = names.parse_provider(request.provider)
        if provider_id and not self.started:
            self.provider.id = provider_id  # the names it gives its links use the host's id
        return pb.GetProviderInfoResponse(
            display_name=self.provider.display_name or self.implementation,
            description=self.provider.description,
            vendor_version=self.vendor_version,
            capabilities=self.capabilities,
            instance_id=self.instance_id,
            decide_stream=self.decide_stream,
        )

    # -- restore ----------------------------------------------------------------------------
    async def Restore(self, request: pb.RestoreRequest, context: grpc.aio.ServicerContext) -> pb.RestoreResponse:
        async with self._restoring:
            listed = [protocol.restored_of(item) for item in request.calls]
            if not self.started:
                host: ProviderHost = self if self.thread is None else HostOnLoop(self, asyncio.get_running_loop())
                changes = await self._run(self.provider.start(host, listed), context)
                self.started = True
                self.held = {item.call: Held(item.destination, item.level, item.qos) for item in listed}
                for change in changes:
                    self._note(change)
                return pb.RestoreResponse(changes=[protocol.change_message(change) for change in changes])
            return pb.RestoreResponse(changes=await self._restore_again(listed, context))

    async def _restore_again(self, listed: list[Restored], context: grpc.aio.ServicerContext) -> list[pb.Change]:
        """A host that reconnected to this (running) provider: release what the host no longer
        holds, keep what both hold, tell the host where they differ, re-take the rest."""
        wanted = {item.call: item for item in listed}
        for call in [call for call in self.held if call not in wanted]:
            await self._release(call, context)
        answers: list[pb.Change] = []
        for item in listed:
            held = self.held.get(item.call)
            if held is not None:
                if held.qos != item.qos:  # changed by the provider since; the host missed it
                    answers.append(protocol.change_message(ProviderChange(item.call, held.qos, "QoS changed")))
                continue
            dropped = self.journal.latest(item.call)
            if dropped is not None and not dropped.HasField("qos"):  # dropped by the provider since
                answer = pb.Change()
                answer.CopyFrom(dropped)
                answer.sequence = 0
                answers.append(answer)
                continue
            answers.extend(await self._retake(item, context))
        return answers

    async def _retake(self, item: Restored, context: grpc.aio.ServicerContext) -> list[pb.Change]:
        """A call the host holds and this running provider does not know: ask for it again."""
        request = AdmissionRequest(item.call, item.destination, item.level, item.qos, principal="")
        decision = await self._run(self.provider.admit(request), context)
        if not isinstance(decision, Grant):
            return [
                protocol.change_message(ProviderChange(item.call, None, f"could not be restored: {decision.message}"))
            ]
        self.held[item.call] = Held(item.destination, item.level, decision.qos)
        if decision.qos != item.qos:
            return [protocol.change_message(ProviderChange(item.call, decision.qos, "restored with other QoS"))]
        return []

    # -- decisions --------------------------------------------------------------------------
    async def Admit(self, request: pb.AdmitRequest, context: grpc.aio.ServicerContext) -> pb.AdmitResponse:
        await self._require_started(context)
        key = (request.call, request.request_id)
        answered = self._answers.get(key)
        if isinstance(answered, pb.AdmitResponse):
            return answered
        if request.call in self.held or request.call in self._deciding:
            await _abort(context, grpc.StatusCode.FAILED_PRECONDITION, f"{request.call} is held: release it first")
        await self._check_provider_specific(request.qos, context)
        decision = await self._decide(request.call, self.provider.admit(protocol.admission(request)), context)
        if isinstance(decision, Grant):
            self.held[request.call] = Held(request.destination, request.service_level, decision.qos)
        response = pb.AdmitResponse(**protocol.decision_fields(decision))  # type: ignore[arg-type]
        self._remember(key, response)
        return response

    async def Renegotiate(
        self, request: pb.RenegotiateRequest, context: grpc.aio.ServicerContext
    ) -> pb.RenegotiateResponse:
        await self._require_started(context)
        key = (request.call, request.request_id)
        answered = self._answers.get(key)
        if isinstance(answered, pb.RenegotiateResponse):
            return answered
        held = self.held.get(request.call)
        if held is None:
            await _abort(context, grpc.StatusCode.NOT_FOUND, f"{request.call} is not held by this provider")
        if not self.capabilities.renegotiation:
            await _abort(context, grpc.StatusCode.UNIMPLEMENTED, "this provider does not renegotiate")
        await self._check_provider_specific(request.qos, context)
        decision = await self._decide(request.call, self.provider.renegotiate(protocol.admission(request)), context)
        if isinstance(decision, Grant):
            held.qos, held.level = decision.qos, request.service_level
        response = pb.RenegotiateResponse(**protocol.decision_fields(decision))  # type: ignore[arg-type]
        self._remember(key, response)
        return response

    async def Release(self, request: pb.ReleaseRequest, context: grpc.aio.ServicerContext) -> pb.ReleaseResponse:
        if self.started:
            await self._release(request.call, context)
        return pb.ReleaseResponse()

    async def _release(self, call: str, context: grpc.aio.ServicerContext) -> None:
        deciding = self._deciding.get(call)
        if deciding is not None:  # an Admit the host gave up on: it must not reserve after this
            deciding.released = True
            deciding.task.cancel()
            await deciding.done.wait()
        await self._run(self.provider.release(call), context)
        self.held.pop(call, None)
        for key in [key for key in self._answers if key[0] == call]:
            del self._answers[key]

    async def _decide(self, call: str, work: Awaitable[Decision], context: grpc.aio.ServicerContext) -> Decision:
        """Run one decision in this request's own task (no task of its own: a decision is the
        hot path), cancellable by a Release of the same call."""
        task = asyncio.current_task()
        assert task is not None
        deciding = Deciding(task)
        self._deciding[call] = deciding
        try:
            return await self._run(work, context)
        except asyncio.CancelledError:
            if not deciding.released:
                raise  # this request itself is cancelled (the host gave up on it)
            task.uncancel()
            # A Release cancelled the decision: it reserved nothing the host will ever hear of.
            await _abort(context, grpc.StatusCode.ABORTED, f"{call} was released while being decided")
        finally:
            if self._deciding.get(call) is deciding:
                del self._deciding[call]
            deciding.done.set()

    def _remember(self, key: tuple[str, str], response: pb.AdmitResponse | pb.RenegotiateResponse) -> None:
        self._answers[key] = response
        while len(self._answers) > ANSWERS_REMEMBERED:
            self._answers.popitem(last=False)

    async def _check_provider_specific(self, qos: QosSpec, context: grpc.aio.ServicerContext) -> None:
        """The provider's own check of its provider_specific bytes (in-process, the server's
        validation calls it): INVALID_ARGUMENT naming `qos.provider_specific` per problem."""
        if not qos.provider_specific:
            return
        problems = self.provider.validate_provider_specific(qos.provider_specific)
        if not problems:
            return
        violations = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field="qos.provider_specific", description=problem)
                for problem in problems
            ]
        )
        detail = any_pb2.Any()
        detail.Pack(violations)
        status = status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message="; ".join(problems), details=[detail])
        await context.abort_with_status(rpc_status.to_status(status))

    async def _require_started(self, context: grpc.aio.ServicerContext) -> None:
        if not self.started:
            await _abort(context, grpc.StatusCode.FAILED_PRECONDITION, "not restored yet: the host sends Restore first")

    # -- the Decide stream ---------------------------------------------------------------------
    async def Decide(
        self, request_iterator: AsyncIterator[pb.DecideRequest], context: grpc.aio.ServicerContext
    ) -> None:
        """Admit, Renegotiate and Release on one stream: each request answered by the method it
        names, in a task of its own (so a Release can cancel an Admit still being decided), under
        its own deadline and in its caller's trace; answers written as they are ready."""
        if not self.decide_stream:
            await _abort(context, grpc.StatusCode.UNIMPLEMENTED, "this provider does not serve Decide")
        writing = asyncio.Lock()
        answering: set[asyncio.Task[None]] = set()

        async def answer(request: pb.DecideRequest) -> None:
            response = await self._decide_one(request)
            async with writing:
                await context.write(response)

        try:
            async for request in request_iterator:
                task = asyncio.create_task(answer(request))
                answering.add(task)
                task.add_done_callback(answering.discard)
        finally:
            for task in list(answering):
                task.cancel()

    async def _decide_one(self, request: pb.DecideRequest) -> pb.DecideResponse:
        timeout = request.timeout.ToTimedelta().total_seconds() if request.HasField("timeout") else None
        on_stream = StreamRequest(timeout)
        which = request.WhichOneof("request")
        try:
            with self._traced(which or "Decide", request.traceparent, request.tracestate):
                if which == "admit":
                    return pb.DecideResponse(id=request.id, admit=await self.Admit(request.admit, on_stream))
                if which == "renegotiate":
                    return pb.DecideResponse(
                        id=request.id, renegotiate=await self.Renegotiate(request.renegotiate, on_stream)
                    )
                if which == "release":
                    return pb.DecideResponse(id=request.id, release=await self.Release(request.release, on_stream))
                return pb.DecideResponse(
                    id=request.id,
                    failure=pb.DecideFailure(code=errors_pb2.GRPC_CODE_INVALID_ARGUMENT, message="an empty request"),
                )
        except Aborted as failure:
            return pb.DecideResponse(id=request.id, failure=failure.as_message())

    def _traced(self, method: str, traceparent: str, tracestate: str) -> contextlib.AbstractContextManager[object]:
        """A server span for one request on the stream, child of the caller's span, when this
        process records spans (the interceptor makes one per RPC; the stream is one RPC)."""
        if self.tracer is None or not traceparent:
            return contextlib.nullcontext()
        carrier = {"traceparent": traceparent, **({"tracestate": tracestate} if tracestate else {})}
        name = f"{pb.DESCRIPTOR.services_by_name['ProviderService'].full_name}/{method.capitalize()}"
        return self.tracer.start_as_current_span(name, context=propagate.extract(carrier), kind=trace.SpanKind.SERVER)

    # -- reservations and links ---------------------------------------------------------------
    async def ListReservations(
        self, request: pb.ListReservationsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListReservationsResponse:
        """The calls the kit's ledger holds, with their QoS; with `reservation_listing`, each with
        the rates the provider's own books hold (PROV-19) — a call the books leave out holds
        nothing, and one only the books hold is listed without QoS, for the host to release."""
        listed = {call: pb.Reservation(call=call, qos=held.qos) for call, held in self.held.items()}
        if self.capabilities.reservation_listing:
            for holding in await self._run(self.provider.reservations(), context):
                item = listed.setdefault(holding.call, pb.Reservation(call=holding.call))
                item.sending_bytes_per_second = holding.sending_bytes_per_second
                item.receiving_bytes_per_second = holding.receiving_bytes_per_second
                link_id = protocol.link_id_of(holding.link)
                item.link = f"links/{link_id}" if link_id else ""
        return pb.ListReservationsResponse(reservations=list(listed.values()))

    async def ListLinks(self, request: pb.ListLinksRequest, context: grpc.aio.ServicerContext) -> pb.ListLinksResponse:
        if not self.capabilities.link_admin:
            await _abort(context, grpc.StatusCode.UNIMPLEMENTED, "this provider has no links")
        links = await self._run(self.provider.list_links(), context)
        for link in links:
            link.name = "links/" + protocol.link_id_of(link.name)
        return pb.ListLinksResponse(links=links)

    async def UpdateLink(
        self, request: pb.UpdateLinkRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpdateLinkResponse:
        if not self.capabilities.link_admin:
            await _abort(context, grpc.StatusCode.UNIMPLEMENTED, "this provider has no links")
        link_id = protocol.link_id_of(request.link)
        before = self.journal.sequence
        try:
            link = await self._run(
                self.provider.update_link(link_id, request.capacity_bytes_per_second), context, unknown=KeyError
            )
        except KeyError:
            await _abort(context, grpc.StatusCode.NOT_FOUND, f"no link {request.link}")
        link.name = "links/" + protocol.link_id_of(link.name)
        caused = self.journal.sequence if self.journal.sequence > before else 0
        return pb.UpdateLinkResponse(link=link, change_sequence=caused)

    # -- calls from the provider's network ------------------------------------------------------
    async def WatchOffers(
        self, request_iterator: AsyncIterator[pb.WatchOffersRequest], context: grpc.aio.ServicerContext
    ) -> None:
        """Send the host every offer it has not answered (again, after a reconnection: the host
        answers a repeat with its first answer), then each new one; resolve each as the host
        answers it. A newer stream (the host reconnected) takes over from this one."""
        if not self.capabilities.incoming_calls:
            await _abort(context, grpc.StatusCode.UNIMPLEMENTED, "this provider does not offer calls")
        self._offer_streams += 1
        mine = self._offer_streams
        self._wake_offer_streams()  # an older stream notices it is superseded

        async def read_answers() -> None:
            async for reply in request_iterator:
                waiting = self._offering.get(reply.offer_id)
                if waiting is not None and not waiting[1].done():
                    waiting[1].set_result(reply)

        reader = asyncio.create_task(read_answers())
        sent: set[int] = set()
        try:
            while not reader.done() and self._offer_streams == mine:
                grew = self._offers_grew
                sent &= set(self._offering)
                for offer_id, (offer, answered) in list(self._offering.items()):
                    if offer_id not in sent and not answered.done():
                        await context.write(pb.WatchOffersResponse(offer_id=offer_id, offer=offer))
                        sent.add(offer_id)
                waiting = asyncio.create_task(grew.wait())
                await asyncio.wait({reader, waiting}, return_when=asyncio.FIRST_COMPLETED)
                waiting.cancel()
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    async def OfferEnded(
        self, request: pb.OfferEndedRequest, context: grpc.aio.ServicerContext
    ) -> pb.OfferEndedResponse:
        if not self.capabilities.incoming_calls:
            await _abort(context, grpc.StatusCode.UNIMPLEMENTED, "this provider does not offer calls")
        await self._require_started(context)
        if request.call not in self._ended:  # told once, however often the host repeats it
            await self._run(self.provider.offer_ended(request.call, request.reason), context)
            self._ended[request.call] = None
            while len(self._ended) > ANSWERS_REMEMBERED:
                self._ended.popitem(last=False)
        return pb.OfferEndedResponse()

    # -- the change stream --------------------------------------------------------------------
    async def WatchChanges(
        self, request: pb.WatchChangesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchChangesResponse]:
        sent = request.after_sequence if request.instance_id == self.instance_id else 0
        while True:
            grew = self.journal.next_append
            for entry in self.journal.after(sent):
                yield pb.WatchChangesResponse(change=entry)
                sent = entry.sequence
            await grew.wait()

    async def AckChanges(
        self, request: pb.AckChangesRequest, context: grpc.aio.ServicerContext
    ) -> pb.AckChangesResponse:
        if request.instance_id == self.instance_id:
            self.journal.acknowledge(request.sequence)
        return pb.AckChangesResponse()

    # -- running the provider -----------------------------------------------------------------
    async def _run(
        self, work: Awaitable[T], context: grpc.aio.ServicerContext, unknown: type[Exception] | None = None
    ) -> T:
        """Await a provider call within the request's deadline. Its failure is the request's:
        INTERNAL (logged with the traceback), UNIMPLEMENTED for NotImplementedError,
        DEADLINE_EXCEEDED when it outlives the deadline. `unknown` is re-raised for the caller."""
        try:
            async with asyncio.timeout(context.time_remaining()):
                if self.thread is not None:
                    return await self.thread.run(work, "provider call")
                return await work
        except TimeoutError:
            await _abort(context, grpc.StatusCode.DEADLINE_EXCEEDED, "the provider did not answer in time")
        except NotImplementedError:
            await _abort(context, grpc.StatusCode.UNIMPLEMENTED, "not implemented by this provider")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if unknown is not None and isinstance(exc, unknown):
                raise
            if isinstance(exc, grpc.aio.AbortError):
                raise
            log.exception("the provider failed")
            await _abort(context, grpc.StatusCode.INTERNAL, f"the provider failed: {type(exc).__name__}: {exc}")
        except BaseException as escaped:  # SystemExit, KeyboardInterrupt, GeneratorExit: contained too
            log.error("the provider raised %r", escaped)
            await _abort(context, grpc.StatusCode.INTERNAL, f"the provider failed: {type(escaped).__name__}")


class Aborted(grpc.aio.AbortError):  # type: ignore[misc]  # grpc is untyped
    """A request on the Decide stream failed with this status (what its method would have
    failed with)."""

    def __init__(self, code: grpc.StatusCode, message: str, problems: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.code, self.message, self.problems = code, message, problems

    def as_message(self) -> pb.DecideFailure:
        return pb.DecideFailure(
            code=self.code.value[0], message=self.message, provider_specific_violations=self.problems
        )


class StreamRequest:
    """What the methods use of a gRPC context, for a request on the Decide stream: its deadline,
    and aborting it (raises Aborted, which becomes the request's DecideFailure)."""

    def __init__(self, timeout: float | None) -> None:
        self._deadline = None if timeout is None else time.monotonic() + timeout

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(self._deadline - time.monotonic(), 0.0)

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: object = ()) -> NoReturn:
        raise Aborted(code, details)

    async def abort_with_status(self, status: grpc.Status) -> NoReturn:
        code, details = status.code, status.details
        problems: list[str] = []
        for key, value in status.trailing_metadata or ():
            if key == "grpc-status-details-bin":
                rich = status_pb2.Status.FromString(value)
                for detail in rich.details:
                    bad = error_details_pb2.BadRequest()
                    if detail.Unpack(bad):  # only objections to provider_specific are the caller's
                        problems += [v.description for v in bad.field_violations if v.field == "qos.provider_specific"]
        raise Aborted(code, details, tuple(problems))


async def _abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("unreachable: abort raises")
