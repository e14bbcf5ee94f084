"""What must hold, derived from the contract (SPEC.md) rather than from any implementation: when a
request must be admitted, when it may be refused, and what is wrong with an answer. Pure functions of
the model's state and the answer; `execute` applies them after every step."""

from __future__ import annotations

from dataclasses import dataclass, field

from callqos.conformance.model_based.world import World
from callqos.conformance.rules import (
    RESERVING,
    ST,
    FlowSpec,
    QosSpec,
    ServiceLevel,
    delay_bound_us,
    qos_rates,
    qos_shortfalls,
    reserved_rate,
)

Level = ServiceLevel
DIRECTIONS = ("sending", "receiving")
UINT32_LIMIT = 0xFFFFFFFD  # the largest latency that is not a Winsock sentinel
# A requested latency at least this many times the SPEC.md delay bound (plus a second) must be met by
# any reading of RFC 2212's bound; between the path's fixed delay and this, providers may differ.
GENEROUS = 4


def generous_latency(spec: FlowSpec, world: World) -> int:
    """A latency every provider can meet for `spec` on the world's path (0 if none fits in uint32)."""
    bound = delay_bound_us(spec, world.path)
    value = GENEROUS * bound + 1_000_000
    return int(value) if value <= UINT32_LIMIT else 0


def admissible(qos: QosSpec, free: tuple[int, int], world: World) -> bool | None:
    """Whether a provider must admit `qos` at NEEDED with `free` B/s per direction (True), must refuse
    it (False), or may do either (None): a direction whose rate the provider chooses, or a GUARANTEED
    latency between what no path can beat and what any bound meets.

    Must refuse: a reserving type it does not advertise (PROV-9), a rate above what is free (ADMIT-1),
    a GUARANTEED latency below the path's fixed delay (DELAY-4). Must admit (ADMIT-5): everything else
    that fits — non-reserving types always (GRANT-2) — except a GUARANTEED flowspec whose delay bound
    no latency field can carry (DELAY-5), which it may refuse."""
    verdict: bool | None = True
    for direction, room in zip(DIRECTIONS, free, strict=True):
        spec: FlowSpec = getattr(qos, direction)
        stype = spec.service_type
        if stype in (ST.SERVICE_TYPE_BEST_EFFORT, ST.SERVICE_TYPE_NO_TRAFFIC):
            continue
        if stype not in RESERVING:
            # NETWORK_CONTROL (never granted at NEEDED unless advertised: PROV-9) and QUALITATIVE: policy.
            if stype == ST.SERVICE_TYPE_NETWORK_CONTROL and not world.offers(stype):
                return False
            verdict = None
            continue
        if not world.offers(stype):
            return False
        if not spec.HasField("token_rate_bytes_per_second"):
            verdict = None  # the provider chooses the rate (FLOW-9)
            continue
        if reserved_rate(spec) > room:
            return False
        if stype == ST.SERVICE_TYPE_GUARANTEED and spec.HasField("latency_microseconds"):
            if spec.latency_microseconds < world.fixed_latency:
                return False
            generous = generous_latency(spec, world)
            if not generous or spec.latency_microseconds < generous:
                verdict = None
        if stype == ST.SERVICE_TYPE_GUARANTEED and delay_bound_us(spec, world.path) > UINT32_LIMIT:
            # No latency field can state its bound (DELAY-5): refused, or granted with a bucket cut
            # to a bound that can be stated; either keeps the contract.
            verdict = None
    return verdict


def free_of(capacity: int, held: tuple[int, int]) -> tuple[int, int]:
    return (max(capacity - held[0], 0), max(capacity - held[1], 0))


@dataclass
class ModelCall:
    """A call as the model knows it: what the target last said about it."""

    key: str  # m3, m3r (the retry of m3's counter-offer)
    name: str  # calls/{id}
    level: int
    requested: QosSpec
    granted: QosSpec
    connected: bool
    etag: str

    @property
    def rates(self) -> tuple[int, int]:
        return qos_rates(self.granted) if self.connected else (0, 0)


@dataclass
class Model:
    capacity: int
    calls: dict[str, ModelCall] = field(default_factory=dict)

    def held(self) -> tuple[int, int]:
        send = sum(call.rates[0] for call in self.calls.values())
        recv = sum(call.rates[1] for call in self.calls.values())
        return send, recv

    def free(self) -> tuple[int, int]:
        return free_of(self.capacity, self.held())


def over(rates: tuple[int, int], free: tuple[int, int]) -> str:
    """Where `rates` exceed `free` ('' if nowhere)."""
    return "; ".join(
        f"{direction} {rate} B/s with {room} B/s free"
        for direction, rate, room in zip(DIRECTIONS, rates, free, strict=True)
        if rate > room
    )


def resolved(asked: QosSpec, current: QosSpec) -> QosSpec:
    """A renegotiation's request with its NO_CHANGE directions replaced by what is in effect."""
    out = QosSpec()
    out.CopyFrom(asked)
    for direction in DIRECTIONS:
        if getattr(asked, direction).service_type == ST.SERVICE_TYPE_NO_CHANGE:
            getattr(out, direction).CopyFrom(getattr(current, direction))
    return out


def if_available_problems(level: int, asked: QosSpec, granted: QosSpec, fits: bool | None) -> list[str]:
    """IF_AVAILABLE must give what was asked when it fits (LEVEL-2: the desired QoS if available)."""
    if level != Level.SERVICE_LEVEL_IF_AVAILABLE or fits is not True:
        return []
    return [
        f"[LEVEL-2] IF_AVAILABLE granted less although the request fits: {p}" for p in qos_shortfalls(granted, asked)
    ]
