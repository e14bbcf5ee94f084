"""HOST: what the hosting server promises its provider plugins (PROV-12) and how it announces a provider's
failure (EVENT-5). The suite's probe providers (`callqos.conformance.probes`) are hosted on a side server it
starts itself (--provider), so the server under certification is the one that hosts the plugin."""

from __future__ import annotations

import grpc

from callqos.conformance.checks.common import call_events, expect_types
from callqos.conformance.checks.registry import MUST, check
from callqos.conformance.checks.side import side_server
from callqos.conformance.exceptions import CheckFailed
from callqos.conformance.harness import Call, CheckContext, EventType, Level, RpcFailed
from callqos.conformance.model import OWNS_SERVER
from callqos.conformance.rules import ST, QosSpec, best_effort, cl, flow
from callqos.v1 import callqos_service_pb2 as svc

PROBES = "callqos.conformance.probes:"
E = EventType


def on(side: CheckContext, provider: str, qos: QosSpec, level: Level) -> svc.CreateCallRequest:
    request = side.request(qos, level)
    request.call.provider = f"providers/{provider}"
    return request


@check(
    "HOST-001",
    "The host announces a provider's failure, rejects a short grant, and keeps its promises to its providers",
    MUST,
    "host",
    spec=("EVENT-5", "PROV-12"),
    source="providers/base.py; errors.proto PROVIDER_UNAVAILABLE, PROVIDER_CONTRACT_VIOLATION",
    needs=(OWNS_SERVER,),
    timeout=30,
)
async def host_promises(ctx: CheckContext) -> None:
    """On a side server hosting the probes: CreateCall on a provider that raises → UNAVAILABLE PROVIDER_UNAVAILABLE,
    the call DISCONNECTED PROVIDER_ERROR with [GENERIC_ERROR, CALL_DISCONNECTED]; on one that grants short at NEEDED →
    INTERNAL PROVIDER_CONTRACT_VIOLATION, the call not connected; on one that refuses whatever breaks the host's
    promises: a call without a level, a call at BEST_EFFORT level asking CONTROLLED_LOAD, and a renegotiation with a
    NO_CHANGE direction all connect."""
    probes = {
        "conformance-failing": {"plugin": PROBES + "Failing"},
        "conformance-short": {"plugin": PROBES + "ShortGrant"},
        "conformance-recorder": {"plugin": PROBES + "Recorder"},
    }
    qos = QosSpec(sending=cl(1000), receiving=best_effort())
    async with side_server(ctx, extra_providers=probes) as side:
        failing = on(side, "conformance-failing", qos, Level.SERVICE_LEVEL_NEEDED)
        await side.expect_error(
            "CreateCall", failing, grpc.StatusCode.UNAVAILABLE, "PROVIDER_UNAVAILABLE", what="a provider that raises"
        )
        name = f"calls/{failing.call_id}"
        call = await side.get(name)
        if call.state != Call.State.STATE_DISCONNECTED or call.disconnect_reason != 3:
            raise CheckFailed(
                f"the call whose provider raised is {Call.State.Name(call.state)} reason "
                f"{call.disconnect_reason}, not DISCONNECTED PROVIDER_ERROR"
            )
        expect_types(
            await call_events(side, name),
            [E.QOS_EVENT_TYPE_GENERIC_ERROR, E.QOS_EVENT_TYPE_CALL_DISCONNECTED],
            "a call whose provider raised",
        )
        short = on(side, "conformance-short", qos, Level.SERVICE_LEVEL_NEEDED)
        await side.expect_error(
            "CreateCall", short, grpc.StatusCode.INTERNAL, "PROVIDER_CONTRACT_VIOLATION", what="a grant short at NEEDED"
        )
        if (await side.get(f"calls/{short.call_id}")).state == Call.State.STATE_CONNECTED:
            raise CheckFailed("a grant short of the request at NEEDED left the call connected")
        made = []
        for level, asked in (
            (Level.SERVICE_LEVEL_UNSPECIFIED, qos),
            (Level.SERVICE_LEVEL_BEST_EFFORT, qos),
            (Level.SERVICE_LEVEL_NEEDED, QosSpec(sending=cl(2000), receiving=cl(1000))),
        ):
            request = on(side, "conformance-recorder", asked, level)
            try:
                made.append(await side.rpc("CreateCall", request))
            except RpcFailed as out:
                raise CheckFailed(f"CreateCall at {Level.Name(level)}: {out.failure}") from None
        try:
            await side.rpc(
                "RenegotiateCall",
                svc.RenegotiateCallRequest(
                    name=made[-1].name, qos=QosSpec(sending=flow(ST.SERVICE_TYPE_NO_CHANGE), receiving=cl(500))
                ),
            )
        except RpcFailed as out:
            raise CheckFailed(f"RenegotiateCall with sending NO_CHANGE: {out.failure}") from None
        for each in made:
            await side.drop(each.name)
