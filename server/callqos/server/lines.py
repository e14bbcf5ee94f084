"""Lines: the addresses on which applications receive calls (TAPI lineOpen, lineClose).

A principal opens a line for an address and owns it; while it is open, calls made to that
address are offered to it (the switchboard, `incoming`, does that). This module owns the line
resource itself: opening it (AIP-133: named by line_id or a server UUID, idempotent with a
request_id, ALREADY_EXISTS for a taken line_id or for an address another open line has),
reading and listing lines, and closing one (owner only; a closed line stays readable and its
address may be opened again). What closing does to the calls ringing on the line is the
switchboard's business: it closes the line here, then ends them.

Who may do what (conformance/SPEC.md LINE-1 … LINE-4): anyone opens a line and becomes its
owner; anyone reads, lists and watches lines (a monitor needs no permission, as anyone may
watch any call, OWNER-3); only the owner closes it and answers or rejects its calls.
"""

from __future__ import annotations

import contextlib
import hashlib
import time

from google.protobuf import duration_pb2, timestamp_pb2

from callqos.server import names
from callqos.server.errors import Reason, ServiceError
from callqos.server.idempotency import Idempotency, RequestKey
from callqos.server.locks import KeyedLocks, to_completion
from callqos.server.store.base import AddressInUseError, LinePage, Store
from callqos.v1 import callqos_service_pb2 as svc
from callqos.v1 import line_pb2

Line = line_pb2.Line
LineState = line_pb2.Line.State


def line_etag(line: Line) -> str:
    """A strong etag (AIP-154): changes whenever any field of the line changes."""
    unsigned = Line()
    unsigned.CopyFrom(line)
    unsigned.ClearField("etag")
    return hashlib.sha256(unsigned.SerializeToString(deterministic=True)).hexdigest()[:16]


def _now() -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(time.time_ns())
    return stamp


class LineManager:
    """Opens, reads, lists and closes lines. `hold(name)` is the lock under which a line's
    state is decided: whoever offers a call on a line holds it while checking the line is open
    and recording the offer, so that an offer and a close are decided one after the other."""

    def __init__(self, store: Store, no_answer_seconds: float) -> None:
        self.store = store
        self.no_answer_seconds = no_answer_seconds
        self._requests = Idempotency(store)
        self._locks = KeyedLocks()

    def hold(self, name: str) -> contextlib.AbstractAsyncContextManager[None]:
        return self._locks.hold(("line", name))

    # -- reads ------------------------------------------------------------------------------
    async def get(self, name: str) -> Line:
        """The line `name` (a valid line name), or LINE_NOT_FOUND."""
        line = await self.store.get_line(name)
        if line is None:
            raise ServiceError(Reason.ERROR_REASON_LINE_NOT_FOUND, f"no line {name}", metadata={"line": name})
        return line

    async def open_line(self, address: str) -> Line | None:
        """The line open for `address`, if any."""
        return await self.store.open_line(address)

    async def list_lines(
        self, *, state: int | None, address: str | None, owner: str | None, limit: int, before: int
    ) -> LinePage:
        return await self.store.list_lines(state=state, address=address, owner=owner, limit=limit, before=before)

    # -- open -------------------------------------------------------------------------------
    async def create(self, request: svc.CreateLineRequest, principal: str) -> Line:
        """Open the line `request` describes (validated) for `principal`, its owner."""
        return await to_completion(
            self._requests.once(
                "CreateLine", request, principal, lambda key: self._create(request, principal, key), self.get
            )
        )

    async def _create(self, request: svc.CreateLineRequest, principal: str, key: RequestKey | None) -> Line:
        name = names.line_name(request.line_id or names.new_line_id())
        address = request.line.address
        # The address first, then the name: two opens of one address are decided one after the
        # other, as are two opens of one line_id.
        async with self._locks.hold(("address", address)), self._locks.hold(("line", name)):
            if await self.store.get_line(name) is not None:
                raise ServiceError(
                    Reason.ERROR_REASON_LINE_ALREADY_EXISTS, f"{name} already exists", metadata={"line": name}
                )
            held = await self.store.open_line(address)
            if held is not None:
                raise self._in_use(address, held)
            timeout = duration_pb2.Duration()
            if request.line.HasField("no_answer_timeout"):
                timeout.CopyFrom(request.line.no_answer_timeout)
            else:
                timeout.FromNanoseconds(round(self.no_answer_seconds * 1e9))
            line = Line(
                name=name,
                address=address,
                owner=principal,
                state=LineState.STATE_OPEN,
                no_answer_timeout=timeout,
                create_time=_now(),
            )
            line.etag = line_etag(line)
            record = key.record(name, None) if key else None
            try:
                await self.store.commit((), (), record, lines=[line])
            except AddressInUseError:
                # Only another process sharing the store could get here (the lock above orders
                # this one's opens); the store's unique index is what keeps the rule then.
                held = await self.store.open_line(address)
                raise self._in_use(address, held) from None
            return line

    @staticmethod
    def _in_use(address: str, held: Line | None) -> ServiceError:
        metadata = {"address": address}
        if held is not None:
            metadata["line"] = held.name
        return ServiceError(
            Reason.ERROR_REASON_ADDRESS_IN_USE,
            f"a line is already open for {address}" + (f": {held.name}" if held else ""),
            metadata=metadata,
        )

    # -- close ------------------------------------------------------------------------------
    async def close(self, request: svc.CloseLineRequest, principal: str) -> Line:
        """Mark the line `request` names (validated) closed: owner only, etag honoured, closing
        a closed line returns it unchanged. Calls still ringing on it are the caller's to end."""
        async with self.hold(request.name):
            line = await self.get(request.name)
            if line.owner != principal:
                raise ServiceError(
                    Reason.ERROR_REASON_NOT_OWNER,
                    f"only the owner of {line.name} may close it",
                    metadata={"line": line.name},
                )
            if line.state == LineState.STATE_CLOSED:
                return line
            if request.etag and request.etag != line.etag:
                raise ServiceError(
                    Reason.ERROR_REASON_ETAG_MISMATCH,
                    f"{line.name} changed since etag {request.etag}; read it again",
                    metadata={"line": line.name, "etag": line.etag},
                )
            line.state = LineState.STATE_CLOSED
            line.close_time.CopyFrom(_now())
            line.etag = line_etag(line)
            await self.store.commit((), (), None, lines=[line])
            return line
