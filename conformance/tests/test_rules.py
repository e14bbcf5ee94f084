"""The suite states GRANT-1 and GRANT-3 of SPEC.md on its own (rules.py) instead of trusting the
server it certifies; the two statements must still agree, on every pair of flowspecs."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from callqos.conformance import rules
from callqos.server import qos
from callqos.v1 import flowspec_pb2

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
