"""A provider without QoS support (TAPI: "not all service providers support use of this
information"). It carries every call best effort and reserves nothing.

How it answers, per the contract: it advertises qos_supported = false and only the service types
that need no reservation. A NEEDED request for a reserving service type is refused
(QOS_UNAVAILABLE) with a best-effort counter-offer, which it then admits; IF_AVAILABLE and
BEST_EFFORT calls connect best effort. It cannot renegotiate (RenegotiateCall → UNIMPLEMENTED).
"""

from __future__ import annotations

from callqos.server.providers import (
    AdmissionRequest,
    Decision,
    Grant,
    Provider,
    Refusal,
    RefusalKind,
    best_effort_spec,
)
from callqos.v1 import call_pb2, flowspec_pb2, provider_pb2

ST = flowspec_pb2.ServiceType
_NO_RESERVATION = (ST.SERVICE_TYPE_BEST_EFFORT, ST.SERVICE_TYPE_NO_TRAFFIC)


class NoQosProvider(Provider):
    display_name = "No QoS (best effort only)"
    description = "Carries calls best effort; cannot reserve, renegotiate or report QoS changes."

    def capabilities(self) -> provider_pb2.ProviderCapabilities:
        return provider_pb2.ProviderCapabilities(
            qos_supported=False,
            renegotiation=False,
            provider_initiated_changes=False,
            link_admin=False,
            service_types=list(_NO_RESERVATION),
        )

    async def admit(self, request: AdmissionRequest) -> Decision:
        offer = flowspec_pb2.QosSpec(provider_specific=request.qos.provider_specific)
        for direction in ("sending", "receiving"):
            spec = getattr(request.qos, direction)
            getattr(offer, direction).CopyFrom(spec if spec.service_type in _NO_RESERVATION else best_effort_spec())
        needs_qos = any(getattr(request.qos, d).service_type not in _NO_RESERVATION for d in ("sending", "receiving"))
        if needs_qos and request.level == call_pb2.ServiceLevel.SERVICE_LEVEL_NEEDED:
            kinds = sorted(
                {ST.Name(getattr(request.qos, d).service_type) for d in ("sending", "receiving")}
                - {ST.Name(t) for t in _NO_RESERVATION}
            )
            return Refusal(
                RefusalKind.ADMISSION,
                f"this provider does not support QoS ({', '.join(kinds)}); best effort is available",
                offer,
            )
        return Grant(offer)

    async def release(self, call: str) -> None:
        """Nothing is ever reserved."""
