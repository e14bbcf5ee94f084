"""CORE-VAL: every invalid request is refused with INVALID_ARGUMENT / INVALID_REQUEST before any
provider is asked, and nothing is stored (SPEC.md FLOW-1), each case also checking the FLOW or
REQ clause it breaks."""

from __future__ import annotations

import grpc

from callqos.conformance.checks.registry import MUST, SHOULD, check
from callqos.conformance.exceptions import CheckFailed, CheckSkipped
from callqos.conformance.harness import CheckContext, RpcFailed
from callqos.conformance.rules import INVALID_CASES, InvalidCase, cl, valid_request_qos
from callqos.v1 import call_pb2, flowspec_pb2
from callqos.v1 import callqos_service_pb2 as svc

QosSpec = flowspec_pb2.QosSpec
ST = flowspec_pb2.ServiceType

INVALID = grpc.StatusCode.INVALID_ARGUMENT
BASE_RATE = 1000


def build(ctx: CheckContext, case: InvalidCase) -> svc.CreateCallRequest:
    request = ctx.request(valid_request_qos(BASE_RATE))
    if case.needs_mtu:
        mtu = ctx.caps.max_sdu_size_bytes
        if not mtu:
            raise CheckSkipped("capability: max_sdu_size_bytes (path MTU) is not advertised")
        request.call.requested_qos.sending.max_sdu_size_bytes = mtu + 1
    case.mutate(request)
    return request


async def refuse_invalid(ctx: CheckContext, case: InvalidCase) -> list[str]:
    request = build(ctx, case)
    failure = await ctx.expect_error(
        "CreateCall", request, INVALID, "INVALID_REQUEST", what=f"CreateCall with {case.title}"
    )
    if request.call_id and request.call_id.startswith("cq"):
        try:
            stored = await ctx.rpc("GetCall", svc.GetCallRequest(name=f"calls/{request.call_id}"))
        except RpcFailed as out:
            if out.failure.code != grpc.StatusCode.NOT_FOUND:
                raise CheckFailed(
                    f"GetCall after a refused invalid request: expected NOT_FOUND, got {out.failure}"
                ) from None
        else:
            ctx.register(stored)
            raise CheckFailed(f"an invalid request was refused but stored as {stored.name}")
    return failure.fields


def _make(case: InvalidCase) -> None:
    async def run(ctx: CheckContext) -> None:
        await refuse_invalid(ctx, case)

    run.__doc__ = f"CreateCall with {case.title} → INVALID_ARGUMENT (INVALID_REQUEST); no call is stored."
    check(f"CORE-VAL-{case.number:03d}", f"Refuses {case.title}", MUST, "core", spec=case.spec, source=case.source)(run)


for _case in INVALID_CASES:
    _make(_case)


@check(
    "CORE-VAL-027",
    "Refuses an invalid flowspec on renegotiation; the call is unchanged",
    MUST,
    "core",
    spec=("FLOW-1", "FLOW-7", "SETQOS-5", "SETQOS-6"),
    source="lineSetCallQualityOfService: LINEERR_INVALPARAM / LINEERR_INVALRATE",
)
async def renegotiate_invalid(ctx: CheckContext) -> None:
    """RenegotiateCall with token rate 0 → INVALID_ARGUMENT (or UNIMPLEMENTED where renegotiation is not
    advertised); the call keeps its etag."""
    call = await ctx.create(
        ctx.params.feasible or valid_request_qos(BASE_RATE), call_pb2.ServiceLevel.SERVICE_LEVEL_IF_AVAILABLE
    )
    bad = valid_request_qos(BASE_RATE)
    bad.sending.token_rate_bytes_per_second = 0
    codes = {INVALID} if ctx.caps.renegotiation else {INVALID, grpc.StatusCode.UNIMPLEMENTED}
    result = await ctx.renegotiate(call.name, bad)
    if isinstance(result, call_pb2.Call):
        raise CheckFailed("RenegotiateCall with token rate 0 succeeded")
    if result.code not in codes:
        raise CheckFailed(
            f"RenegotiateCall with token rate 0: expected {'/'.join(c.name for c in codes)}, got {result}"
        )
    after = await ctx.get(call.name)
    if after.etag != call.etag:
        raise CheckFailed("a refused invalid renegotiation changed the call (etag differs)")


