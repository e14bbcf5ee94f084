"""The linux-tc filter format: what is accepted, every refusal with its reason, and the u32 keys
each direction gets. Pure (no kernel); the kernel's reading of these keys is measured in
test_linux_tc.py."""

from __future__ import annotations

import json

import pytest

from callqos.server.providers.linux_tc import filters


def parse(**spec: object) -> filters.FlowFilter:
    flow = filters.parse(json.dumps({"version": 1, **spec}).encode())
    assert flow is not None
    return flow


def test_empty_is_no_filter() -> None:
    assert filters.parse(b"") is None
    assert filters.problems(b"") == []


def test_ipv4_five_tuple_and_dscp_keys_in_both_directions() -> None:
    flow = parse(
        protocol="udp",
        local={"address": "10.77.0.1", "port": 4000},
        remote={"address": "10.77.0.0/24", "port": 5000},
        dscp=46,
    )
    assert flow.ethertype == filters.ETH_P_IP
    assert flow.u32_keys("sending") == [
        "0x05000000/0x0f000000+0",  # IHL 5
        "0x00000000/0x00001fff+4",  # first fragment
        "0x00b80000/0x00fc0000+0",  # DSCP 46 in the TOS byte
        "0x00110000/0x00ff0000+8",  # UDP
        "0x0a4d0001/0xffffffff+12",  # source 10.77.0.1
        "0x0a4d0000/0xffffff00+16",  # destination 10.77.0.0/24
        "0x0fa01388/0xffffffff+20",  # ports 4000 → 5000
    ]
    receiving = flow.u32_keys("receiving")
    assert "0x0a4d0000/0xffffff00+12" in receiving and "0x0a4d0001/0xffffffff+16" in receiving
    assert "0x13880fa0/0xffffffff+20" in receiving  # 5000 → 4000


def test_one_port_masks_only_its_half() -> None:
    flow = parse(protocol="tcp", remote={"port": 443})
    assert flow.u32_keys("sending")[-1] == "0x000001bb/0x0000ffff+20"
    assert flow.u32_keys("receiving")[-1] == "0x01bb0000/0xffff0000+20"


def test_ipv6_keys() -> None:
    flow = parse(protocol="udp", remote={"address": "fd00::2", "port": 5000}, dscp=46)
    assert flow.family == 6 and flow.ethertype == filters.ETH_P_IPV6
    assert flow.u32_keys("sending") == [
        "0x0b800000/0x0fc00000+0",  # traffic class
        "0x00001100/0x0000ff00+4",  # next header UDP
        "0xfd000000/0xffffffff+24",
        "0x00000000/0xffffffff+28",
        "0x00000000/0xffffffff+32",
        "0x00000002/0xffffffff+36",
        "0x00001388/0x0000ffff+40",
    ]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"\x00\x01binary", "not a linux-tc filter"),
        (b"[1, 2]", "is a JSON object"),
        (b'{"protocol": "udp"}', "version: required"),
        (b'{"version": 2, "protocol": "udp"}', "version: required, must be 1"),
        (b'{"version": 1, "protocol": "udp", "colour": "red"}', "unknown key 'colour'"),
        (b'{"version": 1, "protocol": "udp", "remote": {"prot": 1}}', "remote: unknown key 'prot'"),
        (b'{"version": 1, "protocol": "ipx"}', "protocol: one of"),
        (b'{"version": 1, "protocol": 300}', "protocol: one of"),
        (b'{"version": 1, "protocol": "udp", "remote": {"port": 0}}', "remote.port: an integer 1-65535"),
        (b'{"version": 1, "protocol": "udp", "remote": {"port": true}}', "remote.port: an integer 1-65535"),
        (b'{"version": 1, "protocol": "icmp", "remote": {"port": 9}}', "a port needs protocol tcp, udp or sctp"),
        (b'{"version": 1, "remote": {"address": "10.0.0.300"}}', "remote.address"),
        (b'{"version": 1, "remote": {"address": "10.0.0.1/24"}}', "remote.address"),  # host bits set
        (b'{"version": 1, "local": {"address": "10.0.0.1"}, "remote": {"address": "fd00::1"}}', "different families"),
        (b'{"version": 1, "family": "ipv6", "remote": {"address": "10.0.0.1"}}', "does not match the addresses"),
        (b'{"version": 1, "protocol": "icmp", "family": "ipv6"}', "does not belong to IPv6"),
        (b'{"version": 1, "dscp": 64}', "dscp: an integer 0-63"),
        (b'{"version": 1}', "matches every packet"),
        (b'{"version": 1, "remote": {"address": "0.0.0.0/0"}, "local": {}}', "matches every packet"),
    ],
)
def test_refused_with_the_reason(data: bytes, expected: str) -> None:
    with pytest.raises(filters.FilterError) as caught:
        filters.parse(data)
    assert any(expected in problem for problem in caught.value.problems), caught.value.problems


def test_every_problem_is_reported_at_once() -> None:
    problems = filters.problems(b'{"version": 3, "protocol": "udp", "remote": {"port": -1}, "x": 1}')
    assert len(problems) == 3, problems


def test_size_limit() -> None:
    padded = b'{"version": 1, "protocol": "udp"' + b" " * filters.MAX_FILTER_BYTES + b"}"
    assert filters.problems(padded) == [f"a linux-tc filter is at most {filters.MAX_FILTER_BYTES} bytes"]
