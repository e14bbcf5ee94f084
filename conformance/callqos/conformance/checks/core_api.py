"""CORE-RESP / CORE-CAP / CORE-IDEM / CORE-OWN / CORE-ERR / CORE-ETAG / CORE-PSD: responsiveness,
advertised capabilities and their negative probes, idempotency, ownership, not-found errors,
etags and opaque provider-specific data."""

from __future__ import annotations

import grpc

from callqos.conformance.checks.common import refused_to_intruder
from callqos.conformance.checks.registry import MUST, check
from callqos.conformance.exceptions import CheckFailed
from callqos.conformance.harness import Call, CheckContext, Level, RpcFailed, RpcFailure, same
from callqos.conformance.rules import RESERVING, QosSpec, best_effort
from callqos.v1 import callqos_service_pb2 as svc

BE_QOS = QosSpec(sending=best_effort(), receiving=best_effort())
MAX_PROVIDER_SPECIFIC = 4096  # flowspec.proto QosSpec.provider_specific: at most 4096 bytes


def blob(ctx: CheckContext, size: int) -> bytes:
    """`size` opaque bytes (seeded), starting and ending with a zero byte (no C-string truncation)."""
    return b"\x00" + ctx.session.rng.randbytes(size - 2) + b"\x00"


def with_blob(qos: QosSpec, data: bytes) -> QosSpec:
    out = QosSpec()
    out.CopyFrom(qos)
    out.provider_specific = data
    return out


def carries_blob(call: Call, data: bytes, what: str) -> None:
    """requested_qos and granted_qos both carry `data` byte for byte."""
    for field in ("requested_qos", "granted_qos"):
        got = getattr(call, field).provider_specific
        if got != data:
            raise CheckFailed(
                f"{what}: {field}.provider_specific differs from the {len(data)} bytes sent (got {len(got)} bytes)"
            )


async def drop_with_etag(ctx: CheckContext, name: str, etag: str) -> None:
    """DropCall(name, etag = the current one) must disconnect the call."""
    try:
        dropped = await ctx.rpc("DropCall", svc.DropCallRequest(name=name, etag=etag))
    except RpcFailed as out:
        raise CheckFailed(f"DropCall with the current etag failed: {out.failure}") from None
    if dropped.state != Call.State.STATE_DISCONNECTED:
        raise CheckFailed(f"DropCall with the current etag left the call {Call.State.Name(dropped.state)}")


def other_etag(etag: str) -> str:
    """An etag of the same length that is certainly not `etag`."""
    return ("1" if etag.startswith("0") else "0") + etag[1:]


@check(
    "CORE-RESP-001",
    "The provider answers a simple request within its deadline",
    MUST,
    "core",
    spec=("PROV-10", "WATCH-2"),
    source="TAPI asynchronous completion by request id; errors.proto PROVIDER_UNAVAILABLE",
    preflight=True,
)
async def responsive(ctx: CheckContext) -> None:
    """CreateCall(best effort, BEST_EFFORT level) answers in time; its first event fixes the run's event cursor."""
    call = await ctx.create(BE_QOS, Level.SERVICE_LEVEL_BEST_EFFORT)
    try:
        events = await ctx.events(call.name, until=lambda got: bool(got), settle=0, after=0)
        ctx.session.cursor = max(events[0].sequence - 1, 0)
    except CheckFailed:
        pass  # missing events are the events profile's to report


@check(
    "CORE-CAP-001",
    "Advertised capabilities are coherent and the same from GetProvider and ListProviders",
    MUST,
    "core",
    spec=("PROV-8",),
    source="provider.proto ProviderCapabilities",
)
async def capabilities(ctx: CheckContext) -> None:
    """GetProvider == ListProviders entry; without qos_supported no reserving service type is advertised."""
    got = await ctx.rpc("GetProvider", svc.GetProviderRequest(name=ctx.provider))
    listed = await ctx.rpc("ListProviders", svc.ListProvidersRequest())
    entry = [p for p in listed.providers if p.name == ctx.provider]
    if not entry:
        raise CheckFailed(f"{ctx.provider} is missing from ListProviders")
    if not same(entry[0].capabilities, got.capabilities) or not same(got.capabilities, ctx.caps):
        raise CheckFailed("capabilities differ between GetProvider, ListProviders and the start of the run")
    if not got.capabilities.qos_supported and any(t in RESERVING for t in got.capabilities.service_types):
        raise CheckFailed("qos_supported is false but a reserving service type is advertised")


