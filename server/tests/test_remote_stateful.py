"""The promises of a remote provider, over random runs (hypothesis, stateful): calls made, dropped
and renegotiated, the provider's link shrinking and growing, the provider going away and coming
back as a new process, the server restarting while the provider keeps running.

Invariants, after every step:
- nothing is admitted while the provider is away: every decision then fails UNAVAILABLE /
  PROVIDER_UNAVAILABLE with RetryInfo, and no call connects;
- a decision made while the provider is there is the provider's, exactly as in process: a NEEDED
  request is granted if and only if it fits what is free;
- whenever the provider is there, the server and the provider agree on every reservation (the
  same calls at the same QoS), and the link carries exactly what those calls reserve, within its
  capacity.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import grpc
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from remote_kit import Kit, assert_agree, connected_calls, dialled, remote_of, until
from server_testkit import make_request, qos, reason
from test_remote_provider import retry_delay

from callqos.server import testing
from callqos.server.providers.reference import ReferenceProvider
from callqos.v1 import call_pb2, provider_pb2
from callqos.v1 import callqos_service_pb2 as svc
from callqos.v1 import callqos_service_pb2_grpc as svc_grpc

T = TypeVar("T")
Level = call_pb2.ServiceLevel
CAPACITY = 1_000_000
ACME = "providers/acme"
LINK = "providers/acme/links/default"


def reference() -> ReferenceProvider:
    return ReferenceProvider({"links": [{"id": "default", "capacity_bytes_per_second": CAPACITY}]})


class RemoteProviderRun(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)  # grpc.aio binds a channel to the loop it is made on
        self.directory = Path(tempfile.mkdtemp(prefix="cq-stateful-", dir="/tmp"))
        self.kit = Kit(reference)
        self.run(self.kit.start())
        self.server = testing.InProcessServer(
            self.directory,
            storage="sqlite",
            providers={"acme": dialled(self.kit.endpoint, restart_backoff_max_seconds=0.2)},
            default_provider="acme",
        )
        self.run(self.server.start())
        self.channel = self.run(self._dial())
        self.stub = svc_grpc.CallQosServiceStub(self.channel)
        self.up = True
        self.capacity = CAPACITY
        self.made = 0

    async def _dial(self) -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(self.server.target)

    def run(self, work: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(asyncio.wait_for(work, 30))

    def teardown(self) -> None:
        try:
            self.run(self.channel.close())
            self.run(self.server.close())
            self.run(self.kit.close())
        finally:
            self.loop.close()
            asyncio.set_event_loop(None)
            shutil.rmtree(self.directory, ignore_errors=True)

    # -- what the host holds ------------------------------------------------------------------
    def connected(self) -> dict[str, Any]:
        return self.run(connected_calls(self.stub, ACME))

    def free(self, without: str = "") -> int:
        """Capacity left on the link's sending direction (the only one these calls reserve)."""
        held = self.connected()
        return self.capacity - sum(q.sending.token_rate_bytes_per_second for c, q in held.items() if c != without)

    async def _outcome(self, work: Any) -> grpc.aio.AioRpcError | Any:
        try:
            return await work
        except grpc.aio.AioRpcError as error:
            return error

    def assert_refused_for_absence(self, error: Any) -> None:
        assert isinstance(error, grpc.aio.AioRpcError), f"a decision without the provider: {error}"
        assert error.code() == grpc.StatusCode.UNAVAILABLE and reason(error) == "PROVIDER_UNAVAILABLE"
        assert retry_delay(error) is not None

    # -- rules --------------------------------------------------------------------------------
    @rule(rate=st.integers(1, CAPACITY), if_available=st.booleans())
    def make(self, rate: int, if_available: bool) -> None:
        level = Level.SERVICE_LEVEL_IF_AVAILABLE if if_available else Level.SERVICE_LEVEL_NEEDED
        before = self.connected()
        fits = rate <= self.free()
        self.made += 1
        outcome = self.run(
            self._outcome(self.stub.CreateCall(make_request(qos(rate), level=level, call_id=f"c{self.made}")))
        )
        if not self.up:
            self.assert_refused_for_absence(outcome)
            assert self.connected() == before
        elif level == Level.SERVICE_LEVEL_NEEDED:
            granted = not isinstance(outcome, grpc.aio.AioRpcError)
            assert granted == fits, (rate, fits, outcome)
            if not granted:
                assert reason(outcome) == "QOS_UNAVAILABLE"

    @precondition(lambda self: bool(self.connected()))
    @rule(data=st.data())
    def drop(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self.connected())))
        dropped = self.run(self.stub.DropCall(svc.DropCallRequest(name=name)))
        assert dropped.state == call_pb2.Call.State.STATE_DISCONNECTED  # also while the provider is away

    @precondition(lambda self: bool(self.connected()))
    @rule(data=st.data(), rate=st.integers(1, CAPACITY))
    def renegotiate(self, data: st.DataObject, rate: int) -> None:
        name = data.draw(st.sampled_from(sorted(self.connected())))
        before = self.run(self.stub.GetCall(svc.GetCallRequest(name=name)))
        fits = rate <= self.free(without=name)
        request = svc.RenegotiateCallRequest(name=name, qos=qos(rate), service_level=Level.SERVICE_LEVEL_NEEDED)
        outcome = self.run(self._outcome(self.stub.RenegotiateCall(request)))
        if before.service_level == request.service_level and before.requested_qos == request.qos:
            # Nothing to change (SETQOS-8): answered without the provider, also while it is away.
            assert not isinstance(outcome, grpc.aio.AioRpcError), outcome
            assert outcome.granted_qos == before.granted_qos
        elif not self.up:
            self.assert_refused_for_absence(outcome)
        else:
            assert (not isinstance(outcome, grpc.aio.AioRpcError)) == fits, (rate, fits, outcome)
        if isinstance(outcome, grpc.aio.AioRpcError):
            assert self.run(self.stub.GetCall(svc.GetCallRequest(name=name))).granted_qos == before.granted_qos

    @precondition(lambda self: self.up)
    @rule(capacity=st.integers(0, CAPACITY))
    def change_capacity(self, capacity: int) -> None:
        link = provider_pb2.Link(name=LINK, capacity_bytes_per_second=capacity)
        self.run(self.stub.UpdateLink(svc.UpdateLinkRequest(link=link)))
        self.capacity = capacity

    @precondition(lambda self: self.up)
    @rule()
    def provider_goes_away(self) -> None:
        remote = remote_of(self.server)
        self.run(self.kit.stop())
        self.run(until(lambda: not remote.ready, what="the host noticed"))
        self.up = False

    @precondition(lambda self: not self.up)
    @rule()
    def provider_comes_back(self) -> None:
        """As a new process: it holds nothing until the host restores what it holds, and the host
        puts back the capacity set with UpdateLink first (LINK-5), so the link's capacity is the
        one set last, not the provider's configured one."""
        self.run(self.kit.start())
        self.run(until(lambda: remote_of(self.server).ready, what="restored"))
        self.up = True

    @precondition(lambda self: self.up)
    @rule()
    def server_restarts(self) -> None:
        """The server stops and starts on the same database; the provider keeps running."""
        self.run(self.channel.close())
        self.run(self.server.stop())
        self.run(self.server.start())
        self.channel = self.run(self._dial())
        self.stub = svc_grpc.CallQosServiceStub(self.channel)

    # -- invariants ---------------------------------------------------------------------------
    @invariant()
    def the_server_and_the_provider_agree(self) -> None:
        if self.up:
            held = self.run(assert_agree(self.stub, remote_of(self.server)))
            assert sum(q.sending.token_rate_bytes_per_second for q in held.values()) <= self.capacity


# `make test` runs the same 15 runs every time (derandomized, as the ledger state machine runs a
# fixed seed): a new model mistake or server bug is found by `make soak`, which explores with
# fresh seeds (CALLQOS_REMOTE_EXAMPLES runs), not by whichever CI run happens to draw it.
EXPLORE = int(os.environ.get("CALLQOS_REMOTE_EXAMPLES", "0") or 0)
RemoteProviderRun.TestCase.settings = settings(
    max_examples=EXPLORE or 15,
    derandomize=not EXPLORE,
    database=None,
    stateful_step_count=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_remote_provider_runs = RemoteProviderRun.TestCase
