"""The admission ledger with calls between two applications (issue 11 with issue 10): a connected pair
is ONE reservation, held under its caller's leg (its holder; conformance/SPEC.md PAIR-2), and every
guarantee of the ledger holds for it, on both legs together (PAIR-1):

- reconciliation counts the pair once, under its holder: it never re-takes a reservation for the
  answering leg, re-takes the pair's if the provider lost it, and, when it cannot, disconnects
  both legs (PROV-19);
- a pair's answer or renegotiation whose commit fails is undone at the provider, and both legs
  stay as they were (CALL-5);
- a pair's release that the provider fails is owed under its holder, announced on it and retried
  until it succeeds (CALL-6);
- a pair whose provider is no longer hosted is disconnected at start-up, both legs (CALL-7).

A call the provider's own network offered (one leg, no peer) is re-taken as what it is: the
provider is asked to connect that call again (`AdmissionRequest.incoming`), not to place one.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import grpc
import pytest
from incoming_kit import BOB, CAROL, NetworkProvider, answer_request, call_line, open_line
from server_testkit import make_request, qos, reason, reserved, rpc_error
from test_ledger_faults import FlakyRelease, Served, eventually, failing_commits, serving
from test_watch_events import collect

from callqos.v1 import call_pb2, event_pb2
from callqos.v1 import callqos_service_pb2 as svc

E = event_pb2.QosEventType
State = call_pb2.Call.State
Disconnect = call_pb2.DisconnectReason
Call = call_pb2.Call


async def connected_pair(served: Served) -> tuple[Call, Call]:
    """Bob's line, carol's call to it (400,000 B/s sent, 100,000 received) answered as offered:
    (carol's leg, the holder; bob's leg), both CONNECTED."""
    stub = served.stub
    await open_line(stub)
    caller, callee = await call_line(stub)
    answered = await stub.AnswerCall(answer_request(callee.name), metadata=BOB)
    assert answered.state == State.STATE_CONNECTED
    return await stub.GetCall(svc.GetCallRequest(name=caller.name)), answered


async def legs(served: Served, caller: Call, callee: Call) -> tuple[Call, Call]:
    stub = served.stub
    return (
        await stub.GetCall(svc.GetCallRequest(name=caller.name)),
        await stub.GetCall(svc.GetCallRequest(name=callee.name)),
    )


@pytest.fixture
async def served(tmp_path: Any) -> Any:
    async with serving(tmp_path, reconcile_interval_seconds=0.2) as value:
        yield value


# -- reconciliation (PROV-19) --------------------------------------------------------------------
async def test_reconciliation_counts_a_pair_once(served: Served) -> None:
    """Several passes over a connected pair find nothing to repair: the answering leg holds nothing
    of its own, so no reservation is ever taken for it."""
    caller, callee = await connected_pair(served)
    passes = [await served.server.running.ledger.reconcile(confirm=False) for _ in range(3)]
    assert all(set(outcomes) <= {"agreed"} for outcomes in passes), passes
    assert await reserved(served.stub) == (400_000, 100_000)  # one reservation, in the caller's terms
    assert await legs(served, caller, callee) == (caller, callee)
    assert [holding.call for holding in await served.provider.reservations()] == [caller.name]


async def test_reconciliation_retakes_a_pair_s_lost_reservation(served: Served) -> None:
    caller, callee = await connected_pair(served)
    await served.provider.release(caller.name)  # the provider forgets the pair behind the server's back
    assert await reserved(served.stub) == (0, 0)

    async def retaken() -> bool:
        return await reserved(served.stub) == (400_000, 100_000)

    await eventually(retaken, "the pair's reservation re-taken")
    assert await legs(served, caller, callee) == (caller, callee)  # neither leg changed
    assert served.server.running.ledger.repairs["re-taken"] == 1


async def test_a_pair_whose_reservation_cannot_be_retaken_is_disconnected_on_both_legs(served: Served) -> None:
    stub = served.stub
    caller, callee = await connected_pair(served)
    await served.provider.release(caller.name)
    # Before the next pass, the capacity goes to another call: the pair no longer fits.
    other = await stub.CreateCall(make_request(qos(1_000_000), destination="sip:dave@example.test"), metadata=CAROL)
    for leg in (caller, callee):
        events = await collect(stub, 4, call=leg.name, after_sequence=0)
        assert [e.type for e in events][-2:] == [E.QOS_EVENT_TYPE_NOQOS, E.QOS_EVENT_TYPE_CALL_DISCONNECTED]
        assert events[-1].disconnect_reason == Disconnect.DISCONNECT_REASON_QOS_UNAVAILABLE
    gone = await legs(served, caller, callee)
    assert [leg.state for leg in gone] == [State.STATE_DISCONNECTED, State.STATE_DISCONNECTED]
    assert await reserved(stub) == (1_000_000, 0)
    assert (await stub.GetCall(svc.GetCallRequest(name=other.name))).state == State.STATE_CONNECTED


# -- a failed commit is undone (CALL-5) ------------------------------------------------------------
async def test_an_answer_the_store_cannot_record_releases_the_pair_s_grant(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    stub = served.stub
    await open_line(stub)
    caller, callee = await call_line(stub)
    failing_commits(served, monkeypatch)
    error = await rpc_error(stub.AnswerCall(answer_request(callee.name), metadata=BOB))
    assert error.code() == grpc.StatusCode.UNAVAILABLE and reason(error) == "STORAGE_UNAVAILABLE"
    monkeypatch.undo()
    assert await reserved(stub) == (0, 0), "the provider kept the answer nobody recorded"
    assert await legs(served, caller, callee) == (caller, callee)  # still ringing: it can be answered
    assert (await stub.AnswerCall(answer_request(callee.name), metadata=BOB)).state == State.STATE_CONNECTED


@pytest.mark.parametrize("from_leg", ["caller", "callee"])
async def test_a_pair_renegotiation_the_store_cannot_record_is_put_back(
    served: Served, monkeypatch: pytest.MonkeyPatch, from_leg: str
) -> None:
    stub = served.stub
    caller, callee = await connected_pair(served)
    leg, principal = (caller, CAROL) if from_leg == "caller" else (callee, BOB)
    failing_commits(served, monkeypatch)
    request = svc.RenegotiateCallRequest(name=leg.name, qos=qos(200_000, recv_rate=200_000))
    error = await rpc_error(stub.RenegotiateCall(request, metadata=principal))
    assert reason(error) == "STORAGE_UNAVAILABLE"
    monkeypatch.undo()
    assert await legs(served, caller, callee) == (caller, callee)
    assert await reserved(stub) == (400_000, 100_000), "the provider kept the renegotiation nobody recorded"


# -- a failed release is owed under the holder (CALL-6) ------------------------------------------
async def test_a_pair_s_failed_release_is_owed_under_its_holder_and_retried(tmp_path: Any) -> None:
    async with serving(
        tmp_path,
        providers={"reference": {"plugin": "test_ledger_faults:FlakyRelease"}},
        provider_timeout_seconds=0.5,
        release_retry_max_seconds=0.5,
    ) as served:
        stub = served.stub
        caller, callee = await connected_pair(served)
        provider: FlakyRelease = served.provider
        provider.failing = "raise"
        dropped = await stub.DropCall(svc.DropCallRequest(name=callee.name), metadata=BOB)  # bob hangs up
        assert dropped.state == State.STATE_DISCONNECTED
        # Owed under the name the provider holds it under (carol's leg), and announced there.
        assert [p.call for p in await served.server.running.store.pending_releases()] == [caller.name]
        events = await collect(stub, 4, call=caller.name, after_sequence=0)
        assert [e.type for e in events] == [
            E.QOS_EVENT_TYPE_CALL_RINGBACK,
            E.QOS_EVENT_TYPE_QOS_GRANTED,
            E.QOS_EVENT_TYPE_CALL_DISCONNECTED,
            E.QOS_EVENT_TYPE_RELEASE_PENDING,
        ]
        assert events[2].disconnect_reason == Disconnect.DISCONNECT_REASON_PEER_DROPPED
        assert await reserved(stub) == (400_000, 100_000)
        await asyncio.sleep(1.0)  # retries, each failing
        assert provider.attempts >= 2
        provider.failing = ""
        (completed,) = await collect(stub, 1, call=caller.name, after_sequence=events[-1].sequence)
        assert completed.type == E.QOS_EVENT_TYPE_RELEASE_COMPLETED
        assert await reserved(stub) == (0, 0)
        assert await served.server.running.store.pending_releases() == []


# -- the server always starts (CALL-7) -----------------------------------------------------------
async def test_a_pair_whose_provider_is_gone_is_disconnected_at_start_up_on_both_legs(tmp_path: Any) -> None:
    spare = {"reference": {}, "spare": {"plugin": "reference"}}
    async with serving(tmp_path, providers=spare) as served:
        stub = served.stub
        await open_line(stub)
        caller, callee = await call_line(stub, provider="providers/spare")
        await stub.AnswerCall(answer_request(callee.name), metadata=BOB)
        served.server.config = dataclasses.replace(served.server.config, providers={"reference": {}})
        await served.server.restart()
        for leg in (caller, callee):
            gone = await stub.GetCall(svc.GetCallRequest(name=leg.name))
            assert (gone.state, gone.disconnect_reason) == (
                State.STATE_DISCONNECTED,
                Disconnect.DISCONNECT_REASON_PROVIDER_ERROR,
            )
            events = await collect(stub, 4, call=leg.name, after_sequence=0)
            assert [e.type for e in events][-2:] == [E.QOS_EVENT_TYPE_GENERIC_ERROR, E.QOS_EVENT_TYPE_CALL_DISCONNECTED]
            assert "not hosted" in events[-1].message


async def test_a_network_call_the_provider_lost_is_retaken_as_an_incoming_call(tmp_path: Any) -> None:
    async with serving(
        tmp_path, providers={"reference": {"plugin": "incoming_kit:NetworkProvider"}}, reconcile_interval_seconds=0.2
    ) as served:
        stub = served.stub
        await open_line(stub)
        provider: NetworkProvider = served.provider
        offered = await provider.ring()
        assert offered is not None
        answered = await stub.AnswerCall(answer_request(offered), metadata=BOB)
        await provider.release(offered)  # the provider forgets it behind the server's back

        async def retaken() -> bool:
            return await reserved(stub) == (50_000, 300_000)  # the callee's terms: it receives 300,000

        await eventually(retaken, "the network call's reservation re-taken")
        again = provider.admitted[-1]
        assert (again.call, again.incoming, again.current) == (offered, True, None)
        assert await stub.GetCall(svc.GetCallRequest(name=offered)) == answered
