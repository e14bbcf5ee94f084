"""CORE-RESP / CORE-CAP / CORE-IDEM / CORE-OWN / CORE-ERR / CORE-ETAG / CORE-PSD: responsiveness,
advertised capabilities and their negative probes, idempotency, ownership, not-found errors,
etags and opaque provider-specific data."""

from __future__ import annotations

import asyncio

import grpc
from google.protobuf import field_mask_pb2

from callqos.conformance.checks.common import refused_to_intruder
from callqos.conformance.checks.registry import MUST, check
from callqos.conformance.exceptions import CheckFailed, CheckSkipped
from callqos.conformance.harness import Call, CheckContext, EventType, Level, RpcFailed, RpcFailure, decode, same
from callqos.conformance.rules import RESERVING, QosSpec, best_effort
from callqos.v1 import callqos_service_pb2 as svc
from callqos.v1 import provider_pb2

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
    foundation=True,
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
    connection = ctx.session.connection
    if connection is not None and connection.token:
        # The server names the suite after its token (SEC-1), a name the suite is not told: it must name
        # someone, and refused_to_intruder shows that someone else is not the owner.
        if not call.owner:
            raise CheckFailed("the call has no owner")
    elif call.owner != ctx.session.principal:
        raise CheckFailed(f"the call's owner is {call.owner!r}, not its creator {ctx.session.principal!r}")
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


@check(
    "CORE-ERR-002",
    "A call_id already taken is ALREADY_EXISTS (CALL_ALREADY_EXISTS) and changes nothing",
    MUST,
    "core",
    spec=("CALL-4", "API-1"),
    source="callqos_service.proto CreateCallRequest.call_id; errors.proto CALL_ALREADY_EXISTS",
)
async def taken_call_id(ctx: CheckContext) -> None:
    """CreateCall(call_id = an existing call's) → ALREADY_EXISTS CALL_ALREADY_EXISTS; the existing call keeps its etag
    and QoS; with link administration, nothing more is reserved."""
    qos = ctx.params.feasible or BE_QOS
    call = await ctx.create(qos, Level.SERVICE_LEVEL_IF_AVAILABLE)
    before = await ctx.reserved() if ctx.caps.link_admin else None
    again = ctx.request(qos, Level.SERVICE_LEVEL_IF_AVAILABLE, call_id=call.name.removeprefix("calls/"))
    await ctx.expect_error(
        "CreateCall",
        again,
        grpc.StatusCode.ALREADY_EXISTS,
        "CALL_ALREADY_EXISTS",
        what="CreateCall with a taken call_id",
    )
    after = await ctx.get(call.name)
    if after.etag != call.etag or not same(after.granted_qos, call.granted_qos):
        raise CheckFailed("CreateCall with a taken call_id changed the existing call")
    if before is not None and await ctx.reserved() != before:
        raise CheckFailed("CreateCall with a taken call_id reserved capacity")


@check(
    "CORE-VAL-033",
    "Refuses a malformed caller principal",
    MUST,
    "core",
    spec=("REQ-5", "FLOW-1"),
    source="callqos_service.proto: x-callqos-principal, 1-128 printable ASCII characters",
)
async def malformed_principal(ctx: CheckContext) -> None:
    """CreateCall with x-callqos-principal 'two words' (a space), and with 129 characters → INVALID_ARGUMENT; no
    call is stored under the request's call_id. Not applicable when the suite authenticates with a token: the
    header then names no one, and the server ignores it (SEC-1)."""
    if ctx.session.connection is not None and ctx.session.connection.token:
        raise CheckSkipped("mode: the suite authenticates by token, so the server ignores x-callqos-principal")
    for principal in ("two words", "p" * 129):
        request = ctx.request(BE_QOS, Level.SERVICE_LEVEL_BEST_EFFORT)
        await ctx.expect_error(
            "CreateCall",
            request,
            grpc.StatusCode.INVALID_ARGUMENT,
            principal=principal,
            what=f"CreateCall as principal {principal[:12]!r}{'…' if len(principal) > 12 else ''}",
        )
        await nothing_stored(ctx, f"calls/{request.call_id}")


