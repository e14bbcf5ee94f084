"""How the CLI shows messages and errors: readable text by default, protobuf JSON with --json."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from google.protobuf import duration_pb2, json_format, message, timestamp_pb2

from callqos.client import errors, specs
from callqos.v1 import call_pb2, callqos_service_pb2, event_pb2, flowspec_pb2, line_pb2, provider_pb2


def to_json(msg: message.Message) -> str:
    """One line of canonical proto3 JSON."""
    line: str = json.dumps(json_format.MessageToDict(msg), separators=(",", ":"))
    return line


def _label(wrapper: Any, prefix: str, number: int) -> str:
    return specs.enum_label(wrapper, prefix, number)


def _time(ts: timestamp_pb2.Timestamp) -> str:
    if not ts.seconds and not ts.nanos:
        return "-"
    text: str = ts.ToDatetime().strftime("%Y-%m-%d %H:%M:%S")
    return text


def _seconds(duration: duration_pb2.Duration) -> str:
    return f"{duration.ToNanoseconds() / 1e9:g} s"


_LIVE = (call_pb2.Call.State.STATE_CONNECTED, call_pb2.Call.State.STATE_RINGBACK)


def lease_text(call: call_pb2.Call) -> str:
    """When the call's lease ends (a live call), or ended (one it ended), or "-" (no lease)."""
    if not call.HasField("lease_expire_time"):
        return "-"
    if call.state in _LIVE:
        return f"until {_time(call.lease_expire_time)}"
    if call.disconnect_reason == call_pb2.DisconnectReason.DISCONNECT_REASON_LEASE_EXPIRED:
        return f"ran out {_time(call.lease_expire_time)}"
    return "-"


def _rate(value: int) -> str:
    return f"{value:,}"


@dataclass(frozen=True)
class FlowField:
    """One optional numeric FlowSpec field, as the CLI spells it and shows it."""

    field: str  # FlowSpec field name
    flag: str  # --send-<flag> / --recv-<flag>
    keyword: str  # keyword of callqos.client.specs.flowspec
    unit: str
    help: str


#: The optional numeric fields of a FlowSpec, in FLOWSPEC order (peak is special-cased for
#: "unbounded", which is a separate bool on the wire).
FLOW_FIELDS = [
    FlowField("token_rate_bytes_per_second", "rate", "token_rate", "B/s", "token rate, bytes/s"),
    FlowField("token_bucket_size_bytes", "bucket", "bucket", "B", "token bucket size, bytes"),
    FlowField(
        "peak_bandwidth_bytes_per_second",
        "peak",
        "peak",
        "B/s",
        "peak bandwidth, bytes/s, or 'unbounded'",
    ),
    FlowField("latency_microseconds", "latency", "latency_us", "us", "latency, microseconds"),
    FlowField(
        "delay_variation_microseconds",
        "jitter",
        "delay_variation_us",
        "us",
        "delay variation, microseconds",
    ),
    FlowField("max_sdu_size_bytes", "max-sdu", "max_sdu", "B", "max SDU size, bytes"),
    FlowField(
        "minimum_policed_size_bytes",
        "min-policed",
        "min_policed",
        "B",
        "minimum policed size, bytes",
    ),
]


def flowspec_text(spec: flowspec_pb2.FlowSpec) -> str:
    """``controlled-load rate=500,000B/s bucket=10,000B`` (only the fields that are set)."""
    parts = [_label(flowspec_pb2.ServiceType, "SERVICE_TYPE_", spec.service_type)]
    for f in FLOW_FIELDS:
        if spec.HasField(f.field):
            parts.append(f"{f.flag}={_rate(getattr(spec, f.field))}{f.unit}")
    if spec.peak_bandwidth_unbounded:
        parts.append("peak=unbounded")
    if spec.no_qos_signaling:
        parts.append("no-qos-signaling")
    if spec.no_traffic_control:
        parts.append("no-traffic-control")
    return " ".join(parts)


def qos_text(spec: flowspec_pb2.QosSpec) -> str:
    text = f"send {flowspec_text(spec.sending)} | recv {flowspec_text(spec.receiving)}"
    if spec.provider_specific:
        text += f" | provider-specific {len(spec.provider_specific)}B"
    return text


def _short_qos(spec: flowspec_pb2.QosSpec, has: bool) -> tuple[str, str]:
    if not has:
        return "-", "-"

    def one(flow: flowspec_pb2.FlowSpec) -> str:
        kind = _label(flowspec_pb2.ServiceType, "SERVICE_TYPE_", flow.service_type)
        if flow.HasField("token_rate_bytes_per_second"):
            return f"{kind} {_rate(flow.token_rate_bytes_per_second)}"
        return kind

    return one(spec.sending), one(spec.receiving)


