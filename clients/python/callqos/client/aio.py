"""The asyncio client: :class:`AsyncClient` and its :class:`AsyncEventStream`.

The twin of :mod:`callqos.client.sync`, with the same methods and arguments, awaited.

.. code-block:: python

    async with AsyncClient("127.0.0.1:50051", principal="alice") as client:
        call = await client.make_call("sip:bob@example.com", sending=controlled_load(500_000))
        async for event in client.watch(call=call.name):
            print(event.sequence, event.type)
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any

import grpc
import grpc.aio

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
from .keepalive import AsyncKeepAlive, LeaseLostError

__all__ = ["AsyncClient", "AsyncEventStream", "AsyncOfferStream"]


class AsyncClient:
    """An asyncio callqos client over one ``grpc.aio`` channel. See :class:`~.sync.Client`.

    The channel is created on first use, inside the running event loop: grpc.aio objects are
    bound to the loop that created them, so constructing the client outside a loop is safe.
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
        self._credentials = credentials
        self._metadata = _channel.request_metadata(principal, metadata)
        self._options = _channel.channel_options(retry=retry, service_config=service_config, extra=options)
        self._channel: grpc.aio.Channel | None = None
        self._stub_instance: callqos_service_pb2_grpc.CallQosServiceStub | None = None

    @property
    def _stub(self) -> callqos_service_pb2_grpc.CallQosServiceStub:
        if self._stub_instance is None:
            if self._credentials is None:
                self._channel = grpc.aio.insecure_channel(self.target, options=self._options)
            else:
                self._channel = grpc.aio.secure_channel(self.target, self._credentials, options=self._options)
            self._stub_instance = callqos_service_pb2_grpc.CallQosServiceStub(self._channel)  # type: ignore[no-untyped-call]
        return self._stub_instance

    # -- lifecycle --------------------------------------------------------------------------

    async def close(self) -> None:
        """Close the channel; open event streams end."""
        if self._channel is not None:
            await self._channel.close()
        self._channel = None
        self._stub_instance = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _unary(self, method: Callable[..., Any], request: Any, timeout: float | None) -> Any:
        try:
            return await method(
                request,
                timeout=self.timeout if timeout is None else timeout,
                metadata=_channel.traced(self._metadata + bearer_metadata(self._token)),
            )
        except grpc.RpcError as exc:
            raise from_grpc_error(exc) from exc

    # -- calls ------------------------------------------------------------------------------

    async def make_call(
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
        """See :meth:`Client.make_call <callqos.client.sync.Client.make_call>`."""
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
        call: call_pb2.Call = await self._unary(self._stub.CreateCall, request, timeout)
        return call

    async def get_call(self, name: str, *, timeout: float | None = None) -> call_pb2.Call:
        """Get a call by ``calls/{call}`` (or just ``{call}``)."""
        request = callqos_service_pb2.GetCallRequest(name=_requests.call_name(name))
        call: call_pb2.Call = await self._unary(self._stub.GetCall, request, timeout)
        return call

    def list_calls(
        self,
        *,
        state: specs.EnumLike | None = None,
        provider: str | None = None,
        line: str | None = None,
        page_size: int | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[call_pb2.Call]:
        """Every call (newest first), fetching further pages as the iteration goes."""
        request = callqos_service_pb2.ListCallsRequest(
            filter=_requests.calls_filter(state, provider, line), page_size=page_size or 0
        )
        return self._paged(self._stub.ListCalls, request, "calls", timeout)

    async def renegotiate(
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
        """See :meth:`Client.renegotiate <callqos.client.sync.Client.renegotiate>`."""
        request = _requests.renegotiate_call(
            name,
            qos=qos,
            sending=sending,
            receiving=receiving,
            level=level,
            etag=etag,
            request_id=request_id,
        )
        call: call_pb2.Call = await self._unary(self._stub.RenegotiateCall, request, timeout)
        return call

    async def drop(self, name: str, *, etag: str | None = None, timeout: float | None = None) -> call_pb2.Call:
        """Drop a call and release what it reserved. Dropping twice is harmless."""
        request = callqos_service_pb2.DropCallRequest(name=_requests.call_name(name), etag=etag or "")
        call: call_pb2.Call = await self._unary(self._stub.DropCall, request, timeout)
        return call

    async def extend(
        self,
        name: str,
        *,
        lease: float | None = None,
        etag: str | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> call_pb2.Call:
        """See :meth:`Client.extend <callqos.client.sync.Client.extend>`."""
        request = _requests.extend_call(name, lease=lease, etag=etag, request_id=request_id)
        call: call_pb2.Call = await self._unary(self._stub.ExtendCall, request, timeout)
        return call

    def keep_alive(
        self,
        call: call_pb2.Call,
        *,
        interval: float | None = None,
        drop: bool = True,
        on_lost: Callable[[LeaseLostError], object] | None = None,
    ) -> AsyncKeepAlive:
        """Renew ``call``'s lease from a task while ``async with client.keep_alive(call) as
        lease:`` runs, then drop it (unless ``drop=False``); see
        :meth:`Client.keep_alive <callqos.client.sync.Client.keep_alive>`. Without ``async with``,
        ``start()`` it and ``await close()`` it."""
        return AsyncKeepAlive(self, call, interval=interval, drop=drop, on_lost=on_lost)

    # -- lines and incoming calls -----------------------------------------------------------

    async def open_line(
        self,
        address: str,
        *,
        line_id: str | None = None,
        no_answer_timeout: float | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> line_pb2.Line:
        """See :meth:`Client.open_line <callqos.client.sync.Client.open_line>`."""
        request = _requests.create_line(
            address, line_id=line_id, no_answer_timeout=no_answer_timeout, request_id=request_id
        )
        line: line_pb2.Line = await self._unary(self._stub.CreateLine, request, timeout)
        return line

    async def get_line(self, name: str, *, timeout: float | None = None) -> line_pb2.Line:
        """Get a line by ``lines/{line}`` (or just ``{line}``)."""
        request = callqos_service_pb2.GetLineRequest(name=_requests.line_name(name))
        line: line_pb2.Line = await self._unary(self._stub.GetLine, request, timeout)
        return line

    def list_lines(
        self,
        *,
        state: specs.EnumLike | None = None,
        address: str | None = None,
        owner: str | None = None,
        page_size: int | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[line_pb2.Line]:
        """Every line (newest first; only those in ``state``, for ``address``, of ``owner``)."""
        request = callqos_service_pb2.ListLinesRequest(
            filter=_requests.lines_filter(state, address, owner), page_size=page_size or 0
        )
        return self._paged(self._stub.ListLines, request, "lines", timeout)

    async def close_line(self, name: str, *, etag: str | None = None, timeout: float | None = None) -> line_pb2.Line:
        """See :meth:`Client.close_line <callqos.client.sync.Client.close_line>`."""
        request = callqos_service_pb2.CloseLineRequest(name=_requests.line_name(name), etag=etag or "")
        line: line_pb2.Line = await self._unary(self._stub.CloseLine, request, timeout)
        return line

    async def answer(
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
        """See :meth:`Client.answer <callqos.client.sync.Client.answer>`."""
        request = _requests.answer_call(
            name, qos=qos, sending=sending, receiving=receiving, etag=etag, request_id=request_id
        )
        call: call_pb2.Call = await self._unary(self._stub.AnswerCall, request, timeout)
        return call

    async def reject(
        self, name: str, *, etag: str | None = None, request_id: str | None = None, timeout: float | None = None
    ) -> call_pb2.Call:
        """See :meth:`Client.reject <callqos.client.sync.Client.reject>`."""
        request = _requests.reject_call(name, etag=etag, request_id=request_id)
        call: call_pb2.Call = await self._unary(self._stub.RejectCall, request, timeout)
        return call

    def offers(
        self, line: str, *, after_sequence: int | None = None, resume: ResumePolicy | None = None
    ) -> AsyncOfferStream:
        """See :meth:`Client.offers <callqos.client.sync.Client.offers>`."""
        return AsyncOfferStream(self, _requests.line_name(line), after_sequence, resume or ResumePolicy())

    async def _start_sequence(self, line: str) -> int:
        """The sequence a watch "from now" starts after (its x-callqos-start-sequence)."""
        request = _requests.watch_events(None, None, [_requests.OFFERED], line)
        responses = self._stub.WatchEvents(
            request, metadata=_channel.traced(self._metadata + bearer_metadata(self._token)), timeout=self.timeout
        )
        try:
            metadata = await responses.initial_metadata()
        except grpc.RpcError as exc:
            raise from_grpc_error(exc) from exc
        finally:
            responses.cancel()
        for key, value in metadata or ():
            if key == START_SEQUENCE_HEADER:
                return int(value)
        raise UnavailableError(f"the server sent no {START_SEQUENCE_HEADER}")

    # -- providers and links ----------------------------------------------------------------

    def list_providers(self, *, timeout: float | None = None) -> AsyncIterator[provider_pb2.Provider]:
        """Every provider the server hosts, with its capabilities."""
        request = callqos_service_pb2.ListProvidersRequest()
        return self._paged(self._stub.ListProviders, request, "providers", timeout)

    async def get_provider(self, name: str, *, timeout: float | None = None) -> provider_pb2.Provider:
        """Get a provider by ``providers/{provider}`` (or just ``{provider}``)."""
        request = callqos_service_pb2.GetProviderRequest(name=_requests.provider_name(name))
        provider: provider_pb2.Provider = await self._unary(self._stub.GetProvider, request, timeout)
        return provider

    async def default_provider(self, *, timeout: float | None = None) -> provider_pb2.Provider:
        """The provider that carries calls naming none."""
        providers = [p async for p in self.list_providers(timeout=timeout)]
        return next((p for p in providers if p.default), providers[0])

    def list_links(
        self, provider: str | None = None, *, timeout: float | None = None
    ) -> AsyncIterator[provider_pb2.Link]:
        """A provider's links (default provider when ``None``)."""

        async def links() -> AsyncIterator[provider_pb2.Link]:
            parent = provider or (await self.default_provider(timeout=timeout)).name
            request = callqos_service_pb2.ListLinksRequest(parent=_requests.provider_name(parent))
            async for link in self._paged(self._stub.ListLinks, request, "links", timeout):
                yield link

        return links()

    async def update_link_capacity(
        self, link: str, capacity_bytes_per_second: int, *, timeout: float | None = None
    ) -> callqos_service_pb2.UpdateLinkResponse:
        """Set a link's capacity, durably (it survives server restarts while the link's configured
        capacity is unchanged). Calls that no longer fit are degraded or dropped; the response has
        the link (`.link`) and each call changed (`.changes`)."""
        request = _requests.update_link_capacity(link, capacity_bytes_per_second)
        updated: callqos_service_pb2.UpdateLinkResponse = await self._unary(self._stub.UpdateLink, request, timeout)
        return updated

    # -- events -----------------------------------------------------------------------------

    async def event_cursor(self, *, timeout: float | None = None) -> int:
        """See :meth:`Client.event_cursor <callqos.client.sync.Client.event_cursor>`."""
        stream = self._stub.WatchEvents(
            _requests.watch_events(None, None, None),
            timeout=self.timeout if timeout is None else timeout,
            metadata=_channel.traced(self._metadata),
        )
        try:
            for key, value in await stream.initial_metadata() or ():
                if key == START_SEQUENCE_HEADER:
                    return int(value)
            await stream.read()  # no start: the server refused the stream; raise its error
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
    ) -> AsyncEventStream:
        """See :meth:`Client.watch <callqos.client.sync.Client.watch>`."""
        state = WatchState(after_sequence, call, types, resume or ResumePolicy(), line=line, on_reconnect=on_reconnect)
        return AsyncEventStream(self, state)

    # -- paging -----------------------------------------------------------------------------

    async def _paged(
        self, method: Callable[..., Any], request: Any, field: str, timeout: float | None
    ) -> AsyncIterator[Any]:
        while True:
            response = await self._unary(method, request, timeout)
            for item in getattr(response, field):
                yield item
            if not response.next_page_token:
                return
            request.page_token = response.next_page_token


class AsyncEventStream(AsyncIterator[event_pb2.QosEvent]):
    """Async iterator over QoS events that survives server restarts."""

    def __init__(self, client: AsyncClient, state: WatchState) -> None:
        self._client = client
        self._state = state
        self._responses: Any = None
        self._closed = asyncio.Event()

    @property
    def last_sequence(self) -> int | None:
        """The sequence of the last event yielded: the cursor to resume from."""
        return self._state.last_sequence

    @property
    def reconnects(self) -> int:
        """How many times the stream was reopened after a transient failure."""
        return self._state.reconnects

    def __aiter__(self) -> AsyncEventStream:
        return self

    async def __anext__(self) -> event_pb2.QosEvent:
        while not self._closed.is_set():
            if self._responses is None:
                self._responses = self._client._stub.WatchEvents(
                    self._state.request(),
                    metadata=_channel.traced(self._client._metadata + bearer_metadata(self._client._token)),
                )
                if self._state.last_sequence is None:
                    self._state.started(await self._responses.initial_metadata())
            try:
                response = await self._responses.read()
            except asyncio.CancelledError:
                # aclose() cancels the call, which surfaces here as a cancellation; only a
                # cancellation of the consuming task itself must propagate.
                if self._closed.is_set():
                    break
                raise
            except grpc.RpcError as exc:
                if self._closed.is_set():
                    break
                error: CallQosError = from_grpc_error(exc)
            else:
                if response is grpc.aio.EOF:
                    # The server ended the stream with OK; a watch follows for ever, so reopen
                    # (with backoff, in case the server keeps doing that).
                    error = UnavailableError(STREAM_ENDED)
                elif self._state.accept(response.event):
                    event: event_pb2.QosEvent = response.event
                    return event
                else:
                    continue
            self._responses = None
            delay = self._state.backoff(error)
            try:
                # Wait on the closed flag, so aclose() ends the backoff at once.
                await asyncio.wait_for(self._closed.wait(), delay)
            except TimeoutError:
                pass
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Stop following; a pending iteration ends."""
        self._closed.set()
        if self._responses is not None:
            self._responses.cancel()

    async def __aenter__(self) -> AsyncEventStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class AsyncOfferStream(AsyncIterator[call_pb2.Call]):
    """The calls offered on a line, each still OFFERING when yielded. See
    :class:`callqos.client.sync.OfferStream`; the listing happens on the first iteration."""

    def __init__(self, client: AsyncClient, line: str, after_sequence: int | None, resume: ResumePolicy) -> None:
        self._client = client
        self._line = line
        self._after = after_sequence
        self._resume = resume
        self._ringing: deque[call_pb2.Call] = deque()
        self._listed: set[str] = set()
        self._events: AsyncEventStream | None = None
        self._closed = False

    @property
    def last_sequence(self) -> int | None:
        """The sequence of the last offer event read: resume with ``offers(line, after_sequence=...)``."""
        return self._events.last_sequence if self._events is not None else self._after

    def __aiter__(self) -> AsyncOfferStream:
        return self

    async def _start(self) -> AsyncEventStream:
        after = self._after
        if after is None:
            after = await self._client._start_sequence(self._line)
            listed = [call async for call in self._client.list_calls(state="offering", line=self._line)]
            self._ringing.extend(reversed(listed))
            self._listed = {call.name for call in listed}
        self._events = self._client.watch(after, line=self._line, types=[_requests.OFFERED], resume=self._resume)
        return self._events

    async def __anext__(self) -> call_pb2.Call:
        if self._closed:
            raise StopAsyncIteration
        events = self._events or await self._start()
        if self._ringing:
            return self._ringing.popleft()
        async for event in events:
            if event.call in self._listed:
                self._listed.discard(event.call)
                continue
            call = await self._client.get_call(event.call)
            if call.state == call_pb2.Call.State.STATE_OFFERING:
                return call
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Stop following."""
        self._closed = True
        if self._events is not None:
            await self._events.aclose()

    async def __aenter__(self) -> AsyncOfferStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
