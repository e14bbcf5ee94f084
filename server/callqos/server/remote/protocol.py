"""What both ends of `callqos.provider.v1` agree on: how a launched provider is started and
announces itself, and how the protocol's messages map onto the in-process contract's types.

The handshake (see the comments of protos/callqos/provider/v1/provider_service.proto): the host
starts the provider's command with `MAGIC_COOKIE_ENV`, `PROTOCOL_VERSIONS_ENV` and `SOCKET_ENV` in
its environment and a pipe on its stdin (end of file on it: the host is gone, exit); the
provider, once serving, prints one line on stdout:

    CALLQOS_PROVIDER|1|unix|/private/dir/provider.sock|grpc
"""

from __future__ import annotations

from dataclasses import dataclass

from callqos.provider.v1 import provider_service_pb2 as pb
from callqos.server.providers.base import (
    AdmissionRequest,
    Decision,
    Grant,
    IncomingOffer,
    ProviderChange,
    Refusal,
    RefusalKind,
    Restored,
)
from callqos.v1 import event_pb2, flowspec_pb2

PROTOCOL_VERSION = 1
MAGIC = "CALLQOS_PROVIDER"
MAGIC_COOKIE_ENV = "CALLQOS_PROVIDER_MAGIC_COOKIE"
# Not a secret: it lets a provider started by hand say how it is meant to be run.
MAGIC_COOKIE = "d3c1c0b5-callqos-provider"
PROTOCOL_VERSIONS_ENV = "CALLQOS_PROVIDER_PROTOCOL_VERSIONS"
SOCKET_ENV = "CALLQOS_PROVIDER_SOCKET"
# The grpc.health.v1 service name a provider reports SERVING under.
HEALTH_SERVICE = pb.DESCRIPTOR.services_by_name["ProviderService"].full_name
NETWORKS = ("unix", "tcp")

QosSpec = flowspec_pb2.QosSpec
EventType = event_pb2.QosEventType

_KINDS = {
    RefusalKind.ADMISSION: pb.RefusalKind.REFUSAL_KIND_ADMISSION,
    RefusalKind.POLICY: pb.RefusalKind.REFUSAL_KIND_POLICY,
}
_KINDS_BACK = {wire: kind for kind, wire in _KINDS.items()}


class HandshakeError(Exception):
    """A provider's handshake line cannot be used; the message says why."""


class ProtocolViolation(Exception):
    """A provider's answer breaks the protocol (a decision without a decision, a refusal without
    a kind, a grant without QoS); the message says how."""


@dataclass(frozen=True)
class Handshake:
    """The line a launched provider prints once it serves: where to dial it."""

    version: int
    network: str  # "unix" or "tcp"
    address: str  # a socket path, or HOST:PORT
    protocol: str = "grpc"

    @classmethod
    def parse(cls, line: str) -> Handshake:
        fields = line.strip().split("|")
        if len(fields) < 5 or fields[0] != MAGIC:
            raise HandshakeError(f"not a handshake line (expected {MAGIC}|1|unix|/path|grpc): {line.strip()!r}")
        version, network, address, protocol = fields[1:5]
        if not version.isdigit() or int(version) != PROTOCOL_VERSION:
            raise HandshakeError(
                f"the provider speaks protocol version {version!r}; this host speaks {PROTOCOL_VERSION}"
            )
        if network not in NETWORKS:
            raise HandshakeError(f"unknown network {network!r} in the handshake (expected unix or tcp)")
        if not address:
            raise HandshakeError("the handshake names no address")
        if protocol != "grpc":
            raise HandshakeError(f"unknown protocol {protocol!r} in the handshake (expected grpc)")
        return cls(int(version), network, address, protocol)

    def line(self) -> str:
        return f"{MAGIC}|{self.version}|{self.network}|{self.address}|{self.protocol}"

    @property
    def target(self) -> str:
        """The gRPC target to dial."""
        return f"unix:{self.address}" if self.network == "unix" else self.address


# -- decisions ------------------------------------------------------------------------------
def admit_request(request: AdmissionRequest, request_id: str) -> pb.AdmitRequest:
    return pb.AdmitRequest(
        call=request.call,
        request_id=request_id,
        destination=request.destination,
        service_level=request.level,  # type: ignore[arg-type]  # an int of the enum
        qos=request.qos,
        principal=request.principal,
        incoming=request.incoming,
    )


