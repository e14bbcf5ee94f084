"""A failing history's reproduction runs as printed: the shell script MODEL-001 writes, executed with
bash against a server it starts itself, shows the fault the suite reported."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from callqos.conformance.broken import P
from callqos.conformance.runner import RunOptions, run_conformance


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.slow
def test_a_shrunk_history_is_a_runnable_reproduction(tmp_path: Path) -> None:
    # A provider that keeps a link's new capacity in memory only: the model-based histories find it on
    # their own (capacity changes and restarts are among their operations) and shrink it to two steps.
    # Shrinking is bounded by time (a quarter of the budget, at least 15 s); a budget of 120 s gives
    # it 30 s, so that a busy machine's slower replays still reach the two steps (once, under load,
    # the 15 s ran out at eight).
    report = run_conformance(
        RunOptions(
            provider=P + "ForgetsCapacityOnRestart", checks=("MODEL-001",), seed=11, histories=10, budget_seconds=120
        )
    )
    result = next(r for r in report.results if r.check.id == "MODEL-001")
    assert result.outcome.value == "failed", result.reason
    found = re.search(r"\[LINK-4\] \S+ reports capacity (\d+) B/s; it was set to (\d+)", result.reason)
    assert found, result.reason
    assert "seed 11" in result.reason and "of a history of 2 operations" in result.reason
    # The histories up to the failing one are run again by the flags the message and the report give.
    rerun = re.search(r"history (\d+); run again with --seed 11 --histories (\d+)\)", result.reason)
    assert rerun and int(rerun.group(2)) == int(rerun.group(1)) + 1 == report.histories, result.reason
    assert report.reproduce == f"--seed 11 --histories {report.histories}"
    assert "restart_server" in result.reproduction
    script = tmp_path / "repro.sh"
    script.write_text(result.reproduction)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "CALLQOS_TARGET": f"127.0.0.1:{free_port()}",
    }
    done = subprocess.run(["bash", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    # Run by hand, the script shows what the suite reported: the capacity set, then lost in the restart.
    links = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    capacity = links[-1].get("capacityBytesPerSecond", links[-1].get("capacity_bytes_per_second")) if links else None
    assert capacity is not None and int(capacity) == int(found.group(1)) != int(found.group(2)), done.stdout
