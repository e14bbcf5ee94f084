"""Convenience constructors for the protobuf QoS messages, and readable enum parsing.

The data types stay the generated protobuf messages (``FlowSpec``, ``QosSpec``); these helpers
only spare callers the long field names and the optional-field dance. Units are the Winsock2
FLOWSPEC ones: rates in bytes/s, sizes in bytes, times in microseconds. ``None`` means "not
specified" (QOS_NOT_SPECIFIED), which the protocol keeps distinct from 0.

.. code-block:: python

    qos(sending=controlled_load(500_000, bucket=10_000), receiving=best_effort())
"""

from __future__ import annotations

import math
from typing import Literal, TypeAlias

from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

from callqos.v1 import call_pb2, event_pb2, flowspec_pb2, line_pb2

__all__ = [
    "UNBOUNDED",
    "FlowSpec",
    "QosSpec",
    "best_effort",
    "controlled_load",
    "enum_label",
    "flowspec",
    "guaranteed",
    "no_change",
    "no_traffic",
    "parse_call_state",
    "parse_event_type",
    "parse_line_state",
    "parse_service_level",
    "parse_service_type",
    "qos",
]

FlowSpec = flowspec_pb2.FlowSpec
QosSpec = flowspec_pb2.QosSpec

#: Pass as ``peak`` for POSITIVE_INFINITY_RATE (an unbounded peak bandwidth).
UNBOUNDED: Literal["unbounded"] = "unbounded"

#: An enum value given as its number, its full name, its name without the prefix, or that in
#: lower case with dashes ("controlled-load").
EnumLike: TypeAlias = int | str
Peak: TypeAlias = int | float | Literal["unbounded"] | None


def _parse_enum(wrapper: EnumTypeWrapper, prefix: str, value: EnumLike) -> int:
    if isinstance(value, int):
        return value
    key = value.strip().upper().replace("-", "_").replace(" ", "_")
    if not key.startswith(prefix):
        key = prefix + key
    try:
        return int(wrapper.Value(key))
    except ValueError:
        choices = ", ".join(enum_label(wrapper, prefix, n) for n in wrapper.values() if n)
        raise ValueError(f"unknown value {value!r}; expected one of: {choices}") from None


def enum_label(wrapper: EnumTypeWrapper, prefix: str, number: int) -> str:
    """``SERVICE_TYPE_CONTROLLED_LOAD`` -> ``controlled-load`` (the spelling the CLI accepts)."""
    try:
        name: str = wrapper.Name(number)
    except ValueError:
        return str(number)
    return name.removeprefix(prefix).lower().replace("_", "-")


def parse_service_type(value: EnumLike) -> int:
    """A :class:`ServiceType` number from e.g. ``"controlled-load"`` or ``"GUARANTEED"``."""
    return _parse_enum(flowspec_pb2.ServiceType, "SERVICE_TYPE_", value)


def parse_service_level(value: EnumLike) -> int:
    """A :class:`ServiceLevel` number from e.g. ``"needed"`` or ``"if-available"``."""
    return _parse_enum(call_pb2.ServiceLevel, "SERVICE_LEVEL_", value)


def parse_call_state(value: EnumLike) -> int:
    """A ``Call.State`` number from e.g. ``"connected"``."""
    return _parse_enum(call_pb2.Call.State, "STATE_", value)


def parse_line_state(value: EnumLike) -> int:
    """A ``Line.State`` number from e.g. ``"open"``."""
    return _parse_enum(line_pb2.Line.State, "STATE_", value)


def parse_event_type(value: EnumLike) -> int:
    """A :class:`QosEventType` number from e.g. ``"qos-changed"``."""
    return _parse_enum(event_pb2.QosEventType, "QOS_EVENT_TYPE_", value)


def flowspec(
    service_type: EnumLike,
    *,
    token_rate: int | None = None,
    bucket: int | None = None,
    peak: Peak = None,
    latency_us: int | None = None,
    delay_variation_us: int | None = None,
    max_sdu: int | None = None,
    min_policed: int | None = None,
    no_qos_signaling: bool = False,
    no_traffic_control: bool = False,
) -> flowspec_pb2.FlowSpec:
    """One direction of a flow. Fields left ``None`` are "not specified"."""
    spec = flowspec_pb2.FlowSpec(
        service_type=parse_service_type(service_type),  # type: ignore[arg-type]
        no_qos_signaling=no_qos_signaling,
        no_traffic_control=no_traffic_control,
    )
    if token_rate is not None:
        spec.token_rate_bytes_per_second = token_rate
    if bucket is not None:
        spec.token_bucket_size_bytes = bucket
    if peak == UNBOUNDED or (isinstance(peak, float) and math.isinf(peak)):
        spec.peak_bandwidth_unbounded = True
    elif peak is not None:
        spec.peak_bandwidth_bytes_per_second = int(peak)
    if latency_us is not None:
        spec.latency_microseconds = latency_us
    if delay_variation_us is not None:
        spec.delay_variation_microseconds = delay_variation_us
    if max_sdu is not None:
        spec.max_sdu_size_bytes = max_sdu
    if min_policed is not None:
        spec.minimum_policed_size_bytes = min_policed
    return spec


def best_effort() -> flowspec_pb2.FlowSpec:
    """SERVICETYPE_BESTEFFORT: no reservation."""
    return flowspec("BEST_EFFORT")


def no_traffic() -> flowspec_pb2.FlowSpec:
    """SERVICETYPE_NOTRAFFIC: nothing flows in this direction."""
    return flowspec("NO_TRAFFIC")


def no_change() -> flowspec_pb2.FlowSpec:
    """SERVICETYPE_NOCHANGE: on renegotiation, keep this direction as it is."""
    return flowspec("NO_CHANGE")


def controlled_load(
    token_rate: int,
    *,
    bucket: int | None = None,
    peak: Peak = None,
    max_sdu: int | None = None,
    min_policed: int | None = None,
) -> flowspec_pb2.FlowSpec:
    """SERVICETYPE_CONTROLLEDLOAD (RFC 2211): reserves ``token_rate`` bytes/s."""
    return flowspec(
        "CONTROLLED_LOAD",
        token_rate=token_rate,
        bucket=bucket,
        peak=peak,
        max_sdu=max_sdu,
        min_policed=min_policed,
    )


def guaranteed(
    token_rate: int,
    *,
    latency_us: int,
    bucket: int | None = None,
    peak: Peak = None,
    delay_variation_us: int | None = None,
    max_sdu: int | None = None,
    min_policed: int | None = None,
) -> flowspec_pb2.FlowSpec:
    """SERVICETYPE_GUARANTEED (RFC 2212): reserves the peak (or token) rate, bounds delay."""
    return flowspec(
        "GUARANTEED",
        token_rate=token_rate,
        bucket=bucket,
        peak=peak,
        latency_us=latency_us,
        delay_variation_us=delay_variation_us,
        max_sdu=max_sdu,
        min_policed=min_policed,
    )


def qos(
    sending: flowspec_pb2.FlowSpec | None = None,
    receiving: flowspec_pb2.FlowSpec | None = None,
    *,
    provider_specific: bytes = b"",
) -> flowspec_pb2.QosSpec:
    """Both directions; a direction left ``None`` is best effort."""
    return flowspec_pb2.QosSpec(
        sending=sending if sending is not None else best_effort(),
        receiving=receiving if receiving is not None else best_effort(),
        provider_specific=provider_specific,
    )
