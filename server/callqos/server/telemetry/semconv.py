"""Which RPC semantic conventions to emit, from OTEL_SEMCONV_STABILITY_OPT_IN.

The RPC conventions were renamed after semconv v1.37 (`rpc.system` → `rpc.system.name`,
`rpc.method` fully qualified, `rpc.grpc.status_code` int → `rpc.response.status_code` string,
`rpc.server.duration` in ms → `rpc.server.call.duration` in s). As the conventions ask of existing
instrumentations, the old attribute names stay the default; `rpc` switches to the new ones and
`rpc/dup` emits both (and wins over `rpc` when both are listed). The duration metric is always
`rpc.server.call.duration`, in seconds (the Prometheus convention); only its attributes follow
the choice.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

import grpc


@dataclass(frozen=True)
class Semconv:
    old: bool = True
    new: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Semconv:
        env = os.environ if env is None else env
        options = {item.strip().lower() for item in env.get("OTEL_SEMCONV_STABILITY_OPT_IN", "").split(",")}
        if "rpc/dup" in options:
            return cls(old=True, new=True)
        if "rpc" in options:
            return cls(old=False, new=True)
        return cls()


# gRPC server spans are errors only for these codes (semconv "gRPC status" table): a client's
# mistake (INVALID_ARGUMENT, NOT_FOUND, ...) or a refused QoS (RESOURCE_EXHAUSTED,
# PERMISSION_DENIED) is the server doing its job.
SERVER_ERROR_CODES = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


def rpc_attributes(semconv: Semconv, service: str, method: str) -> dict[str, str]:
    """The attributes known when an RPC starts (also the RPC duration metric's, with the code)."""
    attributes: dict[str, str] = {}
    if semconv.old:
        attributes.update({"rpc.system": "grpc", "rpc.service": service, "rpc.method": method})
    if semconv.new:
        # Same key as the old short `rpc.method`: with rpc/dup the stable, qualified value wins.
        attributes.update({"rpc.system.name": "grpc", "rpc.method": f"{service}/{method}"})
    return attributes


def status_attributes(semconv: Semconv, code: grpc.StatusCode) -> dict[str, str | int]:
    attributes: dict[str, str | int] = {}
    if semconv.old:
        attributes["rpc.grpc.status_code"] = code.value[0]
    if semconv.new:
        attributes["rpc.response.status_code"] = code.name
        if code in SERVER_ERROR_CODES:
            attributes["error.type"] = code.name
    return attributes


def peer_attributes(semconv: Semconv, peer: str) -> dict[str, str | int]:
    """`ipv4:127.0.0.1:5000` / `ipv6:[::1]:5000` → peer address and port attributes."""
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return {}
    host, _, port = urllib.parse.unquote(rest).rpartition(":")
    host = host.strip("[]")
    if not port.isdigit():
        return {}
    attributes: dict[str, str | int] = {}
    if semconv.old:
        attributes.update({"net.peer.ip": host, "net.peer.port": int(port)})
    if semconv.new:
        attributes.update({"network.peer.address": host, "network.peer.port": int(port)})
    return attributes
