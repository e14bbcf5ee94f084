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
from pathlib import Path

import pytest
import tomli_w
from linux_tc_kit import namespaces

pytestmark = pytest.mark.slow

FILTERS = [
    '{"version": 1, "protocol": "udp", "remote": {"port": 9}}',
    '{"version": 1, "protocol": "tcp", "local": {"port": 4000}, "remote": {"address": "10.77.0.0/24"}, "dscp": 46}',
]


def test_linux_tc_is_certified_conformant(tmp_path: Path) -> None:
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
                "--output-dir",
                str(out),
            ],
            capture_output=True,
            text=True,
            timeout=240,
        )
        report = json.loads((out / "report.json").read_text())
        failed = [(c["id"], c["reason"]) for c in report["checks"] if c["outcome"] not in ("passed", "skipped")]
        assert report["verdict"] == "conformant", (failed, done.stdout[-3000:])
        assert done.returncode == 0
        outcomes = {c["id"]: c["outcome"] for c in report["checks"]}
        # The provider-specific checks ran with the filters (and the random-bytes refusal).
        assert outcomes["CORE-PSD-001"] == outcomes["RENEG-011"] == "passed"
        # Everything the suite reserved was released: no call class is left on either end.
        assert pair.call_classes(pair.host_ns) == {} and pair.call_classes(pair.far_ns) == {}
