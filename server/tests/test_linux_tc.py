"""The linux-tc provider against a real kernel: a callqos server process managing a veth pair
between two network namespaces, driven through gRPC with the Python client, with real UDP
traffic measured at the far end.

Rates are frame bytes per second (what HTB counts on an Ethernet interface; the traffic tool
counts the same). Every traffic phase is a few seconds long.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from linux_tc_kit import Pair, flow_filter, ip, measure, namespaces, wait_for

from callqos.client import Client, errors, specs
from callqos.server.testing import ServerProcess
from callqos.v1 import call_pb2, event_pb2
from callqos.v1 import callqos_service_pb2 as svc
from callqos.v1 import callqos_service_pb2_grpc as svc_grpc

State = call_pb2.Call.State
Event = event_pb2.QosEventType
CAPACITY = 2_500_000  # 20 Mbit/s each direction
LINK = "providers/linux-tc/links/veth"
TOLERANCE = 0.10

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    with namespaces() as created:
        yield created


@pytest.fixture
def server(pair: Pair, tmp_path: Path) -> Iterator[ServerProcess]:
    with ServerProcess(
        tmp_path,
        storage="sqlite",
        default_provider="linux-tc",
        providers={"linux-tc": {"plugin": "linux-tc", **pair.settings(CAPACITY)}},
    ) as process:
        yield process


@pytest.fixture
def client(server: ServerProcess) -> Iterator[Client]:
    with Client(server.target, principal="alice", timeout=10) as made:
        yield made


def within(measured: float, expected: float, tolerance: float = TOLERANCE) -> bool:
    return abs(measured - expected) <= tolerance * expected


def reserved(client: Client) -> tuple[int, int]:
    link = next(iter(client.list_links("providers/linux-tc")))
    return link.sending_reserved_bytes_per_second, link.receiving_reserved_bytes_per_second


def test_grant_is_enforced_against_a_flood_renegotiation_follows_and_drop_falls_back(
    pair: Pair, client: Client
) -> None:
    """A CONTROLLED_LOAD call gets its grant (not more, not less) with the link flooded in the
    default class; after renegotiation its class is changed in place and the rate follows; after
    drop its packets are best effort again, limited only by what the default class can take."""
    voice, flood = 5000, 5001
    call = client.make_call(
        "sip:far@example.test",
        qos=specs.qos(specs.controlled_load(500_000, bucket=3000), provider_specific=flow_filter(voice)),
        call_id="voice",
    )
    assert call.state == State.STATE_CONNECTED
    (classid,) = pair.call_classes()
    assert "rate 4Mbit ceil 4Mbit" in pair.call_classes()[classid]  # 500,000 B/s

    # Offered twice its grant, with a flood of more than the whole link in the default class.
    rates = measure(
        pair,
        {voice: 1_000_000, flood: 4_000_000},
        expect=lambda got: within(got[voice], 500_000) and within(got[flood], CAPACITY - 500_000, 0.15),
    )
    print("grant 500,000, flood in the default class:", rates)
    assert within(rates[voice], 500_000), rates
    assert within(rates[flood], CAPACITY - 500_000, 0.15), rates  # the default class keeps the rest

    client.renegotiate(
        "calls/voice", qos=specs.qos(specs.controlled_load(1_000_000, bucket=3000), provider_specific=b"")
    )
    assert list(pair.call_classes()) == [classid]  # changed in place, not re-created
    assert "rate 8Mbit ceil 8Mbit" in pair.call_classes()[classid]
    rates = measure(pair, {voice: 2_000_000, flood: 4_000_000}, expect=lambda got: within(got[voice], 1_000_000))
    print("renegotiated to 1,000,000, flood in the default class:", rates)
    assert within(rates[voice], 1_000_000), rates

    client.drop("calls/voice")
    assert pair.call_classes() == {}
    assert pair.filter_prefs() == set()
    # Best effort again: 1.5 MB/s offered alone is no longer held to the former 1 MB/s grant
    # (on an idle machine it gets through whole; the margin keeps a busy one from flaking).
    rates = measure(pair, {voice: 1_500_000}, seconds=2.5)
    print("after drop, 1,500,000 offered:", rates)
    assert rates[voice] > 1.25 * 1_000_000, rates


def test_guaranteed_gets_its_peak_with_priority_and_a_latency_sized_queue(pair: Pair, client: Client) -> None:
    """GUARANTEED reserves its peak; its class has HTB priority 0 and a queue no longer than the
    granted latency allows; a controlled-load call and a flood beside it do not take from it."""
    guaranteed, other, flood = 5010, 5011, 5012
    client.make_call(
        "sip:far@example.test",
        qos=specs.qos(
            specs.guaranteed(300_000, peak=400_000, latency_us=40_000, bucket=3000),
            provider_specific=flow_filter(guaranteed),
        ),
        call_id="g",
    )
    client.make_call(
        "sip:far@example.test",
        qos=specs.qos(specs.controlled_load(600_000), provider_specific=flow_filter(other)),
        call_id="cl",
    )
    lines = list(pair.call_classes().values())
    (g_line,) = [line for line in lines if "rate 3200Kbit" in line]  # 400,000 B/s: the peak
    assert " prio 0 " in g_line
    queues = pair.tc(pair.host_ns, "qdisc", "show", "dev", pair.host_if)
    # 400,000 B/s x (40 ms - 1 ms Dtot - 2 ms path latency) / 1514-byte frames = 9 packets
    assert "limit 9p" in queues, queues
    rates = measure(
        pair,
        {guaranteed: 800_000, other: 1_200_000, flood: 4_000_000},
        expect=lambda got: within(got[guaranteed], 400_000) and within(got[other], 600_000),
    )
    print("GUARANTEED peak 400,000 + CONTROLLED_LOAD 600,000 + flood:", rates)
    assert within(rates[guaranteed], 400_000), rates
    assert within(rates[other], 600_000), rates


def test_receiving_direction_is_shaped_on_the_far_interface(pair: Pair, client: Client) -> None:
    """The receiving flowspec gets its class on the receiving interface, with the filter mirrored
    (remote → local)."""
    client.make_call(
        "sip:far@example.test",
        qos=specs.qos(
            specs.controlled_load(100_000),
            specs.controlled_load(200_000),
            provider_specific=flow_filter(5020),
        ),
        call_id="both",
    )
    (host_line,) = pair.call_classes().values()
    (far_line,) = pair.call_classes(pair.far_ns).values()
    assert "rate 800Kbit" in host_line and "rate 1600Kbit" in far_line
    far_filters = pair.tc(pair.far_ns, "filter", "show", "dev", pair.far_if)
    # source 10.77.0.2:5020 → destination 10.77.0.1:4020
    assert "0a4d0002/ffffffff at 12" in far_filters and "0a4d0001/ffffffff at 16" in far_filters, far_filters
    assert "139c0fb4/ffffffff at 20" in far_filters, far_filters
    assert reserved(client) == (100_000, 200_000)


def test_malformed_filter_is_invalid_argument_and_reserves_nothing(pair: Pair, client: Client) -> None:
    bad = json.dumps({"version": 1, "protocol": "udp", "remote": {"port": 70000}, "colour": "red"}).encode()
    with pytest.raises(errors.InvalidArgumentError) as caught:
        client.make_call(
            "sip:far@example.test",
            qos=specs.qos(specs.controlled_load(100_000), provider_specific=bad),
            call_id="bad",
        )
    assert set(caught.value.bad_fields) == {"call.requested_qos.provider_specific"}
    messages = [v.description for v in caught.value.field_violations]
    assert any("remote.port" in m for m in messages) and any("colour" in m for m in messages), messages
    with pytest.raises(errors.NotFoundError):
        client.get_call("calls/bad")
    assert reserved(client) == (0, 0)
    assert pair.call_classes() == {}

    # On renegotiation: the field is qos.provider_specific, and the call keeps what it had.
    good = client.make_call(
        "sip:far@example.test",
        qos=specs.qos(specs.controlled_load(100_000), provider_specific=flow_filter(5030)),
        call_id="good",
    )
    with pytest.raises(errors.InvalidArgumentError) as caught:
        client.renegotiate("calls/good", qos=specs.qos(specs.controlled_load(200_000), provider_specific=b"not json"))
    assert set(caught.value.bad_fields) == {"qos.provider_specific"}
    assert client.get_call("calls/good").etag == good.etag
    assert reserved(client) == (100_000, 0)


def test_refused_renegotiation_changes_nothing_in_the_kernel(pair: Pair, client: Client) -> None:
    client.make_call(
        "sip:far@example.test",
        qos=specs.qos(specs.controlled_load(1_000_000), provider_specific=flow_filter(5040)),
        call_id="big",
    )
    before = (pair.call_classes(), pair.filter_prefs(), pair.classes()["1:ffff"])
    with pytest.raises(errors.QosUnavailableError):
        client.renegotiate("calls/big", qos=specs.qos(specs.controlled_load(CAPACITY + 1), provider_specific=b""))
    assert (pair.call_classes(), pair.filter_prefs(), pair.classes()["1:ffff"]) == before


def test_capacity_cut_and_interface_down_shed_calls_with_events(
    pair: Pair, server: ServerProcess, client: Client
) -> None:
    """UpdateLink below what is reserved sheds the newest call (its class goes); the interface
    going down sheds the rest — NEEDED dropped, IF_AVAILABLE degraded to best effort — and
    coming back up restores the capacity."""
    client.make_call("sip:far@example.test", qos=specs.qos(specs.controlled_load(1_000_000)), call_id="old")
    client.make_call(
        "sip:far@example.test",
        qos=specs.qos(specs.controlled_load(500_000)),
        call_id="flexible",
        level="if-available",
    )
    client.make_call("sip:far@example.test", qos=specs.qos(specs.controlled_load(800_000)), call_id="new")
    assert len(pair.call_classes()) == 3

    answer = client.update_link_capacity(LINK, 2_000_000)
    assert answer.link.capacity_bytes_per_second == 2_000_000
    assert [(change.call, change.recorded) for change in answer.changes] == [("calls/new", True)]
    assert client.get_call("calls/new").state == State.STATE_DISCONNECTED
    assert len(pair.call_classes()) == 2
    assert "rate 16Mbit ceil 16Mbit" in pair.classes()["1:1"]

    ip("-n", pair.host_ns, "link", "set", pair.host_if, "down")
    try:
        wait_for(lambda: client.get_call("calls/old").state == State.STATE_DISCONNECTED, what="the NEEDED call shed")
        wait_for(
            lambda: (
                client.get_call("calls/flexible").granted_qos.sending.service_type
                == specs.parse_service_type("BEST_EFFORT")
            ),
            what="the IF_AVAILABLE call degraded",
        )
        old = client.get_call("calls/old")
        assert old.disconnect_reason == call_pb2.DisconnectReason.DISCONNECT_REASON_QOS_UNAVAILABLE
        assert pair.call_classes() == {}
        assert next(iter(client.list_links("providers/linux-tc"))).capacity_bytes_per_second == 0
        with pytest.raises(errors.QosUnavailableError):
            client.make_call("sip:far@example.test", qos=specs.qos(specs.controlled_load(1000)))
    finally:
        ip("-n", pair.host_ns, "link", "set", pair.host_if, "up")
    wait_for(
        lambda: next(iter(client.list_links("providers/linux-tc"))).capacity_bytes_per_second == 2_000_000,
        what="the capacity restored",
    )
    shed = [events(server, "calls/old"), events(server, "calls/flexible")]
    assert [e.type for e in shed[0]][-2:] == [Event.QOS_EVENT_TYPE_NOQOS, Event.QOS_EVENT_TYPE_CALL_DISCONNECTED]
    assert shed[1][-1].type == Event.QOS_EVENT_TYPE_QOS_CHANGED
    for call_events in shed:
        assert "interface" in call_events[-1].message and "is down" in call_events[-1].message, call_events[-1]
    client.make_call("sip:far@example.test", qos=specs.qos(specs.controlled_load(1000)), call_id="again")
    assert len(pair.call_classes()) == 1


def events(server: ServerProcess, call: str) -> list[event_pb2.QosEvent]:
    """Every retained event of `call`: a watch from the start, read until it is caught up."""
    found: list[event_pb2.QosEvent] = []
    with grpc.insecure_channel(server.target) as channel:
        stream = svc_grpc.CallQosServiceStub(channel).WatchEvents(
            svc.WatchEventsRequest(after_sequence=0, call=call), timeout=1.5
        )
        with contextlib.suppress(grpc.RpcError):  # the deadline ends the stream once caught up
            found.extend(response.event for response in stream)
    return found


def test_restart_recreates_exactly_the_calls_handed_back(pair: Pair, server: ServerProcess, client: Client) -> None:
    for port, name in ((5050, "one"), (5051, "two")):
        client.make_call(
            "sip:far@example.test",
            qos=specs.qos(specs.controlled_load(300_000), provider_specific=flow_filter(port)),
            call_id=name,
        )
    client.drop("calls/one")
    # Something the provider does not know: a class and a filter it did not install.
    pair.tc(
        pair.host_ns, "class", "add", "dev", pair.host_if, "parent", "1:1", "classid", "1:99", "htb", "rate", "1mbit"
    )
    pair.tc(pair.host_ns, "filter", "add", "dev", pair.host_if, "parent", "1:", "prio", "999", "protocol", "ip", "u32",
            "match", "ip", "dport", "9", "0xffff", "flowid", "1:99")  # fmt: skip
    server.kill()
    server.start()  # the same data directory and port
    with Client(server.target, principal="alice", timeout=10) as again:
        assert again.get_call("calls/two").state == State.STATE_CONNECTED
    (line,) = pair.call_classes().values()
    assert "rate 2400Kbit" in line  # calls/two, and nothing else
    assert "1:99" not in pair.classes()
    assert len(pair.filter_prefs()) == 1
    rates = measure(pair, {5051: 600_000}, seconds=2.5, expect=lambda got: within(got[5051], 300_000))
    print("after restart, grant 300,000:", rates)
    assert within(rates[5051], 300_000), rates


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"interface": "nope0"}, "no interface nope0"),
        ({"netns": "cqtc-no-such-namespace"}, "network namespace 'cqtc-no-such-namespace'"),
        ({"mtu_bytes": 9000}, "mtu_bytes 9000 exceeds"),
        ({"capacity_bytes_per_second": 2_000_000_000}, r"exceeds .* speed 1250000000 B/s"),  # veth: 10 Gbit/s
        ({"colour": "red"}, "unknown keys"),
    ],
)
def test_settings_are_checked_against_the_interfaces(pair: Pair, change: dict[str, object], expected: str) -> None:
    from callqos.server.providers.linux_tc.provider import LinuxTcProvider

    settings = pair.settings(CAPACITY)
    link = {**settings["links"][0], **change}  # type: ignore[index]
    with pytest.raises(ValueError, match=expected):
        LinuxTcProvider({"links": [link]})
