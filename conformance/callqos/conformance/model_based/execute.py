"""A history run against the target, judged after every step.

Each step is sent as the application would send it, and its answer is judged by the oracle: a grant
against the request at its level and against what is free (the suite's own accounting, not the
target's), a refusal against whether the request fitted, its counter-offer by retrying it at once;
then ListLinks must report exactly what the connected calls hold (LINK-2). Capacity changes are
followed by reading every call (shed calls are degraded or dropped, never touched when everything
still fits); restarts by reading every call and the link again. Operations of a burst are sent at
once and judged afterwards against the worst case: a refusal is justified only if the request could
not fit even with every grant of the burst counted and no release.

After the last step every connected call is dropped (each drop judged: it frees exactly what the call
held) and the link's capacity is restored. The first violation ends the run.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field, replace
from typing import Any

import grpc

from callqos.conformance.exceptions import CheckFailed, TargetTimeout
from callqos.conformance.harness import Call, CheckContext, RpcFailed, RpcFailure
from callqos.conformance.model_based.ops import (
    Burst,
    CallOp,
    Make,
    Op,
    Renegotiate,
    Restart,
    SetCapacity,
    describe,
    qos_text,
)
from callqos.conformance.model_based.oracle import (
    DIRECTIONS,
    Model,
    ModelCall,
    admissible,
    free_of,
    if_available_problems,
    over,
    resolved,
)
from callqos.conformance.model_based.world import World
from callqos.conformance.rules import ST, QosSpec, ServiceLevel, qos_rates, qos_shortfalls
from callqos.conformance.verify import Limits, grant_problems, refusal_problems
from callqos.v1 import callqos_service_pb2 as svc
from callqos.v1 import provider_pb2

Level = ServiceLevel
State = Call.State
QOS_REFUSALS = {
    (grpc.StatusCode.RESOURCE_EXHAUSTED, "QOS_UNAVAILABLE"),
    (grpc.StatusCode.PERMISSION_DENIED, "QOS_POLICY_FAILURE"),
}
CLAUSE = re.compile(r"^\[([A-Z]+-[0-9]+)\] ?")
NEEDED_LEVELS = (Level.SERVICE_LEVEL_NEEDED, Level.SERVICE_LEVEL_UNSPECIFIED)
TEARDOWN = "teardown"


@dataclass(frozen=True)
class Violation:
    step: int  # index in the history; len(history) for the teardown
    clause: str
    message: str
    op: str  # the operation, described

    def __str__(self) -> str:
        return f"[{self.clause}] {self.message}"


class Broken(Exception):
    def __init__(self, violation: Violation) -> None:
        super().__init__(str(violation))
        self.violation = violation


@dataclass
class Outcome:
    """What one operation of a burst got back, judged once every operation of the burst answered."""

    op: CallOp
    result: Call | RpcFailure | None
    before: ModelCall | None


@dataclass
class Run:
    ctx: CheckContext
    world: World
    prefix: str  # unique per replay: call ids never collide with an earlier run
    model: Model = field(init=False)
    log: list[str] = field(default_factory=list)
    step: int = 0
    op_text: str = ""
    # The counter-offers retried, by step: the reproduction retries the same ones.
    offers: dict[int, QosSpec] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.model = Model(self.world.capacity)

    @property
    def limits(self) -> Limits:
        """What grants and counter-offers are verified against: the advertised limits with the capacity the
        link has now. UpdateLink may set it above the advertised maximum as well as below (LINK-3), and what
        a provider grants or offers after that is bounded by the new capacity, not the one advertised at the
        start of the run."""
        return replace(self.world.limits, capacity=self.model.capacity)

    # -- judging ------------------------------------------------------------------------------
    def fail(self, clause: str, message: str) -> Broken:
        return Broken(Violation(self.step, clause, message, self.op_text))

    def fail_all(self, problems: list[str], what: str) -> None:
        """Raise for the first of `problems` ("[CLAUSE] text"), prefixed with what was judged."""
        if problems:
            match = CLAUSE.match(problems[0])
            clause = match.group(1) if match else "GRANT-3"
            raise self.fail(clause, f"{what}: " + "; ".join(CLAUSE.sub("", p) for p in problems))

    def note(self, text: str) -> None:
        self.log.append(f"step {self.step + 1}: {self.op_text} → {text}" if self.op_text else text)

    async def rpc(self, method: str, request: object) -> Any:
        """The answer, or the decoded failure (a timeout is a violation: PROV-10)."""
        try:
            return await self.ctx.rpc(method, request)
        except RpcFailed as out:
            return out.failure
        except TargetTimeout as timeout:
            raise self.fail("PROV-10", f"{method} did not answer in time: {timeout}") from None

    def call_id(self, key: str) -> str:
        return f"{self.prefix}-{key}"

    async def as_it_is(self, before: ModelCall) -> tuple[Call, bool]:
        """The call `before` models, read from the target, and whether it is still CONNECTED
        with exactly the grant the model holds."""
        now = await self.rpc("GetCall", svc.GetCallRequest(name=before.name))
        if not isinstance(now, Call):
            raise self.unexpected("GetCall", now)
        kept = now.state == State.STATE_CONNECTED and now.granted_qos.SerializeToString(
            deterministic=True
        ) == before.granted.SerializeToString(deterministic=True)
        return now, kept

    # -- the run ------------------------------------------------------------------------------
    async def execute(self, history: list[Op]) -> Violation | None:
        try:
            for index, op in enumerate(history):
                self.step, self.op_text = index, describe(op)
                await self.apply(op)
                await self.verify_ledger()
            self.step, self.op_text = len(history), TEARDOWN
            await self.teardown()
        except Broken as broken:
            return broken.violation
        return None

    async def apply(self, op: Op) -> None:
        if isinstance(op, Burst):
            await self.burst(op)
        elif isinstance(op, SetCapacity):
            await self.set_capacity(op)
        elif isinstance(op, Restart):
            await self.restart()
        else:
            outcome = Outcome(op, await self.send(op), self.model.calls.get(f"m{op.call}"))
            await self.judge(outcome, self.model.free(), sequential=True)

    # -- calls --------------------------------------------------------------------------------
    async def send(self, op: CallOp) -> Call | RpcFailure | None:
        key = f"m{op.call}"
        known = self.model.calls.get(key)
        if isinstance(op, Make):
            if known is not None:
                return None  # a shrunk history may keep only a later make of the same index
            request = svc.CreateCallRequest(
                call=Call(
                    destination=self.ctx.destination(),
                    provider=self.world.provider,
                    service_level=op.level,
                    requested_qos=op.qos,
                ),
                call_id=self.call_id(key),
            )
            created: Call | RpcFailure = await self.rpc("CreateCall", request)
            return created
        if known is None:
            return None  # its make was shrunk away
        if isinstance(op, Renegotiate):
            request_r = svc.RenegotiateCallRequest(name=known.name, qos=op.qos, service_level=op.level)
            changed: Call | RpcFailure = await self.rpc("RenegotiateCall", request_r)
            return changed
        dropped: Call | RpcFailure = await self.rpc("DropCall", svc.DropCallRequest(name=known.name))
        return dropped

    async def judge(self, outcome: Outcome, free: tuple[int, int], *, sequential: bool) -> None:
        op, result = outcome.op, outcome.result
        if result is None:
            return
        if isinstance(op, Make):
            await self.judge_make(op, result, free, sequential)
        elif isinstance(op, Renegotiate):
            assert outcome.before is not None
            await self.judge_renegotiate(op, outcome.before, result, free, sequential)
        else:
            assert outcome.before is not None
            self.judge_drop(outcome.before, result)

    def unexpected(self, method: str, failure: RpcFailure) -> Broken:
        if failure.reason == "PROVIDER_UNAVAILABLE":
            return self.fail("PROV-16", f"{method} got no decision: {failure}")
        return self.fail("API-1", f"{method} of a valid request failed: {failure}")

    async def judge_make(self, op: Make, result: Call | RpcFailure, free: tuple[int, int], sequential: bool) -> None:
        key = f"m{op.call}"
        name = f"calls/{self.call_id(key)}"
        fits = admissible(op.qos, free, self.world)
        if isinstance(result, Call):
            self.note(f"connected, granted {qos_text(result.granted_qos)}")
            self.granted(key, op.level, op.qos, result, free if sequential else None, fits)
            return
        if (result.code, result.reason) not in QOS_REFUSALS:
            raise self.unexpected("CreateCall", result)
        offer = result.refusal.counter_offer if result.refusal and result.refusal.HasField("counter_offer") else None
        self.note(
            f"refused {result.reason}" + (f", counter-offer {qos_text(offer)}" if offer else ", no counter-offer")
        )
        if op.level not in NEEDED_LEVELS:
            raise self.fail("LEVEL-2", f"a request at {Level.Name(op.level)} was refused ({result}); only NEEDED fails")
        if fits is True:
            raise self.fail(
                "ADMIT-5",
                f"refused although it fits: it needs {qos_rates(op.qos)} B/s (sending, receiving), "
                f"{free} B/s are free{'' if sequential else ' even counting every grant of the burst'} ({result})",
            )
        self.fail_all(refusal_problems(name, result.refusal, self.limits), "the refusal")
        self.model.calls[key] = ModelCall(key, name, op.level, op.qos, QosSpec(), False, "")
        if sequential and offer is not None:
            self.offers[self.step] = offer
            await self.retry_offer(key, offer)

    def granted(
        self,
        key: str,
        level: int,
        asked: QosSpec,
        call: Call,
        free: tuple[int, int] | None,
        fits: bool | None,
    ) -> None:
        if call.state != State.STATE_CONNECTED:
            raise self.fail("CALL-1", f"CreateCall answered with {call.name} {State.Name(call.state)}, not CONNECTED")
        problems = grant_problems(level, asked, call.granted_qos, self.limits)
        problems += if_available_problems(level, asked, call.granted_qos, fits)
        if free is not None and over(qos_rates(call.granted_qos), free):
            problems.append(f"[ADMIT-1] over-admission: the grant holds {over(qos_rates(call.granted_qos), free)}")
        if call.requested_qos.SerializeToString(deterministic=True) != asked.SerializeToString(deterministic=True):
            problems.append("[GRANT-5] requested_qos is not what was asked")
        wanted_level = level or Level.SERVICE_LEVEL_NEEDED
        if call.service_level != wanted_level:
            problems.append(f"[LEVEL-4] recorded at {Level.Name(call.service_level)}, asked {Level.Name(wanted_level)}")
        self.fail_all(problems, f"the grant {qos_text(call.granted_qos)}")
        self.model.calls[key] = ModelCall(
            key, call.name, wanted_level, call.requested_qos, call.granted_qos, True, call.etag
        )

    async def retry_offer(self, key: str, offer: QosSpec) -> None:
        """PROV-2: asking for exactly the counter-offer at once, nothing else changed, is granted."""
        retry = f"{key}r"
        request = svc.CreateCallRequest(
            call=Call(
                destination=self.ctx.destination(),
                provider=self.world.provider,
                service_level=Level.SERVICE_LEVEL_NEEDED,
                requested_qos=offer,
            ),
            call_id=self.call_id(retry),
        )
        free = self.model.free()
        result = await self.rpc("CreateCall", request)
        if isinstance(result, RpcFailure):
            raise self.fail(
                "PROV-2", f"the counter-offer {qos_text(offer)} was refused on an immediate retry: {result}"
            )
        assert isinstance(result, Call)
        self.note(f"retried the counter-offer as {retry}: connected, granted {qos_text(result.granted_qos)}")
        self.granted(retry, Level.SERVICE_LEVEL_NEEDED, offer, result, free, True)

    async def judge_renegotiate(
        self, op: Renegotiate, before: ModelCall, result: Call | RpcFailure, free: tuple[int, int], sequential: bool
    ) -> None:
        if not before.connected:
            if isinstance(result, Call) or (result.code, result.reason) != (
                grpc.StatusCode.FAILED_PRECONDITION,
                "CALL_NOT_CONNECTED",
            ):
                raise self.fail(
                    "SETQOS-3",
                    f"renegotiating the disconnected {before.name}: expected FAILED_PRECONDITION "
                    f"CALL_NOT_CONNECTED, got {result if isinstance(result, RpcFailure) else 'a grant'}",
                )
            self.note("FAILED_PRECONDITION CALL_NOT_CONNECTED")
            return
        level = op.level or before.level
        target = resolved(op.qos, before.granted)
        own = before.rates
        room = (free[0] + own[0], free[1] + own[1])
        fits = admissible(target, room, self.world)
        if isinstance(result, Call):
            self.note(f"granted {qos_text(result.granted_qos)}")
            self.renegotiated(before, op.qos, target, level, result, room if sequential else None, fits)
            return
        if result.reason == "CALL_NOT_CONNECTED":
            raise self.fail("CALL-1", f"{before.name} was disconnected although nothing dropped or shed it")
        if (result.code, result.reason) not in QOS_REFUSALS:
            raise self.unexpected("RenegotiateCall", result)
        offer = result.refusal.counter_offer if result.refusal and result.refusal.HasField("counter_offer") else None
        self.note(
            f"refused {result.reason}" + (f", counter-offer {qos_text(offer)}" if offer else ", no counter-offer")
        )
        if level not in NEEDED_LEVELS:
            raise self.fail("LEVEL-2", f"a renegotiation at {Level.Name(level)} was refused ({result})")
        if fits is True:
            raise self.fail(
                "ADMIT-5",
                f"renegotiation refused although it fits: it needs {qos_rates(target)} B/s, {room} B/s are free "
                f"counting the call's own reservation ({result})",
            )
        self.fail_all(refusal_problems(before.name, result.refusal, self.limits), "the refusal")
        now, kept = await self.as_it_is(before)
        if not kept:
            raise self.fail(
                "SETQOS-2",
                f"the refused renegotiation changed {before.name}: {qos_text(before.granted)} → "
                f"{State.Name(now.state)} {qos_text(now.granted_qos)}",
            )
        if sequential and offer is not None:
            self.offers[self.step] = offer
            # The same request with the counter-offer for its QoS: the level asked stays.
            retry = await self.rpc(
                "RenegotiateCall", svc.RenegotiateCallRequest(name=before.name, qos=offer, service_level=op.level)
            )
            if not isinstance(retry, Call):
                raise self.fail(
                    "PROV-2", f"the counter-offer {qos_text(offer)} was refused on an immediate retry: {retry}"
                )
            self.note(f"retried the counter-offer: granted {qos_text(retry.granted_qos)}")
            current = self.model.calls[before.key]
            self.renegotiated(current, offer, offer, level, retry, room, True)

    def renegotiated(
        self,
        before: ModelCall,
        asked: QosSpec,
        target: QosSpec,
        level: int,
        call: Call,
        room: tuple[int, int] | None,
        fits: bool | None,
    ) -> None:
        problems = grant_problems(level, target, call.granted_qos, self.limits)
        problems += if_available_problems(level, target, call.granted_qos, fits)
        if call.state != State.STATE_CONNECTED:
            problems.append(f"[SETQOS-1] the renegotiated call is {State.Name(call.state)}")
        if level != Level.SERVICE_LEVEL_BEST_EFFORT:
            for direction in DIRECTIONS:
                if getattr(asked, direction).service_type == ST.SERVICE_TYPE_NO_CHANGE and getattr(
                    call.granted_qos, direction
                ).SerializeToString(deterministic=True) != getattr(before.granted, direction).SerializeToString(
                    deterministic=True
                ):
                    problems.append(f"[SETQOS-4] the NO_CHANGE {direction} direction changed")
        if room is not None and over(qos_rates(call.granted_qos), room):
            problems.append(f"[ADMIT-1] over-admission: the new grant holds {over(qos_rates(call.granted_qos), room)}")
        if call.service_level != level:
            problems.append(
                f"[SETQOS-7] the call's level is {Level.Name(call.service_level)}, asked {Level.Name(level)}"
            )
        self.fail_all(problems, f"the renegotiated grant {qos_text(call.granted_qos)}")
        self.model.calls[before.key] = ModelCall(
            before.key, before.name, level, call.requested_qos, call.granted_qos, True, call.etag
        )

    def judge_drop(self, before: ModelCall, result: Call | RpcFailure) -> None:
        if not isinstance(result, Call):
            raise self.unexpected("DropCall", result)
        self.note(f"{State.Name(result.state)} reason {result.disconnect_reason}")
        if before.connected and (result.state != State.STATE_DISCONNECTED or result.disconnect_reason != 1):
            raise self.fail(
                "CALL-2",
                f"dropping {before.name} left it {State.Name(result.state)} reason "
                f"{result.disconnect_reason}, not DISCONNECTED NORMAL",
            )
        if not before.connected and result.state != State.STATE_DISCONNECTED:
            raise self.fail("CALL-1", f"dropping the disconnected {before.name} made it {State.Name(result.state)}")
        self.model.calls[before.key].connected = False

    # -- bursts ---------------------------------------------------------------------------------
    async def burst(self, op: Burst) -> None:
        befores = [self.model.calls.get(f"m{each.call}") for each in op.ops]
        held = self.model.held()
        results = await asyncio.gather(*(self.send(each) for each in op.ops))
        outcomes = [
            Outcome(each, result, before) for each, result, before in zip(op.ops, results, befores, strict=True)
        ]
        # The worst case any request of the burst met: everything held before, every grant of the burst on
        # top (a renegotiation's increase), no release.
        worst = list(held)
        for outcome in outcomes:
            if isinstance(outcome.result, Call) and outcome.result.state == State.STATE_CONNECTED:
                rates = qos_rates(outcome.result.granted_qos)
                own = outcome.before.rates if outcome.before is not None else (0, 0)
                for index in (0, 1):
                    worst[index] += max(rates[index] - own[index], 0)
        free = free_of(self.model.capacity, (worst[0], worst[1]))
        for outcome in outcomes:
            await self.judge(outcome, free, sequential=False)
        held_now = self.model.held()
        if over(held_now, (self.model.capacity, self.model.capacity)):
            raise self.fail(
                "PROV-6",
                f"over-admission under concurrency: the connected calls hold {held_now} B/s on "
                f"{self.model.capacity} B/s per direction",
            )

    # -- the link -------------------------------------------------------------------------------
    async def link(self) -> provider_pb2.Link | None:
        if not self.world.link:
            return None
        response = await self.rpc("ListLinks", svc.ListLinksRequest(parent=self.world.provider))
        if isinstance(response, RpcFailure):
            raise self.unexpected("ListLinks", response)
        found: provider_pb2.Link | None = next((link for link in response.links if link.name == self.world.link), None)
        if found is None:
            raise self.fail("LINK-2", f"{self.world.link} is no longer listed")
        return found

    async def verify_ledger(self, clause: str = "LINK-2") -> None:
        """The link reports exactly what the model's connected calls hold (GRANT-1), within capacity."""
        held = self.model.held()
        if over(held, (self.model.capacity, self.model.capacity)):
            raise self.fail("ADMIT-1", f"the connected calls hold {held} B/s on {self.model.capacity} B/s")
        link = await self.link()
        if link is None:
            return
        reported = (link.sending_reserved_bytes_per_second, link.receiving_reserved_bytes_per_second)
        if reported != held:
            raise self.fail(
                clause,
                f"{link.name} reports {reported[0]} B/s sending and {reported[1]} B/s receiving reserved; the "
                "connected "
                f"calls hold {held[0]} and {held[1]} B/s by their grants",
            )
        if link.capacity_bytes_per_second != self.model.capacity:
            raise self.fail(
                "LINK-4" if clause == "PROV-11" else "LINK-3",
                f"{link.name} reports capacity {link.capacity_bytes_per_second} B/s; it was set to "
                f"{self.model.capacity}",
            )

    async def set_capacity(self, op: SetCapacity) -> None:
        if not self.world.set_capacity:
            return
        held_before = self.model.held()
        fitted = not over(held_before, (op.capacity, op.capacity))
        request = svc.UpdateLinkRequest(
            link=provider_pb2.Link(name=self.world.link, capacity_bytes_per_second=op.capacity)
        )
        result = await self.rpc("UpdateLink", request)
        if isinstance(result, RpcFailure):
            if result.reason == "PROVIDER_UNAVAILABLE":
                raise self.fail("PROV-16", f"UpdateLink to {op.capacity} B/s failed in the provider: {result}")
            raise self.fail("LINK-3", f"UpdateLink to {op.capacity} B/s failed: {result}")
        self.model.capacity = op.capacity
        changed = []
        for key, before in list(self.model.calls.items()):
            if not before.connected:
                continue
            now, kept = await self.as_it_is(before)
            if kept:
                continue
            changed.append(f"{key} {'dropped' if now.state != State.STATE_CONNECTED else qos_text(now.granted_qos)}")
            if fitted:
                raise self.fail(
                    "LINK-3",
                    f"{before.name} changed although the calls ({held_before} B/s) fit the new capacity {op.capacity}",
                )
            if now.state == State.STATE_CONNECTED:
                rates, old = qos_rates(now.granted_qos), before.rates
                if rates[0] > old[0] or rates[1] > old[1]:
                    raise self.fail("LINK-3", f"{before.name} was 'degraded' to more than it held: {old} → {rates}")
                if before.level in NEEDED_LEVELS and qos_shortfalls(now.granted_qos, before.requested):
                    raise self.fail("EVENT-4", f"{before.name} at NEEDED stays connected below its request")
                self.model.calls[key] = ModelCall(
                    key, before.name, before.level, before.requested, now.granted_qos, True, now.etag
                )
            else:
                if now.disconnect_reason != 2:
                    raise self.fail(
                        "EVENT-4", f"{before.name} was dropped with reason {now.disconnect_reason}, not QOS_UNAVAILABLE"
                    )
                before.connected = False
        self.note("changed: " + (", ".join(changed) if changed else "nothing"))

    async def restart(self) -> None:
        if not self.world.restartable:
            return
        try:
            await self.ctx.session.restart()
        except Exception as exc:  # the target did not come back: that is the finding
            raise self.fail("PROV-11", f"the server did not come back from a restart: {exc}") from None
        for before in self.model.calls.values():
            if not before.connected:
                continue
            now, kept = await self.as_it_is(before)
            if not kept:
                raise self.fail(
                    "PROV-11",
                    f"after a restart {before.name} is {State.Name(now.state)} {qos_text(now.granted_qos)}; before it "
                    f"was CONNECTED {qos_text(before.granted)}",
                )
        self.note("every connected call is back as it was")
        await self.verify_ledger("PROV-11")

    async def teardown(self) -> None:
        """Drop every call still connected, each drop judged; put the capacity back."""
        for key, call in list(self.model.calls.items()):
            if call.connected:
                self.op_text = f"{TEARDOWN}: drop {key}"
                result = await self.rpc("DropCall", svc.DropCallRequest(name=call.name))
                self.judge_drop(call, result)
                await self.verify_ledger("PROV-4")
        if self.world.link and self.model.capacity != self.world.capacity:
            self.op_text = f"{TEARDOWN}: set link capacity {self.world.capacity} B/s"
            result = await self.rpc(
                "UpdateLink",
                svc.UpdateLinkRequest(
                    link=provider_pb2.Link(name=self.world.link, capacity_bytes_per_second=self.world.capacity)
                ),
            )
            if isinstance(result, RpcFailure):
                raise self.fail("LINK-3", f"UpdateLink back to {self.world.capacity} B/s failed: {result}")
            self.model.capacity = self.world.capacity