async def nothing_stored(ctx: CheckContext, name: str) -> None:
    try:
        stored = await ctx.rpc("GetCall", svc.GetCallRequest(name=name))
    except RpcFailed as out:
        if out.failure.code != grpc.StatusCode.NOT_FOUND:
            raise CheckFailed(f"GetCall after a refused request: expected NOT_FOUND, got {out.failure}") from None
        return
    ctx.register(stored)
    raise CheckFailed(f"a refused request was stored as {stored.name}")


@check(
    "CORE-VAL-032",
    "Refuses an oversize etag, an oversize ListCalls filter and a malformed watch filter",
    MUST,
    "core",
    spec=("REQ-6", "FLOW-1"),
    source="callqos_service.proto: bounds on what a request may make the server hold or parse",
)
async def bounded_sizes(ctx: CheckContext) -> None:
    """DropCall(etag of 129 characters) → INVALID_ARGUMENT, the call still CONNECTED; ListCalls(filter of 513
    characters) → INVALID_ARGUMENT; WatchEvents(call = 'bogus') and WatchEvents(types = [999]) → INVALID_ARGUMENT."""
    call = await ctx.create(BE_QOS, Level.SERVICE_LEVEL_BEST_EFFORT)
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    await ctx.expect_error(
        "DropCall", svc.DropCallRequest(name=call.name, etag="e" * 129), invalid, what="DropCall with a 129-char etag"
    )
    if (await ctx.get(call.name)).state != Call.State.STATE_CONNECTED:
        raise CheckFailed("DropCall with an oversize etag dropped the call")
    await ctx.expect_error(
        "ListCalls", svc.ListCallsRequest(filter="state = CONNECTED" + " " * 500), invalid, what="a 517-char filter"
    )
    unknown_type = svc.WatchEventsRequest()
    unknown_type.types.append(999)  # type: ignore[arg-type]  # a number the API does not define
    for request in (svc.WatchEventsRequest(call="bogus"), unknown_type):
        await refused_watch(ctx, request, f"a malformed filter ({request})")


async def refused_watch(ctx: CheckContext, request: svc.WatchEventsRequest, what: str) -> RpcFailure:
    """WatchEvents that must end INVALID_ARGUMENT at once: its failure."""
    stream = ctx.stub.WatchEvents(request, metadata=ctx.metadata())
    try:
        message = await asyncio.wait_for(stream.read(), ctx.rpc_timeout())
    except grpc.aio.AioRpcError as error:
        failure = decode(error)
        if failure.code != grpc.StatusCode.INVALID_ARGUMENT:
            raise CheckFailed(f"WatchEvents with {what}: expected INVALID_ARGUMENT, got {failure}") from None
        return failure
    except TimeoutError:
        raise CheckFailed(f"WatchEvents with {what} was accepted (stayed open)") from None
    finally:
        stream.cancel()
    raise CheckFailed(f"WatchEvents with {what} was accepted and delivered {message!r}")


MAX_WATCH_TYPES, MAX_MASK_PATHS, MAX_DESCRIPTION = 32, 8, 300  # REQ-7


