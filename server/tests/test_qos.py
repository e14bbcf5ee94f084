"""What a flowspec means (qos.py): the rate it reserves (conformance/SPEC.md GRANT-1), when a grant
satisfies a request (GRANT-3), NO_CHANGE resolution (SETQOS-4) and the RFC 2212 delay bound
(DELAY-1 … DELAY-3). Worked examples computed by hand, then properties over every valid flowspec
(valid as validation.py decides it)."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from callqos.server.qos import (
    NOTIFICATION_ONLY,
    RESERVING,
    PathTerms,
    guaranteed_delay_bound_us,
    qos_shortfalls,
    reserved_rate,
    resolve_no_change,
    shortfalls,
)
from callqos.server.validation import flowspec_violations
from callqos.v1 import flowspec_pb2

ST = flowspec_pb2.ServiceType
FlowSpec = flowspec_pb2.FlowSpec
QosSpec = flowspec_pb2.QosSpec
CL, GS, BE = ST.SERVICE_TYPE_CONTROLLED_LOAD, ST.SERVICE_TYPE_GUARANTEED, ST.SERVICE_TYPE_BEST_EFFORT

# A path: C = 500 bytes, D = 1 ms, fixed latency 2 ms, MTU 1500 bytes.
PATH = PathTerms(c_bytes=500, d_microseconds=1000, min_path_latency_microseconds=2000, mtu_bytes=1500)
LARGEST = 0xFFFFFFFD  # below the refused Winsock sentinels 0xFFFFFFFE and 0xFFFFFFFF (FLOW-12)


def gs(rate: int, **fields: object) -> FlowSpec:
    return FlowSpec(service_type=GS, token_rate_bytes_per_second=rate, **fields)  # type: ignore[arg-type]


# -- worked examples -----------------------------------------------------------------------------


def test_reserved_rate_by_service_type() -> None:
    assert reserved_rate(FlowSpec(service_type=CL, token_rate_bytes_per_second=1000)) == 1000
    # GUARANTEED reserves its peak when bounded, its token rate otherwise (GRANT-1).
    assert reserved_rate(gs(1000, peak_bandwidth_bytes_per_second=3000)) == 3000
    assert reserved_rate(gs(1000, peak_bandwidth_unbounded=True)) == 1000
    assert reserved_rate(gs(1000)) == 1000
    for stype in (BE, ST.SERVICE_TYPE_NO_TRAFFIC, ST.SERVICE_TYPE_QUALITATIVE, ST.SERVICE_TYPE_NETWORK_CONTROL):
        assert reserved_rate(FlowSpec(service_type=stype, token_rate_bytes_per_second=5000)) == 0


def test_delay_bound_with_a_bounded_peak_takes_the_r_at_least_p_branch() -> None:
    # R = p = 200,000 B/s: Q = (M + C)/R = (1000 + 500)/200000 s = 7,500 µs; + D 1,000 + L 2,000.
    spec = gs(100_000, peak_bandwidth_bytes_per_second=200_000, max_sdu_size_bytes=1000, token_bucket_size_bytes=4000)
    assert guaranteed_delay_bound_us(spec, PATH) == 10_500


def test_delay_bound_with_an_unbounded_peak_adds_the_burst() -> None:
    # R = r = 100,000 B/s, p = ∞: (b - M)/R = 3000/100000 s = 30,000 µs; (M + C)/R = 15,000 µs;
    # + D 1,000 + L 2,000 = 48,000 µs.
    spec = gs(100_000, peak_bandwidth_unbounded=True, max_sdu_size_bytes=1000, token_bucket_size_bytes=4000)
    assert guaranteed_delay_bound_us(spec, PATH) == 48_000
    # An unspecified peak is the same as an unbounded one.
    assert guaranteed_delay_bound_us(gs(100_000, max_sdu_size_bytes=1000, token_bucket_size_bytes=4000), PATH) == 48_000


def test_delay_bound_defaults() -> None:
    # M defaults to the MTU (1500) and b to M, so no burst: (1500 + 500)/100000 s = 20,000 µs + 3,000.
    assert guaranteed_delay_bound_us(gs(100_000), PATH) == 23_000
    # A bucket smaller than M adds no burst (b - M counts as 0): (1000 + 500)/100000 s = 15,000 + 3,000.
    spec = gs(100_000, max_sdu_size_bytes=1000, token_bucket_size_bytes=500)
    assert guaranteed_delay_bound_us(spec, PATH) == 18_000
    # Nothing reserved, no bound.
    assert guaranteed_delay_bound_us(FlowSpec(service_type=BE), PATH) == math.inf


def test_shortfalls_worked_examples() -> None:
    asked = FlowSpec(service_type=CL, token_rate_bytes_per_second=1000, latency_microseconds=5000)
    assert shortfalls(asked, asked) == []
    assert shortfalls(FlowSpec(service_type=BE), asked) == [
        "service type SERVICE_TYPE_BEST_EFFORT instead of SERVICE_TYPE_CONTROLLED_LOAD"
    ]
    assert shortfalls(FlowSpec(service_type=CL, token_rate_bytes_per_second=999), asked) == [
        "token rate below the request"
    ]
    slower = FlowSpec(service_type=CL, token_rate_bytes_per_second=1000, latency_microseconds=5001)
    assert shortfalls(slower, asked) == ["latency above the request"]
    # A request that leaves a field out leaves it to the provider.
    assert shortfalls(FlowSpec(service_type=CL, token_rate_bytes_per_second=1000, max_sdu_size_bytes=1), asked) == []
    both = QosSpec(sending=asked, receiving=FlowSpec(service_type=BE))
    assert qos_shortfalls(QosSpec(sending=asked, receiving=FlowSpec(service_type=CL)), both) == [
        "receiving: service type SERVICE_TYPE_CONTROLLED_LOAD instead of SERVICE_TYPE_BEST_EFFORT"
    ]


def test_a_bounded_peak_does_not_satisfy_a_request_for_an_unbounded_one() -> None:
    asked = gs(1000, peak_bandwidth_unbounded=True)
    assert shortfalls(gs(1000, peak_bandwidth_unbounded=True), asked) == []
    assert shortfalls(gs(1000, peak_bandwidth_bytes_per_second=1_000_000), asked) != []


def test_resolve_no_change_keeps_what_is_in_effect() -> None:
    current = QosSpec(
        sending=FlowSpec(service_type=CL, token_rate_bytes_per_second=1000),
        receiving=FlowSpec(service_type=BE),
        provider_specific=b"\x00old",
    )
    asked = QosSpec(
        sending=FlowSpec(service_type=ST.SERVICE_TYPE_NO_CHANGE, token_rate_bytes_per_second=7),
        receiving=FlowSpec(service_type=CL, token_rate_bytes_per_second=2000),
    )
    resolved = resolve_no_change(asked, current)
    assert resolved.sending == current.sending
    assert resolved.receiving == asked.receiving
    assert resolved.provider_specific == b"\x00old"
    asked.provider_specific = b"new"
    assert resolve_no_change(asked, current).provider_specific == b"new"
    assert asked.sending.service_type == ST.SERVICE_TYPE_NO_CHANGE  # the request itself is not changed


# -- properties over every valid flowspec ---------------------------------------------------------

rates = st.integers(min_value=1, max_value=LARGEST)
sizes = st.integers(min_value=1, max_value=PATH.mtu_bytes)
request_types = st.sampled_from(
    sorted(set(ST.values()) - NOTIFICATION_ONLY - {ST.SERVICE_TYPE_UNSPECIFIED, ST.SERVICE_TYPE_NO_CHANGE})
)


@st.composite
def flowspecs(draw: st.DrawFn, stype: st.SearchStrategy[int] = request_types) -> FlowSpec:
    """A flowspec validation.py accepts in a sending direction against PATH's MTU."""
    spec = FlowSpec(service_type=draw(stype))
    reserving = spec.service_type in RESERVING
    if reserving or draw(st.booleans()):
        spec.token_rate_bytes_per_second = draw(rates)
    peak = draw(st.sampled_from(["unspecified", "unbounded", "bounded"]))
    if peak == "unbounded":
        spec.peak_bandwidth_unbounded = True
    elif peak == "bounded":
        spec.peak_bandwidth_bytes_per_second = draw(
            st.integers(min_value=spec.token_rate_bytes_per_second or 1, max_value=LARGEST)
        )
    if draw(st.booleans()):
        spec.token_bucket_size_bytes = draw(rates)
    if draw(st.booleans()):
        spec.max_sdu_size_bytes = draw(sizes)
        if draw(st.booleans()):
            spec.minimum_policed_size_bytes = draw(st.integers(min_value=1, max_value=spec.max_sdu_size_bytes))
    if draw(st.booleans()):
        spec.latency_microseconds = draw(st.integers(min_value=0, max_value=LARGEST))
    violations = list(flowspec_violations(spec, "f", sending=True, renegotiation=False, max_sdu_size=PATH.mtu_bytes))
    assert not violations, violations  # the strategy only draws valid flowspecs
    return spec


