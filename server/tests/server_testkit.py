"""Helpers for the server tests: request builders, rich-error decoding, a slow provider.

Servers themselves come from `callqos.server.testing` (see conftest.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from callqos.v1 import call_pb2, flowspec_pb2
from callqos.v1 import callqos_service_pb2 as svc
from callqos.v1 import callqos_service_pb2_grpc as svc_grpc

ST = flowspec_pb2.ServiceType
Level = call_pb2.ServiceLevel
CAPACITY = 1_250_000  # the reference provider's default link, bytes/s per direction
ROOT = Path(__file__).resolve().parents[2]


def flow(stype: int = ST.SERVICE_TYPE_CONTROLLED_LOAD, rate: int | None = None, **fields: Any) -> flowspec_pb2.FlowSpec:
    spec = flowspec_pb2.FlowSpec(service_type=stype, **fields)
    if rate is not None:
        spec.token_rate_bytes_per_second = rate
    return spec


def qos(send_rate: int | None = 100_000, recv_rate: int | None = None, **kw: Any) -> flowspec_pb2.QosSpec:
    """CONTROLLED_LOAD sending at `send_rate`; receiving CONTROLLED_LOAD at `recv_rate` or best effort."""
    sending = flow(rate=send_rate) if send_rate is not None else flow(ST.SERVICE_TYPE_BEST_EFFORT)
    receiving = flow(rate=recv_rate) if recv_rate is not None else flow(ST.SERVICE_TYPE_BEST_EFFORT)
    return flowspec_pb2.QosSpec(sending=sending, receiving=receiving, **kw)


def make_request(
    spec: flowspec_pb2.QosSpec | None = None,
    level: int = Level.SERVICE_LEVEL_NEEDED,
    destination: str = "sip:alice@example.test",
    **kw: Any,
) -> svc.CreateCallRequest:
    call = call_pb2.Call(destination=destination, service_level=level, requested_qos=spec or qos())
    provider = kw.pop("provider", "")
    call.provider = provider
    return svc.CreateCallRequest(call=call, **kw)


def details(error: grpc.RpcError) -> dict[str, Any]:
    """The rich status details of a failed call, by kind."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    out: dict[str, Any] = {}
    assert status is not None, "error carries no google.rpc.Status"
    for any_detail in status.details:
        for kind in (
            error_details_pb2.ErrorInfo,
            error_details_pb2.BadRequest,
            call_pb2.QosRefusal,
            error_details_pb2.QuotaFailure,
        ):
            if any_detail.Is(kind.DESCRIPTOR):
                message = kind()
                any_detail.Unpack(message)
                out[kind.DESCRIPTOR.name] = message
    return out


def reason(error: grpc.RpcError) -> str:
    return details(error)["ErrorInfo"].reason


def violated_fields(error: grpc.RpcError) -> set[str]:
    return {v.field for v in details(error)["BadRequest"].field_violations}


def owner(principal: str) -> tuple[tuple[str, str], ...]:
    return (("x-callqos-principal", principal),)


async def reserved(stub: svc_grpc.CallQosServiceStub) -> tuple[int, int]:
    """(sending, receiving) bytes/s reserved on the reference provider's default link."""
    links = await stub.ListLinks(svc.ListLinksRequest(parent="providers/reference"))
    link = links.links[0]
    return link.sending_reserved_bytes_per_second, link.receiving_reserved_bytes_per_second


async def rpc_error(awaitable: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await awaitable
    return caught.value


# -- a provider that takes its time, for deadline tests ---------------------------------------
from callqos.server.providers.reference import ReferenceProvider  # noqa: E402


class SlowProvider(ReferenceProvider):
    """The reference provider, with admissions that take `delay_seconds` (default 3 s)."""

    async def admit(self, request):  # type: ignore[no-untyped-def]
        import asyncio

        await asyncio.sleep(float(self.settings.get("delay_seconds", 3.0)))
        return await super().admit(request)


class PickyProvider(ReferenceProvider):
    """The reference provider, accepting only provider-specific bytes that start with b"ok"."""

    def validate_provider_specific(self, data: bytes) -> list[str]:
        problems = [] if data.startswith(b"ok") else ["must start with 'ok'"]
        return problems + (["must not contain 'x'"] if b"x" in data else [])
