"""The admission ledger, as a stateful property (issue 11, item 6).

A hypothesis rule-based state machine drives a REAL server (`ServerProcess`, SQLite, so that a
graceful restart and `kill -9` are real) through the public API only: calls made at every level
and service type with values across the whole valid range of every field, renegotiated
(NO_CHANGE on either side included), dropped, link capacities swung from 0 to the largest uint64
and back, the server restarted gracefully or killed. After every step it checks the ledger's
invariants (README "The admission ledger"; conformance/SPEC.md LINK-2, LINK-6, LINK-5, CALL-5):

- each link reports, per direction, exactly the sum of what its CONNECTED calls reserve under
  GRANT-1 (CONTROLLED_LOAD its token rate, GUARANTEED its peak, or its token rate when the peak
  is unbounded), and never more than its capacity;
- every connected NEEDED call's grant satisfies its request, and a BEST_EFFORT call holds nothing;
- a validated request never gets UNKNOWN, INTERNAL or UNAVAILABLE (PROVIDER_UNAVAILABLE): only
  a grant or a refusal with a counter-offer that is itself granted at once (PROV-2);
- a refused renegotiation leaves the call byte for byte as it was (SETQOS-2); UpdateLink names
  exactly the calls it changed (LINK-6); a restart, graceful or not, keeps every connected call
  and its grant (capacities are durable, LINK-5);
- and the server logs no error and never had to repair its ledger (its reconciliation runs
  every half second here and must find nothing).

`make test` runs it with a fixed seed in about a minute. `make soak` runs it for
CALLQOS_SOAK_STEPS steps (or CALLQOS_SOAK_SECONDS), round after round, each with a fresh seed it
prints first; CALLQOS_SOAK_SEED=<seed> replays one round (and shrinks a failure).
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import Counter
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import seed as fixed_seed
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from ledger_kit import (
    DESTINATIONS,
    LEVELS,
    LINK_NAMES,
    LINKS,
    PROVIDER,
    capacities,
    ledger_problems,
    qos_specs,
)
from server_testkit import details

from callqos.server import validation
from callqos.server.qos import qos_shortfalls, reserved_rate
from callqos.server.testing import ServerProcess
from callqos.v1 import call_pb2, provider_pb2
from callqos.v1 import callqos_service_pb2 as svc
from callqos.v1 import callqos_service_pb2_grpc as svc_grpc

Code = grpc.StatusCode
Level = call_pb2.ServiceLevel
State = call_pb2.Call.State
RPC_TIMEOUT = 30.0
RESTART_PERCENT = 4  # of the restart rule's draws that restart (the rule is drawn like any other)
FIXED_SEED = 7  # picked for a good mix of every rule (hypothesis enables rules per example)
STEPS_PER_EXAMPLE = 50
# What `make test` runs: about a minute on the shared 2-core machine.
QUICK_EXAMPLES = 30

# Statuses a validated request may get from the reference provider, by method.
ALLOWED = {
    "CreateCall": {Code.OK, Code.RESOURCE_EXHAUSTED, Code.PERMISSION_DENIED},
    "RenegotiateCall": {Code.OK, Code.RESOURCE_EXHAUSTED, Code.PERMISSION_DENIED, Code.FAILED_PRECONDITION},
    "DropCall": {Code.OK},
    "UpdateLink": {Code.OK},
}
REFUSALS = {Code.RESOURCE_EXHAUSTED: "QOS_UNAVAILABLE", Code.PERMISSION_DENIED: "QOS_POLICY_FAILURE"}
STEPS_RUN = [0]  # across every machine of this process, for the soak's report
STATS: Counter[str] = Counter()  # what the steps did (method and status), printed by the soak


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.server = ServerProcess(
            storage="sqlite",
            providers={"reference": {"links": LINKS}},
            reconcile_interval_seconds=0.5,
            shutdown_grace_seconds=2.0,
        )
        self.server.start()
        self.channel = grpc.insecure_channel(self.server.target)
        self.stub = svc_grpc.CallQosServiceStub(self.channel)
        self.caps = self.stub.GetProvider(svc.GetProviderRequest(name=PROVIDER), timeout=RPC_TIMEOUT).capabilities
        self.names: list[str] = []  # every call made, connected or not
        self.counter = 0

    def teardown(self) -> None:
        self.channel.close()
        try:
            status = self.server.stop()
            assert status == 0, f"the server exited with {status}\n{self.server.log()}"
            problems = logged_problems(self.server.log(tail=10**9))
            assert not problems, "the server logged problems:\n" + "\n".join(problems)
        finally:
            self.server.close()

    # -- helpers -------------------------------------------------------------------------------
    def call_rpc(self, method: str, request: Any) -> tuple[Code, Any]:
        """(status code, response or error) of one RPC; an unexpected status fails the test."""
        try:
            return Code.OK, getattr(self.stub, method)(request, timeout=RPC_TIMEOUT)
        except grpc.RpcError as error:
            return error.code(), error

    def expect(self, method: str, request: Any, valid: bool) -> tuple[Code, Any]:
        code, answer = self.call_rpc(method, request)
        STATS[f"{method} {code.name}"] += 1
        if not valid:
            assert code == Code.INVALID_ARGUMENT, f"{method} of an invalid request: {code} {answer}"
            return code, answer
        assert code in ALLOWED[method], f"{method} of a validated request: {code} {details_text(answer)}"
        if code in REFUSALS:
            assert details(answer)["ErrorInfo"].reason == REFUSALS[code]
        return code, answer

    def new_id(self) -> str:
        self.counter += 1
        return f"c{self.counter}"

    def get(self, name: str) -> call_pb2.Call:
        return self.stub.GetCall(svc.GetCallRequest(name=name), timeout=RPC_TIMEOUT)

    def connected(self) -> dict[str, call_pb2.Call]:
        found: dict[str, call_pb2.Call] = {}
        token = ""
        while True:
            page = self.stub.ListCalls(
                svc.ListCallsRequest(filter="state = CONNECTED", page_size=500, page_token=token), timeout=RPC_TIMEOUT
            )
            found.update((call.name, call) for call in page.calls)
            token = page.next_page_token
            if not token:
                return found

    def links(self) -> dict[str, provider_pb2.Link]:
        listed = self.stub.ListLinks(svc.ListLinksRequest(parent=PROVIDER), timeout=RPC_TIMEOUT)
        return {link.name: link for link in listed.links}

    def make(self, qos: Any, level: int, destination: str, request_id: str = "") -> tuple[Code, Any]:
        call = call_pb2.Call(destination=destination, service_level=level, requested_qos=qos)
        request = svc.CreateCallRequest(call=call, call_id=self.new_id(), request_id=request_id)
        valid = not validation.create_violations(request, self.caps)
        code, answer = self.expect("CreateCall", request, valid)
        if not valid:
            return code, answer
        self.names.append(f"calls/{request.call_id}")
        if code == Code.OK:
            assert answer.state == State.STATE_CONNECTED
            if (level or Level.SERVICE_LEVEL_NEEDED) == Level.SERVICE_LEVEL_NEEDED:
                assert qos_shortfalls(answer.granted_qos, qos) == [], "a NEEDED grant below the request"
        else:
            refused = self.get(f"calls/{request.call_id}")
            assert refused.state == State.STATE_DISCONNECTED  # CALL-1: readable, disconnected
            assert details(answer)["QosRefusal"].call == refused.name
        if request_id:  # API-3: the same request_id gets the first outcome again, nothing more
            again_code, again = self.call_rpc("CreateCall", request)
            assert again_code == code
            if code == Code.OK:
                assert again.name == answer.name
        return code, answer

    # -- rules ---------------------------------------------------------------------------------
    @rule(
        qos=qos_specs(),
        level=st.sampled_from(LEVELS),
        destination=st.sampled_from(DESTINATIONS),
        idempotent=st.booleans(),
    )
    def make_call(self, qos: Any, level: int, destination: str, idempotent: bool) -> None:
        request_id = f"r-{self.counter + 1}" if idempotent else ""
        code, answer = self.make(qos, level, destination, request_id)
        if code in REFUSALS:
            offer = details(answer)["QosRefusal"]
            if offer.HasField("counter_offer"):
                # PROV-2: asking for exactly the counter-offer right away is granted, and satisfied.
                retry_code, retried = self.make(offer.counter_offer, Level.SERVICE_LEVEL_NEEDED, destination)
                assert retry_code == Code.OK, f"the counter-offer was refused: {details_text(retried)}"

    @rule(
        which=st.integers(0, 10**6),
        connected=st.integers(0, 4),
        qos=qos_specs(renegotiation=True),
        level=st.sampled_from(LEVELS),
    )
    def renegotiate(self, which: int, connected: int, qos: Any, level: int) -> None:
        # Mostly a connected call (4 in 5); any call made, connected or not, otherwise.
        candidates = sorted(self.connected()) if connected else self.names
        if not candidates:
            return
        name = candidates[which % len(candidates)]
        before = self.get(name)
        request = svc.RenegotiateCallRequest(name=name, qos=qos, service_level=level)
        valid = not validation.renegotiate_violations(request, self.caps)
        code, answer = self.expect("RenegotiateCall", request, valid)
        if code == Code.OK:
            effective = answer.service_level
            if effective == Level.SERVICE_LEVEL_NEEDED:
                assert qos_shortfalls(answer.granted_qos, answer.requested_qos) == []
            return
        if code == Code.FAILED_PRECONDITION:
            assert before.state == State.STATE_DISCONNECTED
        # SETQOS-2 / SETQOS-6: a refused or invalid renegotiation leaves the call as it was.
        assert self.get(name) == before

    @rule(which=st.integers(0, 10**6))
    def drop(self, which: int) -> None:
        if not self.names:
            return
        name = self.names[which % len(self.names)]
        _, answer = self.expect("DropCall", svc.DropCallRequest(name=name), True)
        assert answer.state == State.STATE_DISCONNECTED

    @rule(link=st.sampled_from(LINK_NAMES), capacity=capacities())
    def set_capacity(self, link: str, capacity: int) -> None:
        before = self.connected()
        request = svc.UpdateLinkRequest(link=provider_pb2.Link(name=link, capacity_bytes_per_second=capacity))
        _, answer = self.expect("UpdateLink", request, True)
        assert answer.link.capacity_bytes_per_second == capacity
        after = self.connected()
        changed = {change.call: change for change in answer.changes}
        for change in answer.changes:  # LINK-6: each change named is what happened to the call
            assert change.recorded and change.call in before
            if change.outcome == svc.LinkChange.OUTCOME_DISCONNECTED:
                assert change.call not in after
                gone = self.get(change.call)
                assert gone.disconnect_reason == call_pb2.DisconnectReason.DISCONNECT_REASON_QOS_UNAVAILABLE
            else:
                assert change.outcome == svc.LinkChange.OUTCOME_DEGRADED
                assert after[change.call].granted_qos == change.current_qos
                assert after[change.call].service_level == Level.SERVICE_LEVEL_IF_AVAILABLE
        for name, call in before.items():  # ... and no other call changed
            if name not in changed:
                assert after.get(name) == call, f"{name} changed without being named in the UpdateLink answer"

    @rule(kind=st.sampled_from(["graceful", "kill"]), roll=st.integers(0, 99))
    def restart(self, kind: str, roll: int) -> None:
        if roll >= RESTART_PERCENT:
            return
        before = self.connected()
        self.channel.close()
        STATS[f"restart {kind}"] += 1
        if kind == "graceful":
            assert self.server.stop() == 0, self.server.log()
        else:
            self.server.kill()
        self.server.start()  # must always start
        self.channel = grpc.insecure_channel(self.server.target)
        self.stub = svc_grpc.CallQosServiceStub(self.channel)
        after = self.connected()
        # LINK-5 / PROV-11: the capacities and every connected call came back as they were.
        assert after == before, f"a {kind} restart changed the connected calls"

    # -- after every step ----------------------------------------------------------------------
    @invariant()
    def the_ledger_holds(self) -> None:
        STEPS_RUN[0] += 1
        connected = self.connected()
        problems = ledger_problems(self.links(), connected.values())
        assert not problems, "\n".join(problems)
        for call in connected.values():
            if call.service_level == Level.SERVICE_LEVEL_BEST_EFFORT:
                assert reserved_rate(call.granted_qos.sending) == reserved_rate(call.granted_qos.receiving) == 0


def details_text(answer: Any) -> str:
    if isinstance(answer, grpc.RpcError):
        return f"{answer.code()} {answer.details()}"  # type: ignore[attr-defined]
    return str(answer)


def logged_problems(log: str) -> list[str]:
    """Log lines at error level or above, and any repair the ledger made."""
    problems = []
    for line in log.splitlines():
        if not line.startswith("{"):
            continue
        entry = json.loads(line)
        if entry.get("level") in ("error", "critical") or str(entry.get("message", "")).startswith("ledger:"):
            problems.append(line)
    return problems


def run_rounds(seed: int, examples: int, *, shrink: bool) -> None:
    phases = [Phase.explicit, Phase.generate, *([Phase.shrink] if shrink else [])]
    run_state_machine_as_test(
        fixed_seed(seed)(LedgerMachine),
        settings=settings(
            max_examples=examples,
            stateful_step_count=STEPS_PER_EXAMPLE,
            deadline=None,
            database=None,
            phases=phases,
            suppress_health_check=list(HealthCheck),
        ),
    )


@pytest.mark.slow
@pytest.mark.timeout(1200)  # passing takes about a minute; shrinking a failure, much longer
def test_the_ledger_holds_through_random_operations_and_restarts() -> None:
    """`make test`'s run: a fixed seed, about a minute."""
    run_rounds(FIXED_SEED, QUICK_EXAMPLES, shrink=True)
    print(f"{STEPS_RUN[0]} steps: {dict(sorted(STATS.items()))}")


