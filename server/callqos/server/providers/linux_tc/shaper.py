"""What the kernel should hold for one interface, and bringing it there.

The hierarchy on each managed interface (HTB; HFSC would express GUARANTEED's delay curve more
directly, but sch_hfsc is not built into the kernels this runs on, and HTB's per-class rate,
ceiling, burst and priority are enough for the two IntServ services):

    1:    htb qdisc, default 1:ffff
    1:1   root class: rate = ceil = the link's capacity
    1:ffff  default class: BEST_EFFORT and every unreserved packet; rate = what no call reserved,
            ceil = the whole capacity (it borrows whatever the calls leave unused)
    1:N   one class per call and direction with a reservation, ceil = rate (a call never
          borrows: its grant is what it gets), a pfifo leaf N: and a u32 filter (pref P)

- CONTROLLED_LOAD: rate = token rate, burst = token bucket, HTB priority 1, a queue holding
  the bucket plus 50 ms at the rate.
- GUARANTEED: rate = the reserved rate (peak, or token rate when the peak is unbounded; see
  qos.reserved_rate), HTB priority 0 (served first when classes borrow, and lowest delay), burst
  one tick at that rate, and a queue no longer than the latency it was granted allows for
  queueing here (latency minus the path's fixed terms, at the rate): a packet that would wait
  longer than its bound is dropped instead.

`Shaper.apply` is a reconciliation: it compares the plan with what it installed and changes
only the difference — a renegotiated call's class is changed in place (`tc class change`), its
new filter added before the old one is removed — so a call's packets never fall out of its
class during a change. It runs only in the interface's thread.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from callqos.server.providers import PathTerms, reserved_rate
from callqos.server.providers.linux_tc.filters import FlowFilter
from callqos.server.providers.linux_tc.netlink import HtbClass, Interface
from callqos.v1 import flowspec_pb2

ST = flowspec_pb2.ServiceType

ROOT = 0x10000  # 1:
ROOT_CLASS = 0x10001  # 1:1
DEFAULT_MINOR = 0xFFFF  # 1:ffff
FIRST_MINOR = 0x10
LAST_MINOR = 0xFFFE
ETHERNET_HEADER = 14
# HTB needs a positive rate; this is what a class gets when nothing is left (8 kbit/s).
MIN_RATE = 1000
# HTB refills per timer tick: a burst below one tick's worth cannot sustain the rate.
TICKS_PER_SECOND = 1000
CONTROLLED_LOAD_QUEUE_SECONDS = 0.05
PRIO_GUARANTEED, PRIO_CONTROLLED_LOAD, PRIO_DEFAULT = 0, 1, 7


@dataclass(frozen=True)
class Match:
    """A u32 filter: packets of `ethertype` whose header matches every key."""

    ethertype: int
    keys: tuple[str, ...]


@dataclass(frozen=True)
class CallClass:
    htb: HtbClass
    queue_packets: int
    match: Match | None


@dataclass(frozen=True)
class Plan:
    """Everything one interface should hold: the capacity and each call's class."""

    capacity: int
    calls: Mapping[str, CallClass] = field(default_factory=dict)

    @property
    def reserved(self) -> int:
        return sum(item.htb.rate for item in self.calls.values())


