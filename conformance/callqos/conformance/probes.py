"""Probe providers: the suite's own plugins, hosted next to nothing else on a side server (--provider
mode), to check what the hosting server promises its providers (SPEC.md PROV-12) and how it
announces a provider's failure (EVENT-5). Loaded by the server, so this module imports the server's
plugin face; the suite itself never imports it.

- `Failing` raises from admit, as a provider with a bug does.
- `ShortGrant` grants less than asked (token rate - 1) at every level.
- `Recorder` grants exactly what it is asked for, and refuses by policy, saying why, whenever a
  request breaks one of the host's promises: an unspecified service level, a NO_CHANGE direction,
  a reserving flowspec at service level BEST_EFFORT.
"""

from __future__ import annotations

from callqos.server.providers import AdmissionRequest, Decision, Grant, Provider, Refusal, RefusalKind
from callqos.v1 import call_pb2, flowspec_pb2, provider_pb2

ST = flowspec_pb2.ServiceType
Level = call_pb2.ServiceLevel
RESERVING = (ST.SERVICE_TYPE_CONTROLLED_LOAD, ST.SERVICE_TYPE_GUARANTEED)


def _capabilities() -> provider_pb2.ProviderCapabilities:
    return provider_pb2.ProviderCapabilities(
        qos_supported=True,
        renegotiation=True,
        service_types=[ST.SERVICE_TYPE_BEST_EFFORT, ST.SERVICE_TYPE_CONTROLLED_LOAD],
        max_reservable_bytes_per_second=1_000_000,
    )


class Failing(Provider):
    description = "conformance probe: admit raises"

    def capabilities(self) -> provider_pb2.ProviderCapabilities:
        return _capabilities()

    async def admit(self, request: AdmissionRequest) -> Decision:
        raise RuntimeError("conformance probe: admit fails on purpose")

    async def release(self, call: str) -> None:
        return None


class ShortGrant(Provider):
    description = "conformance probe: grants one byte per second less than asked"

    def capabilities(self) -> provider_pb2.ProviderCapabilities:
        return _capabilities()

    async def admit(self, request: AdmissionRequest) -> Decision:
        granted = flowspec_pb2.QosSpec()
        granted.CopyFrom(request.qos)
        if granted.sending.token_rate_bytes_per_second > 1:
            granted.sending.token_rate_bytes_per_second -= 1
        return Grant(granted)

    async def release(self, call: str) -> None:
        return None


class Recorder(Provider):
    description = "conformance probe: refuses by policy any request that breaks the host's promises"

    def capabilities(self) -> provider_pb2.ProviderCapabilities:
        return _capabilities()

    @staticmethod
    def broken(request: AdmissionRequest) -> str:
        if request.level == Level.SERVICE_LEVEL_UNSPECIFIED:
            return "the service level reached the provider UNSPECIFIED"
        for direction in ("sending", "receiving"):
            spec = getattr(request.qos, direction)
            if spec.service_type == ST.SERVICE_TYPE_NO_CHANGE:
                return f"{direction} reached the provider as NO_CHANGE"
            if request.level == Level.SERVICE_LEVEL_BEST_EFFORT and spec.service_type in RESERVING:
                return f"{direction} reached the provider reserving at service level BEST_EFFORT"
        return ""

    async def admit(self, request: AdmissionRequest) -> Decision:
        problem = self.broken(request)
        return Refusal(RefusalKind.POLICY, f"PROV-12 broken: {problem}") if problem else Grant(request.qos)

    async def renegotiate(self, request: AdmissionRequest) -> Decision:
        return await self.admit(request)

    async def release(self, call: str) -> None:
        return None