SOAK_STEPS = int(os.environ.get("CALLQOS_SOAK_STEPS", "0") or 0)
SOAK_SECONDS = float(os.environ.get("CALLQOS_SOAK_SECONDS", "0") or 0)
SOAK_SEED = os.environ.get("CALLQOS_SOAK_SEED", "")


@pytest.mark.timeout(0)
@pytest.mark.skipif(
    not (SOAK_STEPS or SOAK_SECONDS or SOAK_SEED), reason="a soak: `make soak` (CALLQOS_SOAK_STEPS/_SECONDS)"
)
def test_soak() -> None:
    """Round after round with fresh seeds until CALLQOS_SOAK_STEPS steps or CALLQOS_SOAK_SECONDS
    have run; with CALLQOS_SOAK_SEED, that one round, shrinking a failure."""
    if SOAK_SEED:
        print(f"soak: replaying seed {SOAK_SEED}", flush=True)
        run_rounds(int(SOAK_SEED), QUICK_EXAMPLES, shrink=True)
        return
    started = time.monotonic()
    rounds = 0
    while (SOAK_STEPS and STEPS_RUN[0] < SOAK_STEPS) or (SOAK_SECONDS and time.monotonic() - started < SOAK_SECONDS):
        seed = random.SystemRandom().randrange(2**32)
        print(f"soak: round {rounds + 1}, seed {seed} (replay: CALLQOS_SOAK_SEED={seed} make soak)", flush=True)
        run_rounds(seed, QUICK_EXAMPLES, shrink=False)
        rounds += 1
        elapsed = time.monotonic() - started
        print(f"soak: {STEPS_RUN[0]} steps in {rounds} rounds, {elapsed:.0f} s", flush=True)
        print(f"soak: so far {dict(sorted(STATS.items()))}", flush=True)
    print(f"soak: done, {STEPS_RUN[0]} steps without a violation in {time.monotonic() - started:.0f} s", flush=True)
