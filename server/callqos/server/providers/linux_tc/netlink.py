"""The kernel side, behind a narrow interface: one `Interface` per managed network interface.

Each Interface owns one worker thread. The thread first joins the interface's network namespace
(setns on itself only: a network namespace is per thread, so the server and its other threads
stay where they are), then opens a pyroute2 netlink socket there and does every netlink request
for that interface. One thread per interface serializes its requests, keeps pyroute2's blocking
API off the server's event loop, and lets the provider manage interfaces in namespaces other
than the server's own, by name, without forking.

Netlink failures come back as `TcError` with the operation, the interface and the kernel's
errno and message, never as a bare pyroute2 exception.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import fcntl
import math
import os
import socket
import struct
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"  # where `ip netns add` puts named namespaces
IFF_UP = 0x1
SIOCETHTOOL = 0x8946
ETHTOOL_GSET = 0x00000001
SPEED_UNKNOWN = (0, 0xFFFF, 0xFFFFFFFF)
# The kernel's HTB buffer (a burst as its transmission time in scheduler ticks) is an unsigned
# 32-bit field, and a pfifo's limit (in packets) a signed one.
U32_MAX = 0xFFFFFFFF
FIFO_LIMIT_MAX = 0x7FFFFFFF


class TcError(Exception):
    """A traffic-control operation failed; `code` is the kernel's errno when it gave one."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class LinkState:
    exists: bool
    up: bool = False  # administratively up and with carrier (operstate UP or UNKNOWN)
    mtu: int = 0
    speed_bytes_per_second: int = 0  # 0 = the driver does not say


@dataclass(frozen=True)
class HtbClass:
    """One HTB class as the provider wants it. Rates and bursts in bytes (per second)."""

    rate: int
    ceil: int
    burst: int
    prio: int


def fitting_rate(rate: int, mtu: int) -> int:
    """`rate`, or the kernel's smallest above it: an HTB class carries a rate table, each packet
    size's transmission time in 32-bit scheduler ticks, which a few bytes per second cannot hold
    (1 B/s takes 2048 s for 2048 bytes). A class reserved below it (the least a validated
    flowspec may ask is 1 B/s) is installed at it: about 8 B/s more than the books hold, far
    below one packet per second."""
    from pyroute2.netlink.rtnl.tcmsg.common import calc_xmittime  # as pyroute2 encodes the table

    cell_log = 0
    while ((mtu or 1600) >> cell_log) > 255:  # pyroute2's (and tc's) choice of table cells
        cell_log += 1
    largest = 256 << cell_log
    fitting = rate
    while fitting > 0 and calc_xmittime(fitting, largest) > U32_MAX:
        fitting = max(fitting + 1, math.ceil(fitting * calc_xmittime(fitting, largest) / U32_MAX))
    return fitting