def guaranteed() -> st.SearchStrategy[FlowSpec]:
    return flowspecs(st.just(GS))


def rfc2212_bound_us(b: float, p: float, r: float, m_big: float, big_r: float, path: PathTerms) -> float:
    """The two-branch bound of SPEC.md DELAY-1, written out independently of qos.py."""
    queue = (m_big + path.c_bytes) / big_r
    if p > big_r:
        queue += (b - m_big) / big_r * (p - big_r) / (p - r) if math.isfinite(p) else (b - m_big) / big_r
    return queue * 1_000_000 + path.d_microseconds + path.min_path_latency_microseconds


@given(flowspecs())
def test_reserved_rate_follows_the_service_type(spec: FlowSpec) -> None:
    rate = reserved_rate(spec)
    if spec.service_type == CL:
        assert rate == spec.token_rate_bytes_per_second
    elif spec.service_type == GS:
        bounded = spec.HasField("peak_bandwidth_bytes_per_second") and not spec.peak_bandwidth_unbounded
        assert rate == (spec.peak_bandwidth_bytes_per_second if bounded else spec.token_rate_bytes_per_second)
        assert rate >= spec.token_rate_bytes_per_second  # R >= r (FLOW-10 guarantees p >= r)
    else:
        assert rate == 0


@given(guaranteed())
def test_the_bound_is_the_rfc2212_formula_at_the_reserved_rate(spec: FlowSpec) -> None:
    m_big = spec.max_sdu_size_bytes if spec.HasField("max_sdu_size_bytes") else PATH.mtu_bytes
    b = max(spec.token_bucket_size_bytes if spec.HasField("token_bucket_size_bytes") else m_big, m_big)
    bounded = spec.HasField("peak_bandwidth_bytes_per_second") and not spec.peak_bandwidth_unbounded
    p = spec.peak_bandwidth_bytes_per_second if bounded else math.inf
    expected = rfc2212_bound_us(b, p, spec.token_rate_bytes_per_second, m_big, reserved_rate(spec), PATH)
    assert math.isclose(guaranteed_delay_bound_us(spec, PATH), expected, rel_tol=1e-12)


