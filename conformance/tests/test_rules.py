"""The suite states GRANT-1, GRANT-3, the DELAY bound and the validation rules of SPEC.md on its own
(rules.py) instead of trusting the server it certifies; the two statements must still agree, on every
pair of flowspecs. And it judges every answer itself (verify.py)."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from callqos.conformance import rules, verify
from callqos.server import qos
from callqos.v1 import call_pb2, flowspec_pb2
from callqos.v1 import callqos_service_pb2 as svc

ST = flowspec_pb2.ServiceType
PRESENCE = {field.name: field.has_presence for field in flowspec_pb2.FlowSpec.DESCRIPTOR.fields}
FIELDS = sorted(PRESENCE)


@st.composite
def flowspecs(draw: st.DrawFn) -> flowspec_pb2.FlowSpec:
    spec = flowspec_pb2.FlowSpec(
        service_type=draw(
            st.sampled_from([ST.SERVICE_TYPE_CONTROLLED_LOAD, ST.SERVICE_TYPE_GUARANTEED, ST.SERVICE_TYPE_BEST_EFFORT])
        )
    )
    small = st.integers(min_value=1, max_value=4)  # few distinct values, so fields often tie
    for name in ("token_rate_bytes_per_second", "token_bucket_size_bytes", "latency_microseconds"):
        if draw(st.booleans()):
            setattr(spec, name, draw(small))
    if draw(st.booleans()):
        spec.max_sdu_size_bytes = draw(small)
    peak = draw(st.sampled_from(["none", "bounded", "unbounded"]))
    if peak == "bounded":
        spec.peak_bandwidth_bytes_per_second = draw(small)
    elif peak == "unbounded":
        spec.peak_bandwidth_unbounded = True
    return spec


@given(flowspecs())
def test_the_suite_and_the_server_reserve_the_same_rate(spec: flowspec_pb2.FlowSpec) -> None:
    assert rules.reserved_rate(spec) == qos.reserved_rate(spec)


@settings(max_examples=400)
@given(flowspecs(), flowspecs(), st.sets(st.sampled_from(FIELDS)))
@example(  # asked for an unbounded peak, granted a bounded one: not satisfied (GRANT-3)
    flowspec_pb2.FlowSpec(service_type=ST.SERVICE_TYPE_GUARANTEED, peak_bandwidth_unbounded=True),
    flowspec_pb2.FlowSpec(service_type=ST.SERVICE_TYPE_GUARANTEED, peak_bandwidth_bytes_per_second=3),
    {"peak_bandwidth_bytes_per_second", "peak_bandwidth_unbounded"},
)
def test_the_suite_and_the_server_agree_when_a_grant_satisfies(
    asked: flowspec_pb2.FlowSpec, other: flowspec_pb2.FlowSpec, changed: set[str]
) -> None:
    # The grant is the request with some fields taken from another flowspec: near the boundary.
    granted = flowspec_pb2.FlowSpec()
    granted.CopyFrom(asked)
    for name in changed:
        if PRESENCE[name] and not other.HasField(name):
            granted.ClearField(name)
        else:
            setattr(granted, name, getattr(other, name))
    assert (rules.shortfalls(granted, asked, "sending") == []) == (qos.shortfalls(granted, asked) == [])


@given(flowspecs(), st.integers(0, 5000), st.integers(0, 5000), st.integers(0, 5000), st.integers(1, 9000))
def test_the_suite_and_the_server_state_the_same_delay_bound(
    spec: flowspec_pb2.FlowSpec, c: int, d: int, latency: int, mtu: int
) -> None:
    spec.service_type = ST.SERVICE_TYPE_GUARANTEED
    ours = rules.delay_bound_us(spec, rules.Path(c, d, latency, mtu))
    theirs = qos.guaranteed_delay_bound_us(spec, qos.PathTerms(c, d, latency, mtu))
    assert ours == theirs or abs(ours - theirs) <= 1e-6 * max(abs(ours), 1)


def test_the_suite_tells_which_rule_each_invalid_request_breaks() -> None:
    for case in rules.INVALID_CASES:
        request = svc.CreateCallRequest(
            call=call_pb2.Call(destination="sip:x@example.test", requested_qos=rules.valid_request_qos(1000)),
            call_id="cq1-2",
        )
        if case.needs_mtu:
            request.call.requested_qos.sending.max_sdu_size_bytes = 1501
        case.mutate(request)
        assert rules.request_clauses(request, 1500) == set(case.spec) - {"FLOW-1"}, case.title
    valid = svc.CreateCallRequest(call=call_pb2.Call(destination="sip:x", requested_qos=rules.valid_request_qos(1)))
    assert rules.request_clauses(valid, 1500) == set()


LIMITS = verify.Limits(frozenset({1, 2}), 1000, 1500, 3000, True)  # BEST_EFFORT, CONTROLLED_LOAD


def test_the_suite_judges_a_grant_itself() -> None:
    asked = flowspec_pb2.QosSpec(sending=rules.cl(500), receiving=rules.best_effort())
    short = flowspec_pb2.QosSpec(sending=rules.cl(499), receiving=rules.best_effort())
    needed, best = call_pb2.ServiceLevel.SERVICE_LEVEL_NEEDED, call_pb2.ServiceLevel.SERVICE_LEVEL_BEST_EFFORT
    assert verify.grant_problems(needed, asked, asked, LIMITS) == []
    assert verify.grant_problems(needed, asked, short, LIMITS)[0].startswith("[GRANT-3]")
    assert verify.grant_problems(best, asked, asked, LIMITS)[0].startswith("[LEVEL-3]")
    over = flowspec_pb2.QosSpec(sending=rules.cl(1001), receiving=rules.best_effort())
    assert verify.grant_problems(call_pb2.ServiceLevel.SERVICE_LEVEL_IF_AVAILABLE, over, over, LIMITS)[0].startswith(
        "[ADMIT-1]"
    )
    guaranteed = flowspec_pb2.QosSpec(
        sending=rules.flow(ST.SERVICE_TYPE_GUARANTEED, token_rate_bytes_per_second=10, latency_microseconds=10),
        receiving=rules.best_effort(),
    )
    problems = verify.grant_problems(needed, guaranteed, guaranteed, LIMITS)
    assert [p[:9] for p in problems] == ["[PROV-9] ", "[DELAY-4]"]  # not advertised, and below the path


def test_the_suite_judges_a_counter_offer_itself() -> None:
    fine = flowspec_pb2.QosSpec(sending=rules.cl(1000), receiving=rules.best_effort())
    assert verify.counter_offer_problems(fine, LIMITS) == []
    too_much = flowspec_pb2.QosSpec(sending=rules.cl(1001), receiving=rules.best_effort())
    assert verify.counter_offer_problems(too_much, LIMITS)[0].startswith("[PROV-2]")
    invalid = flowspec_pb2.QosSpec(
        sending=rules.cl(900, peak_bandwidth_bytes_per_second=800), receiving=rules.best_effort()
    )
    assert "FLOW-10" in verify.counter_offer_problems(invalid, LIMITS)[0]
    refusal = call_pb2.QosRefusal(call="calls/other", counter_offer=fine)
    assert verify.refusal_problems("calls/mine", refusal, LIMITS)[0].startswith("[ADMIT-3]")
    assert verify.refusal_problems("calls/mine", None, LIMITS)[0].startswith("[ADMIT-3]")
