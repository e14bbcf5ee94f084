"""The blocking client: :class:`Client` and its :class:`EventStream`.

.. code-block:: python

    from callqos.client import Client, controlled_load, QosUnavailableError

    with Client("127.0.0.1:50051", principal="alice") as client:
        call = client.make_call("sip:bob@example.com", sending=controlled_load(500_000))
        for event in client.watch(call=call.name):
            print(event.sequence, event.type)
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any

import grpc

from callqos.v1 import (
    call_pb2,
    callqos_service_pb2,
    callqos_service_pb2_grpc,
    event_pb2,
    flowspec_pb2,
    line_pb2,
    provider_pb2,
)

from . import _channel, _requests, specs
from ._resume import START_SEQUENCE_HEADER, STREAM_ENDED, ResumePolicy, WatchState
from ._security import TokenSource, bearer_metadata, check_token_transport, token_getter
from .errors import CallQosError, UnavailableError, from_grpc_error
from .keepalive import KeepAlive, LeaseLostError

__all__ = ["Client", "EventStream", "OfferStream"]


class Client:
    """A blocking callqos client over one gRPC channel. Thread-safe, like the channel.

    Args:
        target: ``host:port`` of the server; by default the address convention's
            (``CALLQOS_TARGET``, else ``CALLQOS_LISTEN``'s address, else 127.0.0.1:50051).
        principal: the identity sent as ``x-callqos-principal`` (the server uses
            ``"anonymous"`` when absent). Only a call's owner may renegotiate or drop it.
        timeout: the deadline, in seconds, of every unary RPC; each method takes its own.
        credentials: TLS credentials (:func:`~callqos.client.tls_credentials`: the CA, and a
            client certificate for mTLS); ``None`` for a plaintext channel.
        token: a bearer token sent with every RPC, or its source: a callable asked at every
            RPC (so it can refresh), or :class:`~callqos.client.FileToken`. Only over TLS or
            to a loopback address.
        metadata: extra request metadata sent with every RPC.
        retry: retry UNAVAILABLE on idempotent methods per ``service_config.json``.
        service_config: a gRFC A6 service config to use instead of the bundled one.
        options: extra channel options (appended after the client's own).
    """

    def __init__(
        self,
        target: str | None = None,
        *,
        principal: str | None = None,
        timeout: float = _channel.DEFAULT_TIMEOUT,
        credentials: grpc.ChannelCredentials | None = None,
        token: TokenSource | None = None,
        metadata: _channel.Metadata = (),
        retry: bool = True,
        service_config: Mapping[str, Any] | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self.target: str = target or _channel.env_target()
        self.principal = principal
        self.timeout = timeout
        check_token_transport(self.target, token, credentials)
        self._token = token_getter(token)
        self._metadata = _channel.request_metadata(principal, metadata)
        opts = _channel.channel_options(retry=retry, service_config=service_config, extra=options)
        if credentials is None:
            self._channel = grpc.insecure_channel(self.target, options=opts)
        else:
            self._channel = grpc.secure_channel(self.target, credentials, options=opts)
        self._stub = callqos_service_pb2_grpc.CallQosServiceStub(self._channel)  # type: ignore[no-untyped-call]

    # -- lifecycle --------------------------------------------------------------------------

    def close(self) -> None:
        """Close the channel; open event streams end."""
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _unary(self, method: Callable[..., Any], request: Any, timeout: float | None) -> Any:
        try:
            return method(
                request,
                timeout=self.timeout if timeout is None else timeout,
                metadata=_channel.traced(self._metadata + bearer_metadata(self._token)),
            )
        except grpc.RpcError as exc:
            raise from_grpc_error(exc) from exc

    # -- calls ------------------------------------------------------------------------------

    def make_call(
        self,
        destination: str,
        *,
        qos: flowspec_pb2.QosSpec | None = None,
        sending: flowspec_pb2.FlowSpec | None = None,
        receiving: flowspec_pb2.FlowSpec | None = None,
        level: specs.EnumLike | None = None,
        provider: str | None = None,
        call_id: str | None = None,
        request_id: str | None = None,
        lease: float | None = None,
        timeout: float | None = None,
    ) -> call_pb2.Call:
        """Make a call (lineMakeCall). A direction left out is best effort.

        ``level`` is ``"needed"`` (the server's default), ``"if-available"`` or
        ``"best-effort"``. A ``request_id`` is generated when not given, so the request is
        safely retried on UNAVAILABLE; pass your own to make retries across processes safe.
        ``lease`` (seconds, at least 1) makes the call end LEASE_EXPIRED unless it is extended
        in time (:meth:`extend`, or :meth:`keep_alive`); without it the call has the server's
        maximum lease, or none when the server sets no maximum.

        Raises:
            QosUnavailableError: at NEEDED, not enough capacity; see ``counter_offer``.
            QosPolicyFailureError: at NEEDED, refused by the provider's policy.
            InvalidRequestError: a malformed request; see ``field_violations``.
        """
        request = _requests.create_call(
            destination,
            qos=qos,
            sending=sending,
            receiving=receiving,
            level=level,
            provider=provider,
            call_id=call_id,
            request_id=request_id,
            lease=lease,
        )
        call: call_pb2.Call = self._unary(self._stub.CreateCall, request, timeout)
        return call

    def get_call(self, name: str, *, timeout: float | None = None) -> call_pb2.Call:
        """Get a call by ``calls/{call}`` (or just ``{call}``)."""
        request = callqos_service_pb2.GetCallRequest(name=_requests.call_name(name))
        call: call_pb2.Call = self._unary(self._stub.GetCall, request, timeout)
        return call

    def list_calls(
        self,
        *,
        state: specs.EnumLike | None = None,
        provider: str | None = None,
        line: str | None = None,
        page_size: int | None = None,
        timeout: float | None = None,
    ) -> Iterator[call_pb2.Call]:
        """Every call (newest first; only those in ``state``, of ``provider``, offered on
        ``line``), fetching further pages as the iteration goes."""
        request = callqos_service_pb2.ListCallsRequest(
            filter=_requests.calls_filter(state, provider, line), page_size=page_size or 0
        )
        return self._paged(self._stub.ListCalls, request, "calls", timeout)

    def renegotiate(
        self,
        name: str,
        *,
        qos: flowspec_pb2.QosSpec | None = None,
        sending: flowspec_pb2.FlowSpec | None = None,
        receiving: flowspec_pb2.FlowSpec | None = None,
        level: specs.EnumLike | None = None,
        etag: str | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> call_pb2.Call:
        """Change the QoS of a connected call. A direction left out keeps its QoS.

        On refusal the call keeps its previous QoS, byte for byte.

        Raises:
            QosUnavailableError / QosPolicyFailureError: refused; see ``counter_offer``.
            EtagMismatchError: ``etag`` given and the call changed since.
            NotOwnerError, CallNotConnectedError, RenegotiationUnsupportedError.
        """
        request = _requests.renegotiate_call(
            name,
            qos=qos,
            sending=sending,
            receiving=receiving,
            level=level,
            etag=etag,
            request_id=request_id,
        )
        call: call_pb2.Call = self._unary(self._stub.RenegotiateCall, request, timeout)
        return call

    def drop(self, name: str, *, etag: str | None = None, timeout: float | None = None) -> call_pb2.Call:
        """Drop a call and release what it reserved. Dropping twice is harmless."""
        request = callqos_service_pb2.DropCallRequest(name=_requests.call_name(name), etag=etag or "")
        call: call_pb2.Call = self._unary(self._stub.DropCall, request, timeout)
        return call

    def extend(
        self,
        name: str,
        *,
        lease: float | None = None,
        etag: str | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> call_pb2.Call:
        """Renew a call's lease: it then ends ``lease`` seconds from now (None: the call's own
        lease length). Only the call's owner may. A ``request_id`` is generated when not given,
        so a retried renewal extends once.

        Raises:
            LeaseExpiredError: too late: the lease had ended, and the call is disconnected.
            CallNotLeasedError: the call has no lease (or is the answering leg of a pair).
            CallNotConnectedError: the call ended otherwise.
        """
        request = _requests.extend_call(name, lease=lease, etag=etag, request_id=request_id)
        call: call_pb2.Call = self._unary(self._stub.ExtendCall, request, timeout)
        return call

    def keep_alive(
        self,
        call: call_pb2.Call,
        *,
        interval: float | None = None,
        drop: bool = True,
        on_lost: Callable[[LeaseLostError], object] | None = None,
    ) -> KeepAlive:
        """Renew ``call``'s lease from a thread every ``interval`` seconds (a third of its lease)
        until the returned :class:`~callqos.client.keepalive.KeepAlive` is closed — use it as a
        ``with`` block — then drop the call (unless ``drop=False``). A lost lease shows as
        ``lost`` / ``error``, ``on_lost(error)``, and :class:`LeaseLostError` at the block's end."""
        return KeepAlive(self, call, interval=interval, drop=drop, on_lost=on_lost).start()

    # -- lines and incoming calls -----------------------------------------------------------

    def open_line(
        self,
        address: str,
        *,
        line_id: str | None = None,
        no_answer_timeout: float | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> line_pb2.Line:
        """Open a line for ``address`` (lineOpen): calls made to it are offered to this client's
        principal, its owner. ``no_answer_timeout`` (seconds, 1-600) is how long an offered call
        rings; the server's default otherwise.

        Raises:
            AddressInUseError: another line is open for the address.
            LineAlreadyExistsError: ``line_id`` is taken.
        """
        request = _requests.create_line(
            address, line_id=line_id, no_answer_timeout=no_answer_timeout, request_id=request_id
        )
        line: line_pb2.Line = self._unary(self._stub.CreateLine, request, timeout)
        return line

    def get_line(self, name: str, *, timeout: float | None = None) -> line_pb2.Line:
        """Get a line by ``lines/{line}`` (or just ``{line}``)."""
        request = callqos_service_pb2.GetLineRequest(name=_requests.line_name(name))
        line: line_pb2.Line = self._unary(self._stub.GetLine, request, timeout)
        return line

    def list_lines(
        self,
        *,
        state: specs.EnumLike | None = None,
        address: str | None = None,
        owner: str | None = None,
        page_size: int | None = None,
        timeout: float | None = None,
    ) -> Iterator[line_pb2.Line]:
        """Every line (newest first; only those in ``state``, for ``address``, of ``owner``)."""
        request = callqos_service_pb2.ListLinesRequest(
            filter=_requests.lines_filter(state, address, owner), page_size=page_size or 0
        )
        return self._paged(self._stub.ListLines, request, "lines", timeout)

    def close_line(self, name: str, *, etag: str | None = None, timeout: float | None = None) -> line_pb2.Line:
        """Close a line (owner only): calls still ringing on it end NO_ANSWER; answered calls go
        on. Closing twice is harmless."""
        request = callqos_service_pb2.CloseLineRequest(name=_requests.line_name(name), etag=etag or "")
        line: line_pb2.Line = self._unary(self._stub.CloseLine, request, timeout)
        return line

    def answer(
        self,
        name: str,
        *,
        qos: flowspec_pb2.QosSpec | None = None,
        sending: flowspec_pb2.FlowSpec | None = None,
        receiving: flowspec_pb2.FlowSpec | None = None,
        etag: str | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> call_pb2.Call:
        """Answer an offered call (lineAnswer), in this end's terms: with no QoS, as offered; a
        direction left out keeps what was offered; a direction may only ask for less.

        Raises:
            QosUnavailableError: the caller asked at NEEDED for more than the answer (or the
                provider) gives; the call is failed, both ends disconnected QOS_UNAVAILABLE.
            CallNotOfferingError: the call is not offering (answered, rejected, rang out).
            InvalidRequestError: the answer asks for more than the offer.
        """
        request = _requests.answer_call(
            name, qos=qos, sending=sending, receiving=receiving, etag=etag, request_id=request_id
        )
        call: call_pb2.Call = self._unary(self._stub.AnswerCall, request, timeout)
        return call

    def reject(
        self, name: str, *, etag: str | None = None, request_id: str | None = None, timeout: float | None = None
    ) -> call_pb2.Call:
        """Reject an offered call: both ends disconnect REJECTED. Rejecting twice is harmless."""
        request = _requests.reject_call(name, etag=etag, request_id=request_id)
        call: call_pb2.Call = self._unary(self._stub.RejectCall, request, timeout)
        return call

    def offers(
        self, line: str, *, after_sequence: int | None = None, resume: ResumePolicy | None = None
    ) -> OfferStream:
        """Follow the calls offered on ``line``: each as a ``Call`` still OFFERING, to answer or
        reject. Without ``after_sequence`` it starts with the calls already ringing on the line,
        then follows new offers; with one, it resumes after that event sequence (its
        ``last_sequence``). It reconnects and resumes across server restarts like :meth:`watch`;
        a call that stopped ringing before it is read is skipped."""
        return OfferStream(self, _requests.line_name(line), after_sequence, resume or ResumePolicy())

    def _start_sequence(self, line: str) -> int:
        """The sequence a watch "from now" starts after (its x-callqos-start-sequence)."""
        request = _requests.watch_events(None, None, [_requests.OFFERED], line)
        responses = self._stub.WatchEvents(
            request, metadata=_channel.traced(self._metadata + bearer_metadata(self._token)), timeout=self.timeout
        )
        try:
            metadata = responses.initial_metadata()
        except grpc.RpcError as exc:
            raise from_grpc_error(exc) from exc
        finally:
            responses.cancel()
        for key, value in metadata or ():
            if key == START_SEQUENCE_HEADER:
                return int(value)
        raise UnavailableError(f"the server sent no {START_SEQUENCE_HEADER}")

    # -- providers and links ----------------------------------------------------------------

    def list_providers(self, *, timeout: float | None = None) -> Iterator[provider_pb2.Provider]:
        """Every provider the server hosts, with its capabilities."""
        request = callqos_service_pb2.ListProvidersRequest()
        return self._paged(self._stub.ListProviders, request, "providers", timeout)

    def get_provider(self, name: str, *, timeout: float | None = None) -> provider_pb2.Provider:
        """Get a provider by ``providers/{provider}`` (or just ``{provider}``)."""
        request = callqos_service_pb2.GetProviderRequest(name=_requests.provider_name(name))
        provider: provider_pb2.Provider = self._unary(self._stub.GetProvider, request, timeout)
        return provider

    def default_provider(self, *, timeout: float | None = None) -> provider_pb2.Provider:
        """The provider that carries calls naming none."""
        providers = list(self.list_providers(timeout=timeout))
        return next((p for p in providers if p.default), providers[0])

    def list_links(self, provider: str | None = None, *, timeout: float | None = None) -> Iterator[provider_pb2.Link]:
        """A provider's links (default provider when ``None``)."""

        def links() -> Iterator[provider_pb2.Link]:
            parent = provider or self.default_provider(timeout=timeout).name
            request = callqos_service_pb2.ListLinksRequest(parent=_requests.provider_name(parent))
            yield from self._paged(self._stub.ListLinks, request, "links", timeout)

        return links()

    def update_link_capacity(
        self, link: str, capacity_bytes_per_second: int, *, timeout: float | None = None
    ) -> callqos_service_pb2.UpdateLinkResponse:
        """Set a link's capacity, durably (it survives server restarts while the link's configured
        capacity is unchanged). Calls that no longer fit are degraded or dropped; the response has
        the link (`.link`) and each call changed (`.changes`)."""
        request = _requests.update_link_capacity(link, capacity_bytes_per_second)
        updated: callqos_service_pb2.UpdateLinkResponse = self._unary(self._stub.UpdateLink, request, timeout)
        return updated

    # -- events -----------------------------------------------------------------------------

    def event_cursor(self, *, timeout: float | None = None) -> int:
        """The sequence of the newest event now: ``watch(after_sequence=cursor)`` later yields
        exactly what happened from here on (the start a watch "from now" reports)."""
        stream = self._stub.WatchEvents(
            _requests.watch_events(None, None, None),
            timeout=self.timeout if timeout is None else timeout,
            metadata=_channel.traced(self._metadata),
        )
        try:
            for key, value in stream.initial_metadata() or ():
                if key == START_SEQUENCE_HEADER:
                    return int(value)
            next(stream)  # no start: the server refused the stream; raise its error
            raise UnavailableError("the server sent no start sequence")
        except grpc.RpcError as exc:
            raise from_grpc_error(exc) from exc
        finally:
            stream.cancel()

    def watch(
        self,
        after_sequence: int | None = None,
        *,
        call: str | None = None,
        line: str | None = None,
        types: Iterable[specs.EnumLike] | None = None,
        resume: ResumePolicy | None = None,
        on_reconnect: Callable[[CallQosError, float], object] | None = None,
    ) -> EventStream:
        """Follow QoS events, reconnecting and resuming after the last one seen.

        ``after_sequence=None`` starts with events committed from now on; ``0`` replays all
        retained events. ``call`` and ``line`` keep only the events of that call, or of the calls
        offered on that line (a monitor's view of it). Each event is yielded once, in sequence
        order, across server restarts. ``on_reconnect(error, delay)`` is told of each
        reconnection before it waits ``delay`` seconds (the CLI prints it).
        Until the first event arrives a "from now on" watch has no cursor, so events committed
        while it is reconnecting before then are not replayed; start from a sequence to avoid it.

        Raises (from iteration):
            CursorExpiredError: the cursor is older than the server's retention.
            CallQosError: any other non-transient error, or UNAVAILABLE for longer than
                ``resume.give_up_after``.
        """
        state = WatchState(after_sequence, call, types, resume or ResumePolicy(), line=line, on_reconnect=on_reconnect)
        return EventStream(self._stub, self._metadata, state, self._token)

    # -- paging -----------------------------------------------------------------------------

    def _paged(self, method: Callable[..., Any], request: Any, field: str, timeout: float | None) -> Iterator[Any]:
        # A generator, so the first page is fetched when iteration starts (and each later
        # page when the previous one is used up), each under its own deadline.
        def pages() -> Iterator[Any]:
            while True:
                response = self._unary(method, request, timeout)
                yield from getattr(response, field)
                if not response.next_page_token:
                    return
                request.page_token = response.next_page_token

        return pages()


class EventStream(Iterator[event_pb2.QosEvent]):
    """Iterator over QoS events that survives server restarts. Close it to stop following."""

    def __init__(
        self,
        stub: callqos_service_pb2_grpc.CallQosServiceStub,
        metadata: _channel.Metadata,
        state: WatchState,
        token: Callable[[], str] | None = None,
    ) -> None:
        self._stub = stub
        self._metadata = metadata
        self._token = token  # asked again at every reconnect: a resumed watch sends a fresh token
        self._state = state
        self._responses: Any = None
        self._closed = threading.Event()
        self._lock = threading.Lock()

    @property
    def last_sequence(self) -> int | None:
        """The sequence of the last event yielded: the cursor to resume from."""
        return self._state.last_sequence

    @property
    def reconnects(self) -> int:
        """How many times the stream was reopened after a transient failure."""
        return self._state.reconnects

    def __iter__(self) -> EventStream:
        return self

    def __next__(self) -> event_pb2.QosEvent:
        while not self._closed.is_set():
            responses = self._open()
            try:
                response = next(responses)
            except StopIteration:
                # The server ended the stream with OK; a watch follows for ever, so reopen
                # (with backoff, in case the server keeps doing that).
                error: CallQosError = UnavailableError(STREAM_ENDED)
            except grpc.RpcError as exc:
                if self._closed.is_set():
                    break
                error = from_grpc_error(exc)
            else:
                event: event_pb2.QosEvent = response.event
                if self._state.accept(event):
                    return event
                continue
            with self._lock:
                self._responses = None
            delay = self._state.backoff(error)
            # An Event wait, not time.sleep, so that close() from another thread is prompt.
            self._closed.wait(delay)
        raise StopIteration

    def _open(self) -> Any:
        with self._lock:
            if self._responses is None:
                self._responses = self._stub.WatchEvents(
                    self._state.request(), metadata=_channel.traced((*self._metadata, *bearer_metadata(self._token)))
                )
                if self._state.last_sequence is None:
                    self._state.started(self._responses.initial_metadata())
            return self._responses

    def close(self) -> None:
        """Stop following; safe from another thread, ends a blocked iteration."""
        self._closed.set()
        with self._lock:
            if self._responses is not None:
                self._responses.cancel()

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class OfferStream(Iterator[call_pb2.Call]):
    """The calls offered on a line, each still OFFERING when yielded (see :meth:`Client.offers`).

    Started without a cursor, it first reads where a watch "from now" begins, then lists the calls
    already ringing on the line, then follows the line's CALL_OFFERED events from that point: an
    offer made meanwhile shows in both and is yielded once."""

    def __init__(self, client: Client, line: str, after_sequence: int | None, resume: ResumePolicy) -> None:
        self._client = client
        self._ringing: deque[call_pb2.Call] = deque()
        self._listed: set[str] = set()
        if after_sequence is None:
            after_sequence = client._start_sequence(line)
            self._ringing.extend(reversed(list(client.list_calls(state="offering", line=line))))
            self._listed = {call.name for call in self._ringing}
        self._events = client.watch(after_sequence, line=line, types=[_requests.OFFERED], resume=resume)

    @property
    def last_sequence(self) -> int | None:
        """The sequence of the last offer event read: resume with ``offers(line, after_sequence=...)``."""
        return self._events.last_sequence

    def __iter__(self) -> OfferStream:
        return self

    def __next__(self) -> call_pb2.Call:
        if self._ringing:
            return self._ringing.popleft()
        for event in self._events:
            if event.call in self._listed:
                self._listed.discard(event.call)  # listed already; each offer has one such event
                continue
            call = self._client.get_call(event.call)
            if call.state == call_pb2.Call.State.STATE_OFFERING:
                return call
        raise StopIteration

    def close(self) -> None:
        """Stop following; safe from another thread."""
        self._events.close()

    def __enter__(self) -> OfferStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
