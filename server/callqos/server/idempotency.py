"""Idempotent requests (AIP-155): a request_id makes CreateCall, RenegotiateCall, ExtendCall,
AnswerCall, RejectCall and CreateLine run at most once per principal (of a tenant), and a repeat answers with
the first outcome.

A request is known by its `RequestKey`: who sent it, to which method, and a fingerprint of its
body without the request_id. Repeats of one request_id are serialized, so that concurrent ones
also run once. A repeat with another method or body is REQUEST_ID_REUSED; a repeat of a request
that failed gets the same status again (`ReplayedStatus`); a repeat of one that succeeded gets
the call (or line) as it is now. The first outcome itself is recorded by the call manager, in the same
store transaction as the call and its events (see `calls.CallManager._settle`), so an outcome
and its record can never disagree.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from google.rpc import status_pb2

from callqos.server.errors import FieldViolation, Reason, ReplayedStatus, ServiceError
from callqos.server.locks import KeyedLocks
from callqos.server.store.base import IdempotencyRecord, Store
from callqos.v1 import callqos_service_pb2 as svc
from callqos.wire import DEFAULT_TENANT

IdempotentRequest = (
    svc.CreateCallRequest
    | svc.RenegotiateCallRequest
    | svc.ExtendCallRequest
    | svc.AnswerCallRequest
    | svc.RejectCallRequest
    | svc.CreateLineRequest
)
# What a request creates or changes: a call, or a line.
Resource = TypeVar("Resource")


def fingerprint(method: str, request: IdempotentRequest) -> str:
    """The identity of a request's body: the method and every field but request_id."""
    body = type(request).FromString(request.SerializeToString())
    body.ClearField("request_id")
    return hashlib.sha256(method.encode() + body.SerializeToString(deterministic=True)).hexdigest()


@dataclass(frozen=True)
class RequestKey:
    """One request_id's identity: who sent it, to which method, with what body."""

    request_id: str
    principal: str
    method: str
    fingerprint: str
    tenant: str = DEFAULT_TENANT

    def record(self, call: str, error: ServiceError | None) -> IdempotencyRecord:
        """The record of this request's first outcome: `error`, or success on `call` (the name
        of the call, or line, it created or changed)."""
        status = error.to_status().SerializeToString() if error else b""
        return IdempotencyRecord(
            self.request_id, self.principal, self.method, self.fingerprint, call, status, self.tenant
        )


class Idempotency:
    """Runs each request_id once, and replays its first outcome to repeats."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._locks = KeyedLocks(store.shared_locks(), "request")

    async def once(
        self,
        method: str,
        request: IdempotentRequest,
        principal: str,
        run: Callable[[RequestKey | None], Awaitable[Resource]],
        read: Callable[[str], Awaitable[Resource]],
        *,
        tenant: str = DEFAULT_TENANT,
    ) -> Resource:
        """`run(key)` the first time this principal sends this request_id (`run(None)` for a
        request without one; `key` is for recording the outcome); for a repeat, the first
        outcome again: its failure, or the call it succeeded on, read with `read`."""
        if not request.request_id:
            return await run(None)
        async with self._locks.hold((tenant, principal, request.request_id)):
            key = RequestKey(request.request_id, principal, method, fingerprint(method, request), tenant)
            record = await self._store.find_request(key.request_id, principal, tenant)
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
            return await read(record.call)
