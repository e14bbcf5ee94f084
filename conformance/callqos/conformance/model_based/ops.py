"""A history is a list of operations on calls the history names by index (`m0`, `m1`, …): data that can
be printed, stored as JSON, shrunk and replayed."""

from __future__ import annotations

from dataclasses import dataclass, field

from google.protobuf import json_format

from callqos.conformance.rules import ST, FlowSpec, QosSpec, ServiceLevel

Level = ServiceLevel


@dataclass
class Make:
    call: int
    level: ServiceLevel
    qos: QosSpec


@dataclass
class Renegotiate:
    call: int
    qos: QosSpec  # a direction may be SERVICE_TYPE_NO_CHANGE
    level: ServiceLevel = ServiceLevel.SERVICE_LEVEL_UNSPECIFIED  # unspecified: keep the call's level


@dataclass
class Drop:
    call: int


@dataclass
class SetCapacity:
    capacity: int


@dataclass
class Restart:
    pass


@dataclass
class Burst:
    """Operations on distinct calls, sent at once."""

    ops: list[Make | Renegotiate | Drop] = field(default_factory=list)


Op = Make | Renegotiate | Drop | SetCapacity | Restart | Burst
CallOp = Make | Renegotiate | Drop


def level_name(level: int) -> str:
    return Level.Name(level).removeprefix("SERVICE_LEVEL_") if level in Level.values() else str(level)


def flow_text(spec: FlowSpec) -> str:
    """`GUARANTEED r=100 p=unbounded b=6000 lat=5000us` — every field given, briefly."""
    name = ST.Name(spec.service_type).removeprefix("SERVICE_TYPE_") if spec.service_type in ST.values() else "?"
    parts = [name]
    for field_name, label, unit in (
        ("token_rate_bytes_per_second", "r", ""),
        ("peak_bandwidth_bytes_per_second", "p", ""),
        ("token_bucket_size_bytes", "b", ""),
        ("latency_microseconds", "lat", "us"),
        ("max_sdu_size_bytes", "M", ""),
        ("minimum_policed_size_bytes", "m", ""),
    ):
        if spec.HasField(field_name):
            parts.append(f"{label}={getattr(spec, field_name)}{unit}")
    if spec.peak_bandwidth_unbounded:
        parts.append("p=unbounded")
    return " ".join(parts)


def qos_text(qos: QosSpec) -> str:
    return f"send {flow_text(qos.sending)} / recv {flow_text(qos.receiving)}"


def describe(op: Op) -> str:
    if isinstance(op, Make):
        return f"make m{op.call} {level_name(op.level)} {qos_text(op.qos)}"
    if isinstance(op, Renegotiate):
        level = f" level {level_name(op.level)}" if op.level else ""
        return f"renegotiate m{op.call}{level} {qos_text(op.qos)}"
    if isinstance(op, Drop):
        return f"drop m{op.call}"
    if isinstance(op, SetCapacity):
        return f"set link capacity {op.capacity} B/s"
    if isinstance(op, Restart):
        return "restart the server"
    return "at once: " + " | ".join(describe(each) for each in op.ops)


def calls_of(op: Op) -> set[int]:
    if isinstance(op, Make | Renegotiate | Drop):
        return {op.call}
    if isinstance(op, Burst):
        return set().union(*(calls_of(each) for each in op.ops)) if op.ops else set()
    return set()


def as_json(op: Op) -> dict[str, object]:
    """One operation as JSON (the report keeps the shrunk history this way)."""
    if isinstance(op, Make):
        return {"op": "make", "call": op.call, "level": level_name(op.level), "qos": _qos(op.qos)}
    if isinstance(op, Renegotiate):
        return {
            "op": "renegotiate",
            "call": op.call,
            "level": level_name(op.level) if op.level else "",
            "qos": _qos(op.qos),
        }
    if isinstance(op, Drop):
        return {"op": "drop", "call": op.call}
    if isinstance(op, SetCapacity):
        return {"op": "set-capacity", "capacity": op.capacity}
    if isinstance(op, Restart):
        return {"op": "restart"}
    return {"op": "burst", "ops": [as_json(each) for each in op.ops]}


def _qos(qos: QosSpec) -> object:
    return json_format.MessageToDict(qos, preserving_proto_field_name=True)