@check(
    "CORE-VAL-034",
    "Refusing costs a bounded amount: long repeated fields refused on their length, BadRequest kept small",
    MUST,
    "core",
    spec=("REQ-7",),
    source="callqos_service.proto: WatchEvents.types, UpdateLink.update_mask; AIP-193",
)
async def bounded_refusals(ctx: CheckContext) -> None:
    """WatchEvents(types = QOS_GRANTED 33 times) → INVALID_ARGUMENT naming `types` (valid entries, refused on the
    list's length); with link administration, UpdateLink(update_mask = capacity_bytes_per_second 9 times) →
    INVALID_ARGUMENT naming `update_mask`, the capacity unchanged; CreateCall with a 200,000-character destination →
    INVALID_ARGUMENT whose BadRequest descriptions have at most 300 characters and whose message fewer than 2,000."""
    granted = EventType.QOS_EVENT_TYPE_QOS_GRANTED  # a valid type: only the count is wrong
    failure = await refused_watch(
        ctx, svc.WatchEventsRequest(types=[granted] * (MAX_WATCH_TYPES + 1)), f"{MAX_WATCH_TYPES + 1} event types"
    )
    if "types" not in failure.fields:
        raise CheckFailed(f"WatchEvents with {MAX_WATCH_TYPES + 1} event types: BadRequest names {failure.fields}")
    if ctx.caps.link_admin:
        link = (await ctx.links())[0]
        update = svc.UpdateLinkRequest(
            link=provider_pb2.Link(name=link.name, capacity_bytes_per_second=link.capacity_bytes_per_second),
            update_mask=field_mask_pb2.FieldMask(paths=["capacity_bytes_per_second"] * (MAX_MASK_PATHS + 1)),
        )
        failure = await ctx.expect_error(
            "UpdateLink", update, grpc.StatusCode.INVALID_ARGUMENT, what=f"UpdateLink with {MAX_MASK_PATHS + 1} paths"
        )
        if "update_mask" not in failure.fields:
            raise CheckFailed(f"UpdateLink with {MAX_MASK_PATHS + 1} mask paths: BadRequest names {failure.fields}")
    request = ctx.request(BE_QOS, Level.SERVICE_LEVEL_BEST_EFFORT, destination="d" * 200_000)
    failure = await ctx.expect_error(
        "CreateCall", request, grpc.StatusCode.INVALID_ARGUMENT, what="CreateCall with a 200,000-character destination"
    )
    longest = max((len(d) for d in failure.descriptions), default=0)
    if longest > MAX_DESCRIPTION or len(failure.message) >= 2000:
        raise CheckFailed(
            f"refusing a 200,000-character destination: a BadRequest description of {longest} characters and a "
            f"message of {len(failure.message)} (at most {MAX_DESCRIPTION}, and under 2,000)"
        )
    await nothing_stored(ctx, f"calls/{request.call_id}")


async def listed(ctx: CheckContext, request: svc.ListCallsRequest) -> svc.ListCallsResponse:
    try:
        response: svc.ListCallsResponse = await ctx.rpc("ListCalls", request)
    except RpcFailed as out:
        raise CheckFailed(f"ListCalls({request}) failed: {out.failure}") from None
    return response


@check(
    "CORE-LIST-001",
    "ListCalls pages newest first; a negative page size and a token used with another filter are refused",
    MUST,
    "core",
    spec=("API-5",),
    source="AIP-158",
)
async def paging(ctx: CheckContext) -> None:
    """Three calls; ListCalls(page_size 1, filter on the provider) pages through them newest first, one a page;
    page_size -1 → INVALID_ARGUMENT; the first page's token with another filter → INVALID_ARGUMENT."""
    made = [await ctx.create(BE_QOS, Level.SERVICE_LEVEL_BEST_EFFORT) for _ in range(3)]
    wanted = {call.name for call in made}
    query = f'provider = "{ctx.provider}"'
    seen: list[str] = []
    token = ""
    first_token = ""
    for _ in range(10_000):  # bounded: stops once the three were seen or the list ends
        page = await listed(ctx, svc.ListCallsRequest(page_size=1, page_token=token, filter=query))
        if len(page.calls) > 1:
            raise CheckFailed(f"ListCalls(page_size=1) returned {len(page.calls)} calls")
        seen += [call.name for call in page.calls if call.name in wanted]
        token = page.next_page_token
        first_token = first_token or token
        if not token or len(seen) == 3:
            break
    expected = [call.name for call in reversed(made)]
    if seen != expected:
        raise CheckFailed(f"paging with page_size=1 gave the suite's calls as {seen}; newest first is {expected}")
    await ctx.expect_error(
        "ListCalls",
        svc.ListCallsRequest(page_size=-1),
        grpc.StatusCode.INVALID_ARGUMENT,
        what="ListCalls(page_size=-1)",
    )
    if first_token:
        await ctx.expect_error(
            "ListCalls",
            svc.ListCallsRequest(page_size=1, page_token=first_token, filter="state = DISCONNECTED"),
            grpc.StatusCode.INVALID_ARGUMENT,
            what="ListCalls with a page token issued for another filter",
        )


