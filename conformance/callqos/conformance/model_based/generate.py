"""Histories from a seed. Values lean on the edges where providers break: exactly the free capacity and one
byte more, a fraction of the capacity so calls collide, 1 B/s, rates near 2^64, buckets of 2^40 bytes,
GUARANTEED latencies no path can meet and latencies any path meets, a capacity cut below what is held,
to one byte per second or to zero. A prediction of the state (as a correct provider would leave it)
picks the edge values; the history is fixed before it runs, so a seed always gives the same history."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from callqos.conformance.model_based.ops import Burst, CallOp, Drop, Make, Op, Renegotiate, Restart, SetCapacity
from callqos.conformance.model_based.oracle import generous_latency
from callqos.conformance.model_based.world import World
from callqos.conformance.rules import SENTINELS, ST, FlowSpec, QosSpec, ServiceLevel, qos_rates

Level = ServiceLevel
UINT64_MAX = 2**64 - 1
NEEDED, IF_AVAILABLE, BEST_EFFORT = (
    Level.SERVICE_LEVEL_NEEDED,
    Level.SERVICE_LEVEL_IF_AVAILABLE,
    Level.SERVICE_LEVEL_BEST_EFFORT,
)


@dataclass
class Prediction:
    """Roughly what a correct provider holds: enough to aim values at the edges."""

    capacity: int
    held: dict[int, tuple[int, int]] = field(default_factory=dict)  # connected calls' rates
    made: int = 0

    def free(self) -> tuple[int, int]:
        send = sum(rate[0] for rate in self.held.values())
        recv = sum(rate[1] for rate in self.held.values())
        return max(self.capacity - send, 0), max(self.capacity - recv, 0)

    def apply(self, op: Op) -> None:
        if isinstance(op, Make | Renegotiate):
            free = self.free()
            own = self.held.get(op.call, (0, 0))
            room = (free[0] + own[0], free[1] + own[1])
            rates = qos_rates(op.qos)
            fits = all(rate <= space for rate, space in zip(rates, room, strict=True))
            if op.level == BEST_EFFORT:
                self.held[op.call] = (0, 0)
            elif fits:
                self.held[op.call] = rates
            elif op.level == IF_AVAILABLE or isinstance(op, Renegotiate):
                self.held[op.call] = (min(rates[0], room[0]), min(rates[1], room[1])) if isinstance(op, Make) else own
        elif isinstance(op, Drop):
            self.held.pop(op.call, None)
        elif isinstance(op, SetCapacity):
            self.capacity = op.capacity
            while self.held and any(rate > self.capacity for rate in self.total()):
                self.held.pop(max(self.held))  # the newest first, as the reference does
        elif isinstance(op, Burst):
            for each in op.ops:
                self.apply(each)

    def total(self) -> tuple[int, int]:
        return (sum(rate[0] for rate in self.held.values()), sum(rate[1] for rate in self.held.values()))


def no_sentinel(value: int) -> int:
    return value + 2 if value in SENTINELS else value


class Generator:
    def __init__(self, rng: random.Random, world: World) -> None:
        self.rng = rng
        self.world = world
        self.capacity = world.capacity

    # -- values -----------------------------------------------------------------------------
    def rate(self, room: int) -> int:
        c = self.capacity
        choices = [
            (c // 2, 3), (c // 3, 3), (c // 4, 4), (c // 8, 3), (c // 10, 2), (room, 3), (room + 1, 2),
            (c, 1), (c + 1, 1), (1, 1), (2**33 + 5, 1), (UINT64_MAX, 1),
        ]  # fmt: skip
        values, weights = zip(*choices, strict=True)
        return no_sentinel(max(self.rng.choices(values, weights)[0], 1))

    def flowspec(self, direction: str, room: int) -> FlowSpec:
        rng, world = self.rng, self.world
        kinds = [
            (ST.SERVICE_TYPE_CONTROLLED_LOAD, 45),
            (ST.SERVICE_TYPE_BEST_EFFORT, 14),
            (ST.SERVICE_TYPE_NO_TRAFFIC, 5),
        ]
        if world.offers(ST.SERVICE_TYPE_GUARANTEED):
            kinds.append((ST.SERVICE_TYPE_GUARANTEED, 30))
        if world.limits.qos_supported and not world.offers(ST.SERVICE_TYPE_NETWORK_CONTROL):
            kinds.append((ST.SERVICE_TYPE_NETWORK_CONTROL, 2))
        values, weights = zip(*kinds, strict=True)
        stype = rng.choices(values, weights)[0]
        spec = FlowSpec(service_type=stype)
        if stype in (ST.SERVICE_TYPE_BEST_EFFORT, ST.SERVICE_TYPE_NO_TRAFFIC):
            if rng.random() < 0.2:
                spec.token_rate_bytes_per_second = self.rate(room)
            return spec
        if stype == ST.SERVICE_TYPE_NETWORK_CONTROL:
            spec.token_rate_bytes_per_second = max(self.capacity // 100, 1)
            return spec
        if stype == ST.SERVICE_TYPE_CONTROLLED_LOAD and direction == "receiving" and rng.random() < 0.1:
            return spec  # the provider chooses the rate (FLOW-9)
        rate = self.rate(room)
        spec.token_rate_bytes_per_second = rate
        mtu = world.path.mtu_bytes
        if stype == ST.SERVICE_TYPE_CONTROLLED_LOAD:
            if rng.random() < 0.2:
                spec.peak_bandwidth_bytes_per_second = no_sentinel(min(rate * rng.choice((1, 2)), UINT64_MAX))
            if rng.random() < 0.2:
                spec.token_bucket_size_bytes = rng.choice((mtu, 4 * mtu, 2**40))
            return spec
        peak = rng.choices(("none", "bounded", "unbounded"), (2, 4, 3))[0]
        if peak == "bounded":
            # A peak above the token rate is what the reservation holds (GRANT-1): keep it near the edges.
            spec.peak_bandwidth_bytes_per_second = no_sentinel(min(rate * rng.choice((1, 1, 2, 4)), UINT64_MAX))
        elif peak == "unbounded":
            spec.peak_bandwidth_unbounded = True
        if rng.random() < 0.5:
            spec.token_bucket_size_bytes = rng.choice((mtu, 4 * mtu, 2**40))
        if rng.random() < 0.3:
            spec.max_sdu_size_bytes = rng.choice((mtu, max(mtu // 2, 1)))
            if rng.random() < 0.5:
                spec.minimum_policed_size_bytes = min(64, spec.max_sdu_size_bytes)
        latency = rng.choices(("none", "generous", "impossible"), (4, 4, 2))[0]
        if latency == "generous":
            value = generous_latency(spec, world)
            if value:
                spec.latency_microseconds = value
        elif latency == "impossible" and world.fixed_latency >= 2:
            spec.latency_microseconds = world.fixed_latency // 2
        return spec

    def qos(self, free: tuple[int, int]) -> QosSpec:
        return QosSpec(sending=self.flowspec("sending", free[0]), receiving=self.flowspec("receiving", free[1]))

    def level(self) -> ServiceLevel:
        return self.rng.choices((NEEDED, IF_AVAILABLE, BEST_EFFORT), (6, 3, 1))[0]

    # -- operations -------------------------------------------------------------------------
    def make(self, predicted: Prediction) -> Make:
        call = predicted.made
        predicted.made += 1
        return Make(call, self.level(), self.qos(predicted.free()))

    def renegotiate(self, predicted: Prediction, call: int) -> Renegotiate:
        free = predicted.free()
        own = predicted.held.get(call, (0, 0))
        qos = self.qos((free[0] + own[0], free[1] + own[1]))
        for direction in ("sending", "receiving"):
            if self.rng.random() < 0.3:
                getattr(qos, direction).CopyFrom(FlowSpec(service_type=ST.SERVICE_TYPE_NO_CHANGE))
        level = self.level() if self.rng.random() < 0.1 else Level.SERVICE_LEVEL_UNSPECIFIED
        return Renegotiate(call, qos, level)

    def capacity_change(self, predicted: Prediction) -> SetCapacity:
        held = max(predicted.total())
        choices = [self.world.capacity, max(held - 1, 0), held // 2, held + 1, 1, 0, self.world.capacity // 2]
        return SetCapacity(self.rng.choice(choices))

    def burst(self, predicted: Prediction) -> Burst:
        ops: list[CallOp] = []
        connected = list(predicted.held)
        self.rng.shuffle(connected)
        for _ in range(self.rng.randint(2, 5)):
            if connected and self.rng.random() < 0.5:
                call = connected.pop()
                if self.world.renegotiation and self.rng.random() < 0.6:
                    ops.append(self.renegotiate(predicted, call))
                else:
                    ops.append(Drop(call))
            else:
                ops.append(self.make(predicted))
        return Burst(ops)

    def history(self, steps: int) -> list[Op]:
        predicted = Prediction(self.capacity)
        ops: list[Op] = []
        for _ in range(steps):
            connected = list(predicted.held)
            kinds: list[tuple[str, int]] = [("make", 35), ("burst", 8)]
            if connected:
                kinds += [("drop", 14)]
                if self.world.renegotiation:
                    kinds += [("renegotiate", 22)]
            if self.world.set_capacity:
                kinds += [("capacity", 7)]
            if self.world.restartable:
                kinds += [("restart", 2)]
            names, weights = zip(*kinds, strict=True)
            kind = self.rng.choices(names, weights)[0]
            op: Op
            if kind == "make":
                op = self.make(predicted)
            elif kind == "drop":
                op = Drop(self.rng.choice(connected))
            elif kind == "renegotiate":
                op = self.renegotiate(predicted, self.rng.choice(connected))
            elif kind == "capacity":
                op = self.capacity_change(predicted)
            elif kind == "restart":
                op = Restart()
            else:
                op = self.burst(predicted)
            predicted.apply(op)
            ops.append(op)
        return ops


def history(seed: int, index: int, world: World, steps: int) -> list[Op]:
    """History `index` of the run seeded `seed`: the same pair always gives the same history."""
    return Generator(random.Random(f"callqos-model:{seed}:{index}"), world).history(steps)
