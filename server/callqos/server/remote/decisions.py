"""The host's end of the Decide stream: Admit, Renegotiate and Release on one stream per
connection instead of an RPC each (an RPC costs a Python gRPC client about three times what a
message on an open stream does, and a decision is the hot path of CreateCall and DropCall).

Requests are numbered and written one at a time; a reader matches each answer to the request
waiting for it. When the stream ends, every request still waiting fails with StreamClosed, and
the connection is over (the supervisor reconnects and restores, as for any other loss).

A request's caller may give up at any moment (its deadline, or the caller's). gRPC cancels the
whole stream when a write on it is cancelled, and the stream is every decision's: so a write,
once started, runs to its end whoever stops waiting for it, and a request whose caller gave up
before its turn to be written is not written at all (the host releases the call after a failed
decision, as it does for a provider that answered too late). A request given up after it was
written may still be answered: that late answer goes to `late`, for the host to learn what the
provider did with a request it no longer waited for (a renegotiation granted after all).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable

import grpc

from callqos.provider.v1 import provider_service_pb2 as pb
from callqos.provider.v1 import provider_service_pb2_grpc as pb_grpc

# Given-up requests remembered for their late answers, at most: a provider that never answers
# them must not grow the host's memory.
GIVEN_UP_REMEMBERED = 1024

Late = Callable[[pb.DecideRequest, pb.DecideResponse], None]


class StreamClosed(Exception):
    """The Decide stream ended before the answer came."""


class DecisionStream:
    """One open Decide stream."""

    def __init__(self, stub: pb_grpc.ProviderServiceStub, late: Late | None = None) -> None:
        self._call = stub.Decide()
        self._next = 0
        self._waiting: dict[int, asyncio.Future[pb.DecideResponse]] = {}
        self._late = late
        self._given_up: OrderedDict[int, pb.DecideRequest] = OrderedDict()
        self._writing = asyncio.Lock()
        self._closed = False

    async def ask(self, request: pb.DecideRequest) -> pb.DecideResponse:
        """Send `request` (its id set here) and wait for its answer. The caller bounds the wait,
        writing included (the provider host runs every provider call under its deadline), so a
        provider that stops reading cannot hold it."""
        if self._closed:
            raise StreamClosed("the Decide stream is closed")
        self._next += 1
        request.id = self._next
        answer: asyncio.Future[pb.DecideResponse] = asyncio.get_running_loop().create_future()
        self._waiting[request.id] = answer
        sending = asyncio.ensure_future(self._send(request))
        sending.add_done_callback(_retrieved)  # its failure is the caller's, if the caller still waits
        try:
            await asyncio.shield(sending)  # a caller that gives up must not cancel the write (the stream)
            return await answer
        finally:
            self._waiting.pop(request.id, None)
            given_up = answer.cancelled() or not answer.done()  # (a caller cancelled awaiting it cancels it)
            if given_up and not self._closed:  # its answer may still come
                self._given_up[request.id] = request
                while len(self._given_up) > GIVEN_UP_REMEMBERED:
                    self._given_up.popitem(last=False)

    async def _send(self, request: pb.DecideRequest) -> None:
        """Write `request` in its turn, unless its caller gave up meanwhile."""
        async with self._writing:
            if request.id not in self._waiting:
                self._given_up.pop(request.id, None)
                return  # given up before its turn: the provider never sees it
            if self._closed:
                raise StreamClosed("the Decide stream is closed")
            try:
                await self._call.write(request)
            except (asyncio.InvalidStateError, grpc.aio.AioRpcError) as ended:  # the stream ended meanwhile
                raise StreamClosed(f"the Decide stream ended: {ended}") from ended

    async def read(self) -> None:
        """Hand each answer to its request until the stream ends; then fail those still waiting.
        Raises the stream's error (or StreamClosed when it ends cleanly)."""
        try:
            async for response in self._call:
                waiting = self._waiting.get(response.id)
                if waiting is not None and not waiting.done():
                    waiting.set_result(response)
                    continue
                given_up = self._given_up.pop(response.id, None)
                if given_up is not None and self._late is not None:
                    self._late(given_up, response)
            raise StreamClosed("the provider ended the Decide stream")
        except asyncio.CancelledError:
            # gRPC ends the reading of a cancelled call with CancelledError; only the cancellation of
            # this reader itself is one (the connection is being closed), anything else is the stream's end.
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            raise StreamClosed("the Decide stream was cancelled") from None
        finally:
            self.close()

    def close(self) -> None:
        self._closed = True
        for waiting in self._waiting.values():
            if not waiting.done():
                waiting.set_exception(StreamClosed("the Decide stream ended"))
        self._waiting.clear()
        self._given_up.clear()
        self._call.cancel()


def _retrieved(task: asyncio.Task[None]) -> None:
    """Retrieve a finished write's exception (a stream that ended meanwhile), so that a write whose
    caller gave up is not reported as an exception never retrieved."""
    if not task.cancelled():
        task.exception()


def grpc_code(code: int) -> grpc.StatusCode:
    """The grpc.StatusCode of a google.rpc.Code number (callqos.v1.GrpcCode has the same)."""
    for status in grpc.StatusCode:
        if status.value[0] == code:
            return status
    return grpc.StatusCode.UNKNOWN