async def reset(ctx: CheckContext, world: World) -> str:
    """Bring the target back to idle before a run: the suite's calls dropped, the capacity restored, the
    link holding nothing. '' when idle; otherwise why not (after a restart, when the suite owns the server)."""
    from callqos.conformance.idle import drop_leftovers

    for attempt in range(2):
        try:
            await drop_leftovers(ctx)
            if not world.link:
                return ""
            links = {link.name: link for link in await ctx.links()}
            link = links.get(world.link)
            if link is not None and link.capacity_bytes_per_second != world.capacity:
                await ctx.rpc(
                    "UpdateLink",
                    svc.UpdateLinkRequest(
                        link=provider_pb2.Link(name=world.link, capacity_bytes_per_second=world.capacity)
                    ),
                )
                link = {each.name: each for each in await ctx.links()}.get(world.link)
            if link is not None and not (
                link.sending_reserved_bytes_per_second or link.receiving_reserved_bytes_per_second
            ):
                return ""
            problem = (
                f"{world.link} holds {link.sending_reserved_bytes_per_second if link else '?'} B/s sending with no call"
            )
        except (RpcFailed, TargetTimeout, CheckFailed) as exc:
            problem = f"the target could not be reset: {exc}"
        if attempt == 0 and ctx.session.restartable:
            await ctx.session.restart()
            continue
        return problem
    return "unreachable"