@given(guaranteed(), st.integers(min_value=1, max_value=LARGEST))
def test_more_rate_never_lengthens_the_bound(spec: FlowSpec, more: int) -> None:
    faster = FlowSpec()
    faster.CopyFrom(spec)
    if spec.HasField("peak_bandwidth_bytes_per_second") and not spec.peak_bandwidth_unbounded:
        faster.peak_bandwidth_bytes_per_second = min(spec.peak_bandwidth_bytes_per_second + more, LARGEST)
    else:
        faster.token_rate_bytes_per_second = min(spec.token_rate_bytes_per_second + more, LARGEST)
    assert guaranteed_delay_bound_us(faster, PATH) <= guaranteed_delay_bound_us(spec, PATH)


@given(guaranteed(), st.integers(min_value=0, max_value=LARGEST))
def test_a_bigger_bucket_never_shortens_the_bound(spec: FlowSpec, more: int) -> None:
    bigger = FlowSpec()
    bigger.CopyFrom(spec)
    base = spec.token_bucket_size_bytes if spec.HasField("token_bucket_size_bytes") else 1
    bigger.token_bucket_size_bytes = min(base + more, LARGEST)
    smaller = FlowSpec()
    smaller.CopyFrom(spec)
    smaller.token_bucket_size_bytes = base
    assert guaranteed_delay_bound_us(bigger, PATH) >= guaranteed_delay_bound_us(smaller, PATH)


@given(guaranteed())
def test_the_bound_never_undercuts_the_fixed_path_delay(spec: FlowSpec) -> None:
    assert guaranteed_delay_bound_us(spec, PATH) > PATH.d_microseconds + PATH.min_path_latency_microseconds