def call_class(
    spec: flowspec_pb2.FlowSpec, terms: PathTerms, mtu: int, flow: FlowFilter | None, direction: str
) -> CallClass | None:
    """The class a granted flowspec needs in one direction (None when it reserves nothing)."""
    rate = reserved_rate(spec)
    if rate <= 0:
        return None
    frame = mtu + ETHERNET_HEADER
    sdu = spec.max_sdu_size_bytes or mtu
    tick = math.ceil(rate / TICKS_PER_SECOND) + frame
    if spec.service_type == ST.SERVICE_TYPE_GUARANTEED:
        budget_us = max(spec.latency_microseconds - terms.d_microseconds - terms.min_path_latency_microseconds, 0)
        queue = max(2, int(rate * budget_us / 1_000_000) // (sdu + ETHERNET_HEADER))
        htb = HtbClass(rate=rate, ceil=rate, burst=tick, prio=PRIO_GUARANTEED)
    else:
        bucket = spec.token_bucket_size_bytes or sdu
        queue = max(4, math.ceil((bucket + rate * CONTROLLED_LOAD_QUEUE_SECONDS) / sdu))
        htb = HtbClass(rate=rate, ceil=rate, burst=max(bucket, tick), prio=PRIO_CONTROLLED_LOAD)
    match = Match(flow.ethertype, tuple(flow.u32_keys(direction))) if flow is not None else None
    return CallClass(htb, queue, match)


@dataclass
class _Installed:
    minor: int
    item: CallClass
    pref: int | None  # the filter's preference, when it has one


class Shaper:
    """The HTB hierarchy of one interface, as installed by this provider."""

    def __init__(self, interface: Interface, mtu: int) -> None:
        self.interface = interface
        self.mtu = mtu
        self._installed: dict[str, _Installed] = {}

    def installed(self) -> dict[str, int]:
        """call → class minor (for tests and diagnostics)."""
        return {call: held.minor for call, held in self._installed.items()}

    def apply(self, plan: Plan, *, fresh: bool = False) -> None:
        """Bring the interface to `plan`. `fresh` rebuilds from nothing: the hierarchy is
        replaced, so classes and filters nobody here recognises are gone."""
        if fresh or self.interface.root_handle() != ("htb", ROOT):
            self._rebuild()
        self._put_fixed_classes(plan, create=False)
        for call in [call for call in self._installed if call not in plan.calls]:
            self._remove(call)
        for call, item in plan.calls.items():
            if call in self._installed:
                self._change(call, item)
            else:
                self._add(call, item)
        # The default class shrinks only once the calls' classes are in place (and grows after
        # they are gone), so the sum of rates never exceeds the capacity on the way.
        self._put_fixed_classes(plan, create=False)

    def remove_all(self) -> None:
        self.interface.delete_root()
        self._installed.clear()

    # -- internals -------------------------------------------------------------------------------
    def _rebuild(self) -> None:
        self.interface.delete_root()
        self._installed.clear()
        self.interface.add_htb_root(ROOT, DEFAULT_MINOR)
        self._put_fixed_classes(Plan(capacity=MIN_RATE), create=True)

    def _put_fixed_classes(self, plan: Plan, *, create: bool) -> None:
        capacity = max(plan.capacity, MIN_RATE)
        reserved = sum(held.item.htb.rate for held in self._installed.values())
        burst = math.ceil(capacity / TICKS_PER_SECOND) + self.mtu + ETHERNET_HEADER
        root = HtbClass(rate=capacity, ceil=capacity, burst=burst, prio=0)
        default = HtbClass(rate=max(capacity - reserved, MIN_RATE), ceil=capacity, burst=burst, prio=PRIO_DEFAULT)
        self.interface.put_class(ROOT_CLASS, ROOT, root, self.mtu, create=create)
        self.interface.put_class(ROOT | DEFAULT_MINOR, ROOT_CLASS, default, self.mtu, create=create)

    def _add(self, call: str, item: CallClass) -> None:
        minor = self._free(FIRST_MINOR, {held.minor for held in self._installed.values()})
        classid = ROOT | minor
        self.interface.put_class(classid, ROOT_CLASS, item.htb, self.mtu, create=True)
        # Recorded before the leaf and filter: if they fail, the next apply removes the class.
        held = _Installed(minor, CallClass(item.htb, 0, None), None)
        self._installed[call] = held
        self.interface.put_leaf(minor << 16, classid, item.queue_packets)
        held.item = CallClass(item.htb, item.queue_packets, None)
        if item.match is not None:
            held.pref = self._add_filter(item.match, classid)
            held.item = item

    def _change(self, call: str, item: CallClass) -> None:
        held = self._installed[call]
        classid = ROOT | held.minor
        if item.htb != held.item.htb:
            self.interface.put_class(classid, ROOT_CLASS, item.htb, self.mtu, create=False)
            held.item = CallClass(item.htb, held.item.queue_packets, held.item.match)
        if item.queue_packets != held.item.queue_packets:
            self.interface.put_leaf(held.minor << 16, classid, item.queue_packets)
            held.item = CallClass(item.htb, item.queue_packets, held.item.match)
        if item.match != held.item.match:
            # Make before break: the new filter first, then the old one goes.
            old = (held.pref, held.item.match)
            held.pref = self._add_filter(item.match, classid) if item.match is not None else None
            held.item = item
            if old[0] is not None and old[1] is not None:
                self.interface.delete_filter(ROOT, old[0], old[1].ethertype)

    def _remove(self, call: str) -> None:
        held = self._installed[call]
        if held.pref is not None and held.item.match is not None:
            self.interface.delete_filter(ROOT, held.pref, held.item.match.ethertype)
            held.pref = None
        self.interface.delete_class(ROOT | held.minor)
        del self._installed[call]

    def _add_filter(self, match: Match, classid: int) -> int:
        pref = self._free(FIRST_MINOR, {held.pref for held in self._installed.values() if held.pref is not None})
        self.interface.add_filter(ROOT, pref, match.ethertype, list(match.keys), classid)
        return pref

    @staticmethod
    def _free(first: int, used: set[int]) -> int:
        for candidate in range(first, LAST_MINOR + 1):
            if candidate not in used:
                return candidate
        raise RuntimeError("no free HTB class or filter number left on this interface")