@check(
    "CORE-CAP-002",
    "Without link_admin, ListLinks is refused cleanly (UNIMPLEMENTED)",
    MUST,
    "core",
    spec=("LINK-1", "PROV-9"),
    source="errors.proto LINK_ADMIN_UNSUPPORTED",
    needs=("!link_admin",),
)
async def no_link_admin(ctx: CheckContext) -> None:
    """ListLinks(provider) → UNIMPLEMENTED LINK_ADMIN_UNSUPPORTED."""
    await ctx.expect_error(
        "ListLinks", svc.ListLinksRequest(parent=ctx.provider), grpc.StatusCode.UNIMPLEMENTED, "LINK_ADMIN_UNSUPPORTED"
    )


@check(
    "CORE-IDEM-001",
    "A repeated request_id returns the first call and reserves nothing more",
    MUST,
    "core",
    spec=("API-3", "LINK-2"),
    source="AIP-155; callqos_service.proto CreateCallRequest.request_id",
)
async def idempotent_create(ctx: CheckContext) -> None:
    """CreateCall twice with one request_id and body → the same call; link reservations grow once; a
    different body under the same request_id → INVALID_ARGUMENT REQUEST_ID_REUSED."""
    qos = ctx.params.feasible or BE_QOS
    request = ctx.request(qos, Level.SERVICE_LEVEL_IF_AVAILABLE, request_id=f"req-{ctx.unique()}")
    first = await ctx.create(qos, request=request)
    after_first = await ctx.reserved() if ctx.caps.link_admin else None
    for _ in range(3):
        again = await ctx.create(qos, request=request)
        if again.name != first.name:
            raise CheckFailed(
                f"repeating request_id {request.request_id!r} made a second call {again.name} (first {first.name})"
            )
    if after_first is not None and await ctx.reserved() != after_first:
        raise CheckFailed("repeating a request_id reserved capacity again")
    other = svc.CreateCallRequest()
    other.CopyFrom(request)
    other.call.destination = ctx.destination()
    other.call_id = ctx.unique()
    await ctx.expect_error(
        "CreateCall",
        other,
        grpc.StatusCode.INVALID_ARGUMENT,
        "REQUEST_ID_REUSED",
        what="CreateCall with a used request_id and a different body",
    )


@check(
    "CORE-IDEM-002",
    "A refused request repeated with its request_id gets the same refusal",
    MUST,
    "core",
    spec=("API-3", "LEVEL-1"),
    source="AIP-155: a repeated request returns the first outcome",
)
async def idempotent_refusal(ctx: CheckContext) -> None:
    """CreateCall(infeasible, NEEDED, request_id) twice → the same code, reason and refused call."""
    if ctx.params.infeasible is None:
        return
    request = ctx.request(ctx.params.infeasible, Level.SERVICE_LEVEL_NEEDED, request_id=f"req-{ctx.unique()}")
    outcomes: list[RpcFailure] = []
    for _ in range(2):
        result = await ctx.try_create(ctx.params.infeasible, request=request)
        if isinstance(result, Call):
            raise CheckFailed("an infeasible request at NEEDED connected")
        outcomes.append(result)
    a, b = outcomes
    if (a.code, a.reason) != (b.code, b.reason) or (a.refusal and b.refusal and a.refusal.call != b.refusal.call):
        raise CheckFailed(f"repeat gave a different outcome: {a} / {b}")


@check(
    "CORE-OWN-001",
    "Only the owner may renegotiate or drop; others get NOT_OWNER and change nothing",
    MUST,
    "core",
    spec=("OWNER-1", "OWNER-2"),
    source="lineSetCallQualityOfService: OWNER privilege; LINEERR_NOTOWNER",
)
async def owner_only(ctx: CheckContext) -> None:
    """RenegotiateCall and DropCall as another principal → PERMISSION_DENIED NOT_OWNER; the call keeps its etag."""
    qos = ctx.params.feasible or BE_QOS
    call = await ctx.create(qos, Level.SERVICE_LEVEL_IF_AVAILABLE)
    await refused_to_intruder(ctx, call, qos)
    after = await ctx.get(call.name)
    if after.etag != call.etag or after.state != Call.State.STATE_CONNECTED:
        raise CheckFailed("a refused non-owner request changed the call")


@check(
    "CORE-ERR-001",
    "Unknown calls and providers are NOT_FOUND with their reasons",
    MUST,
    "core",
    spec=("API-1", "API-2"),
    source="LINEERR_INVALCALLHANDLE; errors.proto; AIP-193",
)
async def not_found(ctx: CheckContext) -> None:
    """GetCall / DropCall / RenegotiateCall of a never-made call → NOT_FOUND CALL_NOT_FOUND; an unknown
    provider → PROVIDER_NOT_FOUND."""
    name = f"calls/{ctx.unique()}-never"
    nf = grpc.StatusCode.NOT_FOUND
    await ctx.expect_error("GetCall", svc.GetCallRequest(name=name), nf, "CALL_NOT_FOUND")
    await ctx.expect_error("DropCall", svc.DropCallRequest(name=name), nf, "CALL_NOT_FOUND")
    await ctx.expect_error("RenegotiateCall", svc.RenegotiateCallRequest(name=name, qos=BE_QOS), nf, "CALL_NOT_FOUND")
    request = ctx.request(BE_QOS, Level.SERVICE_LEVEL_BEST_EFFORT)
    request.call.provider = f"providers/{ctx.unique()}-none"
    await ctx.expect_error("CreateCall", request, nf, "PROVIDER_NOT_FOUND")