def fitting_burst(rate: int, burst: int) -> int:
    """`burst` bytes, or fewer: the most whose transmission time at `rate` fits HTB's 32-bit buffer
    field (about 274 s at any rate with 64 ns ticks). A validated flowspec may ask for a bucket of
    2^40 bytes at 1 B/s; the kernel cannot hold that burst, and a class with the longest burst it
    can hold still keeps the reserved rate."""
    from pyroute2.netlink.rtnl.tcmsg.common import calc_xmittime, time2tick  # as pyroute2 encodes it

    if rate <= 0 or calc_xmittime(rate, burst) <= U32_MAX:
        return burst
    fitting = int(U32_MAX * rate / time2tick(1_000_000))  # bytes sent in the longest buffer
    while fitting > 1 and calc_xmittime(rate, fitting) > U32_MAX:  # rounding: a few steps at most
        fitting -= max(1, fitting // 1_000_000)
    return max(1, min(burst, fitting))


def netns_path(netns: str) -> str:
    """A namespace name as `ip netns` knows it, or an explicit path (/proc/PID/ns/net)."""
    return netns if "/" in netns else os.path.join(NETNS_DIR, netns)


def _enter_netns(netns: str) -> None:
    """Move the calling thread (only) into `netns`."""
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        fd = os.open(netns_path(netns), os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise TcError(f"network namespace {netns!r}: {exc.strerror}", exc.errno or 0) from None
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            code = ctypes.get_errno()
            raise TcError(f"cannot enter network namespace {netns!r}: {os.strerror(code)}", code)
    finally:
        os.close(fd)


class Interface:
    """One network interface (in one namespace) whose egress the provider shapes with HTB."""

    def __init__(self, ifname: str, netns: str = "") -> None:
        self.ifname = ifname
        self.netns = netns
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"tc-{ifname}")
        self._ipr: Any = None  # pyroute2.IPRoute, created and used only in the worker thread
        self._thread: threading.Thread | None = None

    @property
    def label(self) -> str:
        return f"{self.ifname} (netns {self.netns})" if self.netns else self.ifname

    # -- running work in the interface's thread -----------------------------------------------
    def call(self, work: Callable[[], T]) -> T:
        """Run `work` in the interface's thread and wait (for start-up and tests)."""
        return self._executor.submit(self._in_thread, work).result()

    async def run(self, work: Callable[[], T]) -> T:
        """Run `work` in the interface's thread without blocking the event loop. Work keeps its
        order even if the awaiting coroutine is cancelled (it then finishes unobserved)."""
        return await asyncio.wrap_future(self._executor.submit(self._in_thread, work))

    def _in_thread(self, work: Callable[[], T]) -> T:
        if self._ipr is None:
            if self.netns:
                _enter_netns(self.netns)
            from pyroute2 import IPRoute  # imported here: the provider only needs it on Linux

            try:
                self._ipr = IPRoute()
            except OSError as exc:
                raise TcError(f"netlink socket for {self.label}: {exc}", exc.errno or 0) from None
        return work()

    def close(self) -> None:
        def shut() -> None:
            if self._ipr is not None:
                self._ipr.close()
                self._ipr = None

        try:
            self._executor.submit(shut).result(timeout=5)
        finally:
            self._executor.shutdown(wait=False)

    # -- netlink operations (worker thread only) -----------------------------------------------
    def _request(self, what: str, method: str, *args: Any, **kwargs: Any) -> Any:
        from pyroute2 import NetlinkError

        try:
            return getattr(self._ipr, method)(*args, **kwargs)
        except NetlinkError as exc:
            raise TcError(f"{what} on {self.label}: {exc.args[-1] if exc.args else exc}", exc.code) from None

    def index(self) -> int:
        found = self._request("looking up the interface", "link_lookup", ifname=self.ifname)
        if not found:
            raise TcError(f"no interface {self.label}", errno.ENODEV)
        return int(found[0])

    def state(self) -> LinkState:
        found = self._request("looking up the interface", "link_lookup", ifname=self.ifname)
        if not found:
            return LinkState(exists=False)
        link = self._request("reading the interface", "get_links", found[0])[0]
        operstate = link.get_attr("IFLA_OPERSTATE")
        up = bool(link["flags"] & IFF_UP) and operstate in ("UP", "UNKNOWN")
        return LinkState(True, up, int(link.get_attr("IFLA_MTU") or 0), self._speed())

    def _speed(self) -> int:
        """The link speed the driver reports (ethtool), in bytes/s; 0 when unknown. The ioctl
        socket is created in this thread, so it asks the interface's own namespace."""
        command = struct.pack("I", ETHTOOL_GSET) + bytes(40)  # struct ethtool_cmd
        buffer = ctypes.create_string_buffer(command)
        request = struct.pack("16sP", self.ifname.encode()[:15], ctypes.addressof(buffer))
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                fcntl.ioctl(sock.fileno(), SIOCETHTOOL, request)
        except OSError:
            return 0
        low, duplex, port, phyad, transceiver, autoneg, mdio, maxtx, maxrx, high = struct.unpack_from(
            "HBBBBBBIIH", buffer.raw, 12
        )
        del duplex, port, phyad, transceiver, autoneg, mdio, maxtx, maxrx
        megabits = (high << 16) | low
        return 0 if megabits in SPEED_UNKNOWN else megabits * 125_000

    def root_handle(self) -> tuple[str, int] | None:
        """(kind, handle) of the interface's root qdisc, None if it has the kernel default."""
        index = self.index()
        for qdisc in self._request("listing qdiscs", "get_qdiscs", index):
            if qdisc["parent"] == 0xFFFFFFFF:  # TC_H_ROOT
                kind = str(qdisc.get_attr("TCA_KIND"))
                return (kind, int(qdisc["handle"])) if qdisc["handle"] else None
        return None

    def delete_root(self) -> None:
        try:
            self._request("deleting the root qdisc", "tc", "del", index=self.index(), parent=0xFFFFFFFF)
        except TcError as exc:
            if exc.code not in (errno.ENOENT, errno.EINVAL):
                raise

    def add_htb_root(self, handle: int, default_minor: int) -> None:
        self._request("adding the HTB root qdisc", "tc", "add", "htb", self.index(), handle, default=default_minor)

    def put_class(self, classid: int, parent: int, spec: HtbClass, mtu: int, *, create: bool) -> None:
        rate, ceil = fitting_rate(spec.rate, mtu), fitting_rate(spec.ceil, mtu)
        self._request(
            f"{'adding' if create else 'changing'} HTB class {classid >> 16:x}:{classid & 0xFFFF:x}",
            "tc",
            "add-class" if create else "change-class",
            "htb",
            self.index(),
            classid,
            parent=parent,
            rate=rate,
            ceil=ceil,
            burst=fitting_burst(rate, spec.burst),
            cburst=fitting_burst(ceil, spec.burst),
            prio=spec.prio,
            mtu=mtu,
            # The quantum only divides borrowed bandwidth; one full frame avoids the kernel's
            # "quantum is small" warning for low rates.
            quantum=mtu,
        )

    def delete_class(self, classid: int) -> None:
        what = f"deleting HTB class {classid >> 16:x}:{classid & 0xFFFF:x}"
        # No kind: pyroute2 would build (and fail on) HTB class options for a deletion.
        self._request(what, "tc", "del-class", index=self.index(), handle=classid)

    def classes(self) -> list[int]:
        return [int(c["handle"]) for c in self._request("listing classes", "get_classes", self.index())]

    def put_leaf(self, handle: int, parent: int, limit_packets: int) -> None:
        """A packet FIFO under a call's class: how much it may queue (bfifo has no pyroute2
        encoder; the limit is computed in packets of the flow's maximum SDU instead)."""
        limit = min(limit_packets, FIFO_LIMIT_MAX)  # a queue that long never fills anyway
        self._request(
            "setting a class queue", "tc", "replace", "pfifo", self.index(), handle, parent=parent, limit=limit
        )

    def add_filter(self, parent: int, pref: int, ethertype: int, keys: list[str], classid: int) -> None:
        self._request(
            f"adding a u32 filter (pref {pref})",
            "tc",
            "add-filter",
            "u32",
            self.index(),
            parent=parent,
            prio=pref,
            protocol=ethertype,
            target=classid,
            keys=keys,
        )

    def delete_filter(self, parent: int, pref: int, ethertype: int) -> None:
        """Delete the filters at `pref` (a call's filter has a pref of its own). The request
        header carries pref and protocol in `info`, as `tc filter del ... pref P protocol X`."""
        try:
            self._request(
                f"deleting the u32 filter (pref {pref})",
                "tc",
                "del-filter",
                index=self.index(),
                parent=parent,
                info=(pref << 16) | socket.htons(ethertype),
            )
        except TcError as exc:
            if exc.code != errno.ENOENT:
                raise

    def filters(self, parent: int) -> list[tuple[int, int]]:
        """(pref, ethertype) of the filters attached to `parent`."""
        found = set()
        for item in self._request("listing filters", "get_filters", self.index(), parent=parent):
            info = int(item["info"])
            found.add((info >> 16, socket.ntohs(info & 0xFFFF)))
        return sorted(found)
