"""Which packets belong to a call: the linux-tc filter carried in `QosSpec.provider_specific`.

Like Winsock's `QOS.ProviderSpecific` carried an RSVP filter spec, a call that wants its traffic
shaped names it with a small JSON object (UTF-8), version 1:

    {"version": 1, "protocol": "udp",
     "local":  {"address": "10.99.0.1", "port": 5000},
     "remote": {"address": "10.99.0.0/24", "port": 6000},
     "dscp": 46}

- `version` (required): 1.
- `protocol`: "tcp", "udp", "sctp", "icmp", "icmpv6" or an IP protocol number 0-255.
- `local` / `remote`: this end and the far end, each with an optional `address` (an address or
  a CIDR prefix) and an optional `port` (1-65535; needs protocol tcp, udp or sctp). Sending
  packets match source = local and destination = remote; receiving packets the reverse.
- `dscp`: the DiffServ code point (0-63) in the IPv4 TOS / IPv6 traffic class byte.
- `family`: "ipv4" or "ipv6"; only needed when no address says it (default "ipv4").

At least one of protocol, an address, a port or dscp is required: a filter that matches every
packet would take the default class's traffic. Unknown keys are refused (a typo must not widen a
filter silently). An empty `provider_specific` means "no filter": the call's capacity is
reserved and its class exists, but no packet is steered to it.

The filter is installed as a cls_u32 filter. Offsets are those of `tc ... u32 match ip sport`:
IPv4 ports are read at a 20-byte header, so port filters also require IHL = 5 (no IP options)
and a first fragment; IPv6 ports are read right after the fixed header (no extension headers).
Firewall marks are not offered: this kernel has neither cls_fw nor u32 mark matching, and a
mark match the kernel silently ignored would match every packet.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Any

FORMAT_VERSION = 1
MAX_FILTER_BYTES = 1024
PROTOCOLS = {"icmp": 1, "tcp": 6, "udp": 17, "icmpv6": 58, "sctp": 132}
PORT_PROTOCOLS = frozenset({6, 17, 132})
_KEYS = frozenset({"version", "protocol", "local", "remote", "dscp", "family"})
_END_KEYS = frozenset({"address", "port"})

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class FilterError(ValueError):
    """provider_specific is not a valid linux-tc filter; `problems` says what, one per entry."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Endpoint:
    network: Network | None = None
    port: int | None = None


@dataclass(frozen=True)
class FlowFilter:
    """A validated filter, as the caller sees it (local = this end)."""

    family: int  # 4 or 6
    protocol: int | None
    local: Endpoint
    remote: Endpoint
    dscp: int | None

    def u32_keys(self, direction: str) -> list[str]:
        """cls_u32 keys ("value/mask+offset", 32-bit words from the network header) matching this
        flow's packets in `direction` ("sending": local → remote, "receiving": remote → local)."""
        source, destination = (self.local, self.remote) if direction == "sending" else (self.remote, self.local)
        keys: list[str] = []
        has_ports = source.port is not None or destination.port is not None
        if self.family == 4:
            if has_ports:
                keys.append(_key(0x05000000, 0x0F000000, 0))  # IHL 5: the ports are at offset 20
                keys.append(_key(0x00000000, 0x00001FFF, 4))  # fragment offset 0: the ports are there
            if self.dscp is not None:
                keys.append(_key(self.dscp << 18, 0xFC << 16, 0))
            if self.protocol is not None:
                keys.append(_key(self.protocol << 16, 0x00FF0000, 8))
            keys += _address_keys(source.network, 12)
            keys += _address_keys(destination.network, 16)
            port_offset = 20
        else:
            if self.dscp is not None:
                keys.append(_key(self.dscp << 22, 0xFC << 20, 0))
            if self.protocol is not None:
                keys.append(_key(self.protocol << 8, 0x0000FF00, 4))
            keys += _address_keys(source.network, 8)
            keys += _address_keys(destination.network, 24)
            port_offset = 40
        if has_ports:
            value = ((source.port or 0) << 16) | (destination.port or 0)
            mask = (0xFFFF0000 if source.port is not None else 0) | (0xFFFF if destination.port is not None else 0)
            keys.append(_key(value, mask, port_offset))
        return keys

    @property
    def ethertype(self) -> int:
        return ETH_P_IP if self.family == 4 else ETH_P_IPV6


def _key(value: int, mask: int, offset: int) -> str:
    return f"0x{value & mask:08x}/0x{mask:08x}+{offset}"