@check(
    "CORE-VAL-028",
    "Accepts a receiving CONTROLLED_LOAD flowspec without a token rate (defaulted)",
    MUST,
    "core",
    spec=("FLOW-9",),
    source="Winsock2 FLOWSPEC remarks: a Controlled Load receiver may default TokenRate",
)
async def receiving_defaulted(ctx: CheckContext) -> None:
    """IF_AVAILABLE call whose receiving CONTROLLED_LOAD flowspec leaves the token rate out: not INVALID_ARGUMENT."""
    qos = valid_request_qos(BASE_RATE)
    qos.receiving.CopyFrom(cl(None))
    result = await ctx.try_create(qos, call_pb2.ServiceLevel.SERVICE_LEVEL_IF_AVAILABLE)
    if not isinstance(result, call_pb2.Call) and result.code == INVALID:
        raise CheckFailed(f"a defaultable receiving token rate was refused as invalid: {result}")


@check(
    "CORE-VAL-029",
    "Resolves defaults: a granted reserving flowspec states its token rate",
    MUST,
    "core",
    spec=("GRANT-4",),
    source="TAPI LINECALLINFO: the QoS currently in effect",
)
async def defaults_resolved(ctx: CheckContext) -> None:
    """The granted receiving CONTROLLED_LOAD flowspec of a call that asked without a rate carries one."""
    qos = valid_request_qos(BASE_RATE)
    qos.receiving.CopyFrom(cl(None))
    result = await ctx.try_create(qos, call_pb2.ServiceLevel.SERVICE_LEVEL_IF_AVAILABLE)
    if not isinstance(result, call_pb2.Call):
        raise CheckSkipped(f"the call did not connect ({result})")
    granted = result.granted_qos.receiving
    if granted.service_type == qos.receiving.service_type and not granted.HasField("token_rate_bytes_per_second"):
        raise CheckFailed("granted receiving CONTROLLED_LOAD flowspec leaves token_rate_bytes_per_second unresolved")


@check(
    "CORE-VAL-031",
    "An absent direction is best effort in a new call and kept in a renegotiation",
    MUST,
    "core",
    spec=("FLOW-20",),
    source="TAPI LINECALLPARAMS: a direction without a flowspec asks no QoS for it",
)
async def absent_direction(ctx: CheckContext) -> None:
    """CreateCall with only a (feasible) sending flowspec connects with a BEST_EFFORT receiving
    direction in requested_qos and granted_qos; a renegotiation giving only the sending direction
    keeps the receiving one as it was."""
    sending = (ctx.params.feasible or valid_request_qos(BASE_RATE)).sending
    call = await ctx.create(QosSpec(sending=sending))
    for what, spec in (("requested_qos", call.requested_qos), ("granted_qos", call.granted_qos)):
        if spec.receiving.service_type != ST.SERVICE_TYPE_BEST_EFFORT:
            raise CheckFailed(f"absent receiving direction: {what}.receiving is {spec.receiving}, not BEST_EFFORT")
    if not ctx.caps.renegotiation:
        return
    result = await ctx.renegotiate(call.name, QosSpec(sending=sending))
    if not isinstance(result, call_pb2.Call):
        raise CheckFailed(f"RenegotiateCall with only a sending direction failed: {result}")
    if result.granted_qos.receiving != call.granted_qos.receiving:
        raise CheckFailed("an absent receiving direction in RenegotiateCall changed the receiving QoS")


@check(
    "CORE-VAL-030",
    "BadRequest names the bad field of every invalid request",
    SHOULD,
    "core",
    spec=("FLOW-2",),
    source="callqos_service.proto; AIP-193 google.rpc.BadRequest",
)
async def names_fields(ctx: CheckContext) -> None:
    """For every CORE-VAL case, the field path appears among BadRequest.field_violations."""
    missing = []
    for case in INVALID_CASES:
        try:
            fields = await refuse_invalid(ctx, case)
        except CheckSkipped:
            continue
        except CheckFailed:
            continue  # reported by the case's own check
        if case.field not in fields:
            missing.append(f"CORE-VAL-{case.number:03d} expected {case.field!r}, got {fields}")
    if missing:
        raise CheckFailed("; ".join(missing))