def call_text(call: call_pb2.Call) -> str:
    state = state_text(call)
    level = _label(call_pb2.ServiceLevel, "SERVICE_LEVEL_", call.service_level)
    features = [name for name, on in (("set-qos", call.features.set_qos), ("answer", call.features.answer)) if on]
    lines = [
        f"{call.name}  {state}",
        f"  destination: {call.destination}",
        f"  provider:    {call.provider}",
        f"  level:       {level}",
        f"  requested:   {qos_text(call.requested_qos)}",
        f"  granted:     {qos_text(call.granted_qos) if call.HasField('granted_qos') else '-'}",
        f"  features:    {' '.join(features) or '-'}",
        f"  owner:       {call.owner}",
    ]
    if call.direction == call_pb2.Call.Direction.DIRECTION_INCOMING:
        lines.append(f"  incoming:    on {call.line}, from {call.caller_id or '(unknown)'}")
    if call.peer:
        lines.append(f"  peer:        {call.peer}")
    if call.HasField("offer_expire_time"):
        lines.append(f"  rings until: {_time(call.offer_expire_time)}")
    if call.HasField("lease_duration"):
        until = lease_text(call)
        lines.append(f"  lease:       {_seconds(call.lease_duration)}" + (f", {until}" if until != "-" else ""))
    lines += [
        f"  etag:        {call.etag}",
        f"  created:     {_time(call.create_time)}   updated: {_time(call.update_time)}",
    ]
    return "\n".join(lines)


def line_text(line: line_pb2.Line) -> str:
    state = _label(line_pb2.Line.State, "STATE_", line.state)
    lines = [
        f"{line.name}  {state}",
        f"  address:     {line.address}",
        f"  owner:       {line.owner}",
        f"  no answer:   after {line.no_answer_timeout.ToNanoseconds() / 1e9:g} s",
        f"  etag:        {line.etag}",
        f"  created:     {_time(line.create_time)}   closed: {_time(line.close_time)}",
    ]
    return "\n".join(lines)


def lines_table(found: Iterable[line_pb2.Line], out: TextIO) -> None:
    rows = [["NAME", "STATE", "ADDRESS", "OWNER", "NO-ANSWER"]]
    for line in found:
        rows.append(
            [
                line.name,
                _label(line_pb2.Line.State, "STATE_", line.state),
                line.address,
                line.owner,
                f"{line.no_answer_timeout.ToNanoseconds() / 1e9:g}s",
            ]
        )
    table(rows, out)


def table(rows: Sequence[Sequence[str]], out: TextIO) -> None:
    """Left-aligned columns; the first row is the header."""
    if len(rows) <= 1:
        out.write("(none)\n")
        return
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        out.write("  ".join(cells).rstrip() + "\n")


def state_text(call: call_pb2.Call) -> str:
    """``connected``, or ``disconnected (qos-unavailable)``: why a call ended is part of its state."""
    state = _label(call_pb2.Call.State, "STATE_", call.state)
    if call.state == call_pb2.Call.STATE_DISCONNECTED and call.disconnect_reason:
        state += f" ({_label(call_pb2.DisconnectReason, 'DISCONNECT_REASON_', call.disconnect_reason)})"
    return state


def calls_table(calls: Iterable[call_pb2.Call], out: TextIO) -> None:
    rows = [["NAME", "STATE", "LEVEL", "SEND (granted)", "RECV (granted)", "OWNER", "PROVIDER", "LEASE"]]
    for call in calls:
        send, recv = _short_qos(call.granted_qos, call.HasField("granted_qos"))
        rows.append(
            [
                call.name,
                state_text(call),
                _label(call_pb2.ServiceLevel, "SERVICE_LEVEL_", call.service_level),
                send,
                recv,
                call.owner,
                call.provider,
                lease_text(call),
            ]
        )
    table(rows, out)


def providers_table(providers: Iterable[provider_pb2.Provider], out: TextIO) -> None:
    rows = [["NAME", "DEFAULT", "QOS", "RENEGOTIATE", "LINK-ADMIN", "MAX-RATE", "SERVICE-TYPES"]]
    for p in providers:
        caps = p.capabilities
        kinds = ",".join(_label(flowspec_pb2.ServiceType, "SERVICE_TYPE_", t) for t in caps.service_types)
        rows.append(
            [
                p.name,
                "yes" if p.default else "",
                "yes" if caps.qos_supported else "no",
                "yes" if caps.renegotiation else "no",
                "yes" if caps.link_admin else "no",
                _rate(caps.max_reservable_bytes_per_second),
                kinds,
            ]
        )
    table(rows, out)