def _address_keys(network: Network | None, offset: int) -> list[str]:
    """One key per 32-bit word of the address that the prefix covers."""
    if network is None or network.prefixlen == 0:
        return []
    raw = network.network_address.packed
    mask = network.netmask.packed
    keys = []
    for word in range(len(raw) // 4):
        word_mask = int.from_bytes(mask[4 * word : 4 * word + 4], "big")
        if word_mask:
            keys.append(_key(int.from_bytes(raw[4 * word : 4 * word + 4], "big"), word_mask, offset + 4 * word))
    return keys


def parse(data: bytes) -> FlowFilter | None:
    """The filter in `data` (None when empty), or FilterError listing every problem."""
    if not data:
        return None
    if len(data) > MAX_FILTER_BYTES:
        raise FilterError([f"a linux-tc filter is at most {MAX_FILTER_BYTES} bytes"])
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FilterError([f"not a linux-tc filter (a UTF-8 JSON object, see the provider's README): {exc}"]) from None
    if not isinstance(raw, dict):
        raise FilterError(["a linux-tc filter is a JSON object"])
    problems: list[str] = [f"unknown key {key!r}" for key in sorted(set(raw) - _KEYS)]
    if raw.get("version") != FORMAT_VERSION:
        problems.append(f"version: required, must be {FORMAT_VERSION}")
    protocol = _protocol(raw.get("protocol"), problems)
    local = _endpoint(raw.get("local"), "local", problems)
    remote = _endpoint(raw.get("remote"), "remote", problems)
    dscp = raw.get("dscp")
    if dscp is not None and (not _is_int(dscp) or not 0 <= dscp <= 63):
        problems.append("dscp: an integer 0-63")
        dscp = None
    family = _family(raw.get("family"), local, remote, problems)
    if (local.port is not None or remote.port is not None) and protocol not in PORT_PROTOCOLS:
        problems.append("a port needs protocol tcp, udp or sctp")
    if protocol in (1, 58) and protocol != (1 if family == 4 else 58):
        problems.append(f"protocol {protocol} does not belong to IPv{family}")
    if protocol is None and dscp is None and all(_matches_any(end) for end in (local, remote)):
        problems.append("matches every packet: give at least a protocol, an address, a port or dscp")
    if problems:
        raise FilterError(problems)
    return FlowFilter(family, protocol, local, remote, dscp)


def problems(data: bytes) -> list[str]:
    """What is wrong with `data` as a linux-tc filter (empty when it is fine)."""
    try:
        parse(data)
    except FilterError as error:
        return error.problems
    return []


def _matches_any(end: Endpoint) -> bool:
    return end.port is None and (end.network is None or end.network.prefixlen == 0)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _protocol(value: Any, problems: list[str]) -> int | None:
    if value is None:
        return None
    if isinstance(value, str) and value.lower() in PROTOCOLS:
        return PROTOCOLS[value.lower()]
    if _is_int(value) and 0 <= value <= 255:
        return int(value)
    problems.append(f"protocol: one of {', '.join(PROTOCOLS)} or a number 0-255")
    return None


def _endpoint(value: Any, where: str, problems: list[str]) -> Endpoint:
    if value is None:
        return Endpoint()
    if not isinstance(value, dict):
        problems.append(f"{where}: an object with address and/or port")
        return Endpoint()
    problems.extend(f"{where}: unknown key {key!r}" for key in sorted(set(value) - _END_KEYS))
    network: Network | None = None
    if "address" in value:
        try:
            network = ipaddress.ip_network(str(value["address"]), strict=True)
        except ValueError as exc:
            problems.append(f"{where}.address: an IPv4/IPv6 address or prefix ({exc})")
    port = value.get("port")
    if port is not None and (not _is_int(port) or not 1 <= port <= 65535):
        problems.append(f"{where}.port: an integer 1-65535")
        port = None
    return Endpoint(network, port)


def _family(value: Any, local: Endpoint, remote: Endpoint, problems: list[str]) -> int:
    versions = {end.network.version for end in (local, remote) if end.network is not None}
    if len(versions) > 1:
        problems.append("local and remote addresses are of different families")
    if value is not None:
        if value not in ("ipv4", "ipv6"):
            problems.append('family: "ipv4" or "ipv6"')
            return 4
        family = 4 if value == "ipv4" else 6
        if versions and versions != {family}:
            problems.append(f"family: {value} does not match the addresses")
        return family
    return versions.pop() if len(versions) == 1 else 4