@check(
    "CORE-ETAG-001",
    "DropCall with a mismatched etag is ABORTED (ETAG_MISMATCH) and changes nothing; with the current etag it drops",
    MUST,
    "core",
    spec=("API-4",),
    source="AIP-154; google.rpc.Code ABORTED",
)
async def etag_drop(ctx: CheckContext) -> None:
    """CreateCall; DropCall(etag ≠ the call's) → ABORTED ETAG_MISMATCH, GetCall: CONNECTED with the same etag;
    DropCall(current etag) → DISCONNECTED."""
    call = await ctx.create(ctx.params.feasible or BE_QOS, Level.SERVICE_LEVEL_IF_AVAILABLE)
    if not call.etag:
        raise CheckFailed("CreateCall returned a call without an etag (call.proto: output only, AIP-154)")
    await ctx.expect_error(
        "DropCall",
        svc.DropCallRequest(name=call.name, etag=other_etag(call.etag)),
        grpc.StatusCode.ABORTED,
        "ETAG_MISMATCH",
        what="DropCall with a mismatched etag",
    )
    after = await ctx.get(call.name)
    if after.state != Call.State.STATE_CONNECTED or after.etag != call.etag:
        raise CheckFailed("DropCall refused for its etag changed the call")
    await drop_with_etag(ctx, call.name, call.etag)


@check(
    "CORE-PSD-001",
    "Provider-specific bytes round-trip unchanged in requested and granted QoS",
    MUST,
    "core",
    spec=("API-7",),
    source="Winsock2 QOS.ProviderSpecific; flowspec.proto QosSpec.provider_specific",
)
async def provider_specific(ctx: CheckContext) -> None:
    """CreateCall with a 64-byte blob (zero bytes included) at IF_AVAILABLE, and with a 4096-byte one at
    BEST_EFFORT level → the answer and GetCall carry each blob byte for byte in requested_qos and granted_qos.
    (Above 4096 bytes: CORE-VAL-022, and CORE-VAL-030 for the BadRequest field.)

    With the `provider_specific` parameter (a provider that interprets the bytes): its first payload at
    IF_AVAILABLE and its longest at BEST_EFFORT level round-trip the same way, and a 64-byte random blob is
    refused with INVALID_ARGUMENT (INVALID_REQUEST), a field violation on call.requested_qos.provider_specific,
    and nothing stored."""
    qos = ctx.params.feasible or BE_QOS
    payloads = ctx.params.provider_specific
    cases = (
        ((payloads[0], Level.SERVICE_LEVEL_IF_AVAILABLE), (max(payloads, key=len), Level.SERVICE_LEVEL_BEST_EFFORT))
        if payloads
        else (
            (blob(ctx, 64), Level.SERVICE_LEVEL_IF_AVAILABLE),
            (blob(ctx, MAX_PROVIDER_SPECIFIC), Level.SERVICE_LEVEL_BEST_EFFORT),
        )
    )
    for data, level in cases:
        call = await ctx.create(with_blob(qos, data), level)
        what = f"{len(data)}-byte provider_specific at {Level.Name(level)}"
        carries_blob(call, data, f"CreateCall with a {what}")
        carries_blob(await ctx.get(call.name), data, f"GetCall after a {what}")
    if payloads:
        request = ctx.request(with_blob(qos, blob(ctx, 64)), Level.SERVICE_LEVEL_IF_AVAILABLE)
        failure = await ctx.expect_error(
            "CreateCall",
            request,
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_REQUEST",
            what="CreateCall with random provider_specific bytes (the provider interprets them)",
        )
        field = "call.requested_qos.provider_specific"
        if field not in failure.fields:
            raise CheckFailed(f"random provider_specific bytes refused, but BadRequest names {failure.fields}")
        try:
            stored = await ctx.rpc("GetCall", svc.GetCallRequest(name=f"calls/{request.call_id}"))
        except RpcFailed as out:
            if out.failure.code != grpc.StatusCode.NOT_FOUND:
                raise CheckFailed(f"GetCall after the refused request: expected NOT_FOUND, got {out.failure}") from None
        else:
            ctx.register(stored)
            raise CheckFailed(f"random provider_specific bytes were refused but the call was stored as {stored.name}")
