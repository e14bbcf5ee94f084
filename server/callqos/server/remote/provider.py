"""`RemoteProvider`: a provider in another process, hosted like any in-process one.

Configured as a provider plugin (`plugin = "remote"` with `endpoint = ...` or `command = [...]`,
see `settings`), it forwards each call of the contract to the provider process over
`callqos.provider.v1`, so nothing else in the server knows the difference.

What the host keeps its promises with when the provider lives elsewhere (conformance/SPEC.md
REMOTE-1 to REMOTE-8):

- **It never admits on its own.** Every grant is a grant the provider made. While the provider
  is unreachable (not started yet, restarting, hung) every decision fails with UNAVAILABLE /
  PROVIDER_UNAVAILABLE and a google.rpc.RetryInfo saying when the next attempt is due.
- **What the host holds is mirrored here** (`held`): the calls the server handed back at
  start-up, plus each grant, minus each release and each change the provider reported. On every
  (re)connection the provider is restored to exactly that set (Restore), every change it made
  meanwhile is applied (WatchChanges from the last one applied), and its reservations are
  compared with the set (ListReservations): a reservation the host does not hold is released, a
  call the provider no longer holds is disconnected. After that the two agree on every call.
- **A release is never lost.** If the provider cannot be told now, the call is left out of the
  mirror, so the next Restore releases it; until then it is retried after the connection is back.
- **Deadlines and traces go along**: each RPC carries the host's provider deadline (cut to the
  caller's for a decision) and the W3C trace context of the caller's request.
- **A launched provider is supervised**: restarted with backoff when it exits or stops
  answering health checks, stopped at shutdown (see `process`).
- **Calls from the provider's network** (capability `incoming_calls`) arrive on WatchOffers and
  are offered through the host like an in-process provider's `offer_call`, each once: an offer
  sent again after a reconnection gets its first answer. An ended offer the provider cannot be
  told now (`offer_ended`) is told after the next connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from opentelemetry import propagate

from callqos.provider.v1 import provider_service_pb2 as pb
from callqos.provider.v1 import provider_service_pb2_grpc as pb_grpc
from callqos.server import names
from callqos.server.errors import FieldViolation, Reason, ServiceError, invalid, retry_info
from callqos.server.hosting import PROVIDER_DEADLINE
from callqos.server.providers.base import (
    AdmissionRequest,
    Decision,
    Grant,
    Holding,
    Provider,
    ProviderChange,
    ProviderHost,
    Restored,
)
from callqos.server.providers.registry import ProviderLoadError
from callqos.server.remote import protocol
from callqos.server.remote.decisions import DecisionStream, StreamClosed, grpc_code
from callqos.server.remote.process import PluginProcess, PluginStartError
from callqos.server.remote.settings import RemoteSettings, is_loopback
from callqos.v1 import event_pb2, flowspec_pb2, provider_pb2

log = logging.getLogger("callqos.server.remote")
QosSpec = flowspec_pb2.QosSpec
T = TypeVar("T")

# A connection that lasted this long resets the reconnection backoff to its first step.
STABLE_SECONDS = 60.0
# What a failed start keeps of the host's start deadline, beyond stop_grace_seconds, to stop.
STOP_MARGIN_SECONDS = 0.5
MAX_MESSAGE_BYTES = 64 << 20  # Restore and ListReservations carry every call the host holds
# Answers to offers remembered per provider instance, for offers sent again after a reconnection
# (only an offer unanswered when a stream ended is): the newest this many are plenty.
OFFERS_REMEMBERED = 4096
# The operations whose INVALID_ARGUMENT is the caller's bad request: provider_specific bytes the
# provider refused. The violation names the field within the QoS decided; the host, which knows
# the request that asked, names it in that request (CallManager._decide).
DECIDING = frozenset({"admit", "renegotiate"})
PROVIDER_SPECIFIC_FIELD = "provider_specific"


class ProviderUnreachable(Exception):
    """The provider could not be reached when the server started."""


class ConnectionLost(Exception):
    """Why the connection to the provider ended (the message says)."""


@dataclass
class HeldCall:
    """A call the host holds on this provider, as Restore lists it."""

    destination: str
    level: int
    qos: QosSpec


class RemoteProvider(Provider):
    """A provider process speaking `callqos.provider.v1`; see the module docstring."""

    display_name = "Remote provider"
    description = "A provider in another process, over callqos.provider.v1."

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        super().__init__(settings)
        self.options = RemoteSettings.parse(self.settings)
        self.vendor_version = ""
        self.held: dict[str, HeldCall] = {}
        self.process: PluginProcess | None = None
        self._capabilities = provider_pb2.ProviderCapabilities()  # nothing, until the provider says
        self._known = False  # GetProviderInfo answered once: the capabilities above are the provider's
        self._pending_releases: dict[str, str] = {}  # call → the request_id of its release
        self._instance_id = ""
        self._applied = 0  # the last change of that instance applied to the host
        self._advanced = asyncio.Event()  # set (and replaced) each time _applied moves
        self._channel: grpc.aio.Channel | None = None
        self._stub: pb_grpc.ProviderServiceStub | None = None
        self._ready = False
        self._connected = asyncio.Event()  # the first connection is up (and restored)
        self._reachable = asyncio.Event()  # the first connection reached the provider (prepare)
        self._begun = asyncio.Event()  # start() has handed over the calls: connections restore them
        # Link capacities set with UpdateLink (link id → B/s), put back on every connection before
        # Restore: a provider process that restarts comes back with its configured ones.
        self._capacities: dict[str, int] = {}
        self._unready_reason = "not connected yet"
        self._retry_at = 0.0
        self._supervisor: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._decide_stream = False  # the provider serves Decide (GetProviderInfo)
        self._decisions: DecisionStream | None = None  # open while connected, when it does
        self._started = asyncio.Event()  # start() has returned: the host takes offers
        # The host's answer to each offer of the current provider instance (WatchOffers), by
        # offer_id: made once, whatever the connection does meanwhile.
        self._offers: dict[int, asyncio.Task[pb.WatchOffersRequest]] = {}
        self._pending_offer_ends: dict[str, tuple[int, str]] = {}  # call → (reason, request_id)

    @property
    def name(self) -> str:
        return names.provider_name(self.id or "remote")

    @property
    def ready(self) -> bool:
        """Connected, restored, and serving decisions."""
        return self._ready

    @property
    def deciding_on_stream(self) -> bool:
        """Decisions go on the Decide stream (the provider serves it), not one RPC each."""
        return self._decisions is not None

    def capabilities(self) -> provider_pb2.ProviderCapabilities:
        return self._capabilities

    # -- life ---------------------------------------------------------------------------------
    async def prepare(self) -> None:
        """Reach the provider (launching it in command mode) and learn its capabilities and links,
        before the host reads them and puts back the capacities kept from UpdateLink (LINK-5); the
        calls are restored once `start` hands them over."""
        self._supervise_once()
        await self._until(self._reachable)

    async def start(self, host: ProviderHost, restored: Sequence[Restored]) -> list[ProviderChange]:
        """Hold the restored calls, connect (launching the provider in command mode, unless
        `prepare` did) and restore them there; the changes that answers are applied through
        `host` as they come. The server does not start without its providers' capabilities, so a
        provider not connected and restored within the start timeout fails the start."""
        if host.ledger is not None:
            # Several replicas on one database: each would mirror only its own calls into the
            # provider (one replica's Restore would release the others'), or launch a provider
            # of its own (each admitting the whole capacity). Refused rather than over-admitting.
            raise ProviderLoadError(
                f"provider {self.name} runs out of process, which several replicas cannot share yet "
                "(storage = postgresql): host it in one server process on SQLite, or in process"
            )
        self.host = host
        self.held = {item.call: HeldCall(item.destination, item.level, item.qos) for item in restored}
        self._supervise_once()
        self._begun.set()
        await self._until(self._connected)
        self._started.set()
        return []

    def _supervise_once(self) -> None:
        if self._supervisor is None:
            self._supervisor = asyncio.create_task(self._supervise(), name=f"remote provider {self.name}")

    async def _until(self, reached: asyncio.Event) -> None:
        """Wait for the supervisor to get `reached`: at most one attempt's start timeout, and a
        moment more to learn why it failed; less when the host's start deadline
        (PROVIDER_DEADLINE) ends first, keeping time to stop a launched process and say why. On
        failure (or cancellation) nothing of it keeps running."""
        wait = self.options.start_timeout_seconds + 1.0
        deadline = PROVIDER_DEADLINE.get()
        if deadline is not None:
            wait = min(wait, deadline - time.monotonic() - self.options.stop_grace_seconds - STOP_MARGIN_SECONDS)
        try:
            await asyncio.wait_for(reached.wait(), max(wait, 0.0))
        except TimeoutError:
            reason = self._unready_reason
            await self.stop()
            raise ProviderUnreachable(f"provider {self.name} not reached at start-up: {reason}") from None
        except BaseException:  # cancelled by the host
            await self.stop()
            raise

    async def stop(self) -> None:
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervisor
        for offering in self._offers.values():  # an offer still being made when the server stops
            offering.cancel()
        await self._disconnect()

    # -- the connection -----------------------------------------------------------------------
    async def _supervise(self) -> None:
        """Connect, restore, serve; when the connection ends, back off and do it again."""
        backoff = self.options.restart_backoff_initial_seconds
        logged = ""
        while True:
            ready_since: float | None = None
            try:
                await self._connect()
                self._reachable.set()
                await self._begun.wait()  # prepared: the links may be read and set until start
                await self._resync()
                if self._decide_stream:
                    self._decisions = DecisionStream(self._need_stub(), late=self._answered_late)
                self._set_ready()
                ready_since = time.monotonic()
                await self._watch()
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():  # stop(): the only end of supervision
                    self._set_unready("stopped")
                    raise
                # A gRPC call cancelled under the connection (gRPC raises CancelledError for it), not this
                # supervisor: the connection is lost, and is made again like after any other loss.
                self._set_unready("a call to the provider was cancelled")
            except (
                grpc.aio.AioRpcError,
                ConnectionLost,
                StreamClosed,
                PluginStartError,
                protocol.ProtocolViolation,
            ) as exc:
                self._set_unready(_describe(exc))
            except Exception as exc:  # a bug here must not end supervision: log it and reconnect
                log.exception("remote provider %s: unexpected failure", self.name)
                self._set_unready(f"{type(exc).__name__}: {exc}")
            await self._disconnect()
            if ready_since is not None and time.monotonic() - ready_since > STABLE_SECONDS:
                backoff = self.options.restart_backoff_initial_seconds
            self._retry_at = time.monotonic() + backoff
            # Each new reason once at WARNING; the same one again (a provider down for long) at DEBUG.
            repeated = self._unready_reason == logged
            log.log(
                logging.DEBUG if repeated else logging.WARNING,
                "provider %s: %s; next attempt in %.2gs",
                self.name,
                self._unready_reason,
                backoff,
                extra={"provider": self.name},
            )
            logged = self._unready_reason
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.options.restart_backoff_max_seconds)

    async def _connect(self) -> None:
        """Reach the provider and ask who it is: launch it (command mode), dial it, wait for
        health SERVING, GetProviderInfo — all within one start timeout."""
        deadline = time.monotonic() + self.options.start_timeout_seconds
        if self.options.command:
            self.process = PluginProcess(
                self.options.command,
                provider=self.name,
                env=self.options.env,
                stop_grace=self.options.stop_grace_seconds,
            )
            handshake = await self.process.start(timeout=self.options.start_timeout_seconds)
            if handshake.network == "tcp" and not is_loopback(handshake.address.rpartition(":")[0]):
                raise ConnectionLost(f"the provider announced a non-loopback address {handshake.address}")
            self._channel = self._dial(handshake.target, tls=False)
        else:
            self._channel = self._dial(self.options.target, tls=self.options.tls is not None)
        self._stub = pb_grpc.ProviderServiceStub(self._channel)  # type: ignore[no-untyped-call]  # generated
        health = health_pb2_grpc.HealthStub(self._channel)
        answer = await health.Check(
            health_pb2.HealthCheckRequest(service=protocol.HEALTH_SERVICE),
            timeout=max(deadline - time.monotonic(), 0.001),
            wait_for_ready=True,
        )
        if answer.status != health_pb2.HealthCheckResponse.SERVING:
            status = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
            raise ConnectionLost(f"the provider's health is {status}")
        info = await self._stub.GetProviderInfo(
            pb.GetProviderInfoRequest(provider=self.name, protocol_versions=[str(protocol.PROTOCOL_VERSION)]),
            timeout=max(deadline - time.monotonic(), 0.001),
        )
        if self._known and info.capabilities != self._capabilities:
            # The server validated every request against the first ones: a provider that comes
            # back able to do other things is not this provider. Restart it as it was.
            raise ConnectionLost("the provider's capabilities changed; they must not change while the server runs")
        if not self._known:
            self._capabilities = info.capabilities
            self._known = True
            self.display_name = info.display_name or self.name
            self.description = info.description
            self.vendor_version = info.vendor_version
        self._decide_stream = info.decide_stream
        if info.instance_id != self._instance_id:
            # A new provider process: it holds nothing yet, and numbers its changes from 1.
            log.info(
                "connected to provider %s instance %s (%s)",
                self.name,
                info.instance_id,
                info.vendor_version,
                extra={"provider": self.name, "pid": self.process.pid if self.process else None},
            )
            self._instance_id, self._applied, self._offers = info.instance_id, 0, {}

    def _dial(self, target: str, *, tls: bool) -> grpc.aio.Channel:
        options: list[tuple[str, str | int]] = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ]
        if not tls or self.options.tls is None:
            return grpc.aio.insecure_channel(target, options=options)
        root, key, chain = self.options.tls.read()
        if self.options.tls.server_name:
            options.append(("grpc.ssl_target_name_override", self.options.tls.server_name))
        credentials = grpc.ssl_channel_credentials(root, key, chain)
        return grpc.aio.secure_channel(target, credentials, options=options)

    async def _resync(self) -> None:
        """Make the provider hold what the host holds, and apply what it says differs — under the
        link capacities set with UpdateLink, put back first."""
        stub = self._need_stub()
        for link_id, capacity in list(self._capacities.items()):
            try:
                await stub.UpdateLink(
                    pb.UpdateLinkRequest(
                        link=f"links/{link_id}", capacity_bytes_per_second=capacity, request_id=str(uuid.uuid4())
                    ),
                    timeout=self.options.call_timeout_seconds,
                    metadata=_trace_metadata(),
                )
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.NOT_FOUND:
                    raise
                log.warning("provider %s has no link %s any more: its capacity is forgotten", self.name, link_id)
                del self._capacities[link_id]
        snapshot = dict(self.held)
        released_before = set(self._pending_releases)
        answer = await stub.Restore(
            pb.RestoreRequest(
                calls=[
                    pb.HeldCall(call=call, destination=held.destination, service_level=held.level, qos=held.qos)  # type: ignore[arg-type]
                    for call, held in snapshot.items()
                ]
            ),
            timeout=self.options.start_timeout_seconds,
            metadata=_trace_metadata(),
        )
        # Releases pending before the snapshot were left out of it: Restore released them.
        for call in released_before:
            self._pending_releases.pop(call, None)
        for change in answer.changes:
            await self._apply(protocol.change_of(change))
        await self._verify()

    async def _verify(self) -> None:
        """Compare the provider's reservations with the host's calls, and make them agree: a
        reservation the host does not hold is released; a call the provider does not hold (and
        did not say it dropped) is disconnected; a QoS that differs is the provider's."""
        stub = self._need_stub()
        listing = await stub.ListReservations(pb.ListReservationsRequest(), timeout=self.options.call_timeout_seconds)
        # A reservation without QoS is one the provider's books hold for no call it was granted
        # through the protocol: released below, as the host holds no such call.
        theirs = {item.call: item.qos if item.HasField("qos") else None for item in listing.reservations}
        for call in sorted(set(theirs) - set(self.held) - set(self._pending_releases)):
            log.warning("provider %s held %s, which the host does not: released", self.name, call)
            await stub.Release(
                pb.ReleaseRequest(call=call, request_id=str(uuid.uuid4())), timeout=self.options.call_timeout_seconds
            )
        for call in sorted(set(self.held) - set(theirs)):
            log.warning("provider %s no longer holds %s: disconnected", self.name, call)
            await self._apply(
                ProviderChange(
                    call,
                    None,
                    "the provider no longer holds a reservation for this call",
                    event_pb2.QosEventType.QOS_EVENT_TYPE_GENERIC_ERROR,
                )
            )
        for call, qos in sorted(theirs.items()):
            held = self.held.get(call)
            if held is not None and qos is not None and held.qos != qos:
                await self._apply(ProviderChange(call, qos, "the provider holds other QoS for this call"))

    async def _watch(self) -> None:
        """While connected: apply the provider's changes, check its health, and (command mode)
        notice its exit. Returns never; raises ConnectionLost (or the stream's error) when the
        connection ends."""
        watchers = [
            asyncio.create_task(self._follow_changes()),
            asyncio.create_task(self._check_health()),
        ]
        if self.process is not None:
            watchers.append(asyncio.create_task(self._wait_for_exit(self.process)))
        if self._decisions is not None:
            watchers.append(asyncio.create_task(self._decisions.read()))
        if self._capabilities.incoming_calls:
            watchers.append(asyncio.create_task(self._follow_offers()))
        self._retry_pending()
        try:
            done, _ = await asyncio.wait(watchers, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # raises why it ended
            raise ConnectionLost("the connection ended")
        finally:
            for task in watchers:
                task.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)

    async def _follow_changes(self) -> None:
        stub = self._need_stub()
        stream = stub.WatchChanges(pb.WatchChangesRequest(instance_id=self._instance_id, after_sequence=self._applied))
        async for response in stream:
            change = response.change
            if change.sequence <= self._applied:
                continue  # applied already (the provider replays what was not acknowledged)
            await self._apply(protocol.change_of(change))
            self._applied = change.sequence
            self._advanced.set()
            self._advanced = asyncio.Event()
            await stub.AckChanges(
                pb.AckChangesRequest(instance_id=self._instance_id, sequence=change.sequence),
                timeout=self.options.call_timeout_seconds,
            )
        raise ConnectionLost("the provider ended its change stream")

    async def _follow_offers(self) -> None:
        """While connected (capability incoming_calls): offer each call the provider's network
        delivers through the host, and answer the provider on the same stream, as each is
        decided."""
        stream = self._need_stub().WatchOffers()
        writing = asyncio.Lock()
        answering: set[asyncio.Task[None]] = set()

        async def answer(outcome: asyncio.Task[pb.WatchOffersRequest]) -> None:
            reply = await asyncio.shield(outcome)  # the offer is decided even if this connection ends
            async with writing:
                await stream.write(reply)

        try:
            while True:
                message = await stream.read()
                if message is grpc.aio.EOF:
                    raise ConnectionLost("the provider ended its offer stream")
                outcome = self._offers.get(message.offer_id)
                if outcome is None:  # a new offer (else one sent again: it gets the same answer)
                    outcome = asyncio.create_task(self._offered(message))
                    self._offers[message.offer_id] = outcome
                    self._forget_old_offers()
                task = asyncio.create_task(answer(outcome))
                answering.add(task)
                task.add_done_callback(_quiet_done(answering))
        finally:
            for task in answering:
                task.cancel()
            stream.cancel()

    async def _offered(self, message: pb.WatchOffersResponse) -> pb.WatchOffersRequest:
        """Offer one call from the provider's network through the host (`offer_call`), once the
        server has started; its outcome as the answer the provider gets. Never raises."""
        await self._started.wait()
        reply = pb.WatchOffersRequest(offer_id=message.offer_id)
        try:
            call = await self.host.offer_call(protocol.offer_of(message.offer))
        except ValueError as invalid_offer:
            reply.invalid = str(invalid_offer)
        except Exception as exc:  # the server failed to offer it (a store failure): not offered
            log.warning("provider %s: could not offer a call to %s: %s", self.name, message.offer.destination, exc)
            reply.not_offered = f"the server could not offer the call now: {exc}"
        else:
            if call is None:
                reply.not_offered = f"no line is open for {message.offer.destination}"
            else:
                reply.call = call
        return reply

    def _forget_old_offers(self) -> None:
        """Keep the newest OFFERS_REMEMBERED answers (never one still being decided)."""
        for offer_id in list(self._offers)[: max(0, len(self._offers) - OFFERS_REMEMBERED)]:
            if self._offers[offer_id].done():
                del self._offers[offer_id]

    async def _check_health(self) -> None:
        health = health_pb2_grpc.HealthStub(self._channel)
        failures = 0
        while True:
            await asyncio.sleep(self.options.health_interval_seconds)
            try:
                answer = await health.Check(
                    health_pb2.HealthCheckRequest(service=protocol.HEALTH_SERVICE),
                    timeout=self.options.health_interval_seconds,
                )
                failures = 0 if answer.status == health_pb2.HealthCheckResponse.SERVING else failures + 1
            except grpc.aio.AioRpcError:
                failures += 1
            if failures >= self.options.health_failures:
                raise ConnectionLost(f"the provider failed {failures} health checks in a row")

    @staticmethod
    async def _wait_for_exit(process: PluginProcess) -> None:
        status = await process.wait()
        raise ConnectionLost(f"the provider process exited with status {status}")

    async def _disconnect(self) -> None:
        decisions, self._decisions = self._decisions, None
        if decisions is not None:
            decisions.close()
        channel, self._channel, self._stub = self._channel, None, None
        if channel is not None:
            await channel.close()
        process, self.process = self.process, None
        if process is not None:
            await process.stop()

    def _set_ready(self) -> None:
        self._ready = True
        self._connected.set()
        log.info("provider %s is ready", self.name, extra={"provider": self.name})

    def _set_unready(self, reason: str) -> None:
        self._ready = False
        self._unready_reason = reason

    def _need_stub(self) -> pb_grpc.ProviderServiceStub:
        if self._stub is None:
            raise ConnectionLost("not connected")
        return self._stub

    # -- applying the provider's changes ------------------------------------------------------
    async def _apply(self, change: ProviderChange) -> None:
        """Hand a change to the host, then mirror it. In that order: the host applies it under
        the call's lock, after any decision on the call still being settled, and so must the
        mirror."""
        await self.host.report_change(change)
        if change.qos is None:
            self.held.pop(change.call, None)
        elif change.call in self.held:
            self.held[change.call].qos = change.qos

    # -- the contract -------------------------------------------------------------------------
    async def admit(self, request: AdmissionRequest) -> Decision:
        stub = self._serving("admit")
        await self._flush_release(request.call)
        message = protocol.admit_request(request, str(uuid.uuid4()))
        if self._decisions is not None:
            answer = (await self._ask("admit", pb.DecideRequest(admit=message))).admit
        else:
            answer = await self._rpc("admit", stub.Admit(message, timeout=self._timeout(), metadata=_trace_metadata()))
        decision = self._decoded("admit", answer)
        if isinstance(decision, Grant):
            self.held[request.call] = HeldCall(request.destination, request.level, decision.qos)
        return decision

    async def renegotiate(self, request: AdmissionRequest) -> Decision:
        stub = self._serving("renegotiate")
        message = protocol.renegotiate_request(request, str(uuid.uuid4()))
        if self._decisions is not None:
            answer = (await self._ask("renegotiate", pb.DecideRequest(renegotiate=message))).renegotiate
        else:
            answer = await self._rpc(
                "renegotiate", stub.Renegotiate(message, timeout=self._timeout(), metadata=_trace_metadata())
            )
        decision = self._decoded("renegotiate", answer)
        if isinstance(decision, Grant):
            self.held[request.call] = HeldCall(request.destination, request.level, decision.qos)
        return decision

    async def release(self, call: str) -> None:
        """Free the call's reservation. Never fails: if the provider cannot be told now, the call
        is already out of what the host holds, so the next Restore releases it; until then it is
        retried after each reconnection."""
        self.held.pop(call, None)
        request_id = self._pending_releases.setdefault(call, str(uuid.uuid4()))
        if not self._ready or self._stub is None:
            return
        message = pb.ReleaseRequest(call=call, request_id=request_id)
        try:
            if self._decisions is not None:
                await self._ask("release", pb.DecideRequest(release=message))
            else:
                await self._rpc(
                    "release", self._stub.Release(message, timeout=self._timeout(), metadata=_trace_metadata())
                )
        except ServiceError as failure:
            log.warning("provider %s could not release %s now (%s): it will be", self.name, call, failure.message)
            return
        self._pending_releases.pop(call, None)

    async def offer_ended(self, call: str, reason: int) -> None:
        """Tell the provider that a call it offered ended unanswered. Never fails: if the
        provider cannot be told now, it is told after the next connection."""
        if not self._capabilities.incoming_calls:
            return
        _, request_id = self._pending_offer_ends.setdefault(call, (reason, str(uuid.uuid4())))
        if not self._ready or self._stub is None:
            return
        message = pb.OfferEndedRequest(call=call, reason=reason, request_id=request_id)  # type: ignore[arg-type]
        try:
            await self._rpc(
                "offer_ended", self._stub.OfferEnded(message, timeout=self._timeout(), metadata=_trace_metadata())
            )
        except ServiceError as failure:
            log.warning("provider %s could not be told that %s ended (%s): later", self.name, call, failure.message)
            return
        self._pending_offer_ends.pop(call, None)

    async def list_links(self) -> list[provider_pb2.Link]:
        stub = self._linking("list_links")
        answer = await self._rpc(
            "list_links", stub.ListLinks(pb.ListLinksRequest(), timeout=self._timeout(), metadata=_trace_metadata())
        )
        return [self._host_link(link) for link in answer.links]

    async def update_link(self, link_id: str, capacity: int) -> provider_pb2.Link:
        """Change the link's capacity, and answer once the changes it caused are applied, as the
        in-process contract does."""
        stub = self._linking("update_link")
        message = pb.UpdateLinkRequest(
            link=f"links/{link_id}", capacity_bytes_per_second=capacity, request_id=str(uuid.uuid4())
        )
        answer = await self._rpc(
            "update_link",
            stub.UpdateLink(message, timeout=self._timeout(), metadata=_trace_metadata()),
            not_found=KeyError(link_id),
        )
        self._capacities[link_id] = capacity
        while self._applied < answer.change_sequence and self._ready:
            advanced = self._advanced
            try:
                await asyncio.wait_for(advanced.wait(), self._timeout())
            except TimeoutError:
                break  # the changes still come; the caller is not kept past its deadline
        return self._host_link(answer.link)

    async def list_reservations(self) -> dict[str, QosSpec]:
        """The provider's reservations (call → QoS), as it reports them (one it holds for no call
        the protocol granted has no QoS, and is left out)."""
        return {item.call: item.qos for item in await self._list_reservations() if item.HasField("qos")}

    async def reservations(self) -> list[Holding]:
        """The contract's listing (PROV-19, only when the provider advertises
        `reservation_listing`): the rates the provider's own books hold for each call, as
        ListReservations reports them, its links named as the host names them."""
        return [
            Holding(
                item.call,
                item.sending_bytes_per_second,
                item.receiving_bytes_per_second,
                names.link_name(self.id, protocol.link_id_of(item.link)) if item.link else "",
            )
            for item in await self._list_reservations()
        ]

    async def _list_reservations(self) -> Sequence[pb.Reservation]:
        stub = self._serving("reservations")
        answer = await self._rpc(
            "reservations",
            stub.ListReservations(pb.ListReservationsRequest(), timeout=self._timeout(), metadata=_trace_metadata()),
        )
        return list(answer.reservations)

    async def _rpc(self, operation: str, rpc: Awaitable[T], not_found: Exception | None = None) -> T:
        """Await one RPC to the provider; its failure as the ServiceError the caller gets. A
        cancellation that is not this request's own (the connection was closed under it, as the
        supervisor does when it gives the provider up) is the provider's failure too: it must not
        end the caller's request without an answer."""
        try:
            return await rpc
        except grpc.aio.AioRpcError as error:
            if not_found is not None and error.code() == grpc.StatusCode.NOT_FOUND:
                raise not_found from error
            raise self._failed(operation, error) from error
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            raise self._unavailable(operation, "unreachable", "the connection to the provider was closed") from None

    def _host_link(self, link: provider_pb2.Link) -> provider_pb2.Link:
        named = provider_pb2.Link()
        named.CopyFrom(link)
        named.name = names.link_name(self.id, protocol.link_id_of(link.name))
        return named

    # -- calling the provider -----------------------------------------------------------------
    def _serving(self, operation: str) -> pb_grpc.ProviderServiceStub:
        """The stub, when the provider is connected and restored; PROVIDER_UNAVAILABLE with the
        time of the next attempt otherwise."""
        if self._ready and self._stub is not None:
            return self._stub
        raise self._unavailable(operation, "unreachable", self._unready_reason)

    def _linking(self, operation: str) -> pb_grpc.ProviderServiceStub:
        """As `_serving`; and, between `prepare` and `start`, the stub of the provider reached:
        the host reads the links and puts back their capacities before any call is restored."""
        if self._stub is not None and self._reachable.is_set() and not self._begun.is_set():
            return self._stub
        return self._serving(operation)

    def _unavailable(self, operation: str, cause: str, detail: str) -> ServiceError:
        """PROVIDER_UNAVAILABLE, with RetryInfo: when the next connection attempt is due (or
        the first backoff step, while connected)."""
        delay = max(self._retry_at - time.monotonic(), self.options.restart_backoff_initial_seconds)
        return ServiceError(
            Reason.ERROR_REASON_PROVIDER_UNAVAILABLE,
            f"provider {self.id} is unavailable ({detail}); retry in {delay:.2g}s",
            metadata={"provider": self.name, "operation": operation, "cause": cause},
            details=(retry_info(delay),),
        )

    def _timeout(self) -> float:
        """The host's budget for the provider call now running (its provider deadline, cut to
        the caller's for a decision), as the gRPC deadline of the RPC that makes it."""
        deadline = PROVIDER_DEADLINE.get()
        if deadline is None:
            return self.options.call_timeout_seconds
        return max(deadline - time.monotonic(), 0.001)

    def _decoded(self, operation: str, answer: pb.AdmitResponse | pb.RenegotiateResponse | None) -> Decision:
        if answer is None:  # grpc.aio hands back None for an answer it could not deserialize
            raise self._violation(operation, "an answer that does not decode")
        try:
            return protocol.decision_of(answer)
        except protocol.ProtocolViolation as exc:
            raise self._violation(operation, str(exc)) from exc

    def _violation(self, operation: str, what: str) -> ServiceError:
        return ServiceError(
            Reason.ERROR_REASON_PROVIDER_CONTRACT_VIOLATION,
            f"provider {self.id} answered {operation} with {what}",
            metadata={"provider": self.name, "operation": operation},
        )

    def _failed(self, operation: str, error: grpc.aio.AioRpcError) -> ServiceError:
        """The ServiceError for a provider RPC that failed with `error`."""
        problems = _provider_specific_problems(error) if error.code() == grpc.StatusCode.INVALID_ARGUMENT else []
        return self._failure(operation, error.code(), error.details() or "", problems, malformed=_malformed(error))

    def _failure(
        self, operation: str, code: grpc.StatusCode, details: str, problems: Sequence[str], malformed: bool = False
    ) -> ServiceError:
        """The ServiceError for a provider request that failed with status `code`: the caller's
        bad request (the provider refused its provider_specific bytes), the provider's contract
        violation, or the provider unavailable (with why)."""
        if code == grpc.StatusCode.INVALID_ARGUMENT and problems and operation in DECIDING:
            return invalid([FieldViolation(PROVIDER_SPECIFIC_FIELD, problem) for problem in problems])
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            cause, detail = "timeout", f"did not answer {operation} in time"
        elif code == grpc.StatusCode.UNAVAILABLE:
            cause, detail = "unreachable", f"unreachable: {details}"
        elif code in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.INVALID_ARGUMENT) or malformed:
            return self._violation(operation, f"{code.name}: {details}")
        else:
            cause, detail = "error", f"failed in {operation}: {code.name}: {details}"
        return self._unavailable(operation, cause, detail)

    async def _ask(self, operation: str, request: pb.DecideRequest) -> pb.DecideResponse:
        """One request on the Decide stream, with the deadline and trace context an RPC would
        carry; its failure as the ServiceError the RPC's would be."""
        decisions = self._decisions
        if decisions is None:
            raise self._unavailable(operation, "unreachable", "not connected")
        timeout = self._timeout()
        carrier = dict(_trace_metadata())
        request.traceparent = carrier.get("traceparent", "")
        request.tracestate = carrier.get("tracestate", "")
        request.timeout.FromNanoseconds(round(timeout * 1e9))
        try:
            if PROVIDER_DEADLINE.get() is None:  # not under the host's deadline: bound it here
                answer = await asyncio.wait_for(decisions.ask(request), timeout)
            else:
                answer = await decisions.ask(request)
        except TimeoutError:
            raise self._failure(operation, grpc.StatusCode.DEADLINE_EXCEEDED, "", ()) from None
        except StreamClosed:
            raise self._unavailable(operation, "unreachable", "the connection to the provider was closed") from None
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            raise self._unavailable(operation, "unreachable", "the connection to the provider was closed") from None
        which = answer.WhichOneof("response")
        if which == "failure":
            failure = answer.failure
            raise self._failure(
                operation, grpc_code(failure.code), failure.message, list(failure.provider_specific_violations)
            )
        if which != request.WhichOneof("request"):
            raise self._violation(operation, f"an answer of another kind ({which or 'none'}) on the Decide stream")
        return answer

    def _answered_late(self, request: pb.DecideRequest, answer: pb.DecideResponse) -> None:
        """The answer to a decision the host gave up on (its deadline passed). A late admission
        needs nothing: the host released the call when it failed, after writing the admission. A
        late renegotiation that granted changed what the provider holds for a call that kept its
        QoS: the host reconciles that call (as for an in-process provider's late grant)."""
        if request.WhichOneof("request") != "renegotiate" or answer.WhichOneof("response") != "renegotiate":
            return
        if answer.renegotiate.WhichOneof("decision") != "grant":
            return
        call = request.renegotiate.call
        log.error("provider %s renegotiated %s after the host gave up on it: reconciling it", self.name, call)
        reconcile_soon = getattr(self.host, "reconcile_soon", None)  # the server's own view (ProviderHostView)
        if reconcile_soon is not None:
            reconcile_soon(call)

    async def _flush_release(self, call: str) -> None:
        """A release of `call` the provider has not confirmed goes before a new admission of it."""
        if call not in self._pending_releases:
            return
        await self.release(call)
        if call in self._pending_releases:
            raise self._unavailable("admit", "unreachable", f"the release of {call} is not confirmed yet")

    def _retry_pending(self) -> None:
        """After a connection: the releases and ended offers the provider could not be told."""
        retries = [self.release(call) for call in self._pending_releases if call not in self.held]
        retries += [self.offer_ended(call, reason) for call, (reason, _) in self._pending_offer_ends.items()]
        for retry in retries:
            task = asyncio.get_running_loop().create_task(retry)
            self._background.add(task)
            task.add_done_callback(self._background.discard)


