"""`callqos-conformance` certifies the linux-tc provider on a veth pair between two namespaces.

The suite is run as a user would run it (the CLI, --provider mode: it spawns the server hosting
linux-tc with these settings). The provider interprets provider_specific, so the parameters
file gives two filters it accepts (`provider_specific`): the suite sends those where it would
send random bytes, and checks that random bytes are refused as INVALID_ARGUMENT.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import tomli_w
from linux_tc_kit import namespaces

pytestmark = pytest.mark.slow

FILTERS = [
    '{"version": 1, "protocol": "udp", "remote": {"port": 9}}',
    '{"version": 1, "protocol": "tcp", "local": {"port": 4000}, "remote": {"address": "10.77.0.0/24"}, "dscp": 46}',
]


@dataclass
class Certified:
    report: dict[str, Any]
    output: str
    returncode: int
    classes_left: tuple[dict[str, Any], dict[str, Any]]


@pytest.fixture(scope="module")
def certified(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Certified]:
    tmp_path = tmp_path_factory.mktemp("linux-tc")
    with namespaces() as pair:
        settings = tmp_path / "linux-tc.toml"
        settings.write_text(tomli_w.dumps(pair.settings(1_250_000)))
        parameters = tmp_path / "parameters.toml"
        parameters.write_text(tomli_w.dumps({"parameters": {"provider_specific": FILTERS}}))
        out = tmp_path / "report"
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "callqos.conformance",
                "--provider",
                "linux-tc",
                "--provider-settings",
                str(settings),
                "--parameters",
                str(parameters),
                "--seed",
                "18",
                "--histories",
                "10",
                "--output-dir",
                str(out),
            ],
            capture_output=True,
            text=True,
            timeout=240,
        )
        report = json.loads((out / "report.json").read_text())
        # Everything the suite reserved was released: no call class is left on either end.
        yield Certified(
            report, done.stdout, done.returncode, (pair.call_classes(pair.host_ns), pair.call_classes(pair.far_ns))
        )


def test_linux_tc_is_certified_conformant_and_releases_every_class(certified: Certified) -> None:
    """Including the edges of the valid range: a GUARANTEED class of 1 B/s with a 2^40-byte bucket
    (CORE-ADM-019) and shedding down to a few B/s (PCHG-004), which the kernel's 32-bit HTB fields
    cannot hold as asked (`netlink.fitting_rate`, `fitting_burst`)."""
    report = certified.report
    failed = {c["id"]: c["reason"][:500] for c in report["checks"] if c["outcome"] not in ("passed", "skipped")}
    assert report["verdict"] == "conformant", (failed, certified.output[-3000:])
    assert certified.returncode == 0
    outcomes = {c["id"]: c["outcome"] for c in report["checks"]}
    # The provider-specific checks ran with the filters (and the random-bytes refusal).
    assert outcomes["CORE-PSD-001"] == outcomes["RENEG-011"] == "passed"
    assert certified.classes_left == ({}, {})