def links_table(links: Iterable[provider_pb2.Link], out: TextIO) -> None:
    rows = [["NAME", "CAPACITY B/s", "SEND-RESERVED", "RECV-RESERVED", "CALLS", "MTU"]]
    for link in links:
        rows.append(
            [
                link.name,
                _rate(link.capacity_bytes_per_second),
                _rate(link.sending_reserved_bytes_per_second),
                _rate(link.receiving_reserved_bytes_per_second),
                str(link.reservation_count),
                str(link.mtu_bytes),
            ]
        )
    table(rows, out)


def event_text(event: event_pb2.QosEvent) -> str:
    kind = event_pb2.QosEventType.Name(event.type).removeprefix("QOS_EVENT_TYPE_")
    parts = [f"#{event.sequence}", _time(event.create_time), kind, event.call]
    if event.line:
        parts.append(f"on {event.line}")
    if event.cause:
        parts.append(_label(event_pb2.QosChangeCause, "QOS_CHANGE_CAUSE_", event.cause))
    if event.disconnect_reason:
        parts.append("reason=" + _label(call_pb2.DisconnectReason, "DISCONNECT_REASON_", event.disconnect_reason))
    if event.reason:
        parts.append(f"[{event.reason}]")
    if event.HasField("current_qos"):
        parts.append(f"qos: {qos_text(event.current_qos)}")
    if event.HasField("counter_offer"):
        parts.append(f"counter-offer: {qos_text(event.counter_offer)}")
    if event.message:
        parts.append(f"- {event.message}")
    return "  ".join(parts)


def shed_text(changes: Sequence[callqos_service_pb2.LinkChange]) -> str:
    """What a capacity change did to the calls on the link, as its UpdateLinkResponse lists it."""
    if not changes:
        return "no call was shed"
    lines = [f"shed {len(changes)} call{'s' if len(changes) != 1 else ''}:"]
    for change in changes:
        if change.outcome == callqos_service_pb2.LinkChange.OUTCOME_DISCONNECTED:
            why = _label(call_pb2.DisconnectReason, "DISCONNECT_REASON_", call_pb2.DISCONNECT_REASON_QOS_UNAVAILABLE)
            what = f"disconnected ({why})"
        else:
            what = f"degraded to {qos_text(change.current_qos)}"
        if not change.recorded:
            what += " (not recorded yet)"
        if change.message:
            what += f" - {change.message}"
        lines.append(f"  {change.call}  {what}")
    return "\n".join(lines)


def _retry_flags(offer: flowspec_pb2.QosSpec) -> str:
    """The CLI flags that ask for ``offer`` (so a refusal can be retried by copy and paste)."""
    flags: list[str] = []
    for prefix, flow in (("send", offer.sending), ("recv", offer.receiving)):
        kind = _label(flowspec_pb2.ServiceType, "SERVICE_TYPE_", flow.service_type)
        flags.append(f"--{prefix}-type {kind}")
        for f in FLOW_FIELDS:
            if flow.HasField(f.field):
                flags.append(f"--{prefix}-{f.flag} {getattr(flow, f.field)}")
        if flow.peak_bandwidth_unbounded:
            flags.append(f"--{prefix}-peak unbounded")
    return " ".join(flags)


def error_dict(exc: errors.CallQosError) -> dict[str, Any]:
    body: dict[str, Any] = {
        "code": exc.code.name,
        "reason": exc.reason,
        "domain": exc.domain,
        "message": exc.message,
        "metadata": dict(exc.metadata),
    }
    if isinstance(exc, errors.QosRefusedError):
        body["call"] = exc.call
        if exc.counter_offer is not None:
            body["counterOffer"] = json_format.MessageToDict(exc.counter_offer)
    if isinstance(exc, errors.InvalidArgumentError):
        body["fieldViolations"] = [{"field": v.field, "description": v.description} for v in exc.field_violations]
    return {"error": body}


def error_text(exc: errors.CallQosError) -> str:
    head = f"error: {exc.reason or exc.code.name}"
    if exc.reason:
        head += f" ({exc.code.name})"
    message = exc.message
    if isinstance(exc, errors.InvalidArgumentError) and exc.field_violations:
        # The server's message repeats the violations; each is shown once, below.
        count = len(exc.field_violations)
        message = f"{count} invalid field{'s' if count != 1 else ''}"
    lines = [f"{head}: {message}" if message else head]
    if isinstance(exc, errors.QosRefusedError):
        if exc.call:
            lines.append(f"  call:          {exc.call}")
        offer = exc.counter_offer
        if offer is not None:
            lines.append(f"  counter-offer: {qos_text(offer)}")
            lines.append(f"  retry with:    {_retry_flags(offer)}")
        else:
            lines.append("  counter-offer: none (the provider can offer nothing now)")
    if isinstance(exc, errors.InvalidArgumentError):
        for violation in exc.field_violations:
            lines.append(f"  {violation.field}: {violation.description}")
    return "\n".join(lines)