def _quiet_done(tasks: set[asyncio.Task[None]]) -> Callable[[asyncio.Task[None]], None]:
    """A done callback: forget the task, and retrieve its exception (a write to a stream that
    ended meanwhile) so that it is not reported as never retrieved."""

    def done(task: asyncio.Task[None]) -> None:
        tasks.discard(task)
        if not task.cancelled():
            task.exception()

    return done


def _trace_metadata() -> tuple[tuple[str, str], ...]:
    """The current trace context (W3C traceparent, tracestate) as gRPC metadata."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return tuple(carrier.items())


def _provider_specific_problems(error: grpc.aio.AioRpcError) -> list[str]:
    """The provider's objections to its provider_specific bytes, from the BadRequest of its
    INVALID_ARGUMENT (violations on any other field are not the caller's doing)."""
    status = rpc_status.from_call(error)  # an aio error answers what a Call does
    if status is None:
        return []
    problems: list[str] = []
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            problems += [v.description for v in bad.field_violations if v.field == "qos.provider_specific"]
    return problems


def _malformed(error: grpc.aio.AioRpcError) -> bool:
    """An answer the host could not decode (gRPC reports it as INTERNAL on the client side)."""
    return error.code() == grpc.StatusCode.INTERNAL and "deserializ" in (error.details() or "").lower()


def _describe(error: BaseException) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        return f"{error.code().name}: {error.details()}"
    return str(error) or type(error).__name__