def satisfies(granted: FlowSpec, asked: FlowSpec) -> bool:
    """SPEC.md GRANT-3, read directly off the clause."""
    if granted.service_type != asked.service_type:
        return False
    if asked.service_type not in RESERVING:
        return True
    ok = granted.token_rate_bytes_per_second >= asked.token_rate_bytes_per_second
    if asked.peak_bandwidth_unbounded:  # "unbounded" is satisfied by no bounded peak at all
        ok &= granted.peak_bandwidth_unbounded or not granted.HasField("peak_bandwidth_bytes_per_second")
    elif asked.HasField("peak_bandwidth_bytes_per_second"):
        ok &= granted.peak_bandwidth_unbounded or (
            granted.HasField("peak_bandwidth_bytes_per_second")
            and granted.peak_bandwidth_bytes_per_second >= asked.peak_bandwidth_bytes_per_second
        )
    if asked.HasField("token_bucket_size_bytes"):
        ok &= granted.token_bucket_size_bytes >= asked.token_bucket_size_bytes
    if asked.HasField("latency_microseconds") and granted.HasField("latency_microseconds"):
        ok &= granted.latency_microseconds <= asked.latency_microseconds
    if asked.HasField("max_sdu_size_bytes"):
        ok &= granted.max_sdu_size_bytes >= asked.max_sdu_size_bytes
    return ok


@settings(max_examples=300)
@given(flowspecs(), flowspecs())
def test_shortfalls_are_empty_exactly_when_the_grant_satisfies(asked: FlowSpec, granted: FlowSpec) -> None:
    assert (shortfalls(granted, asked) == []) == satisfies(granted, asked)


@st.composite
def variants(draw: st.DrawFn, asked: FlowSpec) -> FlowSpec:
    """`asked` with each field kept, raised, lowered or dropped: grants near the boundary."""
    granted = FlowSpec()
    granted.CopyFrom(asked)
    for name in ("token_rate_bytes_per_second", "token_bucket_size_bytes", "latency_microseconds"):
        change = draw(st.sampled_from(["keep", "up", "down", "drop"]))
        value = getattr(asked, name)
        if change == "up":
            setattr(granted, name, min(value + 1, LARGEST))
        elif change == "down" and value > 1:
            setattr(granted, name, value - 1)
        elif change == "drop":
            granted.ClearField(name)
    peak = draw(st.sampled_from(["keep", "bounded", "unbounded", "drop"]))
    if peak == "bounded":
        granted.peak_bandwidth_unbounded = False
        granted.peak_bandwidth_bytes_per_second = draw(st.integers(min_value=1, max_value=LARGEST))
    elif peak == "unbounded":
        granted.ClearField("peak_bandwidth_bytes_per_second")
        granted.peak_bandwidth_unbounded = True
    elif peak == "drop":
        granted.ClearField("peak_bandwidth_bytes_per_second")
        granted.peak_bandwidth_unbounded = False
    if draw(st.booleans()):
        granted.max_sdu_size_bytes = draw(sizes)
    return granted


@settings(max_examples=500)
@given(st.data())
def test_shortfalls_at_the_boundary_of_a_request(data: st.DataObject) -> None:
    asked = data.draw(flowspecs())
    granted = data.draw(variants(asked))
    assert (shortfalls(granted, asked) == []) == satisfies(granted, asked)


@given(flowspecs(), st.data())
def test_a_grant_at_least_as_good_as_the_request_satisfies_it(asked: FlowSpec, data: st.DataObject) -> None:
    granted = FlowSpec()
    granted.CopyFrom(asked)
    if asked.service_type in RESERVING:
        granted.token_rate_bytes_per_second = data.draw(
            st.integers(min_value=asked.token_rate_bytes_per_second, max_value=LARGEST)
        )
        if asked.HasField("latency_microseconds"):
            granted.latency_microseconds = data.draw(st.integers(0, asked.latency_microseconds))
    assert shortfalls(asked, asked) == []
    assert shortfalls(granted, asked) == []


@given(flowspecs(), flowspecs(), flowspecs(), st.booleans(), st.booleans(), st.binary(max_size=8))
def test_resolve_no_change_replaces_exactly_the_no_change_directions(
    send: FlowSpec, recv: FlowSpec, now: FlowSpec, keep_send: bool, keep_recv: bool, data: bytes
) -> None:
    current = QosSpec(sending=now, receiving=recv, provider_specific=b"current")
    asked = QosSpec(sending=send, receiving=now, provider_specific=data)
    if keep_send:
        asked.sending.service_type = ST.SERVICE_TYPE_NO_CHANGE
    if keep_recv:
        asked.receiving.service_type = ST.SERVICE_TYPE_NO_CHANGE
    before = asked.SerializeToString(deterministic=True)
    resolved = resolve_no_change(asked, current)
    assert resolved.sending == (current.sending if keep_send else asked.sending)
    assert resolved.receiving == (current.receiving if keep_recv else asked.receiving)
    assert resolved.provider_specific == (data or b"current")
    assert asked.SerializeToString(deterministic=True) == before
