"""Lines: the addresses on which applications receive calls (TAPI lineOpen, lineClose).

A principal opens a line for an address and owns it; while it is open, calls made to that
address are offered to it (the switchboard, `incoming`, does that). This module owns the line
resource itself: opening it (AIP-133: named by line_id or a server UUID, idempotent with a
request_id, ALREADY_EXISTS for a taken line_id or for an address another open line has),
reading and listing lines, and closing one (owner only; a closed line stays readable and its
address may be opened again). What closing does to the calls ringing on the line is the
switchboard's business: it closes the line here, then ends them.

Who may do what (conformance/SPEC.md LINE-1 … LINE-4, SEC-4): a caller whose roles grant
lines.create opens a line and becomes its owner; the line belongs to the owner's tenant. Callers
of that tenant read, list and watch its lines as they do its calls (lines.get, lines.list,
events.watch: a monitor); another tenant's line is LINE_NOT_FOUND, exactly as a line that does
not exist, and an address is unique only among one tenant's open lines, so that no tenant can
learn of, or take, another's address. Only the owner closes a line and answers or rejects its
calls. (The method-level permissions are checked by the security Guard before anything here.)
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
from callqos.server.security.identity import Caller
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
        self._locks = KeyedLocks(store.shared_locks(), "line")

    def hold(self, name: str) -> contextlib.AbstractAsyncContextManager[None]:
        return self._locks.hold(("line", name))

    # -- reads ------------------------------------------------------------------------------
    async def get(self, name: str, caller: Caller) -> Line:
        """The line `name` (a valid line name) of the caller's tenant, or LINE_NOT_FOUND. Another
        tenant's line is not found either, with the same answer: its existence is not told."""
        line = await self.store.get_line(name)
        if line is None or line.tenant != caller.tenant:
            raise ServiceError(
                Reason.ERROR_REASON_LINE_NOT_FOUND,
                f"no line {name}",
                metadata={"line": name},
                denial="" if line is None else f"{name} belongs to tenant {line.tenant}",
            )
        return line

    async def stored(self, name: str) -> Line:
        """The line `name`, whatever its tenant, or LINE_NOT_FOUND: for the server's own reads
        (the line an offer rings), never to answer a caller."""
        line = await self.store.get_line(name)
        if line is None:
            raise ServiceError(Reason.ERROR_REASON_LINE_NOT_FOUND, f"no line {name}", metadata={"line": name})
        return line

    async def open_line(self, address: str, tenant: str) -> Line | None:
        """The line of `tenant` open for `address`, if any."""
        return await self.store.open_line(address, tenant)

    async def list_lines(
        self, caller: Caller, *, state: int | None, address: str | None, owner: str | None, limit: int, before: int
    ) -> LinePage:
        """The caller's tenant's lines newest first, `limit` of them from cursor `before` (0: the newest)."""
        return await self.store.list_lines(
            tenant=caller.tenant, state=state, address=address, owner=owner, limit=limit, before=before
        )

    # -- open -------------------------------------------------------------------------------
    async def create(self, request: svc.CreateLineRequest, caller: Caller) -> Line:
        """Open the line `request` describes (validated) for the caller, its owner, in its tenant."""
        return await to_completion(
            self._requests.once(
                "CreateLine",
                request,
                caller.principal,
                lambda key: self._create(request, caller, key),
                lambda name: self.get(name, caller),
                tenant=caller.tenant,
            )
        )

    async def _create(self, request: svc.CreateLineRequest, caller: Caller, key: RequestKey | None) -> Line:
        name = names.line_name(request.line_id or names.new_line_id())
        address = request.line.address
        # The address first, then the name: two opens of one address are decided one after the
        # other, as are two opens of one line_id.
        async with self._locks.hold(("address", caller.tenant, address)), self._locks.hold(("line", name)):
            existing = await self.store.get_line(name)
            if existing is not None:
                # Line names are platform-wide, like call names: a line_id another tenant holds
                # is taken too (all a tenant learns of it), and the attempt is audited.
                raise ServiceError(
                    Reason.ERROR_REASON_LINE_ALREADY_EXISTS,
                    f"{name} already exists",
                    metadata={"line": name},
                    denial="" if existing.tenant == caller.tenant else f"{name} is held by tenant {existing.tenant}",
                )
            held = await self.store.open_line(address, caller.tenant)
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
                owner=caller.principal,
                tenant=caller.tenant,
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
                held = await self.store.open_line(address, caller.tenant)
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
    async def close(self, request: svc.CloseLineRequest, caller: Caller) -> Line:
        """Mark the line `request` names (validated) closed: owner only, etag honoured, closing
        a closed line returns it unchanged. Calls still ringing on it are the caller's to end."""
        async with self.hold(request.name):
            line = await self.get(request.name, caller)
            if line.owner != caller.principal:
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