@check(
    "CORE-LIST-002",
    "ListCalls filters on state and provider; other filters are refused",
    MUST,
    "core",
    spec=("API-6",),
    source="callqos_service.proto ListCallsRequest.filter (an AIP-160 subset)",
)
async def filtering(ctx: CheckContext) -> None:
    """A connected and a dropped call: the filter `state = CONNECTED AND provider = "…"` lists the first and not the
    second, `state = DISCONNECTED` the second; `owner = "x"` → INVALID_ARGUMENT."""
    connected = await ctx.create(BE_QOS, Level.SERVICE_LEVEL_BEST_EFFORT)
    dropped = await ctx.create(BE_QOS, Level.SERVICE_LEVEL_BEST_EFFORT)
    await ctx.drop(dropped.name)
    names = {call.name for call in await ctx.connected_calls()}
    if connected.name not in names or dropped.name in names:
        raise CheckFailed(
            f"the filter state = CONNECTED AND provider = {ctx.provider!r} listed the dropped call or "
            "missed the connected one"
        )
    page = await listed(ctx, svc.ListCallsRequest(page_size=50, filter="state = DISCONNECTED"))
    states = {call.state for call in page.calls}
    if states - {Call.State.STATE_DISCONNECTED}:
        raise CheckFailed("the filter state = DISCONNECTED listed connected calls")
    await ctx.expect_error(
        "ListCalls", svc.ListCallsRequest(filter='owner = "x"'), grpc.StatusCode.INVALID_ARGUMENT, what="filter owner"
    )


@check(
    "CORE-CANCEL-001",
    "A CreateCall whose caller gave up leaves either one call with its reservation, or nothing",
    MUST,
    "core",
    spec=("API-8", "API-3", "LINK-2"),
    source="project decision: a mutation that reached the provider runs to the end; AIP-155",
)
async def given_up(ctx: CheckContext) -> None:
    """CreateCall(feasible, request_id) with a 1 ms deadline (the caller gives up), then the same request with a
    normal deadline → one outcome, the first one (a call, or the failure recorded when the decision came too late);
    the links report what the connected calls hold; after dropping the call, they are back where they were."""
    qos = ctx.params.feasible or BE_QOS
    request = ctx.request(qos, Level.SERVICE_LEVEL_IF_AVAILABLE, request_id=f"req-{ctx.unique()}")
    before = await ctx.reserved() if ctx.caps.link_admin else None
    try:
        await ctx.stub.CreateCall(request, metadata=ctx.metadata(), timeout=0.001)
    except grpc.aio.AioRpcError:
        pass  # the caller gave up (or the server refused in time): the retry tells what happened
    try:
        call = await ctx.stub.CreateCall(request, metadata=ctx.metadata(), timeout=ctx.rpc_timeout())
    except grpc.aio.AioRpcError as error:
        call = None
        failure = decode(error)
        if failure.code == grpc.StatusCode.DEADLINE_EXCEEDED:
            raise CheckFailed("the retry of a CreateCall whose caller gave up did not answer in time") from None
    else:
        ctx.register(call)
    made = [c for c in await ctx.connected_calls() if c.destination == request.call.destination]
    for extra in made:
        if call is None or extra.name != call.name:
            ctx.register(extra)
    if len(made) > 1:
        raise CheckFailed(
            f"[API-3] one request_id, given up and retried, made {len(made)} calls: {[c.name for c in made]}"
        )
    if ctx.caps.link_admin:
        problem = await ctx.accounting()
        if problem:
            raise CheckFailed(f"after a CreateCall given up and retried with its request_id: {problem}")
        if call is not None and call.state == Call.State.STATE_CONNECTED:
            await ctx.drop(call.name)
        if await ctx.reserved() != before:
            raise CheckFailed(f"after dropping the retried call the links hold {await ctx.reserved()}, before {before}")
