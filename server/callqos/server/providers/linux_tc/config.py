"""The linux-tc provider's settings: which interfaces are links, and what each carries.

    [providers.linux-tc]
    plugin = "linux-tc"
    poll_interval_seconds = 1.0            # how often interface state (down/up) is read

    [[providers.linux-tc.links]]
    id = "wan"
    interface = "eth0"                     # sending direction: this interface's egress is shaped
    netns = ""                             # its network namespace (`ip netns` name or a path); "" = the server's
    receiving_interface = ""               # receiving direction: the egress of this interface (e.g. the
    receiving_netns = ""                   #   LAN side of a gateway, or an IFB); "" = admission control only
    capacity_bytes_per_second = 1250000    # each direction; at most the interface's speed, when it reports one
    mtu_bytes = 0                          # 0 = the interface's MTU; never more than it
    error_term_c_bytes = 1500              # RFC 2212 Ctot
    error_term_d_microseconds = 1000       # RFC 2212 Dtot
    min_path_latency_microseconds = 2000   # RFC 2215 MINIMUM_PATH_LATENCY
    destinations = []                      # destination prefixes routed here; [] = the rest

The error terms, path latency and destinations mean what they mean for the reference provider,
whose admission accounting this provider shares.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from callqos.server.providers import is_resource_id

_LINK_KEYS = frozenset(
    {
        "id",
        "interface",
        "netns",
        "receiving_interface",
        "receiving_netns",
        "capacity_bytes_per_second",
        "mtu_bytes",
        "error_term_c_bytes",
        "error_term_d_microseconds",
        "min_path_latency_microseconds",
        "destinations",
    }
)
_PROVIDER_KEYS = frozenset({"links", "poll_interval_seconds"})
# Passed on to the reference provider's accounting unchanged.
_ACCOUNTING_KEYS = ("error_term_c_bytes", "error_term_d_microseconds", "min_path_latency_microseconds", "destinations")


@dataclass(frozen=True)
class InterfaceName:
    ifname: str
    netns: str = ""


@dataclass(frozen=True)
class LinkConfig:
    id: str
    sending: InterfaceName
    receiving: InterfaceName | None
    capacity: int
    mtu: int  # 0: take the interface's
    accounting: Mapping[str, Any]  # the reference provider's link settings (terms, destinations)


@dataclass(frozen=True)
class Settings:
    links: tuple[LinkConfig, ...]
    poll_interval_seconds: float


def parse(settings: Mapping[str, Any]) -> Settings:
    """The settings table, checked; ValueError names the key and what is wrong with it."""
    unknown = set(settings) - _PROVIDER_KEYS
    if unknown:
        raise ValueError(f"unknown settings {sorted(unknown)} (known: {sorted(_PROVIDER_KEYS)})")
    raw_links = settings.get("links")
    if not isinstance(raw_links, list) or not raw_links:
        raise ValueError("at least one [[links]] entry naming an interface is required")
    links = tuple(_link(raw, index) for index, raw in enumerate(raw_links))
    if len({link.id for link in links}) != len(links):
        raise ValueError("link ids must be unique")
    used = [link.sending for link in links] + [link.receiving for link in links if link.receiving]
    if len(set(used)) != len(used):
        raise ValueError("an interface can carry only one link direction")
    poll = float(settings.get("poll_interval_seconds", 1.0))
    if poll <= 0:
        raise ValueError("poll_interval_seconds must be positive")
    return Settings(links, poll)


def _link(raw: Any, index: int) -> LinkConfig:
    where = f"links[{index}]"
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: a table")
    unknown = set(raw) - _LINK_KEYS
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
    link_id = str(raw.get("id", "default"))
    if not is_resource_id(link_id):
        raise ValueError(f"{where}: id {link_id!r} must be a resource id ([a-z][a-z0-9-]*)")
    interface = str(raw.get("interface", ""))
    if not interface:
        raise ValueError(f"{where} ({link_id}): interface is required")
    receiving = str(raw.get("receiving_interface", ""))
    capacity = int(raw.get("capacity_bytes_per_second", 0))
    if capacity <= 0:
        raise ValueError(f"{where} ({link_id}): capacity_bytes_per_second must be positive")
    mtu = int(raw.get("mtu_bytes", 0))
    if mtu < 0:
        raise ValueError(f"{where} ({link_id}): mtu_bytes must not be negative")
    return LinkConfig(
        id=link_id,
        sending=InterfaceName(interface, str(raw.get("netns", ""))),
        receiving=InterfaceName(receiving, str(raw.get("receiving_netns", ""))) if receiving else None,
        capacity=capacity,
        mtu=mtu,
        accounting={key: raw[key] for key in _ACCOUNTING_KEYS if key in raw},
    )