def renegotiate_request(request: AdmissionRequest, request_id: str) -> pb.RenegotiateRequest:
    return pb.RenegotiateRequest(
        call=request.call,
        request_id=request_id,
        destination=request.destination,
        service_level=request.level,  # type: ignore[arg-type]  # an int of the enum
        qos=request.qos,
        principal=request.principal,
        current_qos=request.current,
    )


def admission(message: pb.AdmitRequest | pb.RenegotiateRequest) -> AdmissionRequest:
    """The in-process request an Admit or Renegotiate carries."""
    current = message.current_qos if isinstance(message, pb.RenegotiateRequest) else None
    return AdmissionRequest(
        call=message.call,
        destination=message.destination,
        level=message.service_level,
        qos=message.qos,
        principal=message.principal,
        current=current,
        incoming=isinstance(message, pb.AdmitRequest) and message.incoming,
    )


def decision_fields(decision: Decision) -> dict[str, pb.Grant | pb.Refusal]:
    """The `decision` oneof of an AdmitResponse or RenegotiateResponse, as keyword arguments."""
    if isinstance(decision, Grant):
        return {"grant": pb.Grant(qos=decision.qos)}
    refusal = pb.Refusal(kind=_KINDS[decision.kind], message=decision.message)
    if decision.counter_offer is not None:
        refusal.counter_offer.CopyFrom(decision.counter_offer)
    return {"refusal": refusal}


def decision_of(response: pb.AdmitResponse | pb.RenegotiateResponse) -> Decision:
    """The decision an answer carries; ProtocolViolation if it carries none, or half of one."""
    which = response.WhichOneof("decision")
    if which == "grant":
        if not response.grant.HasField("qos"):
            raise ProtocolViolation("a grant without the granted QoS")
        return Grant(response.grant.qos)
    if which == "refusal":
        refusal = response.refusal
        kind = _KINDS_BACK.get(refusal.kind)
        if kind is None:
            raise ProtocolViolation(f"a refusal of unknown kind {refusal.kind}")
        return Refusal(kind, refusal.message, refusal.counter_offer if refusal.HasField("counter_offer") else None)
    raise ProtocolViolation("an answer with neither a grant nor a refusal")


# -- restored calls and changes ---------------------------------------------------------------
def held_call(restored: Restored) -> pb.HeldCall:
    return pb.HeldCall(
        call=restored.call,
        destination=restored.destination,
        service_level=restored.level,  # type: ignore[arg-type]  # an int of the enum
        qos=restored.qos,
    )


def restored_of(message: pb.HeldCall) -> Restored:
    return Restored(message.call, message.destination, message.service_level, message.qos)


def change_message(change: ProviderChange, sequence: int = 0) -> pb.Change:
    message = pb.Change(sequence=sequence, call=change.call, message=change.message, event=change.event)
    if change.qos is not None:
        message.qos.CopyFrom(change.qos)
    return message


def change_of(message: pb.Change) -> ProviderChange:
    """The in-process change a Change carries; ProtocolViolation for one naming no call."""
    if not message.call:
        raise ProtocolViolation("a change that names no call")
    event = message.event or EventType.QOS_EVENT_TYPE_NOQOS
    return ProviderChange(message.call, message.qos if message.HasField("qos") else None, message.message, event)


# -- calls from the provider's network ----------------------------------------------------------
def offer_message(offer: IncomingOffer) -> pb.IncomingOffer:
    return pb.IncomingOffer(
        destination=offer.destination,
        caller_id=offer.caller_id,
        service_level=offer.level,  # type: ignore[arg-type]  # an int of the enum
        caller_qos=offer.caller_qos,
    )


def offer_of(message: pb.IncomingOffer) -> IncomingOffer:
    return IncomingOffer(message.destination, message.caller_id, message.service_level, message.caller_qos)


# -- link names -----------------------------------------------------------------------------
def link_id_of(name: str) -> str:
    """The {link} of `links/{link}` or `providers/{provider}/links/{link}` (what a provider
    names its links with: it does not know its host's id for it); '' for anything else."""
    head, sep, link = name.rpartition("links/")
    if not sep or "/" in link or (head and not head.endswith("/")):
        return ""
    return link
